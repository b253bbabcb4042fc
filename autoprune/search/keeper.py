"""The weight keeper: the fine-tuned weights of the trials that may be on the front, each checked
to load into the architecture rebuilt from the trial's record, and no others."""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autoprune.errors import TrialFailed
from autoprune.search.basemodel import cpu_state, save_atomic
from autoprune.search.front import front_numbers, may_join_front, rung_of
from autoprune.search.paths import stored_weights, weight_path
from autoprune.search.promotion import weights_needed
from autoprune.search.study import copy_to_cpu
from autoprune.trial.evaluate import TrialResult
from autoprune.trial.surgery import Removal, rebuild


class WeightKeeper:
    """Keeps the fine-tuned weights of front members only, each checked to load back.

    :meth:`keep` runs inside a trial, before it completes. When the trial can join the front
    (:func:`may_join_front`), it rebuilds the trial's architecture from what the trial stores (the
    base model and the removals surgery made), loads the fine-tuned weights into it, writes them
    as ``trial-<N>.pt`` (atomically) and records the file's sha256 in the trial (``weights_sha256``);
    weights that do not load back fail the trial with the reason. Called as an Optuna callback after
    every trial, it deletes the files of trials that are not on the front, so the folder never holds
    more files than the front has members.

    With promotion (``rungs`` > 1) it also keeps the weights a promoted run may still start from
    (:func:`~autoprune.search.promotion.weights_needed`), and :meth:`model_of` loads them.

    Args:
        folder: The study's artifacts folder (:func:`~autoprune.search.paths.study_artifacts`).
        base: The base model, copied to the CPU once for the rebuilds.
        example_input: One input batch for torch-pruning's tracing.
        rungs: The study's ``fidelity.rungs``.
    """

    def __init__(self, folder: Path, base: nn.Module, example_input: torch.Tensor, rungs: int = 1) -> None:
        self.folder = folder
        self.rungs = rungs
        self._base = copy_to_cpu(base)
        self._example = example_input[:1].cpu()

    def _skeleton(self, kept: dict[str, int], removed: Removal) -> nn.Module:
        return rebuild(copy.deepcopy(self._base), self._example, kept, removed)

    def keep(self, trial: optuna.Trial, result: TrialResult, values: Sequence[float]) -> None:
        """Save the trial's weights when it can join the front, checked to load into its rebuilt model.

        Raises:
            TrialFailed: the weights do not load into the architecture rebuilt from the trial's record.
        """
        if result.model is None:
            return
        may_be_promoted = rung_of(trial) < self.rungs - 1
        if not may_be_promoted and not may_join_front(trial.study, values, trial.user_attrs.get("constraints", [])):
            return
        state = cpu_state(result.model)
        skeleton = self._skeleton(result.kept, result.removed)
        try:
            skeleton.load_state_dict(state)
        except Exception as exc:  # RuntimeError for shapes; layers' own checks raise others
            reason = " ".join(str(exc).split())
            raise TrialFailed(f"its weights do not load into the model rebuilt from its record: {reason}") from None
        path = weight_path(self.folder, trial.number)
        save_atomic(state, path)
        trial.set_user_attr("weights_sha256", hashlib.sha256(path.read_bytes()).hexdigest())

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # Several workers share the folder: list the files first, then read the front from
        # storage, so a file another worker has just written for a trial on the front (written
        # before its trial completes) is never taken for a stale one.
        files = stored_weights(self.folder)
        if not files:
            return
        trials = study.get_trials(deepcopy=False)
        keep = {t.number for t in trials if t.state == TrialState.RUNNING}
        keep |= weights_needed(trials, self.rungs) if self.rungs > 1 else set()
        keep |= set(front_numbers(study))  # after the running ones: a trial that completes between is in one
        for number, path in files.items():
            if number not in keep:
                path.unlink(missing_ok=True)

    def model_of(self, trial: FrozenTrial) -> nn.Module:
        """Trial ``trial``'s fine-tuned model (CPU), rebuilt from its record and loaded with its kept weights.

        Raises:
            TrialFailed: its weights are not kept, or the file is not the one it wrote.
        """
        path = weight_path(self.folder, trial.number)
        if not path.is_file():
            raise TrialFailed(f"trial {trial.number} has no kept weights at {path} to continue from")
        stored = path.read_bytes()
        if hashlib.sha256(stored).hexdigest() != trial.user_attrs.get("weights_sha256"):
            raise TrialFailed(f"{path} is not the file trial {trial.number} wrote (sha256 differs)")
        model = self._skeleton(trial.user_attrs["kept"], trial.user_attrs.get("removed") or [])
        model.load_state_dict(torch.load(io.BytesIO(stored), map_location="cpu", weights_only=True))
        return model


__all__ = ["WeightKeeper"]
