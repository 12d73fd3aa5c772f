"""``triton-deploy tune`` against the real Triton: a tiny model's ensemble (no training), a tiny search space, the
report, writing the winner (new repository or in place) and refusing when nothing meets the budget."""

from __future__ import annotations

import json

import pytest

from conftest import make_export  # a tiny export directory: no TensorFlow needed
from triton_deploy.errors import LatencyBudgetError
from triton_deploy.repository.render import RepositoryOptions
from triton_deploy.repository.writer import generate_repository
from triton_deploy.tuning import TuneOptions, tune
from triton_deploy.tuning.space import EnsembleConfigs

pytestmark = pytest.mark.slow


@pytest.fixture()
def tiny_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    export = make_export(root / "tiny")
    output = root / "repo"
    generate_repository([export], RepositoryOptions(output=output, classifier_instances=1))
    return output


def quick(repository, tmp_path, **overrides) -> TuneOptions:
    settings = dict(repository=repository, model="tiny", p99_ms=1000.0, concurrencies=(1, 2), budget_s=45.0,
                    only=("instances",), report_dir=tmp_path / "report", screen_s=0.3, challenge_s=0.5,
                    confirm_s=0.5, repeats=2)
    return TuneOptions(**(settings | overrides))


def test_tune_measures_candidates_reports_them_and_writes_a_servable_repository(tiny_repository, tmp_path):
    result = tune(quick(tiny_repository, tmp_path, output=tmp_path / "tuned"))
    report = json.loads((tmp_path / "report" / "tune.json").read_text())
    measured = [c for c in report["candidates"] if c["points"]]
    assert len(measured) >= 3  # the start, at least one other value of a knob, and the confirmation runs
    assert {p["concurrency"] for c in measured for p in c["points"]} == {1, 2}
    assert all(p["images_per_s"] > 0 and p["failures"] == 0 for c in measured for p in c["points"])
    assert {c["stage"] for c in measured} >= {"screen", "confirm"}
    table = (tmp_path / "report" / "tune.md").read_text()
    assert table.count("\n| ") - 1 == len(report["candidates"])  # one row per measurement under the header
    assert ("Winner:" in table or "No change kept" in table) and (tmp_path / "report" / "tune.png").stat().st_size > 10_000
    assert 2 <= report["confirmation"]["repeats"] <= 8  # repeats, more if the budget had room
    assert set(report["confirmation"]["throughput_gain"]) == {"1", "2"}
    # The new repository holds the winner's configs, parseable by Triton's protobuf, and the rest of the files.
    configs = EnsembleConfigs.read(tmp_path / "tuned", "tiny")
    knobs = [k for k in configs.knobs() if k.field == "instances"]
    for knob in knobs:
        assert configs.members[knob.model].instance_group[0].count == result.winner.value(knob)
    assert (tmp_path / "tuned" / "tiny_classifier" / "1" / "model.onnx").is_file()
    # The user's repository is untouched.
    assert not list(tiny_repository.glob("*/config.pbtxt.before-tune-*"))


def test_tune_refuses_when_no_configuration_meets_the_budget_and_writes_nothing(tiny_repository, tmp_path):
    with pytest.raises(LatencyBudgetError, match=r"no configuration met p99 <= 0.001 ms .* best p99 reached was "
                                                 r"[\d.]+ ms") as caught:
        tune(quick(tiny_repository, tmp_path, p99_ms=0.001, output=tmp_path / "tuned"))
    assert caught.value.exit_code == 16
    assert not (tmp_path / "tuned").exists()
    assert (tmp_path / "report" / "tune.md").is_file()  # what was measured is still shown


def test_a_sigkilled_tune_leaves_its_copy_where_the_next_run_removes_it(tiny_repository, tmp_path):
    """SIGKILL gives tune no chance to clean up: its repository copy stays in the report directory (not in /tmp),
    Triton goes with it (parent-death signal), and the next run's work directory removes the copy."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from triton_deploy.tuning.run import WORK_PREFIX, work_directory

    report = tmp_path / "report"
    process = subprocess.Popen(
        [sys.executable, "-m", "triton_deploy.cli", "tune", str(tiny_repository), "--model", "tiny", "--p99-ms",
         "1000", "--concurrency", "1", "--budget", "10m", "--output", str(tmp_path / "tuned"), "--report-dir",
         str(report)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = report / f"{WORK_PREFIX}{process.pid}"
    deadline = time.monotonic() + 120
    while not (work / "triton.log").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(2.0)  # Triton starting or measuring: the copy is in use
    assert process.poll() is None, "tune ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (work / "repository" / "tiny" / "config.pbtxt").is_file()  # left behind, as SIGKILL allows
    with work_directory(report) as next_work:
        assert not work.exists()
        assert next_work.name == f"{WORK_PREFIX}{os.getpid()}"
    assert not list(report.glob(WORK_PREFIX + "*"))
    # Whatever still ran from the copy (the killed run's Triton, draining, and its python-backend stubs) is gone.
    deadline = time.monotonic() + 1.0  # SIGKILLed at once; a Triton left to drain takes seconds
    while list(_running_from(work)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(_running_from(work)), "a process of the killed run is still running"


def _running_from(folder):
    """Live (non-zombie) processes with ``folder`` on their command line."""
    from pathlib import Path

    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder).encode() not in cmdline.read_bytes():
                continue
            state = (cmdline.parent / "stat").read_text().rsplit(") ", 1)[-1][:1]
        except OSError:
            continue
        if state != "Z":
            yield int(cmdline.parent.name)
