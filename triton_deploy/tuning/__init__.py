"""``triton-deploy tune``: the fastest configuration of a whole ensemble under a p99 budget, measured on real Triton."""

from .options import TuneOptions
from .tune import TuneResult, tune

__all__ = ["TuneOptions", "TuneResult", "tune"]
