"""``tune``: find the fastest configuration of a whole ensemble under a p99 latency budget, on the real Triton.

``tune(options)`` checks everything it will write first, copies the repository, starts Triton in explicit model
control on the copy, runs the search (``search.py``), writes the report and then the winning configuration: a new
repository (``output``) or the original in place with each replaced config kept beside it.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from triton_deploy.errors import LatencyBudgetError
from triton_deploy.fsutil import atomic_directory, check_output_dir, check_writable
from triton_deploy.loadtests.payloads import PoolOptions, load_pool
from triton_deploy.progress import Reporter
from triton_deploy.server import supervisor

from . import cluster, report
from .knobs import show_value
from .measure import TuningServer, link_copy
from .options import TuneOptions
from .results import Measurement
from .search import Record, SearchResult, search, typical
from .space import Candidate, EnsembleConfigs


@dataclass(frozen=True)
class TuneResult:
    winner: Candidate
    report: dict
    report_dir: Path
    written: Path  # the repository that now holds the winner


def tune(options: TuneOptions, reporter: Reporter | None = None) -> TuneResult:
    reporter = reporter or Reporter(quiet=True)
    options.check()
    repository = Path(options.repository)
    configs = EnsembleConfigs.read(repository, options.model)
    target = EnsembleConfigs.read(Path(options.cluster_repository), options.model) \
        if options.cluster_repository is not None else None
    _check_writable(options)
    knobs = [k for k in configs.knobs() if not options.only or k.field in options.only]
    pool = _pool(options)
    started = time.monotonic()
    reporter.info(f"Tuning {options.model}: {len(knobs)} knobs ({', '.join(k.name for k in knobs)}), "
                  f"concurrency {','.join(map(str, options.settings.concurrencies))}, p99 <= {options.p99_ms:g} ms, "
                  f"budget {options.budget_s:.0f} s")
    with work_directory(Path(options.report_dir)) as temp:
        work = temp / "repository"
        link_copy(repository, work)
        server = TuningServer(work, options.model, temp / "triton.log")
        with reporter.step("Starting Triton (explicit model control) on a copy of the repository"):
            server.start()
        with server:
            server.loaded = configs.render(Candidate(), knobs)  # what Triton runs now, in the form we write
            server.warm_up(pool, max(options.concurrencies), seconds=2.0)

            def measure(candidate: Candidate, window_s: float) -> Measurement:
                server.load(configs.render(candidate, knobs))
                return server.measure(pool, options.settings.concurrencies, window_s)

            outcome = search(knobs, measure, options.settings, on_record=lambda r: reporter.info(_progress_line(r)))
    summary = report.summarise(outcome, knobs, options, elapsed_s=time.monotonic() - started)
    try:
        _refuse_if_over_budget(outcome, options)
        written = _write_winner(configs, outcome.winner, knobs, options)
        summary["cluster"] = _write_named(configs, target, outcome.winner, knobs, options, written)
    finally:  # once, refused or not: with where the named configs went when they were written
        report.write(summary, outcome, options.report_dir, options.p99_ms)
    for line in report.conclusion_lines(summary):
        reporter.info(line)
    return TuneResult(outcome.winner, summary, options.report_dir, written)


WORK_PREFIX = ".tune-work-"


@contextmanager
def work_directory(report_dir: Path) -> Iterator[Path]:
    """The folder for the repository copy and Triton's log: ``<report dir>/.tune-work-<pid>``, removed on the way
    out. A run killed with SIGKILL cannot remove it, so every run first removes the folders of runs whose process is
    gone; keeping them beside the report (not in /tmp) puts them where the next run looks. A report directory whose
    path has whitespace would kill every python-backend stub (they split their arguments on it): /tmp then."""
    root = Path(report_dir).absolute()
    if any(c.isspace() for c in str(root)):
        root = Path(tempfile.gettempdir()) / "triton-deploy-tune"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(WORK_PREFIX + "*"):
        pid = stale.name.removeprefix(WORK_PREFIX)
        if not (pid.isdigit() and _alive(int(pid))):
            reap_processes_in(stale)
            shutil.rmtree(stale, ignore_errors=True)
    work = root / f"{WORK_PREFIX}{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def reap_processes_in(folder: Path) -> list[str]:
    """SIGKILL every process still running from ``folder`` (a killed tune's Triton, draining after its parent-death
    SIGTERM, and its python-backend stubs, which outlive a Triton that dies and ignore SIGTERM: pitfalls.md), and
    unlink the stubs' /dev/shm regions; the regions removed. Matched by ``folder`` on the command line (Triton's
    --model-repository, a stub's model file), a path only that run used."""
    prefix = str(Path(folder).absolute()) + os.sep
    regions: set[str] = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(prefix in arg for arg in argv):
            continue
        pid = int(cmdline.parent.name)
        region = supervisor.stub_region(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        if region is not None:
            regions.add(region)
    return supervisor.unlink_regions(regions)  # the name goes now; the memory once the killed stub has exited


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _pool(options: TuneOptions):
    return load_pool(PoolOptions(image_dir=options.image_dir, count=64))


def _progress_line(record: Record) -> str:
    if record.measurement is None:
        return f"  {record.stage:9} {record.candidate.label}: not loaded ({record.note})"
    points = "  ".join(f"c={p.concurrency} {p.images_per_s:,.0f}/s p99 {p.p99_ms:.1f} ms"
                       + (f" {p.failures} failed" if p.failures else "") for p in record.measurement.points)
    return f"  {record.stage:9} {record.candidate.label}: {points}"


def _check_writable(options: TuneOptions) -> None:
    """Fail before the long measurement when an output cannot be written."""
    check_writable(options.report_dir, flag="--report-dir")
    if options.output is not None:
        check_output_dir(Path(options.output), force=options.force)
        check_writable(Path(options.output), flag="--output")
        _check_cluster_writable(options)
        return
    for config in Path(options.repository).glob("*/config.pbtxt"):  # --in-place rewrites them
        check_writable(config, flag="--in-place", kind="file")
    _check_cluster_writable(options)


def _check_cluster_writable(options: TuneOptions) -> None:
    if options.cluster_repository is None:
        return
    for config in Path(options.cluster_repository).glob("*/config.pbtxt"):  # configs/<name>.pbtxt goes beside it
        check_writable(config.parent / "configs", flag="--cluster-repository")


def _write_named(configs: EnsembleConfigs, target: EnsembleConfigs | None, winner: Candidate, knobs,
                 options: TuneOptions, written: Path) -> dict:
    """The winner as ``configs/<name>.pbtxt`` in the written repository and, with ``--cluster-repository``, in the
    cluster's (translated to its classifier's backend); the Helm values that select it."""
    texts, _ = cluster.winner_for(configs, winner, knobs)
    paths = cluster.write_named(written, texts, options.config_name)
    skipped: list[str] = []
    if target is not None:
        cluster_texts, skipped = cluster.winner_for(target, winner, knobs)
        paths += cluster.write_named(target.repository, cluster_texts, options.config_name)
    values = Path(options.report_dir) / f"values-{options.config_name}.yaml"
    values.parent.mkdir(parents=True, exist_ok=True)  # the report is written after this
    values.write_text(cluster.values_text(options.config_name, [f"{n}={v}" for n, v in _shown(winner)]),
                      encoding="utf-8")
    return {"config_name": options.config_name, "written": [str(p) for p in paths],
            "cluster_repository": str(options.cluster_repository) if target is not None else None,
            "not_carried_over": skipped, "helm_set": cluster.set_line(options.config_name),
            "values_file": str(values)}


def _shown(candidate: Candidate) -> list[tuple[str, str]]:
    return [(name, show_value(value)) for name, value in candidate.changes]


def _refuse_if_over_budget(outcome: SearchResult, options: TuneOptions) -> None:
    measured = [(r.candidate, r.measurement) for r in outcome.records if r.measurement is not None]
    if not any(m.feasible(options.p99_ms) for _, m in measured):
        best, best_m = min(measured, key=lambda pair: pair[1].worst_p99())
        raise LatencyBudgetError(
            f"no configuration met p99 <= {options.p99_ms:g} ms at concurrency "
            f"{','.join(map(str, options.settings.concurrencies))}: the best p99 reached was "
            f"{best_m.worst_p99():.1f} ms ({best.label}); nothing was written "
            f"(report in {options.report_dir})",
            hint="raise --p99-ms or drop the highest --concurrency")
    runs = outcome.confirm_winner
    over = [point.concurrency for point in (typical(runs).points if runs else ()) if point.p99_ms > options.p99_ms]
    if over:
        raise LatencyBudgetError(
            f"the winner ({outcome.winner.label}) went over p99 {options.p99_ms:g} ms at concurrency "
            f"{','.join(map(str, over))} in the confirmation runs (median); nothing was written "
            f"(report in {options.report_dir})", hint="raise --p99-ms, or run again on a quieter machine")


def _write_winner(configs: EnsembleConfigs, winner: Candidate, knobs, options: TuneOptions) -> Path:
    """Write the configs the winner changes; every other file stays as it was (comments and formatting included)."""
    start = configs.render(Candidate(), knobs)
    texts = {name: text for name, text in configs.render(winner, knobs).items() if text != start[name]}
    if options.output is not None:
        with atomic_directory(Path(options.output), force=options.force) as staging:
            shutil.rmtree(staging)
            shutil.copytree(options.repository, staging, ignore=shutil.ignore_patterns("__pycache__"))
            for name, text in texts.items():
                (staging / name / "config.pbtxt").write_text(text, encoding="utf-8")
        return Path(options.output)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, text in texts.items():
        path = Path(options.repository) / name / "config.pbtxt"
        shutil.copy2(path, path.with_name(f"config.pbtxt.before-tune-{stamp}"))  # the previous config, kept
        staging = path.with_name("config.pbtxt.tune-tmp")
        staging.write_text(text, encoding="utf-8")
        staging.replace(path)
    return Path(options.repository)
