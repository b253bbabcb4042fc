"""Export a trial: rebuild its pruned model, check it, and write weights, policy, a torch.export
program and ONNX.

The search keeps the fine-tuned ``state_dict`` of front members only (``trial-<N>.pt`` in the
study's artifacts folder), so a model can be exported without retraining. An export directory
holds::

    weights.pt          state_dict of the pruned, fine-tuned model (it takes normalized input);
                        tensors that are mostly zeros are packed as a bitmask and their non-zero
                        values (:func:`~autoprune.trial.metrics.packed_state`)
    policy.json         the policy, the kept channels and channel removals, the model and data
                        shapes, the input normalization, the splits, the figures
    model_source.py     a copy of the file defining the user's model builder (user models only)
    model.pt2           torch.export program of the model behind its normalization (raw pixels in,
                        dynamic batch): ``torch.export.load(path).module()``, no autoprune needed
    model.onnx          the same in ONNX (dynamic batch), input "input", output "logits"
    model-card.md       base vs pruned figures, policy, data, input, budget, the checks that passed

``autoprune.load(directory)`` rebuilds the pruned ``nn.Module`` from ``policy.json``,
``weights.pt`` and, for a user model, ``model_source.py``: it needs autoprune and torch, not the
study, and works from any current directory. Where that builder cannot be imported it falls back
to the ``model.pt2`` program (inference only; an export written before ``model.pt2`` existed falls
back to its TorchScript file).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autoprune._logging import get_logger
from autoprune._progress import format_seconds
from autoprune.budget import Budget
from autoprune.data import DataSplits, load_data
from autoprune.errors import AutopruneError, ConfigError
from autoprune.models._user import load_callable, source_file
from autoprune.results.finetune import FinetuneResult, FinetuneSettings, Recipe, final_finetune, recipe_for
from autoprune.results.quantize import CALIBRATION_IMAGES, Int8Result, card_lines, int8_export
from autoprune.search.artifacts import weights_key
from autoprune.search.basemodel import cpu_state
from autoprune.search.front import front_numbers
from autoprune.search.paths import study_artifacts
from autoprune.search.rebuild import build_pruned, rebuild_trial, stored_base, stored_trial
from autoprune.search.record import StudyRecord
from autoprune.trial.decoder import load_pruned, save_pruned
from autoprune.trial.metrics import (
    Measurement,
    accuracy,
    count_macs_params,
    packed_state,
    size_bytes,
    unpacked_state,
)
from autoprune.trial.sparsity import nonzero_macs

log = get_logger(__name__)

TOLERANCE = 1e-4
"""Largest absolute difference allowed between PyTorch and the torch.export / ONNX programs' outputs."""

FORMAT = "autoprune-export/3"
"""``policy.json``'s format: 2 added channel removals, the builder's copy and the normalization baked
into the programs (format 1's programs took normalized input); 3 replaced the TorchScript program
with a ``torch.export`` one."""

WEIGHTS, POLICY, SOURCE, PROGRAM, ONNX, CARD = (
    "weights.pt",
    "policy.json",
    "model_source.py",
    "model.pt2",
    "model.onnx",
    "model-card.md",
)
TORCHSCRIPT = "model.torchscript.pt"
"""The program of exports of formats 1 and 2, read only for them."""

RAW_INPUT = "float32 NCHW, pixel values scaled to [0, 1]"
"""What the ``model.pt2`` and ONNX programs take."""


class Preprocessed(nn.Module):
    """A model with its input normalization in front: it takes pixels scaled to [0, 1].

    Args:
        model: The model, trained on ``(pixels - mean) / std``.
        mean: Per-channel mean.
        std: Per-channel standard deviation.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)

    def pixels(self, normalized: torch.Tensor) -> torch.Tensor:
        """The pixels that ``normalized`` came from: the normalization undone."""
        return normalized * self.std + self.mean


class Normalized(nn.Module):
    """A program that takes pixels, behind the undoing of a normalization: it takes normalized input,
    as the model was trained (the fallback of :func:`load` without ``preprocessing``)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, program: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.program = program
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        return self.program(normalized * self.std + self.mean)

    def train(self, mode: bool = True) -> Normalized:
        """The program was exported in eval mode and has no other (its module refuses ``train``)."""
        self.training = mode
        return self


def _loaded(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> nn.Module:
    """``model`` with ``state`` loaded, in eval mode; a mismatch names ``source`` and the first difference."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]  # the first line only names the model class
        raise AutopruneError(f"{source} does not fit the rebuilt model: {detail}") from None
    return model.eval()


def _builder(folder: Path, model_info: dict[str, Any]) -> str:
    """The model name ``load`` builds from: the export's copy of a user builder, else the recorded name."""
    copied = model_info.get("builder")
    if copied is None:
        return str(model_info["name"])
    file, _, function = copied.rpartition(":")
    return f"{(folder / file).resolve()}:{function}"


def _copy_builder(name: str, folder: Path) -> str | None:
    """Copy the file defining a user builder into ``folder`` when the copy imports on its own.

    Returns:
        The copy's spec, relative to ``folder``; None for built-in names, for modules without a
        source file, and for a file that does not import on its own (a module of a package that
        imports its siblings relatively, say): the export then names the builder as the study did.
    """
    source = source_file(name, "model")
    if source is None:
        return None
    shutil.copyfile(source, folder / SOURCE)
    copied = f"{SOURCE}:{name.rpartition(':')[2]}"
    try:
        load_callable(_builder(folder, {"name": name, "builder": copied}), "model")
    except (ConfigError, ImportError) as exc:
        (folder / SOURCE).unlink()
        log.warning(
            "export: %s does not import on its own (%s), so the export names the model %r: autoprune.load "
            "imports it where it can and loads the model.pt2 program where it cannot",
            source,
            exc,
            name,
        )
        return None
    return copied


def _program(folder: Path, meta: dict[str, Any], preprocessing: bool, reason: Exception) -> nn.Module:
    """The export's program (``model.pt2``; TorchScript for an export of format 1 or 2), for when its
    model cannot be built here."""
    name = PROGRAM if (folder / PROGRAM).is_file() else TORCHSCRIPT
    if not (folder / name).is_file():
        raise AutopruneError(
            f"{folder}: the model {meta['model']['name']!r} cannot be built here ({reason}) and the export "
            f"has no {PROGRAM} to fall back on"
        ) from reason
    log.warning(
        "%s: the model %r cannot be built here (%s); loading %s instead: the exported program, for inference "
        "only (fixed operations, no Python module to train or prune further)",
        folder,
        meta["model"]["name"],
        reason,
        name,
    )
    if name == PROGRAM:  # exported in eval mode; its module refuses eval()
        program = torch.export.load(folder / PROGRAM).module()
        norm = meta["preprocessing"]
        return program if preprocessing else Normalized(program, norm["mean"], norm["std"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated: read, never written
        scripted = torch.jit.load(str(folder / TORCHSCRIPT), map_location="cpu")
    # format 2 traced the model behind its normalization; format 1 traced the bare model
    bare = scripted.model if "preprocessing" in meta else scripted
    return (scripted if preprocessing else bare).eval()


def load(path: str | Path, *, preprocessing: bool = False) -> nn.Module:
    """Load an exported model: the pruned ``nn.Module`` with its fine-tuned weights, in eval mode.

    The model is rebuilt from ``policy.json`` and ``weights.pt`` (a user model from the export's own
    copy of its builder, ``model_source.py``), whatever the current directory. Where that fails
    because the builder cannot be imported here (its file imports a package this Python lacks, say),
    the export's ``model.pt2`` program is loaded instead, with a warning: it computes the same
    outputs but is for inference only.

    A folder written by :func:`export_decoder` (a Hugging Face checkpoint of a pruned language model)
    loads as that model (:func:`~autoprune.trial.decoder.load_pruned`).

    Args:
        path: A directory written by ``autoprune export`` or :func:`export_decoder`.
        preprocessing: False: the model as trained, taking input normalized with the export's mean
            and std. True: the model behind that normalization (:class:`Preprocessed`), taking pixels
            scaled to [0, 1], like the ``model.pt2`` and ONNX programs.

    Raises:
        AutopruneError: ``path`` is not an export, its weights do not fit, or ``preprocessing`` is
            asked of an export that records none (format 1).
    """
    folder = Path(path)
    if (folder / "config.json").is_file() and not (folder / POLICY).is_file():
        return load_pruned(folder)  # a language model (export_decoder): its Hugging Face checkpoint
    if not (folder / POLICY).is_file() or not (folder / WEIGHTS).is_file():
        raise AutopruneError(f"{folder} is not an autoprune export: it needs {POLICY} and {WEIGHTS}")
    meta = json.loads((folder / POLICY).read_text(encoding="utf-8"))
    norm = meta.get("preprocessing")
    if preprocessing and norm is None:
        raise AutopruneError(
            f"{folder / POLICY} records no input normalization (format {meta.get('format')!r}): load it with "
            "preprocessing=False and normalize the input as the study's data were"
        )
    info = {**meta["model"], "name": _builder(folder, meta["model"])}
    try:
        model = build_pruned(info, meta["example_input"], meta["kept"], meta.get("removed"))
    except (ConfigError, ImportError) as exc:
        return _program(folder, meta, preprocessing, exc)
    state = unpacked_state(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
    model = _loaded(model, state, folder / WEIGHTS)
    return Preprocessed(model, norm["mean"], norm["std"]).eval() if preprocessing else model


def trial_model(study: optuna.Study, number: int, *, storage: str | None = None) -> nn.Module:
    """Trial ``number``'s pruned model with its stored fine-tuned weights (CPU, eval mode).

    Raises:
        AutopruneError: the trial has no stored weights (only front members keep them), or the file
            is not the one the trial wrote (its sha256 differs from the trial's ``weights_sha256``).
    """
    trial = stored_trial(study, number)
    artifacts = study_artifacts(study, storage)
    where = artifacts.where(weights_key(number))
    stored = artifacts.weights(number)
    if stored is None:
        raise AutopruneError(
            f"trial {number} has no stored weights at {where}: the search keeps them for front members only "
            f"(front: {front_numbers(study)})"
        )
    if (
        "weights_sha256" in trial.user_attrs
        and hashlib.sha256(stored).hexdigest() != trial.user_attrs["weights_sha256"]
    ):
        raise AutopruneError(
            f"{where} does not belong to trial {number} of study {study.study_name!r}: sha256 differs; "
            "it was overwritten by another study or edited"
        )
    model = rebuild_trial(study, number, base_weights=False)
    return _loaded(model, torch.load(io.BytesIO(stored), map_location="cpu", weights_only=True), where)


def study_data(study: optuna.Study) -> DataSplits:
    """The study's data splits (CPU), rebuilt from its stored settings."""
    return load_data(StudyRecord.from_study(study).config.data)


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote and measured."""

    path: Path
    trial: int
    measurement: Measurement
    test_accuracy: float
    program_diff: float
    onnx_diff: float
    onnx_check: str
    base_test_accuracy: float | None = None
    finetuned: FinetuneResult | None = None
    int8: Int8Result | None = None


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def exported_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``model`` as a ``torch.export`` program whose batch axis is dynamic (``example``: 2 or more rows,
    since with 1 torch.export fixes the axis)."""
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:
        raise AutopruneError(f"torch.export failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


class Logits(nn.Module):
    """A causal language model as a function of token ids to next-token logits (no cache)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@dataclass(frozen=True)
class DecoderExport:
    """What :func:`export_decoder` wrote, and how far its programs' logits are from the model's."""

    folder: Path
    program_diff: float
    onnx_diff: float | None
    onnx_check: str


def export_decoder(model: nn.Module, folder: str | Path, tokenizer: Any = None, *, length: int = 16) -> DecoderExport:
    """Export a pruned causal language model: its Hugging Face checkpoint with the per-layer widths
    (:func:`~autoprune.trial.decoder.save_pruned`; :func:`load` reloads it), and ``model.pt2`` and
    ``model.onnx`` programs from token ids (int64, batch × sequence, both axes dynamic) to logits,
    each checked against the model on random tokens.

    Raises:
        AutopruneError: torch.export or the ONNX export fails, or a program's logits differ from the
            model's by more than :data:`TOLERANCE`.
    """
    folder = save_pruned(model, folder, tokenizer)
    wrapped = Logits(model).eval()
    vocab = int(model.get_output_embeddings().out_features)  # type: ignore[operator]
    tokens = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(0))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence", min=2, max=4096)}
    try:
        program = torch.export.export(wrapped, (tokens,), dynamic_shapes=(dims,))
    except Exception as exc:
        raise AutopruneError(f"torch.export failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    torch.export.save(program, folder / PROGRAM)
    write_onnx(program, folder / ONNX)
    other = tokens[:1, : length // 2 + 1]  # another batch size and length than the traced ones
    with torch.no_grad():
        expected = [wrapped(tokens), wrapped(other)]
        program_diff = max(_max_diff(program.module()(x), e) for x, e in zip((tokens, other), expected, strict=True))
    onnx_out, check = _onnx_outputs(folder / ONNX, other)
    onnx_diff = None if onnx_out is None else _max_diff(onnx_out, expected[1])
    worst = max(program_diff, onnx_diff or 0.0)
    if worst > TOLERANCE:
        raise AutopruneError(f"the exported programs' logits differ from the model's by {worst:.2e}")
    return DecoderExport(folder, program_diff, onnx_diff, check)


def write_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                program,
                input_names=["input"],
                output_names=["logits"],
                f=str(path),
                dynamo=True,
                external_data=False,  # one self-contained file
                verbose=False,
            )
    except ImportError as exc:
        raise AutopruneError(f"ONNX export needs the onnx and onnxscript packages: {exc}") from None
    except Exception as exc:
        raise AutopruneError(f"ONNX export failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def _onnx_outputs(path: Path, x: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    """ONNX Runtime's outputs when it is installed; else only onnx.checker runs (outputs None).

    Raises:
        AutopruneError: the file fails onnx.checker, its input's batch axis is a fixed number, or
            ONNX Runtime cannot run it on ``x``.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise AutopruneError(f"{path.name} fails onnx.checker: {exc}".splitlines()[0]) from None
    batch = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        raise AutopruneError(
            f"{path.name}: the ONNX export fixed the batch size at {batch.dim_value}; "
            "torch.export specialised it while tracing the model"
        )
    try:
        import onnxruntime
    except ImportError:
        return None, "onnx.checker passed; onnxruntime is not installed, so ONNX outputs were not compared"
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(["logits"], {"input": x.numpy()})
    except Exception as exc:
        raise AutopruneError(f"ONNX Runtime cannot run {path.name}: {exc}".splitlines()[0]) from None
    return torch.from_numpy(out), "onnx.checker passed; ONNX Runtime outputs compared"


def export_trial(
    study: optuna.Study,
    number: int,
    out: str | Path,
    *,
    storage: str | None = None,
    finetune: FinetuneSettings | None = None,
    budget: Budget | None = None,
    command: str = "",
    device: torch.device | None = None,
    int8: bool = False,
) -> ExportResult:
    """Rebuild trial ``number`` from the stored study, check it, and write the export directory.

    Checks, before anything is written to ``out``: the rebuilt model's validation accuracy equals
    the recorded one (after a ``finetune``, which changes it, the new one is recorded instead),
    :func:`load` of the written files reproduces its outputs, and the ``model.pt2`` and ONNX
    programs' outputs on raw pixels match PyTorch's on normalized ones within :data:`TOLERANCE`.

    ``finetune``: first a final fine-tune (:func:`~autoprune.results.finetune.final_finetune`, on
    ``device``, the CPU by default) by the recipe these settings give, continued from its last
    checkpoint where an earlier run left one. ``int8``: also ``model.int8.onnx``, ONNX Runtime's static
    quantization of the ONNX program (:mod:`autoprune.results.quantize`), both programs' test accuracy
    and latency measured and written into the card.

    Raises:
        AutopruneError: a check fails, the trial has no stored weights, or ``out`` exists and is
            not an earlier export.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / POLICY).is_file())):
        raise AutopruneError(f"--out {out}: exists and is not an autoprune export; choose another directory")
    record = StudyRecord.from_study(study)
    config = record.config
    trial = stored_trial(study, number)
    attrs = trial.user_attrs
    model = trial_model(study, number, storage=storage)
    data = study_data(study)
    batch_size = config.data.batch_size
    example = data.val.x[:1]

    val = accuracy(model, data.val, batch_size)
    finetuned = None
    if finetune is not None:
        recipe = recipe_for(study, number, data, finetune)
        log.info("export: final fine-tune of trial %d: %s", number, recipe.describe())
        finetuned = final_finetune(
            study, number, model, data, recipe, storage=storage, device=device, fresh=finetune.fresh
        )
        val = accuracy(model, data.val, batch_size)
    elif abs(val - float(attrs["accuracy"])) > 1e-9:
        raise AutopruneError(
            f"trial {number}: the rebuilt model's validation accuracy is {val:.6f}, the study recorded "
            f"{float(attrs['accuracy']):.6f}; the stored weights do not reproduce the trial"
        )
    macs, params = count_macs_params(model, example)
    if (macs, params) != (int(attrs["macs"]), int(attrs["params"])):
        raise AutopruneError(
            f"trial {number}: the rebuilt model has {macs} MACs and {params} params, the study recorded "
            f"{attrs['macs']} and {attrs['params']}"
        )
    measurement = Measurement(val, macs, params, size_bytes(model), nonzero_macs=nonzero_macs(model, example, macs))
    test = accuracy(model, data.test, batch_size)
    base_test = base_test_accuracy(study, data, batch_size)
    program = Preprocessed(model, data.mean, data.std).eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp_name:
        tmp = Path(tmp_name)
        about = record.model_info()
        builder = _copy_builder(about["name"], tmp)
        meta = {
            "format": FORMAT,
            "study": study.study_name,
            "trial": number,
            "policy": attrs["policy"],
            "kept": attrs["kept"],
            "removed": attrs.get("removed"),
            "groups": record.groups,
            "model": about if builder is None else {**about, "builder": builder},
            "example_input": list(record.data_shape.example_input),
            "preprocessing": {
                "mean": list(data.mean),
                "std": list(data.std),
                "input": RAW_INPUT,
                "built_into": [PROGRAM, ONNX],
            },
            "data": config.to_dict()["data"],
            "splits": {
                "train": len(data.train),
                "val": len(data.val),
                "test": len(data.test),
                "own_test_set": data.own_test,
            },
            "figures": {**measurement.to_dict(), "test_accuracy": test, "finetune_cost": attrs.get("finetune_cost")},
            "recorded": {k: attrs[k] for k in ("accuracy", "macs", "params", "size")},
            "final_finetune": finetuned.to_dict() if finetuned else None,
            "base": {**record.base.to_dict(), "test_accuracy": base_test},
            "budget": budget.to_dict() if budget else {},
        }
        torch.save(packed_state(cpu_state(model)), tmp / WEIGHTS)
        (tmp / POLICY).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")

        x = data.val.x[: max(2, min(len(data.val), batch_size))]
        pixels = program.pixels(x)
        with torch.no_grad():
            reference = model(x)
            reloaded = load(tmp)(x)
        if _max_diff(reference, reloaded) > 0:
            raise AutopruneError(f"trial {number}: autoprune.load of the export does not reproduce the model")

        exported = exported_program(program, pixels[:2])
        torch.export.save(exported, tmp / PROGRAM)
        with torch.no_grad():
            program_out = torch.export.load(tmp / PROGRAM).module()(pixels)
        program_diff = _max_diff(reference, program_out)
        if program_diff > TOLERANCE:
            raise AutopruneError(f"trial {number}: {PROGRAM} outputs differ from PyTorch's by {program_diff:.2e}")

        write_onnx(exported, tmp / ONNX)
        onnx_out, onnx_check = _onnx_outputs(tmp / ONNX, pixels)
        onnx_diff = _max_diff(reference, onnx_out) if onnx_out is not None else float("nan")
        if onnx_out is not None and onnx_diff > TOLERANCE:
            raise AutopruneError(f"trial {number}: ONNX outputs differ from PyTorch's by {onnx_diff:.2e}")

        quantized = None
        if int8:
            shuffled = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
            settings = config.trial
            quantized = int8_export(
                tmp,
                ONNX,
                program.pixels(data.train.x[shuffled[:CALIBRATION_IMAGES]].cpu()),
                data.test,
                program.pixels,
                batch_size=batch_size,
                latency_batch=settings.latency_batch_size,
                threads=settings.latency_threads,
                repeats=max(settings.latency_repeats, 30),
            )
            meta["int8"] = quantized.to_dict()
            (tmp / POLICY).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        result = ExportResult(
            out, number, measurement, test, program_diff, onnx_diff, onnx_check, base_test, finetuned, quantized
        )
        (tmp / CARD).write_text(model_card(meta, result, command), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        out.chmod(0o755)  # TemporaryDirectory made it private
        tmp.mkdir()  # TemporaryDirectory removes its folder on exit
    log.info("export: trial %d written to %s", number, out)
    return result


def base_test_accuracy(study: optuna.Study, data: DataSplits, batch_size: int) -> float | None:
    """The study's base model's test accuracy; ``None`` where its weights are not on this machine."""
    try:
        return accuracy(stored_base(study), data.test, batch_size)
    except AutopruneError:
        return None


def _finetune_lines(finetuned: dict[str, Any] | None) -> list[str]:
    """The model card's account of a final fine-tune: its recipe and its epochs' validation accuracy."""
    if not finetuned:
        return []
    recipe = Recipe(**finetuned["recipe"])
    history = finetuned["history"]
    shown = history if len(history) <= 12 else [*history[:3], *history[-9:]]
    return [
        "",
        "## Final fine-tune",
        "",
        f"After the search, `autoprune finetune` trained the pruned model further: {recipe.describe()}, in "
        f"{format_seconds(finetuned['seconds'])}.",
        "",
        "| epoch | step | train loss | val acc |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {h['epoch']} | {h['step']:,} | {h['loss']:.4f} | {h['val_accuracy']:.4f} |" for h in shown),
    ]


def _pct(value: float, base: float) -> str:
    return f"{100 * value / base:.1f}%" if base else "n/a"


def _ranking(policy: dict[str, Any]) -> str:
    if not policy["global_ranking"]:
        return "per-group ranking"
    target = next(iter(policy["ratios"].values()), 0.0)
    return f"channels ranked across groups, target {target:.3f} of all prunable channels removed"


def _data_lines(meta: dict[str, Any]) -> list[str]:
    data, splits = meta["data"], meta["splits"]
    test = (
        f"the dataset's own test set, {splits['test']:,} images"
        if splits["own_test_set"]
        else f"{data['test_fraction']:.0%} of the data, {splits['test']:,} images, held out before the validation split"
    )
    subset = f", its first {data['subset']:,} training images only (`data.subset`)" if data["subset"] else ""
    return [
        f"Dataset `{data['name']}`{subset}.",
        "",
        f"- train split: {splits['train']:,} images",
        f"- validation split: {data['val_fraction']:.0%} of the training data, {splits['val']:,} images "
        "(scored the search)",
        f"- test split: {test} (only for this card and the report; the search never saw it)",
    ]


def _input_lines(meta: dict[str, Any]) -> list[str]:
    norm = meta["preprocessing"]
    shape = "×".join(str(d) for d in meta["example_input"][1:])

    def values(xs: list[float]) -> str:
        return "[" + ", ".join(f"{v:.6g}" for v in xs) + "]"

    first, second = norm.get("built_into", [PROGRAM, ONNX])
    return [
        f"`{first}` and `{second}` take {norm['input']} ({shape} per image) and normalize it first, per "
        f"channel: `(x - mean) / std` with mean {values(norm['mean'])} and std {values(norm['std'])}. "
        f"`{WEIGHTS}` and `autoprune.load('.')` are the model as trained: they take the normalized input; "
        "`autoprune.load('.', preprocessing=True)` puts the normalization in front.",
    ]


def model_card(meta: dict[str, Any], result: ExportResult, command: str = "") -> str:
    """The export's ``model-card.md``, from its ``policy.json`` contents and the checks' results."""
    base, fig = meta["base"], meta["figures"]
    policy = meta["policy"]
    lines = [
        f"# {meta['model']['name']}, pruned: study `{meta['study']}`, trial {meta['trial']}",
        "",
        "| figure | base | pruned | pruned / base |",
        "| --- | ---: | ---: | ---: |",
        f"| validation accuracy | {base['accuracy']:.4f} | {fig['accuracy']:.4f} "
        f"| {_pct(fig['accuracy'], base['accuracy'])} |",
        f"| MACs (one example) | {base['macs']:,} | {fig['macs']:,} | {_pct(fig['macs'], base['macs'])} |",
        *(
            [f"| MACs of non-zero weights | {base['macs']:,} | {nonzero:,} | {_pct(nonzero, base['macs'])} |"]
            if (nonzero := fig.get("nonzero_macs", fig["macs"])) != fig["macs"]
            else []
        ),
        f"| parameters | {base['params']:,} | {fig['params']:,} | {_pct(fig['params'], base['params'])} |",
        f"| weights file bytes | {base['size']:,} | {fig['size']:,} | {_pct(fig['size'], base['size'])} |",
        "",
        f"Test accuracy of the pruned model: **{fig['test_accuracy']:.4f}**"
        + (f", of the base model {base_test:.4f}" if (base_test := base.get("test_accuracy")) is not None else "")
        + " (test split, held out: the search never saw it).",
        "",
        "## Policy",
        "",
        f"Scorer `{policy['scorer']}`, {policy['finetune_steps']} fine-tune steps at lr {policy['lr']:.3g}, "
        f"{policy['prune_steps']} prune step(s), {_ranking(policy)}.",
        "",
        "| group | channels kept | removed (1 - kept / channels) |",
        "| --- | ---: | ---: |",
    ]
    for group, channels in meta["groups"].items():
        kept = meta["kept"].get(group, channels)
        lines.append(f"| `{group}` | {kept} / {channels} | {1 - kept / channels:.3f} |")
    lines += _finetune_lines(meta.get("final_finetune"))
    budget = meta["budget"]
    onnx_line = (
        f"ONNX Runtime outputs match within {TOLERANCE:g} (max difference {result.onnx_diff:.2e}); "
        if not math.isnan(result.onnx_diff)
        else ""
    )
    builder = meta["model"].get("builder")
    lines += [
        "",
        "## Data",
        "",
        *_data_lines(meta),
        "",
        "## Input",
        "",
        *_input_lines(meta),
        "",
        "## Budget",
        "",
        ", ".join(f"`{k} = {v}`" for k, v in budget.items()) if budget else "No budget was given.",
        "",
        "## Checks passed before writing",
        "",
        "- the rebuilt model's validation accuracy, MACs and parameters equal the recorded ones"
        if not meta.get("final_finetune")
        else "- the rebuilt model's MACs and parameters equal the recorded ones (accuracy re-measured after "
        "the final fine-tune)",
        "- `autoprune.load` of the written files reproduces the model's outputs exactly",
        f"- `{PROGRAM}` outputs on raw pixels match PyTorch's on normalized ones within {TOLERANCE:g} (max "
        f"difference {result.program_diff:.2e})",
        f"- {onnx_line}{result.onnx_check}",
        "",
        "## Use",
        "",
        "```python",
        "import autoprune",
        "model = autoprune.load('.')                      # this directory; needs autoprune and torch",
        "model = autoprune.load('.', preprocessing=True)  # the same, taking pixels in [0, 1]",
        "```",
        "",
        (f"The model is rebuilt from `{SOURCE}`, a copy of its builder `{meta['model']['name']}`. " if builder else "")
        + f"Where the model's builder cannot be imported, `autoprune.load` loads the `{PROGRAM}` program "
        f"instead (inference only) and says so. `{PROGRAM}` loads without autoprune, with "
        f"`torch.export.load('{PROGRAM}').module()`; both programs take a dynamic batch; `{ONNX}` has input "
        "`input` and output `logits`.",
    ]
    if result.int8 is not None:
        lines += card_lines(result.int8)
    if command:
        lines += ["", f"Written by: `{command}`"]
    return "\n".join(lines) + "\n"


__all__ = [
    "TOLERANCE",
    "DecoderExport",
    "ExportResult",
    "Logits",
    "export_decoder",
    "exported_program",
    "write_onnx",
    "Preprocessed",
    "export_trial",
    "load",
    "model_card",
    "study_data",
    "trial_model",
]
