"""``tune``'s search space and strategy without a server: knobs read from a rendered repository, candidates written
back through Triton's protobuf, and the coordinate-descent search on a measuring function with a known optimum."""

from __future__ import annotations

import itertools
import os
import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import make_export  # a tiny export directory: no TensorFlow needed
from triton_deploy.cli import main
from triton_deploy.repository.render import RepositoryOptions
from triton_deploy.repository.writer import generate_repository
from triton_deploy.tuning import TuneOptions
from triton_deploy.tuning.knobs import Candidate, Knob
from triton_deploy.tuning.results import CandidateRejected, Measurement, Point
from triton_deploy.tuning.run import _write_winner
from triton_deploy.tuning.search import SearchSettings, search
from triton_deploy.tuning.space import EnsembleConfigs, repo_flags


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune-space")
    export = make_export(root / "tiny")
    output = root / "repo"
    generate_repository([export], RepositoryOptions(output=output))
    return output


@pytest.fixture()
def own_repository(tiny_repository, tmp_path):
    """A copy the test may change."""
    shutil.copytree(tiny_repository, tmp_path / "repo")
    return tmp_path / "repo"


def quick(repository, tmp_path, **overrides) -> TuneOptions:
    settings = dict(repository=repository, model="tiny", p99_ms=1000.0, report_dir=tmp_path / "report")
    return TuneOptions(**(settings | overrides))


def test_knobs_start_from_the_repository_values(tiny_repository):
    configs = EnsembleConfigs.read(tiny_repository, "tiny")
    knobs = {k.name: k for k in configs.knobs(cpus=2)}
    assert knobs["tiny_classifier.instances"].values[0] == 2  # the generated default
    assert knobs["tiny_classifier.dynamic_batching"].values == (True, False)
    assert knobs["tiny_classifier.intra_op_threads"].values[0] == "auto"
    assert knobs["tiny_preprocess.instances"].values[0] == 1
    # The classifier's knobs come first: they move throughput most.
    assert next(iter(knobs)).startswith("tiny_classifier")


def test_a_candidate_renders_valid_configs_with_only_its_changes(tiny_repository):
    configs = EnsembleConfigs.read(tiny_repository, "tiny")
    knobs = configs.knobs(cpus=2)
    by_name = {k.name: k for k in knobs}
    candidate = Candidate().with_value(by_name["tiny_classifier.instances"], 1) \
        .with_value(by_name["tiny_classifier.dynamic_batching"], False) \
        .with_value(by_name["tiny_classifier.session_batch_size"], "4")
    texts = configs.render(candidate, knobs)
    classifier = text_format.Parse(texts["tiny_classifier"], model_config_pb2.ModelConfig())
    assert [g.count for g in classifier.instance_group] == [1]
    assert not classifier.HasField("dynamic_batching")
    assert classifier.parameters["session_batch_size"].string_value == "4"
    assert classifier.max_batch_size == 32  # never tuned: it is part of what clients may send
    assert texts["tiny_classifier"].startswith("# tiny_classifier")  # the generated header comment is kept
    start = configs.render(Candidate(), knobs)
    assert start["tiny_preprocess"] == texts["tiny_preprocess"]  # untouched steps render the same
    flags, unmatched = repo_flags(candidate, knobs)
    assert flags == ["--classifier-instances 1", "--session-batch-size 4"]
    assert unmatched == ["tiny_classifier.dynamic_batching=off"]


def test_an_unknown_model_names_the_ensembles_there(tiny_repository):
    from triton_deploy.errors import UsageError

    with pytest.raises(UsageError, match="no model 'tinyy'.*tiny_classifier"):
        EnsembleConfigs.read(tiny_repository, "tinyy")
    with pytest.raises(UsageError, match="not an ensemble"):
        EnsembleConfigs.read(tiny_repository, "tiny_classifier")


# ---- the strategy on a synthetic landscape ------------------------------------------------------------------------

KNOBS = [Knob("m", "instances", (2, 1, 3)), Knob("m", "dynamic_batching", (True, False)),
         Knob("m", "session_batch_size", ("8", "0", "4", "16")), Knob("p", "instances", (1, 2, 3))]


def landscape(candidate: Candidate) -> tuple[float, float]:
    """(images/s, p99 ms): best at m.instances=1, batching off, session batch 4; p.instances=3 is fast but slow p99."""
    values = {k.name: candidate.value(k) for k in KNOBS}
    throughput = 100.0
    throughput *= {2: 1.0, 1: 1.4, 3: 0.8}[values["m.instances"]]
    throughput *= 1.2 if values["m.dynamic_batching"] is False else 1.0
    throughput *= {"8": 1.0, "0": 0.9, "4": 1.1, "16": 0.95}[values["m.session_batch_size"]]
    throughput *= {1: 1.0, 2: 1.1, 3: 1.5}[values["p.instances"]]
    p99 = 40.0 if values["p.instances"] == 3 else 10.0
    return throughput, p99


def measuring(calls: list):
    def measure(candidate: Candidate, window_s: float) -> Measurement:
        calls.append(candidate)
        if candidate.value(KNOBS[2]) == "16" and candidate.value(KNOBS[0]) == 1:
            raise CandidateRejected("m: instance failed to start")
        images, p99 = landscape(candidate)
        return Measurement(tuple(Point(c, images * c ** 0.5, p99 / 2, p99, 0, 100) for c in (1, 8)), window_s)
    return measure


def test_search_finds_the_best_feasible_configuration_with_fewer_measurements_than_brute_force():
    calls: list[Candidate] = []
    settings = SearchSettings(concurrencies=(1, 8), p99_ms=20.0, budget_s=600.0, repeats=2)
    result = search(KNOBS, measuring(calls), settings)
    by_name = {k.name: k for k in KNOBS}
    assert result.winner.value(by_name["m.instances"]) == 1
    assert result.winner.value(by_name["m.dynamic_batching"]) is False
    assert result.winner.value(by_name["m.session_batch_size"]) == "4"
    assert result.winner.value(by_name["p.instances"]) == 2  # 3 is faster but breaks the p99 budget
    assert not result.lead_lost
    brute_force = len(list(itertools.product(*(k.values for k in KNOBS))))
    assert len(set(calls)) < brute_force / 2
    assert any(r.stage == "rejected" for r in result.records)  # a refused config is recorded, not fatal
    # The search ended early with the budget mostly left: the confirmation uses it, up to 4 x repeats rounds.
    assert len(result.confirm_start) == len(result.confirm_winner) == 8


def test_search_keeps_the_start_when_the_lead_does_not_hold_side_by_side():
    """A candidate that looks faster only while searching (noise) must not be written as the winner."""
    seen: dict[Candidate, int] = {}

    def fickle(candidate: Candidate, window_s: float) -> Measurement:
        seen[candidate] = seen.get(candidate, 0) + 1
        lucky = candidate != Candidate() and window_s < 5.0  # fast in search windows, slow in confirmation ones
        images = 150.0 if lucky else (100.0 if candidate == Candidate() else 90.0)
        return Measurement((Point(1, images, 1.0, 2.0, 0, 10),), window_s)

    settings = SearchSettings(concurrencies=(1,), p99_ms=20.0, budget_s=600.0, repeats=2, confirm_s=5.0)
    result = search(KNOBS[:1], fickle, settings)
    assert result.lead_lost and result.winner == Candidate()
    assert result.challenger is not None and result.challenger != Candidate()


def test_search_stops_within_its_budget():
    calls: list[Candidate] = []
    settings = SearchSettings(concurrencies=(1, 8), p99_ms=20.0, budget_s=10.0, screen_s=2.0, confirm_s=1.0,
                              repeats=1)
    result = search(KNOBS, measuring(calls), settings)
    assert result.stopped_by_budget
    # The budget left room for the start and the confirmation only.
    assert [r.stage for r in result.records] == ["screen", "confirm"]  # the start alone: nothing to compare


def test_in_place_keeps_each_replaced_config_beside_the_new_one(own_repository, tmp_path):
    configs = EnsembleConfigs.read(own_repository, "tiny")
    knobs = configs.knobs(cpus=2)
    instances = next(k for k in knobs if k.name == "tiny_postprocess.instances")
    before = (own_repository / "tiny_postprocess" / "config.pbtxt").read_text()
    _write_winner(configs, Candidate().with_value(instances, 2), knobs,
                  quick(own_repository, tmp_path, in_place=True))
    (kept,) = (own_repository / "tiny_postprocess").glob("config.pbtxt.before-tune-*")
    assert kept.read_text() == before
    written = text_format.Parse((own_repository / "tiny_postprocess" / "config.pbtxt").read_text(),
                                model_config_pb2.ModelConfig())
    assert written.instance_group[0].count == 2
    assert not list((own_repository / "tiny_preprocess").glob("config.pbtxt.before-tune-*"))  # unchanged: no copy


def test_tune_cli_checks_its_outputs_before_starting_a_server(own_repository, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["tune", str(own_repository), "--model", "tiny", "--p99-ms", "10", "--in-place",
                 "--report-dir", str(blocker / "report")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write" in err and "--report-dir" in err and "Traceback" not in err


def test_tune_cli_names_a_wrong_model_and_missing_destination(own_repository, tmp_path, capsys):
    assert main(["tune", str(own_repository), "--model", "tiny", "--p99-ms", "10"]) == 2
    assert "--output DIR or --in-place" in capsys.readouterr().err
    assert main(["tune", str(own_repository), "--model", "tinny", "--p99-ms", "10", "--in-place"]) == 2
    assert "no model 'tinny'" in capsys.readouterr().err


def test_work_directory_removes_what_killed_runs_left_and_its_own_on_exit(tmp_path):
    """A SIGKILLed tune cannot clean up: the next run removes work folders whose process is gone, never a live
    run's, and its own on the way out (an exception included)."""
    import subprocess
    import sys

    from triton_deploy.tuning.run import WORK_PREFIX, work_directory

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{WORK_PREFIX}{int(gone.stdout)}"
    (dead / "repository").mkdir(parents=True)
    live = tmp_path / f"{WORK_PREFIX}{os.getppid()}"  # a process that is running
    live.mkdir()
    with pytest.raises(RuntimeError), work_directory(tmp_path) as work:
        assert not dead.exists() and live.exists()
        assert work.parent == tmp_path and work.is_dir()
        raise RuntimeError("the search failed")
    assert not work.exists() and live.exists()


def test_work_directory_avoids_a_path_with_whitespace(tmp_path):
    """Python-backend stubs die in a repository whose path has a space (pitfalls): the copy goes to /tmp then."""
    from triton_deploy.tuning.run import work_directory

    with work_directory(tmp_path / "my reports") as work:
        assert not any(c.isspace() for c in str(work))
    assert not work.exists()


def noisy_measuring(faster: Knob, rng):
    """Windows off by a random factor (sd 15 %); turning ``faster`` off is really 40 % faster, nothing else matters."""
    def measure(candidate: Candidate, window_s: float) -> Measurement:
        gain = 1.4 if candidate.value(faster) is False else 1.0
        return Measurement((Point(8, 100.0 * gain * rng.lognormvariate(0, 0.15), 5.0, 10.0, 0, 100),), window_s)
    return measure


def test_search_on_a_noisy_machine_keeps_fewer_changes_that_do_nothing_than_two_pair_challenges():
    """Every window off by a random factor (sd 15 %, what a shared 2-core machine shows), one knob really 40 % faster
    and the others no different. Over 40 seeded runs, the default challenge (three pairs in alternating order, all
    won) finds the real gain about as often as two pairs won by 2.5 % (the rule before) and keeps a change that does
    nothing in a quarter fewer runs or less. (200 runs each: found 162 against 164, noise kept 71 against 104.)"""
    import random

    knobs = [Knob("m", "instances", (2, 1, 3)), Knob("m", "dynamic_batching", (True, False)),
             Knob("m", "session_batch_size", ("8", "0", "4", "16")), Knob("p", "instances", (1, 2, 3)),
             Knob("q", "instances", (1, 2, 3))]

    def rates(**challenge) -> tuple[int, int]:
        found, noise_kept = 0, 0
        for seed in range(40):
            settings = SearchSettings(concurrencies=(8,), p99_ms=50.0, budget_s=600.0, repeats=3, **challenge)
            changes = dict(search(knobs, noisy_measuring(knobs[1], random.Random(seed)), settings).winner.changes)
            found += changes.get("m.dynamic_batching") is False
            noise_kept += bool(set(changes) - {"m.dynamic_batching"})
        return found, noise_kept

    found, noise_kept = rates()
    found_before, noise_kept_before = rates(challenge_pairs=2, challenge_margin=0.025)
    assert found >= found_before - 2 and found >= 28, (found, found_before)
    assert noise_kept <= 0.75 * noise_kept_before, (noise_kept, noise_kept_before)


def test_the_default_window_grows_with_the_budget_per_concurrency():
    from triton_deploy.tuning.options import auto_window

    assert auto_window(600, 1) == 5.0  # ten minutes at one concurrency: the longest window
    assert auto_window(600, 4) == 2.5
    assert auto_window(60, 4) == 2.0  # never below the old default
