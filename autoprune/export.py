"""Export a trial: rebuild its pruned model, check it, and write weights, policy, TorchScript and ONNX.

The search keeps the fine-tuned ``state_dict`` of front members only (``trial-<N>.pt`` in the
study's artifacts folder), so a model can be exported without retraining. An export directory
holds::

    weights.pt          state_dict of the pruned, fine-tuned model
    policy.json         the policy, the kept channels per group, the model and data shapes, figures
    model.torchscript.pt  torch.jit.trace of the model (batch size free)
    model.onnx          ONNX (dynamic batch), input "input", output "logits"
    model-card.md       base vs pruned figures, policy, data, budget, the checks that passed

``autoprune.load(directory)`` returns the pruned ``nn.Module`` from ``policy.json`` and
``weights.pt`` alone: it needs autoprune and torch, not the study.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autoprune._logging import get_logger
from autoprune.budget import Budget
from autoprune.config import config_from_dict
from autoprune.data import DataSplits, load_data
from autoprune.errors import AutopruneError
from autoprune.finetune import train_steps
from autoprune.metrics import Measurement, accuracy, count_macs_params, size_bytes
from autoprune.models import build_model
from autoprune.study import study_artifacts, study_info, weight_path
from autoprune.surgery import rebuild

log = get_logger(__name__)

TOLERANCE = 1e-4
"""Largest absolute difference allowed between PyTorch and TorchScript / ONNX outputs."""

WEIGHTS, POLICY, TORCHSCRIPT, ONNX, CARD = (
    "weights.pt",
    "policy.json",
    "model.torchscript.pt",
    "model.onnx",
    "model-card.md",
)


def build_pruned(model_info: dict[str, Any], example_shape: list[int], kept: dict[str, int]) -> nn.Module:
    """The pruned architecture: the registered base model shrunk to ``kept`` channels per group."""
    model = build_model(
        model_info["name"],
        num_classes=model_info["num_classes"],
        in_channels=model_info["in_channels"],
        image_size=model_info["image_size"],
    )
    with torch.enable_grad():  # torch-pruning traces through autograd
        return rebuild(model, torch.zeros(example_shape), kept)


def load(path: str | Path) -> nn.Module:
    """Load an exported model: the pruned ``nn.Module`` with its fine-tuned weights, in eval mode.

    Args:
        path: A directory written by ``autoprune export``.
    """
    folder = Path(path)
    if not (folder / POLICY).is_file() or not (folder / WEIGHTS).is_file():
        raise AutopruneError(f"{folder} is not an autoprune export: it needs {POLICY} and {WEIGHTS}")
    meta = json.loads((folder / POLICY).read_text(encoding="utf-8"))
    model = build_pruned(meta["model"], meta["example_input"], meta["kept"])
    state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise AutopruneError(f"{folder / WEIGHTS} does not fit the rebuilt model: {exc}".splitlines()[0]) from None
    return model.eval()


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            if trial.state != optuna.trial.TrialState.COMPLETE or "kept" not in trial.user_attrs:
                raise AutopruneError(f"trial {number} of study {study.study_name!r} did not complete")
            return trial
    raise AutopruneError(f"study {study.study_name!r} has no trial {number}")


def _model_info(info: dict[str, Any]) -> dict[str, Any]:
    shape = info["data_shape"]
    return {
        "name": info["config"]["model"]["name"],
        "num_classes": shape["num_classes"],
        "in_channels": shape["in_channels"],
        "image_size": shape["image_size"],
    }


def trial_model(study: optuna.Study, number: int, *, storage: str | None = None) -> nn.Module:
    """Trial ``number``'s pruned model with its stored fine-tuned weights (CPU, eval mode).

    Raises:
        AutopruneError: the trial has no stored weights (only front members keep them).
    """
    info = study_info(study)
    trial = _trial(study, number)
    path = weight_path(study_artifacts(study, storage), number)
    if not path.is_file():
        front = sorted(t.number for t in study.best_trials)
        raise AutopruneError(
            f"trial {number} has no stored weights at {path}: the search keeps them for front members only "
            f"(front: {front})"
        )
    model = build_pruned(_model_info(info), info["data_shape"]["example_input"], trial.user_attrs["kept"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def study_data(study: optuna.Study) -> DataSplits:
    """The study's data splits (CPU), rebuilt from its stored settings."""
    return load_data(config_from_dict(study_info(study)["config"]).data)


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote and measured."""

    path: Path
    trial: int
    measurement: Measurement
    test_accuracy: float
    torchscript_diff: float
    onnx_diff: float
    onnx_check: str


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=False,  # one self-contained file
                verbose=False,
            )
    except ImportError as exc:
        raise AutopruneError(f"ONNX export needs the onnx and onnxscript packages: {exc}") from None
    except Exception as exc:
        raise AutopruneError(f"ONNX export failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def _onnx_outputs(path: Path, x: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    """ONNX Runtime's outputs when it is installed; else only onnx.checker runs (outputs None)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise AutopruneError(f"{path.name} fails onnx.checker: {exc}".splitlines()[0]) from None
    try:
        import onnxruntime
    except ImportError:
        return None, "onnx.checker passed; onnxruntime is not installed, so ONNX outputs were not compared"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"input": x.numpy()})
    return torch.from_numpy(out), "onnx.checker passed; ONNX Runtime outputs compared"


def finetune_longer(
    model: nn.Module, data: DataSplits, *, epochs: int, lr: float, weight_decay: float, seed: int, batch_size: int
) -> None:
    """``epochs`` more epochs of fine-tuning (cosine decay from ``lr``), in place."""
    steps = epochs * max(1, math.ceil(len(data.train) / batch_size))
    torch.manual_seed(seed)
    batches = data.train.shuffled_batches(batch_size, torch.Generator().manual_seed(seed))
    train_steps(model, batches, steps=steps, lr=lr, weight_decay=weight_decay)
    model.eval()


def export_trial(
    study: optuna.Study,
    number: int,
    out: str | Path,
    *,
    storage: str | None = None,
    finetune_epochs: int = 0,
    budget: Budget | None = None,
    command: str = "",
) -> ExportResult:
    """Rebuild trial ``number`` from the stored study, check it, and write the export directory.

    Checks, before anything is written to ``out``: the rebuilt model's validation accuracy equals
    the recorded one (skipped after ``finetune_epochs`` > 0, which changes it; the new one is
    recorded), and TorchScript and ONNX outputs match PyTorch's within :data:`TOLERANCE`.

    Raises:
        AutopruneError: a check fails, the trial has no stored weights, or ``out`` exists and is
            not an earlier export.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / POLICY).is_file())):
        raise AutopruneError(f"--out {out}: exists and is not an autoprune export; choose another directory")
    info = study_info(study)
    config = config_from_dict(info["config"])
    trial = _trial(study, number)
    attrs = trial.user_attrs
    model = trial_model(study, number, storage=storage)
    data = study_data(study)
    batch_size = config.data.batch_size
    example = data.val.x[:1]

    val = accuracy(model, data.val, batch_size)
    if finetune_epochs > 0:
        log.info("export: fine-tuning trial %d for %d more epoch(s)", number, finetune_epochs)
        finetune_longer(
            model,
            data,
            epochs=finetune_epochs,
            lr=float(attrs["policy"]["lr"]),
            weight_decay=config.train.weight_decay,
            seed=int(attrs["policy"]["seed"]),
            batch_size=batch_size,
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
    measurement = Measurement(val, macs, params, size_bytes(model))
    test = accuracy(model, data.test, batch_size)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp_name:
        tmp = Path(tmp_name)
        meta = {
            "format": "autoprune-export/1",
            "study": study.study_name,
            "trial": number,
            "policy": attrs["policy"],
            "kept": attrs["kept"],
            "groups": info["groups"],
            "model": _model_info(info),
            "example_input": info["data_shape"]["example_input"],
            "data": info["config"]["data"],
            "figures": {**measurement.to_dict(), "test_accuracy": test, "finetune_cost": attrs.get("finetune_cost")},
            "recorded": {k: attrs[k] for k in ("accuracy", "macs", "params", "size")},
            "extra_finetune_epochs": finetune_epochs,
            "base": info["base"],
            "budget": budget.to_dict() if budget else {},
        }
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        (tmp / POLICY).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")

        x = data.val.x[: max(2, min(len(data.val), batch_size))]
        with torch.no_grad():
            reference = model(x)
            reloaded = load(tmp)(x)
        if _max_diff(reference, reloaded) > 0:
            raise AutopruneError(f"trial {number}: autoprune.load of the export does not reproduce the model")

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example)
            traced.save(str(tmp / TORCHSCRIPT))
            ts_out = torch.jit.load(str(tmp / TORCHSCRIPT))(x)
        ts_diff = _max_diff(reference, ts_out)
        if ts_diff > TOLERANCE:
            raise AutopruneError(f"trial {number}: TorchScript outputs differ from PyTorch's by {ts_diff:.2e}")

        _export_onnx(model, example, tmp / ONNX)
        onnx_out, onnx_check = _onnx_outputs(tmp / ONNX, x)
        onnx_diff = _max_diff(reference, onnx_out) if onnx_out is not None else float("nan")
        if onnx_out is not None and onnx_diff > TOLERANCE:
            raise AutopruneError(f"trial {number}: ONNX outputs differ from PyTorch's by {onnx_diff:.2e}")

        result = ExportResult(out, number, measurement, test, ts_diff, onnx_diff, onnx_check)
        (tmp / CARD).write_text(model_card(meta, result, command), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        out.chmod(0o755)  # TemporaryDirectory made it private
        tmp.mkdir()  # TemporaryDirectory removes its folder on exit
    log.info("export: trial %d written to %s", number, out)
    return result


def _pct(value: float, base: float) -> str:
    return f"{100 * value / base:.1f}%" if base else "n/a"


def model_card(meta: dict[str, Any], result: ExportResult, command: str = "") -> str:
    """The export's ``model-card.md``."""
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
        f"| parameters | {base['params']:,} | {fig['params']:,} | {_pct(fig['params'], base['params'])} |",
        f"| state_dict bytes | {base['size']:,} | {fig['size']:,} | {_pct(fig['size'], base['size'])} |",
        "",
        f"Test accuracy of the pruned model: **{fig['test_accuracy']:.4f}** (test split, held out: the search "
        "never saw it).",
        "",
        "## Policy",
        "",
        f"Scorer `{policy['scorer']}`, {policy['finetune_steps']} fine-tune steps at lr {policy['lr']:.3g}, "
        f"{policy['prune_steps']} prune step(s), {'global' if policy['global_ranking'] else 'per-group'} ranking"
        + (
            f", then {meta['extra_finetune_epochs']} extra fine-tune epoch(s) at export"
            if meta["extra_finetune_epochs"]
            else ""
        )
        + ".",
        "",
        "| group | ratio | channels kept |",
        "| --- | ---: | ---: |",
    ]
    for group, channels in meta["groups"].items():
        kept = meta["kept"].get(group, channels)
        lines.append(f"| `{group}` | {policy['ratios'].get(group, 0.0):.3f} | {kept} / {channels} |")
    data = meta["data"]
    budget = meta["budget"]
    onnx_line = (
        f"ONNX Runtime outputs match within {TOLERANCE:g} (max difference {result.onnx_diff:.2e}); "
        if not math.isnan(result.onnx_diff)
        else ""
    )
    lines += [
        "",
        "## Data",
        "",
        f"Dataset `{data['name']}`; validation split {data['val_fraction']:.0%} of the training data (scored the "
        f"search), test split {data['test_fraction']:.0%} (only for this card and the report).",
        "",
        "## Budget",
        "",
        ", ".join(f"`{k} = {v}`" for k, v in budget.items()) if budget else "No budget was given.",
        "",
        "## Checks passed before writing",
        "",
        "- the rebuilt model's validation accuracy, MACs and parameters equal the recorded ones"
        if not meta["extra_finetune_epochs"]
        else "- the rebuilt model's MACs and parameters equal the recorded ones (accuracy re-measured after "
        "the extra fine-tune)",
        f"- TorchScript outputs match PyTorch within {TOLERANCE:g} (max difference {result.torchscript_diff:.2e})",
        f"- {onnx_line}{result.onnx_check}",
        "",
        "## Use",
        "",
        "```python",
        "import autoprune",
        "model = autoprune.load('.')   # this directory; needs autoprune and torch",
        "```",
        "",
        f"`{TORCHSCRIPT}` loads with `torch.jit.load`; `{ONNX}` has input `input` (batch dimension dynamic) "
        "and output `logits`.",
    ]
    if command:
        lines += ["", f"Written by: `{command}`"]
    return "\n".join(lines) + "\n"


__all__ = ["TOLERANCE", "ExportResult", "build_pruned", "export_trial", "load", "study_data", "trial_model"]
