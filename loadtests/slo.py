"""Service-level objectives for a load test: latency percentiles and error rate, checked after a run.

The same check runs inside Locust (its ``quitting`` hook sets a non-zero exit code) and in ``triton-deploy loadtest``
(which names the violated objectives in its error and in ``summary.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from triton_deploy.errors import Problem, raise_problems
from triton_deploy.errors import SLOViolation as SLOViolation  # re-exported: defined in triton_deploy.errors

# Without any SLO flag a run still fails when more than this fraction of its requests failed: a load test against a
# dead server or a misspelt model must not report "ok". ``--slo-error-rate 1`` only reports errors.
DEFAULT_MAX_ERROR_RATE = 0.01


@dataclass(frozen=True)
class SLO:
    """Thresholds; ``None`` means not checked. Latencies in milliseconds, ``error_rate`` as a fraction (0.01 = 1%),
    checked at ``DEFAULT_MAX_ERROR_RATE`` unless set otherwise."""

    p95_ms: float | None = None
    p99_ms: float | None = None
    error_rate: float | None = DEFAULT_MAX_ERROR_RATE

    def problems(self) -> list[Problem]:
        """What is wrong with the thresholds (``LoadTestOptions.problems`` reports them with its own)."""
        problems = []
        for flag, value in (("--slo-p95-ms", self.p95_ms), ("--slo-p99-ms", self.p99_ms)):
            if value is not None and value <= 0:
                problems.append((f"{flag} must be a positive number of milliseconds, got {value}", f"check {flag}"))
        if self.error_rate is not None and not 0 <= self.error_rate <= 1:
            problems.append((f"--slo-error-rate is a fraction in 0..1 (0.01 = 1%), got {self.error_rate}",
                             "check --slo-error-rate"))
        return problems

    def check(self) -> None:
        raise_problems(self.problems())

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.p95_ms, self.p99_ms, self.error_rate))

    def to_dict(self) -> dict:
        return asdict(self)

    def violations(self, p95_ms: float, p99_ms: float, error_rate: float, requests: int) -> list[str]:
        """One readable line per broken objective; empty when all hold. A run with no requests breaks them all."""
        if not self.active:
            return []
        if requests == 0:
            return ["no requests completed, so no objective can be met"]
        found = []
        if self.p95_ms is not None and p95_ms > self.p95_ms:
            found.append(f"p95 latency {p95_ms:.1f} ms > {self.p95_ms:g} ms (--slo-p95-ms)")
        if self.p99_ms is not None and p99_ms > self.p99_ms:
            found.append(f"p99 latency {p99_ms:.1f} ms > {self.p99_ms:g} ms (--slo-p99-ms)")
        if self.error_rate is not None and error_rate > self.error_rate:
            found.append(f"error rate {error_rate:.2%} > {self.error_rate:.2%} (--slo-error-rate)")
        return found
