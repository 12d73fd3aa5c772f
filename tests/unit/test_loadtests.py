"""Load tests without a server: image pools, SLO rules, durations, report lines, the server-side view's arithmetic
and load shapes. The real headless Locust runs are in tests/integration/test_loadtests_integration.py."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from triton_deploy import metrics
from triton_deploy.errors import UsageError
from triton_deploy.loadtests.payloads import PoolOptions, load_pool, pool_from_digits
from triton_deploy.loadtests.runner import (
    LoadTestOptions,
    parse_duration,
    results_line,
    run_loadtest,
    shape_line,
)
from triton_deploy.loadtests.slo import SLO


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
        SLO(**bad).check()


def test_load_test_options_report_every_problem_at_once(tmp_path):
    options = LoadTestOptions(output=tmp_path, url="nowhere", protocol="smtp", users=0, duration_s=0.5,
                              slo=SLO(p99_ms=-1))
    with pytest.raises(UsageError) as caught:
        options.check()
    message = str(caught.value)
    for part in ("--url 'nowhere' is not HOST:PORT", "unknown protocol 'smtp'", "--users must be at least 1",
                 "--duration must be at least 1 s", "--slo-p99-ms must be a positive number"):
        assert part in message


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


def test_results_line_points_into_the_level_folders_of_a_sweep(tmp_path):
    one = results_line({"runs": [{"users": 8}]}, tmp_path)
    assert one.startswith(f"Results in {tmp_path} (") and "report.html" in one
    sweep = results_line({"runs": [{"users": 1}, {"users": 4}]}, tmp_path)
    assert "summary.json and sweep.png, and per level in users-1/, users-4/ (report.html" in sweep


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


def test_server_view_counts_from_zero_after_a_restart_reset_the_counters():
    before = {"m": metrics.ModelTimes("m", requests=1000, inferences=1000, executions=500, queue_us=9000),
              "m_classifier": metrics.ModelTimes("m_classifier", requests=1000)}
    after = {"m": metrics.ModelTimes("m", requests=40, inferences=40, executions=20, queue_us=300),
             "m_classifier": metrics.ModelTimes("m_classifier", requests=1040)}
    assert metrics.counters_reset(before, after) == ["m"]
    per_model = metrics.delta(before, after, prefix="m")
    # The restarted model counts what it served since the restart; the other one the plain difference.
    assert per_model["m"] == after["m"] and per_model["m_classifier"].requests == 40
    assert all(value >= 0 for t in per_model.values() for value in t.summary().values() if isinstance(value, float))
    assert metrics.counters_reset(before, before) == []


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


def test_metrics_scraping_lives_in_the_core_package_and_the_old_name_still_imports():
    from triton_deploy.loadtests import server_stats
    from triton_deploy.monitoring import monitor

    assert server_stats.ModelTimes is metrics.ModelTimes and server_stats.delta is metrics.delta
    assert set(server_stats.__all__) <= set(vars(metrics))
    assert monitor.server_stats is metrics  # the monitor reads Triton's metrics with the same code as the load tests
