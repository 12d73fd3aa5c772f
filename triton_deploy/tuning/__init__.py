"""``triton-deploy tune``: the fastest configuration of a whole ensemble under a p99 budget, measured on real Triton."""

from .options import TuneOptions

__all__ = ["TuneOptions", "TuneResult", "tune"]


def __getattr__(name: str):
    if name in ("tune", "TuneResult"):
        from . import run  # Triton's client libraries and matplotlib: loaded when tuning, not with the CLI

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
