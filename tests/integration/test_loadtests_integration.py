"""Locust load tests against the real local Triton server: reports, server-side view, SLO gate, shapes, sweeps.
(Their pure parts are in tests/unit/test_loadtests.py.)

Every run is a real headless Locust subprocess driving the digits ensemble; no figure is asserted as a timing.
"""

from __future__ import annotations

import contextlib
import csv
import json
import socket
import urllib.request

import psutil
import pytest

from triton_deploy import metrics
from triton_deploy.loadtests.runner import (
    LoadTestOptions,
    run_loadtest,
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


@pytest.mark.slow
@pytest.mark.server
def test_metrics_parser_reads_every_model_of_the_ensemble_from_the_live_server(triton_server):
    with urllib.request.urlopen(triton_server.metrics_url) as response:
        text = response.read().decode()
    parsed = metrics.parse_metrics(text)
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
@pytest.mark.parametrize("target", ["nothing listening", "unknown model"])
def test_a_run_whose_requests_fail_fails_without_slo_flags_and_counts_no_throughput(triton_server, tmp_path, target,
                                                                                   capsys):
    from triton_deploy.cli import main

    (closed_port,) = free_ports(1)
    url, model = (f"127.0.0.1:{closed_port}", "digits") if target == "nothing listening" else \
        (triton_server.http_url, "nope")
    code = main(["loadtest", "--url", url, "--model", model, "--metrics-url", triton_server.metrics_url,
                 "--users", "2", "--duration", "2s", "--output", str(tmp_path), "--quiet"])
    assert code == SLOViolation.exit_code
    assert "error rate 100.00% > 1.00% (--slo-error-rate); most frequent failure:" in capsys.readouterr().err
    summary = json.loads(next(tmp_path.glob("loadtest-*/summary.json")).read_text())
    run = summary["runs"][0]
    assert summary["passed"] is False and run["requests"] == run["failures"] > 0
    assert run["requests_per_s"] == run["images_per_s"] == 0 and run["failures_per_s"] > 0
    assert ("Connection refused" if target == "nothing listening" else "unknown model") in run["top_failure"]


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
