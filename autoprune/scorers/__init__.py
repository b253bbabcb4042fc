"""Channel scorers: rank the channels of a group; the lowest are removed.

Every scorer is selectable by name in a study file and searchable by the study::

    scorer = make_scorer("taylor", seed=0)
"""

from __future__ import annotations

from autoprune.registry import Registry
from autoprune.scorers._base import Scorer
from autoprune.scorers._gradient import GradientNorm, Taylor
from autoprune.scorers._magnitude import FPGM, L1, L2, BNScale, Random

SCORERS: Registry[type[Scorer]] = Registry("scorer")
for _cls in (L1, L2, Taylor, GradientNorm, FPGM, BNScale, Random):
    SCORERS.register(_cls.name)(_cls)
SCORERS.rename("sensitivity", "gradient_norm")  # "sensitivity" names the analysis (autoprune sensitivity)


def make_scorer(name: str, seed: int = 0) -> Scorer:
    """A fresh scorer by name; ``seed`` matters for ``random`` only."""
    return SCORERS.get(name)(seed)


__all__ = ["FPGM", "L1", "L2", "SCORERS", "BNScale", "Random", "GradientNorm", "Scorer", "Taylor", "make_scorer"]
