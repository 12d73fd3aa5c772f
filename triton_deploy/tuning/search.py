"""The search: coordinate descent over the knobs with two-stage screening, then a side-by-side confirmation.

Brute force over the ensemble's space (three steps' instances, batching, queue delay, threads, session batch) is
thousands of configurations; Model Analyzer's brute mode took 4-6 minutes for five of them here. Instead:

1. Screen: from the incumbent, change one knob at a time and measure each value in a short window. Most values lose
   clearly and cost one short window each. A value is compared with the median of the incumbent's latest runs, not
   with one of them: on a shared machine one window can be off by a third.
2. Challenge: a value that beats the incumbent by more than the noise margin is measured again against the
   incumbent in longer windows, in pairs whose order alternates (incumbent first, then challenger first, ...), and
   replaces it only if it wins every pair; the first lost pair ends the challenge. Comparing within one pair cancels
   the drift of a shared machine, and three pairs let a candidate that is no better through one time in eight
   (two pairs: one in four, which a search of twenty values would hit several times). Simulated with windows off by
   15 % (tests/unit/test_tune_search.py), this keeps a change that does nothing in 71 of 200 runs instead of 104
   and finds a real 40 % gain as often (162 against 164).
3. Repeat passes over the knobs until a pass changes nothing or the budget runs low.
4. Confirm: the starting configuration and the winner alternate ``repeats`` times in long windows (more when the
   search ended early: up to four times as many, as the budget allows); the gain and its spread come from those
   runs only.

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
from .results import CandidateRejected, Measurement, Point


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
    challenge_pairs: int = 3  # side-by-side pairs a challenger must all win to replace the incumbent
    challenge_margin: float = 0.0  # ... each by this fraction (winning three in a row is the guard against noise)
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


def typical(runs: list[Measurement]) -> Measurement:
    """The per-concurrency median of ``runs`` (throughput and p99 each), as one measurement."""
    if len(runs) == 1:
        return runs[0]
    points = tuple(Point(p.concurrency, statistics.median(m.points[i].images_per_s for m in runs),
                         statistics.median(m.points[i].p50_ms for m in runs),
                         statistics.median(m.points[i].p99_ms for m in runs),
                         max(m.points[i].failures for m in runs), sum(m.points[i].requests for m in runs))
                   for i, p in enumerate(runs[0].points))
    return Measurement(points, runs[-1].window_s)


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

    def challenge(incumbent: Candidate, candidate: Candidate) -> list[Measurement]:
        """Second stage: challenger and incumbent in longer windows, in pairs whose order alternates (ABBA, so a
        steady drift of the machine favours neither), stopping at the first pair the challenger does not win. It
        must win all ``challenge_pairs``: a candidate no better than the incumbent gets through with a chance of
        one in 2^pairs, a clearly better one almost always. Returns the challenger's runs if it won, else []."""
        runs = []
        for pair in range(settings.challenge_pairs):
            order = (incumbent, candidate) if pair % 2 == 0 else (candidate, incumbent)
            measured = {c: run(c, settings.challenge_s, "challenge") for c in order}
            a, b = measured[candidate], measured[incumbent]
            if a is None or b is None or not better(a, b, b, settings.p99_ms, settings.challenge_margin):
                return []
            runs.append(a)
        return runs

    reference = run(start, settings.screen_s, "screen")
    if reference is None:
        raise CandidateRejected("the starting configuration itself did not load")
    incumbent, history = start, [reference]  # history: the incumbent's measurements, latest last
    seen = {start}
    for _ in range(settings.max_passes):
        changed = False
        for knob in knobs:
            for value in knob.values:
                candidate = incumbent.with_value(knob, value)
                if candidate in seen:
                    continue
                if not time_left(per_window * (settings.screen_s + 2 * settings.challenge_pairs * settings.challenge_s)
                                 + 10.0):
                    result.stopped_by_budget = True
                    break
                seen.add(candidate)
                screened = run(candidate, settings.screen_s, "screen")
                # Against the median of the incumbent's latest runs, not one of them: a single window of a shared
                # machine can be far off, and then every screened value looks better (or worse) than it is.
                if screened is None or not better(screened, typical(history[-3:]), reference, settings.p99_ms,
                                                  settings.margin):
                    continue
                won = challenge(incumbent, candidate)
                if won:
                    incumbent, history, changed = candidate, won, True
            if result.stopped_by_budget:
                break
        if not changed or result.stopped_by_budget:
            break
    result.winner = incumbent
    contenders = ((start, result.confirm_start), (incumbent, result.confirm_winner)) if incumbent != start \
        else ((start, result.confirm_start),)
    for _ in range(_confirmation_rounds(settings, deadline, len(contenders))):
        for candidate, into in contenders:  # alternate, so drift of the machine hits both alike
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


def _confirmation_rounds(settings: SearchSettings, deadline: float, contenders: int) -> int:
    """``repeats`` rounds, more when the search ended early and the budget has room: each round more narrows the
    spread of the medians the decision and the stated gain come from (up to four times ``repeats``). With nothing to
    compare (the start kept) ``repeats`` rounds state its figures: more would only spend the user's time."""
    if contenders < 2:
        return settings.repeats
    round_s = contenders * (len(settings.concurrencies) * settings.confirm_s + 3.0)
    room = int((deadline - time.monotonic()) // round_s)
    return max(settings.repeats, min(room, 4 * settings.repeats))


def _held(result: SearchResult, settings: SearchSettings) -> bool:
    """Whether the winner beat the start in the confirmation: feasible there, and a median throughput gain above 1
    (geometric mean over the concurrencies)."""
    if not result.confirm_winner or not result.confirm_start:
        return False
    winner, start = typical(result.confirm_winner), typical(result.confirm_start)
    return winner.feasible(settings.p99_ms) and score(winner, start) > 1.0
