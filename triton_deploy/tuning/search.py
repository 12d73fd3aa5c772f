"""The search: coordinate descent over the knobs with two-stage screening, then a side-by-side confirmation.

Brute force over the ensemble's space (three steps' instances, batching, queue delay, threads, session batch) is
thousands of configurations; Model Analyzer's brute mode took 4-6 minutes for five of them here. Instead:

1. Screen: from the incumbent, change one knob at a time and measure each value in a short window. Most values lose
   clearly and cost one short window each.
2. Challenge: a value that beats the incumbent's screening score by more than the noise margin is measured again
   against the incumbent in longer windows run back to back (alternating), and replaces it only if it still wins
   there. Comparing within one pair cancels the drift of a shared machine.
3. Repeat passes over the knobs until a pass changes nothing or the budget runs low.
4. Confirm: the starting configuration and the winner alternate ``repeats`` times in long windows; the gain and
   its spread come from those runs only.

The score of a measurement is the geometric mean over the requested concurrencies of its throughput relative to a
reference measurement, so each concurrency weighs the same. A candidate is feasible when every concurrency's p99 is
within the budget and no request failed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .knobs import Candidate, Knob
from .results import CandidateRejected, Measurement


@dataclass(frozen=True)
class SearchSettings:
    concurrencies: tuple[int, ...]
    p99_ms: float
    budget_s: float
    screen_s: float = 2.0  # each concurrency's window while screening
    challenge_s: float = 4.0  # each concurrency's window when a challenger meets the incumbent
    confirm_s: float = 5.0  # each concurrency's window in the final side-by-side runs
    repeats: int = 3  # side-by-side runs of start and winner in the confirmation
    margin: float = 0.05  # a challenger must beat the incumbent by this fraction to be looked at again
    max_passes: int = 3


@dataclass
class Record:
    """One measurement of one candidate, as the report lists it."""

    candidate: Candidate
    stage: str  # screen | challenge | confirm | rejected
    measurement: Measurement | None
    note: str = ""


@dataclass
class SearchResult:
    start: Candidate
    winner: Candidate
    records: list[Record] = field(default_factory=list)
    confirm_start: list[Measurement] = field(default_factory=list)
    confirm_winner: list[Measurement] = field(default_factory=list)
    stopped_by_budget: bool = False
    lead_lost: bool = False  # the search's winner lost to the start in the confirmation, so the start is kept
    challenger: Candidate | None = None  # the search's winner when it lost the confirmation


def score(m: Measurement, reference: Measurement) -> float:
    ratios = [m.throughput(p.concurrency) / max(p.images_per_s, 1e-9) for p in reference.points]
    return math.exp(sum(math.log(max(r, 1e-9)) for r in ratios) / len(ratios))


def better(a: Measurement, b: Measurement, reference: Measurement, p99_ms: float, margin: float = 0.0) -> bool:
    """Whether ``a`` beats ``b``: feasible before infeasible; among feasible the higher score (by ``margin``); among
    infeasible the lower worst p99 (nearer to meeting the budget)."""
    if a.feasible(p99_ms) != b.feasible(p99_ms):
        return a.feasible(p99_ms)
    if a.feasible(p99_ms):
        return score(a, reference) > score(b, reference) * (1 + margin)
    return a.worst_p99() < b.worst_p99() * (1 - margin)


# A measuring function: (candidate, window seconds) -> Measurement; raises CandidateRejected for a config Triton
# refuses. Injected so the strategy is one piece of logic whatever runs the candidates.
MeasureFn = Callable[[Candidate, float], Measurement]


def search(knobs: list[Knob], measure: MeasureFn, settings: SearchSettings,
           on_record: Callable[[Record], None] = lambda record: None) -> SearchResult:
    deadline = time.monotonic() + settings.budget_s
    per_window = len(settings.concurrencies)
    # Keep enough for the confirmation: 2 x repeats long windows at every concurrency, plus reloads.
    reserve = 2 * settings.repeats * (per_window * settings.confirm_s + 3.0)
    start = Candidate()
    result = SearchResult(start=start, winner=start)

    def run(candidate: Candidate, window_s: float, stage: str) -> Measurement | None:
        try:
            m = measure(candidate, window_s)
        except CandidateRejected as exc:
            record = Record(candidate, "rejected", None, str(exc))
        else:
            record = Record(candidate, stage, m)
        result.records.append(record)
        on_record(record)
        return record.measurement

    def time_left(windows: float) -> bool:
        return time.monotonic() + windows + reserve < deadline

    reference = run(start, settings.screen_s, "screen")
    if reference is None:
        raise CandidateRejected("the starting configuration itself did not load")
    incumbent, incumbent_m = start, reference
    seen = {start}
    for _ in range(settings.max_passes):
        changed = False
        for knob in knobs:
            for value in knob.values:
                candidate = incumbent.with_value(knob, value)
                if candidate in seen:
                    continue
                if not time_left(per_window * (settings.screen_s + 4 * settings.challenge_s) + 10.0):
                    result.stopped_by_budget = True
                    break
                seen.add(candidate)
                screened = run(candidate, settings.screen_s, "screen")
                if screened is None or not better(screened, incumbent_m, reference, settings.p99_ms, settings.margin):
                    continue
                # Second stage: challenger and incumbent alternating in longer windows; the challenger must win
                # both pairs, so one lucky window on a shared machine does not move the search.
                pairs = [(run(incumbent, settings.challenge_s, "challenge"), run(candidate, settings.challenge_s,
                                                                                 "challenge")) for _ in range(2)]
                won = [c for d, c in pairs if d and c and better(c, d, d, settings.p99_ms, settings.margin / 2)]
                if len(won) == len(pairs):
                    incumbent, incumbent_m, changed = candidate, won[-1], True
            if result.stopped_by_budget:
                break
        if not changed or result.stopped_by_budget:
            break
    result.winner = incumbent
    contenders = ((start, result.confirm_start), (incumbent, result.confirm_winner)) if incumbent != start \
        else ((start, result.confirm_start),)
    for _ in range(settings.repeats):  # alternate, so drift of the machine hits both alike
        for candidate, into in contenders:
            m = run(candidate, settings.confirm_s, "confirm")
            if m is not None:
                into.append(m)
    if incumbent == start:  # nothing to compare: the start's own runs give the figures and their spread
        result.confirm_winner = list(result.confirm_start)
    if incumbent != start and not _held(result, settings):
        # The lead seen while searching did not survive the side-by-side runs: keep what was there.
        result.challenger, result.winner, result.lead_lost = incumbent, start, True
        result.confirm_winner = list(result.confirm_start)
    return result


def _held(result: SearchResult, settings: SearchSettings) -> bool:
    """Whether the winner beat the start in the confirmation: feasible there, and a median throughput gain above 1
    (geometric mean over the concurrencies)."""
    if not result.confirm_winner or not result.confirm_start:
        return False
    for i in range(len(result.confirm_start[0].points)):
        runs = result.confirm_winner
        if any(m.points[i].failures for m in runs) or \
                statistics.median(m.points[i].p99_ms for m in runs) > settings.p99_ms:
            return False
    ratios = [statistics.median(m.points[i].images_per_s for m in result.confirm_winner)
              / max(statistics.median(m.points[i].images_per_s for m in result.confirm_start), 1e-9)
              for i in range(len(result.confirm_start[0].points))]
    return math.exp(sum(math.log(max(r, 1e-9)) for r in ratios) / len(ratios)) > 1.0
