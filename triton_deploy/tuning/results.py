"""What a measurement of a candidate holds: throughput and latency per concurrency, and whether it meets a budget."""

from __future__ import annotations

from dataclasses import dataclass


class CandidateRejected(Exception):
    """Triton refused to load a candidate's config (the previous config was put back): skip the candidate."""


@dataclass(frozen=True)
class Point:
    """One concurrency's result for one candidate in one window."""

    concurrency: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    failures: int
    requests: int


@dataclass(frozen=True)
class Measurement:
    """A candidate measured at every concurrency in one window of ``window_s`` seconds each."""

    points: tuple[Point, ...]
    window_s: float

    def feasible(self, p99_ms: float) -> bool:
        return all(p.failures == 0 and p.p99_ms <= p99_ms for p in self.points)

    def worst_p99(self) -> float:
        return max(p.p99_ms for p in self.points)

    def throughput(self, concurrency: int) -> float:
        return next(p.images_per_s for p in self.points if p.concurrency == concurrency)
