"""The weight keeper: the fine-tuned weights of the trials that may be on the front, each checked
to load into the architecture rebuilt from the trial's record, and no others."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autoprune._logging import get_logger
from autoprune.errors import TrialFailed
from autoprune.search.artifacts import Artifacts, ArtifactStoreError, weights_key
from autoprune.search.basemodel import cpu_state
from autoprune.search.front import feasible, front_numbers, front_to_come, may_join_front, rung_of
from autoprune.search.promotion import Promotion
from autoprune.trial.evaluate import TrialResult
from autoprune.trial.surgery import Removal, TracedModel, rebuild

log = get_logger(__name__)


class WeightKeeper:
    """Keeps the fine-tuned weights of front members only, each checked to load back.

    :meth:`keep` runs inside a trial, before it completes. When the trial can join the front
    (:func:`may_join_front`), it rebuilds the trial's architecture from what the trial stores (the
    base model and the removals surgery made), loads the fine-tuned weights into it, writes them
    as ``trial-<N>.pt`` in the study's artifact store (whole or not at all) and records their sha256 in
    the trial (``weights_sha256``); weights that do not load back, or a store that stays unreachable,
    fail the trial with the reason. Called as an Optuna callback after every trial, it deletes the
    weights of trials that are not on the front, so the store never holds more files than the front
    has members.

    With promotion it also saves the weights of every feasible run that may be promoted, keeps those
    a promoted run may still start from (:meth:`Promotion.weights_needed
    <autoprune.search.promotion.Promotion.weights_needed>`) and those that may return to the front
    when a promoted run ends below its parent (:func:`front_to_come`), deletes the others under the
    promotion lock (never while a rung is being enqueued), and :meth:`model_of` loads them.

    Args:
        artifacts: The study's artifact store (:func:`~autoprune.search.paths.study_artifacts`).
        traced: The traced base model; each rebuild starts from a CPU copy of it and its graph.
        promotion: The study's promotion across fine-tune budgets, if any.
    """

    def __init__(self, artifacts: Artifacts, traced: TracedModel, promotion: Promotion | None = None) -> None:
        self.artifacts = artifacts
        self.promotion = promotion
        self._traced = traced
        self._example = traced.example_input[:1].cpu()

    def _skeleton(self, kept: dict[str, int], removed: Removal) -> nn.Module:
        model, graph = self._traced.copy("cpu")
        return rebuild(model.eval(), self._example, kept, removed, graph=graph)

    def keep(self, trial: optuna.Trial, result: TrialResult, values: Sequence[float]) -> None:
        """Save the trial's weights when it can join the front, checked to load into its rebuilt model.

        Raises:
            TrialFailed: the weights do not load into the architecture rebuilt from the trial's record,
                or the store cannot be written.
        """
        if result.model is None:
            return
        constraints = trial.user_attrs.get("constraints", [])
        may_be_promoted = (
            self.promotion is not None and rung_of(trial) < self.promotion.rungs - 1 and feasible(constraints)
        )
        if not may_be_promoted and not may_join_front(trial.study, values, constraints):
            return
        state = cpu_state(result.model)
        skeleton = self._skeleton(result.kept, result.removed)
        try:
            skeleton.load_state_dict(state)
        except Exception as exc:  # RuntimeError for shapes; layers' own checks raise others
            reason = " ".join(str(exc).split())
            raise TrialFailed(f"its weights do not load into the model rebuilt from its record: {reason}") from None
        buffer = io.BytesIO()
        torch.save(state, buffer)
        try:
            digest = self.artifacts.put_weights(trial.number, buffer.getvalue())
        except ArtifactStoreError as exc:
            raise TrialFailed(f"its weights could not be stored: {exc}") from None
        trial.set_user_attr("weights_sha256", digest)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # Several workers share the store: list its weights first, then read the front from
        # storage, so weights another worker has just written for a trial on the front (written
        # before its trial completes) are never taken for stale ones.
        try:
            self._remove_stale(study)
        except ArtifactStoreError as exc:
            log.warning("%s; the weights off the front are removed after a later trial", exc)

    def _remove_stale(self, study: optuna.Study) -> None:
        with self.promotion.locked() if self.promotion is not None else contextlib.nullcontext():
            stored = self.artifacts.weight_numbers()
            if not stored:
                return
            trials = study.get_trials(deepcopy=False)
            keep = {t.number for t in trials if t.state == TrialState.RUNNING}
            if self.promotion is not None:
                keep |= self.promotion.weights_needed(trials)
            # after the running ones: a trial that completes between is in one
            keep |= set(front_numbers(study)) | set(front_to_come(study))
            for number in stored - keep:
                self.artifacts.remove_weights(number)

    def model_of(self, trial: FrozenTrial) -> nn.Module:
        """Trial ``trial``'s fine-tuned model (CPU), rebuilt from its record and loaded with its kept weights.

        Raises:
            TrialFailed: its weights are not kept, or the file is not the one it wrote.
        """
        where = self.artifacts.where(weights_key(trial.number))
        try:
            stored = self.artifacts.weights(trial.number)
        except ArtifactStoreError as exc:
            raise TrialFailed(str(exc)) from None
        if stored is None:
            raise TrialFailed(f"trial {trial.number} has no kept weights at {where} to continue from")
        if hashlib.sha256(stored).hexdigest() != trial.user_attrs.get("weights_sha256"):
            raise TrialFailed(f"{where} is not the file trial {trial.number} wrote (sha256 differs)")
        model = self._skeleton(trial.user_attrs["kept"], trial.user_attrs.get("removed") or [])
        model.load_state_dict(torch.load(io.BytesIO(stored), map_location="cpu", weights_only=True))
        return model


__all__ = ["WeightKeeper"]
