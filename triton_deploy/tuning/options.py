"""What ``tune`` is asked to do: ``TuneOptions`` and the names of the knobs it may turn.

Kept free of Triton's client libraries so ``triton-deploy tune --help`` starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triton_deploy.errors import Problem, raise_problems

from .knobs import FIELDS, NAME_PATTERN
from .search import SearchSettings


def auto_window(budget_s: float, concurrencies: int) -> float:
    """The screening window per concurrency when ``--window`` is not given: the budget over 60 windows per
    concurrency, between 2 and 5 s. On the shared 2-core machine (2026-12-06, load average 6-12) 4 s windows of one
    unchanged configuration at concurrency 8 differed by 15-20 %, as much as the gain of turning the classifier's
    batching off, which 15 s windows showed in every round; and a 10-minute search at one concurrency with 2 s windows
    ended with half its budget unused. Longer windows where the budget has room narrow the noise."""
    return min(5.0, max(2.0, budget_s / (60.0 * max(concurrencies, 1))))


@dataclass(frozen=True)
class TuneOptions:
    repository: Path
    model: str
    p99_ms: float
    concurrencies: tuple[int, ...] = (1, 4, 8, 16)
    budget_s: float = 600.0
    output: Path | None = None  # a new repository with the winner; None with in_place
    in_place: bool = False
    report_dir: Path = Path("build/tune")
    force: bool = False
    image_dir: Path | None = None  # default: rendered digits (the preprocess step resizes any image)
    only: tuple[str, ...] = ()  # knob fields to search (e.g. "instances"); empty: all of them
    screen_s: float = 2.0
    challenge_s: float = 4.0
    confirm_s: float = 5.0
    repeats: int = 3
    config_name: str = "tuned"  # the winner is also written as <step>/configs/<config_name>.pbtxt
    cluster_repository: Path | None = None  # also write the named configs there (the cluster's repository)

    def check(self) -> None:
        """Every problem with the options at once, before anything runs."""
        problems: list[Problem] = []
        if not Path(self.repository).is_dir():
            problems.append((f"repository {self.repository} does not exist", "check REPOSITORY"))
        if self.p99_ms <= 0:
            problems.append((f"--p99-ms {self.p99_ms:g} must be positive", "check --p99-ms"))
        if not self.concurrencies or min(self.concurrencies) < 1:
            problems.append((f"--concurrency {','.join(map(str, self.concurrencies))} needs values >= 1",
                             "check --concurrency"))
        if (self.output is None) == (not self.in_place):
            problems.append(("say where the winning configuration goes", "give --output DIR or --in-place"))
        if self.budget_s < self.minimum_budget_s:
            problems.append((f"--budget {self.budget_s:g} s is too short to measure the start and confirm a winner "
                             f"(at least {self.minimum_budget_s:.0f} s for {len(self.concurrencies)} concurrencies)",
                             "raise --budget or give fewer --concurrency values"))
        unknown = sorted(set(self.only) - set(FIELDS))
        if unknown:
            problems.append((f"--only {','.join(unknown)}: no such knob (knobs: {', '.join(FIELDS)})",
                             "check --only"))
        if not NAME_PATTERN.fullmatch(self.config_name):
            problems.append((f"--config-name {self.config_name!r} is not a configuration name (letters, digits, "
                             "'_', '.', '-')", "check --config-name"))
        if self.cluster_repository is not None and not Path(self.cluster_repository).is_dir():
            problems.append((f"cluster repository {self.cluster_repository} does not exist",
                             "check --cluster-repository"))
        if self.repeats < 1:
            problems.append(("--repeats must be at least 1", "check --repeats"))
        raise_problems(problems)

    @property
    def minimum_budget_s(self) -> float:
        windows = len(self.concurrencies) * (self.screen_s + 2 * self.repeats * self.confirm_s)
        return windows + 30.0  # server start and reloads

    @property
    def settings(self) -> SearchSettings:
        # The budget covers everything; the server start and the copy are paid before the search's clock starts.
        return SearchSettings(concurrencies=tuple(sorted(set(self.concurrencies))), p99_ms=self.p99_ms,
                              budget_s=self.budget_s - 20.0, screen_s=self.screen_s, challenge_s=self.challenge_s,
                              confirm_s=self.confirm_s, repeats=self.repeats)
