"""Locust load tests against the real local Triton server: reports, server-side view, SLO gate, shapes, sweeps.

Every run is a real headless Locust subprocess driving the digits ensemble; no figure is asserted as a timing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import socket
import urllib.request

import psutil
import pytest
from PIL import Image

from triton_deploy.errors import UsageError
from triton_deploy.loadtests import server_stats
from triton_deploy.loadtests.payloads import PoolOptions, load_pool, pool_from_digits
from triton_deploy.loadtests.runner import (
    LoadTestOptions,
    parse_duration,
    results_line,
    run_loadtest,
    shape_line,
    summary_table,
)
from triton_deploy.loadtests.slo import SLO, SLOViolation
from triton_deploy.server import free_ports

REPORT_FILES = {"report.html", "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "locust_window.json",
                "summary.json", "throughput.png", "latency.png", "server.md"}
MEMBERS = ("digits", "digits_preprocess", "digits_classifier", "digits_postprocess")


def _options(server, tmp_path, protocol="http", **overrides) -> LoadTestOptions:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    values = dict(output=tmp_path, url=url, metrics_url=server.metrics_url, protocol=protocol, users=3,
                  duration_s=4, image_sizes=(64, 96), image_formats=("PNG", "JPEG"), pool_size=16)
    return LoadTestOptions(**(values | overrides))


# ---- pure parts ----------------------------------------------------------------------------------------------


def test_digit_pool_mixes_sizes_and_formats_as_real_encoded_images():
    pool = pool_from_digits(PoolOptions(count=8, sizes=(32, 224), formats=("PNG", "JPEG")))
    seen = {(Image.open(io.BytesIO(data)).size, Image.open(io.BytesIO(data)).format) for data in pool.images}
    assert seen == {((32, 32), "PNG"), ((224, 224), "PNG"), ((32, 32), "JPEG"), ((224, 224), "JPEG")}
    tensor = pool.tensor(5)
    assert tensor.shape == (5, 1) and all(isinstance(item, bytes) for item in tensor[:, 0])


def test_image_folder_pool_reads_images_and_rejects_an_empty_folder(tmp_path):
    with pytest.raises(UsageError, match="holds no images.*--image-dir"):
        load_pool(PoolOptions(image_dir=tmp_path))
    Image.new("RGB", (10, 12)).save(tmp_path / "a.png")
    assert len(load_pool(PoolOptions(image_dir=tmp_path))) == 1


def test_unknown_image_format_names_the_flag():
    with pytest.raises(UsageError, match="unknown image format 'TIFFY'.*--image-formats"):
        pool_from_digits(PoolOptions(formats=("TIFFY",)))


def test_slo_names_each_broken_objective():
    slo = SLO(p95_ms=10, p99_ms=20, error_rate=0.01)
    assert slo.violations(5, 15, 0.0, requests=100) == []
    broken = slo.violations(11, 25, 0.5, requests=100)
    assert [line.split()[0] for line in broken] == ["p95", "p99", "error"]
    assert "--slo-p99-ms" in broken[1]
    assert SLO(error_rate=None).violations(1e9, 1e9, 1.0, requests=0) == []  # no objectives, nothing to break
    # Without flags, a run whose requests mostly failed still breaks the default error-rate objective.
    assert SLO().violations(1e9, 1e9, 0.9, requests=100) == ["error rate 90.00% > 1.00% (--slo-error-rate)"]
    assert SLO().violations(1e9, 1e9, 0.005, requests=1000) == []
    assert slo.violations(0, 0, 0, requests=0) == ["no requests completed, so no objective can be met"]


@pytest.mark.parametrize("bad", [dict(p95_ms=0), dict(error_rate=2.0)])
def test_slo_rejects_meaningless_thresholds(bad):
    with pytest.raises(UsageError, match="--slo-"):
        SLO(**bad)


def test_durations_read_like_locust_run_times():
    assert parse_duration("30s") == 30 and parse_duration("2m") == 120 and parse_duration("1m30s") == 90
    assert parse_duration("45") == 45
    with pytest.raises(UsageError, match="--duration"):
        parse_duration("soon")


def test_loadtest_without_a_target_or_with_a_bad_url_names_the_flag(tmp_path):
    with pytest.raises(UsageError, match="--url HOST:PORT or --repository"):
        run_loadtest(LoadTestOptions(output=tmp_path))
    with pytest.raises(UsageError, match="not HOST:PORT"):
        run_loadtest(LoadTestOptions(output=tmp_path, url="localhost"))
    with pytest.raises(UsageError, match="--shape or --sweep"):
        run_loadtest(LoadTestOptions(output=tmp_path, url="127.0.0.1:1", shape="step", sweep=(1, 2)))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match="cannot write --output .*file.txt is a file, not a directory"):
        run_loadtest(LoadTestOptions(output=tmp_path / "file.txt" / "results", url="127.0.0.1:1"))


def test_results_line_points_into_the_level_folders_of_a_sweep(tmp_path):
    one = results_line({"runs": [{"users": 8}]}, tmp_path)
    assert one.startswith(f"Results in {tmp_path} (") and "report.html" in one
    sweep = results_line({"runs": [{"users": 1}, {"users": 4}]}, tmp_path)
    assert "summary.json and sweep.png, and per level in users-1/, users-4/ (report.html" in sweep


# ---- against the live server ---------------------------------------------------------------------------------


def test_throughput_over_time_comes_from_the_counts_not_locusts_lagging_average(tmp_path):
    from triton_deploy.loadtests import plots

    header = ("Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,95%,99%,Total Request Count,"
              "Total Failure Count\n")
    # Steady 100 requests/s from the first second, an outage (all failures) at t=3, while Locust's own
    # Requests/s column still ramps up slowly.
    counts = [(0, 0), (100, 0), (200, 0), (300, 100), (400, 100)]
    rows = [f"{1000 + t},4,,Aggregated,{10 * t},0,5,9,12,{total},{failed}\n" for t, (total, failed) in enumerate(counts)]
    rows.insert(2, "1001,4,grpc,digits batch 1,0,0,5,9,12,100,0\n")  # per-name rows are not the total
    path = tmp_path / "history.csv"
    path.write_text(header + "".join(rows))
    history = plots.read_history(path)
    # Failed requests are not throughput: the outage second answers nothing.
    assert [h["rps"] for h in history] == [0.0, 100.0, 100.0, 0.0, 100.0]
    assert [h["fps"] for h in history] == [0.0, 0.0, 0.0, 100.0, 0.0]
    assert [h["rps"] for h in plots.read_history(path, window_s=3)] == [0.0, None, None, pytest.approx(200 / 3),
                                                                        pytest.approx(200 / 3)]
    assert all(p.stat().st_size > 0 for p in plots.plot_timeline(history, tmp_path, "test"))


def test_throughput_line_ends_at_the_last_full_interval_and_whole_second_stamps_draw_no_false_drops(tmp_path):
    from triton_deploy.loadtests import plots

    header = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,95%,99%,Total Request Count,Total Failure Count\n"
    # A steady 240 requests/s; Locust writes a row every 1.03 s stamped with the whole second, the load stops at
    # 20.5 s and two more rows are written while it shuts down (the second-last with a part of an interval).
    start, stop, rows, t = 1_700_000_000.4, 20.5, [], 0.0
    while t < stop + 2:
        rows.append(f"{int(start + t)},4,,Aggregated,0,0,5,9,12,{int(240 * min(t, stop))},0\n")
        t += 1.03
    path = tmp_path / "history.csv"
    path.write_text(header + "".join(rows))
    stamps = [int(r.split(",")[0]) for r in rows]
    assert 2 in {b - a for a, b in zip(stamps, stamps[1:])}  # the stamps alone read one 1.03 s gap as 2 s: half the rate
    history = plots.read_history(path, last_request=start + stop)
    assert history[-1]["t"] <= stop and len(history) == len(rows) - 2
    assert all(h["rps"] == pytest.approx(240, rel=0.06) for h in history[1:])
    assert all(p.stat().st_size > 0 for p in plots.plot_timeline(history, tmp_path, "test"))


def test_server_view_counts_from_zero_after_a_restart_reset_the_counters():
    before = {"m": server_stats.ModelTimes("m", requests=1000, inferences=1000, executions=500, queue_us=9000),
              "m_classifier": server_stats.ModelTimes("m_classifier", requests=1000)}
    after = {"m": server_stats.ModelTimes("m", requests=40, inferences=40, executions=20, queue_us=300),
             "m_classifier": server_stats.ModelTimes("m_classifier", requests=1040)}
    assert server_stats.counters_reset(before, after) == ["m"]
    per_model = server_stats.delta(before, after, prefix="m")
    # The restarted model counts what it served since the restart; the other one the plain difference.
    assert per_model["m"] == after["m"] and per_model["m_classifier"].requests == 40
    assert all(value >= 0 for t in per_model.values() for value in t.summary().values() if isinstance(value, float))
    assert server_stats.counters_reset(before, before) == []


@pytest.mark.slow
@pytest.mark.server
def test_metrics_parser_reads_every_model_of_the_ensemble_from_the_live_server(triton_server):
    with urllib.request.urlopen(triton_server.metrics_url) as response:
        text = response.read().decode()
    parsed = server_stats.parse_metrics(text)
    assert set(MEMBERS) <= set(parsed)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_headless_locust_run_has_no_failures_and_writes_every_report(triton_server, tmp_path, protocol):
    result = run_loadtest(_options(triton_server, tmp_path, protocol, batch_size=2, top_k=3))
    run = result.summary["runs"][0]
    assert run["requests"] > 0 and run["failures"] == 0
    assert REPORT_FILES <= set(result.summary["files"])
    assert all((result.directory / name).stat().st_size > 0 for name in REPORT_FILES - {"locust_failures.csv"})
    assert result.directory.name.startswith("loadtest-") and result.directory.parent == tmp_path
    with open(result.directory / "locust_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert rows["digits batch 2"]["Type"] == protocol
    assert int(rows["digits batch 2"]["Request Count"]) == run["requests"]
    # Triton's view of the same run: every model served it, two images per ensemble request.
    server = run["server"]
    assert set(server) == set(MEMBERS)
    assert server["digits"]["inferences"] == 2 * server["digits"]["requests"]
    assert server["digits_classifier"]["average_batch"] >= 2
    assert run["client_cpu_ms_per_request"] > 0
    assert json.loads((result.directory / "summary.json").read_text())["passed"] is True
    report = (result.directory / "server.md").read_text()
    assert report.startswith(f"# Triton's view of the run: digits over {protocol}, 3 users, ")
    assert "- avg batch: images per execution" in report and "- queue ms: per request" in report


@pytest.mark.slow
@pytest.mark.server
def test_slo_gate_fails_on_an_impossible_threshold_and_says_which(triton_server, tmp_path):
    from triton_deploy.cli import main

    code = main(["loadtest", "--url", triton_server.grpc_url, "--metrics-url", triton_server.metrics_url,
                 "--protocol", "grpc", "--users", "2", "--duration", "3s", "--slo-p95-ms", "0.001",
                 "--slo-error-rate", "0.5", "--output", str(tmp_path), "--quiet"])
    assert code == SLOViolation.exit_code
    summary = json.loads(next(tmp_path.glob("loadtest-*/summary.json")).read_text())
    run = summary["runs"][0]
    assert summary["passed"] is False
    assert len(run["slo_violations"]) == 1 and run["slo_violations"][0].startswith("p95 latency")
    assert run["locust_exit_code"] == 3  # the locustfile's own gate broke the Locust run too


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("target, code", [("nothing listening", 30), ("unknown model", 31),
                                          ("HTTP on the gRPC port", 30), ("more answers than the model gives", 33)])
def test_loadtest_checks_the_server_first_with_the_words_and_codes_of_classify(triton_server, tmp_path, target, code,
                                                                               capsys):
    from triton_deploy.cli import main

    (closed_port,) = free_ports(1)
    url, protocol, model, top_k = {
        "nothing listening": (f"127.0.0.1:{closed_port}", "http", "digits", "1"),
        "unknown model": (triton_server.http_url, "http", "nope", "1"),
        "HTTP on the gRPC port": (triton_server.grpc_url, "http", "digits", "1"),
        "more answers than the model gives": (triton_server.http_url, "http", "digits", "50")}[target]
    common = ["--url", url, "--protocol", protocol, "--model", model, "--top-k", top_k]
    assert main(["loadtest", *common, "--users", "2", "--duration", "30s", "--output", str(tmp_path / "out"),
                 "--quiet"]) == code
    said = capsys.readouterr().err.strip().split("error: ", 1)[1]
    assert not (tmp_path / "out").exists()  # refused before a folder was made or Locust started
    image = tmp_path / "one.png"
    Image.new("L", (28, 28)).save(image)
    assert main(["classify", *common, str(image), "--quiet"]) == code
    assert capsys.readouterr().err.strip().split("error: ", 1)[1] == said


@pytest.mark.slow
@pytest.mark.server
def test_slo_gate_passes_on_a_loose_threshold(triton_server, tmp_path):
    result = run_loadtest(_options(triton_server, tmp_path, users=2, duration_s=3,
                                   slo=SLO(p95_ms=60_000, p99_ms=60_000, error_rate=0.5)))
    assert result.summary["passed"] is True and result.violations == []
    assert result.summary["runs"][0]["locust_exit_code"] == 0


@pytest.mark.slow
@pytest.mark.server
def test_sweep_with_master_and_workers_writes_one_run_per_level_and_a_sweep_plot(triton_server, tmp_path):
    # Another run's master on Locust's default port 5557 (held here while it is free) must not be in the way.
    with contextlib.ExitStack() as stack:
        other_master = stack.enter_context(socket.socket())
        with contextlib.suppress(OSError):
            other_master.bind(("127.0.0.1", 5557))
            other_master.listen()
        result = run_loadtest(_options(triton_server, tmp_path, "grpc", sweep=(1, 4), duration_s=3, processes=2))
    runs = result.summary["runs"]
    assert [r["users"] for r in runs] == [1, 4]
    assert all(r["failures"] == 0 and r["requests"] > 0 for r in runs)
    # Each level's length runs from its start to its last request, not from when the workers were forked (Locust's
    # own Requests/s divided a 3 s level's requests by 16 s on a busy machine).
    assert all(2 <= r["duration_s"] <= 5 for r in runs), [r["duration_s"] for r in runs]
    assert (result.directory / "sweep.png").stat().st_size > 0
    for users in (1, 4):
        assert (result.directory / f"users-{users}" / "report.html").exists()
    command = (result.directory / "users-4" / "command.txt").read_text()
    assert "--processes 2" in command
    # Master and workers are all gone: none outlives the run (a gRPC worker can hang at exit; the runner ends it).
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(result.directory) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


@pytest.mark.slow
@pytest.mark.server
def test_step_shape_raises_the_user_count_step_by_step_and_reports_what_ran(triton_server, tmp_path):
    result = run_loadtest(_options(triton_server, tmp_path, shape="step", users=4, duration_s=4,
                                   shape_args={"steps": "2"}))
    with open(result.directory / "locust_stats_history.csv", newline="") as f:
        users = {int(row["User Count"]) for row in csv.DictReader(f) if row["Name"] == "Aggregated"}
    assert {2, 4} <= users and max(users) == 4
    summary = json.loads((result.directory / "summary.json").read_text())
    run = summary["runs"][0]
    assert run["failures"] == 0
    # The shape fitted --users (its peak) and --duration (its length), and the report says so, stage by stage.
    assert run["users"] == 4 and run["stage_users"] == [2, 4] and summary["duration_s"] == 4
    assert 3 <= run["duration_s"] <= 6, run["duration_s"]  # measured by Locust: first to last request
    assert summary["shape"]["note"] == "--shape step runs 4 s, peak 4 users: 2 (2 s) -> 4 (2 s); peak = --users, " \
                                       "length = --duration"
    assert "| 2 -> 4 |" in summary_table(summary)


def test_a_shape_fits_users_and_duration_unless_its_own_options_replace_them():
    plan = LoadTestOptions(url="h:1", shape="step", users=8, duration_s=20).shape_plan()
    assert (plan.duration_s, plan.stage_users) == (20, [2, 4, 6, 8])  # was 40 s of 4 -> 16 users whatever was asked
    spike = LoadTestOptions(url="h:1", shape="spike", users=24, duration_s=30).shape_plan()
    assert [(s.start_s, s.users) for s in spike.stages] == [(0, 3), (10, 24), (20, 3)] and spike.duration_s == 30
    options = LoadTestOptions(url="h:1", shape="step", users=8, duration_s=20,
                              shape_args={"step-users": "3", "step-seconds": "10"})
    plan = options.shape_plan()
    assert (plan.duration_s, plan.stage_users) == (20, [3, 6])
    assert shape_line(plan, options).endswith("it replaces --users 8")
    options = LoadTestOptions(url="h:1", shape="step", shape_args={"steps": "4", "step-seconds": "10"}, duration_s=20)
    assert shape_line(options.shape_plan(), options).endswith("it replaces --duration 20s")
    with pytest.raises(UsageError, match="--shape spike has no option steps"):
        LoadTestOptions(url="h:1", shape="spike", shape_args={"steps": "3"}).check()
