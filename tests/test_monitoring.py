"""Prediction monitoring: the numpy math the python steps report with, the reference the export records, the
repository parameters that switch the metrics on, the metrics a live Triton serves, and ``triton-deploy monitor``.
The end-to-end test with a real Prometheus is tests/helm/test_monitoring_e2e.py."""

from __future__ import annotations

import io
import json
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from triton_deploy.errors import ManifestError, UsageError
from triton_deploy.monitoring import model_metrics as mm
from triton_deploy.monitoring.monitor import MonitorOptions, Scrape, histogram_quantile, take_snapshot
from triton_deploy.preprocessing import ImageTransform
from triton_deploy.spec import Manifest, Reference

# ---- the math -----------------------------------------------------------------------------------------------------


def test_js_distance_is_zero_for_equal_one_for_disjoint_and_symmetric():
    assert mm.js_distance([5, 5, 0], [0.5, 0.5, 0.0]) == pytest.approx(0.0, abs=1e-9)
    assert mm.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]
    assert mm.js_distance(p, q) == pytest.approx(mm.js_distance(q, p))
    # One class only against ten balanced ones: what the drift alert's threshold (0.3) is set against.
    assert 0.85 < mm.js_distance(np.eye(10)[1], np.full(10, 0.1)) < 0.9
    assert np.isnan(mm.js_distance([0, 0], [0.5, 0.5]))


def test_bucket_index_puts_a_bound_in_its_own_bucket_like_prometheus_le():
    bounds = (0.2, 0.5, 1.0)
    assert mm.bucket_index(np.array([0.0, 0.2, 0.21, 0.5, 1.0, 1.5]), bounds).tolist() == [0, 0, 1, 1, 2, 2]


def test_histogram_quantile_interpolates_inside_the_bucket_like_promql():
    buckets = {0.5: 2.0, 1.0: 4.0, float("inf"): 4.0}  # cumulative, as Prometheus stores le buckets
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.75)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.25)
    assert histogram_quantile(0.5, {1.0: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.9, {0.5: 1.0, float("inf"): 4.0}) == 0.5  # in +Inf: the highest finite bound


def test_series_names_spell_histograms_as_prometheus_stores_them():
    assert f"{mm.CONFIDENCE}_bucket" in mm.SERIES and f"{mm.IMAGE_PIXELS}_count" in mm.SERIES
    assert mm.CONFIDENCE not in mm.SERIES and mm.PREDICTIONS in mm.SERIES
    counters = [name for name in mm.SERIES if name.endswith("_total")]
    assert counters and all(name not in mm.HISTOGRAMS for name in counters)


def test_top_two_gives_class_confidence_and_margin_per_row():
    probabilities = np.array([[0.1, 0.7, 0.2], [0.4, 0.4, 0.2]], dtype=np.float32)
    classes, confidence, margin = mm.top_two(probabilities)
    assert classes.tolist() == [1, 0]
    assert confidence.tolist() == pytest.approx([0.7, 0.4])
    assert margin.tolist() == pytest.approx([0.5, 0.0])


def test_prediction_window_counts_exactly_the_last_predictions():
    rng = np.random.default_rng(0)
    window = mm.PredictionWindow(size=50, num_classes=4, num_buckets=3)
    history_classes, history_buckets = [], []
    for batch in [1, 7, 30, 49, 3, 120, 1, 16]:  # batches smaller, equal and larger than the window
        classes, buckets = rng.integers(0, 4, batch), rng.integers(0, 3, batch)
        window.add(classes, buckets)
        history_classes.extend(classes)
        history_buckets.extend(buckets)
        assert window.filled == min(50, len(history_classes))
        assert window.class_counts.tolist() == np.bincount(history_classes[-50:], minlength=4).tolist()
        assert window.bucket_counts.tolist() == np.bincount(history_buckets[-50:], minlength=3).tolist()


def test_drift_is_nan_until_the_window_holds_its_minimum_then_tracks_the_traffic():
    reference = {"class_ratios": [0.5, 0.5], "confidence_ratios": [0.0, 1.0]}
    window = mm.PredictionWindow(size=100, num_classes=2, num_buckets=2)
    window.add(np.array([0, 1] * 20), np.ones(40, dtype=np.int64))
    assert all(np.isnan(score) for score in window.drift(reference, min_predictions=50))
    window.add(np.array([0, 1] * 30), np.ones(60, dtype=np.int64))
    assert window.drift(reference, min_predictions=50) == pytest.approx((0.0, 0.0), abs=1e-9)
    window.add(np.zeros(100, dtype=np.int64), np.zeros(100, dtype=np.int64))  # one class, low confidence
    class_drift, confidence_drift = window.drift(reference, min_predictions=50)
    assert class_drift > 0.5 and confidence_drift == pytest.approx(1.0)


def test_reference_records_class_and_confidence_shares():
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45], [0.98, 0.02]])
    reference = mm.reference_distributions(probabilities)
    assert reference["samples"] == 4
    assert reference["class_ratios"] == [0.75, 0.25]
    assert reference["confidence_buckets"] == list(mm.CONFIDENCE_BUCKETS)
    # 0.55 -> (0.4, 0.6]; 0.7 -> (0.6, 0.8]; 0.9 -> (0.8, 0.9]; 0.98 -> (0.95, 0.99]
    assert reference["confidence_ratios"] == [0.0, 0.0, 0.25, 0.25, 0.25, 0.0, 0.25, 0.0]
    assert Reference.from_dict(reference).class_ratios == (0.75, 0.25)


def test_metric_buffer_summarises_every_queued_batch_exactly_once_off_the_caller_thread():
    import threading

    seen, threads = [], set()

    def summarise(items):
        threads.add(threading.get_ident())
        seen.extend(items)

    buffer = mm.MetricBuffer(summarise, period_s=0.01)
    for batch in range(500):
        buffer.put(batch)
        if batch % 100 == 0:
            time.sleep(0.03)  # let the thread run a few rounds in between
    buffer.close()
    assert seen == list(range(500))
    assert threading.get_ident() not in threads or len(threads) > 1  # rounds ran in the buffer's thread
    buffer.flush()  # nothing left: summarise is not called with an empty list
    assert seen == list(range(500))


def test_warmup_executions_count_each_sample_once_or_its_count():
    assert mm.warmup_executions({}) == 0
    assert mm.warmup_executions({"model_warmup": [{"name": "a", "count": 0}, {"name": "b", "count": 3}]}) == 4


# ---- what the preprocess step reports per image --------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)  # compresses poorly
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeRequest:
    """What the python models read of a request here: its parameters, as Triton's JSON string."""

    def __init__(self, parameters: dict) -> None:
        self.text = json.dumps(parameters)

    def parameters(self) -> str:
        return self.text


def test_observe_all_observes_each_finite_value_once():
    class Histogram:
        def __init__(self) -> None:
            self.values: list[float] = []

        def observe(self, value: float) -> None:
            self.values.append(value)

    histogram = Histogram()
    mm.observe_all(histogram, np.array([0.5, np.nan, 1.0, np.inf, 0.25], dtype=np.float32))
    mm.observe_all(histogram, [])
    assert histogram.values == [0.5, 1.0, 0.25]


def test_traffic_rows_leave_out_the_rows_of_requests_marked_as_tooling():
    traffic, probe = FakeRequest({}), FakeRequest({mm.TOOLING_PARAMETER: "label-probe"})
    assert mm.traffic_rows([traffic, FakeRequest({"priority": 1})], [2, 3]) is None  # the usual case: no mask
    assert mm.traffic_rows([traffic, probe, traffic], [2, 3, 1]).tolist() == [True, True, False, False, False, True]
    assert not mm.traffic_rows([probe], [4]).any()


def test_preprocess_batch_reports_format_size_and_failure_reason_per_image():
    transform = ImageTransform(height=8, width=8, color_mode="L", max_pixels=10_000, max_bytes=100_000)
    good, jpeg = png(40, 20), io.BytesIO()
    Image.new("RGB", (16, 16)).save(jpeg, format="JPEG")
    images = [good, b"", b"plain text", good[: len(good) // 2], png(200, 200), b"\x00" * 100_001, jpeg.getvalue()]
    batch = transform.preprocess_batch(images)
    assert batch.ok == [0, 6] and batch.tensor.shape == (2, 8, 8, 1)
    assert batch.reasons == ["", "empty", "not_an_image", "truncated", "too_many_pixels", "too_many_bytes", ""]
    assert batch.formats == ["png", "unknown", "unknown", "png", "png", "unknown", "jpeg"]
    assert batch.pixels == [800, 0, 0, 0, 0, 0, 256]
    assert batch.encodings == ["binary"] * 7
    # The plain API is unchanged: same tensor, same indices and messages.
    tensor, ok, errors = transform.preprocess(images)
    assert ok == batch.ok and errors == batch.errors and np.array_equal(tensor, batch.tensor)


# ---- manifest and repository -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_manifest_without_reference_still_reads_and_a_wrong_reference_is_named(digits_export, tmp_path):
    import shutil

    data = json.loads((digits_export / "manifest.json").read_text())
    assert Manifest.read(digits_export).reference.samples == data["reference"]["samples"] > 0
    older = tmp_path / "older"
    shutil.copytree(digits_export, older)
    del data["reference"]
    (older / "manifest.json").write_text(json.dumps(data))
    assert Manifest.read(older).reference is None
    data["reference"] = {"samples": 3, "class_ratios": [1.0], "confidence_buckets": [1.0], "confidence_ratios": [1.0]}
    (older / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="1 class ratios for 10 labels"):
        Manifest.read(older)


@pytest.mark.slow
def test_repository_carries_the_reference_and_the_monitoring_parameters(digits_export, tmp_path):
    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.validate import parse_config
    from triton_deploy.repository.writer import generate_repository

    generate_repository([digits_export], RepositoryOptions(output=tmp_path / "on", low_confidence=0.7,
                                                           drift_window=300, drift_min_predictions=50))
    post = tmp_path / "on" / "digits_postprocess"
    assert json.loads((post / "reference.json").read_text()) == Manifest.read(digits_export).reference.to_dict()
    assert (post / "1" / "model_metrics.py").is_file() and (tmp_path / "on" / "digits_preprocess" / "1" /
                                                             "model_metrics.py").is_file()
    parameters = {k: v.string_value for k, v in parse_config((post / "config.pbtxt").read_text(), "p").parameters.items()}
    assert parameters | {"top_k": "", "output_kind": "", "labels_file": ""} == {
        "top_k": "", "output_kind": "", "labels_file": "", "monitoring": "true", "ensemble": "digits",
        "model_version": "1", "low_confidence_threshold": "0.7", "reference_file": "reference.json",
        "drift_window": "300", "drift_min_predictions": "50"}

    generate_repository([digits_export], RepositoryOptions(output=tmp_path / "off", monitoring=False))
    off = parse_config((tmp_path / "off" / "digits_postprocess" / "config.pbtxt").read_text(), "p").parameters
    assert off["monitoring"].string_value == "false" and "reference_file" not in off


@pytest.mark.parametrize(("options", "flag"), [({"low_confidence": 1.5}, "--low-confidence"),
                                                ({"drift_window": 10, "drift_min_predictions": 20}, "--drift-window")])
def test_bad_monitoring_options_name_their_flag(options, flag):
    from triton_deploy.repository.render import RepositoryOptions

    with pytest.raises(UsageError, match=flag):
        RepositoryOptions(**options).check()


# ---- a live server and `triton-deploy monitor` -------------------------------------------------------------------


def send(server, images: list[bytes]) -> list[int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("IMAGE", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    return client.infer("digits", [tensor]).as_numpy("CLASS_IDS")[:, 0].tolist()


@pytest.mark.slow
@pytest.mark.server
def test_monitor_snapshot_counts_what_the_server_answered(triton_server, heldout_digits):
    from conftest import encode_digit

    images, _ = heldout_digits
    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url
    before = Scrape.read(url)
    answered = send(triton_server, [encode_digit(pixels) for pixels in images[:30]])
    deadline = time.monotonic() + 10  # each model sends its counts every 0.5 s, on its own clock
    while True:
        snapshot = take_snapshot(before, Scrape.read(url), url, model="digits")
        view = snapshot.ensembles["digits"]
        predicted = sum(v["predictions"] for v in view["classes"].values())  # postprocess's counts
        decoded = sum(view["images_by_format"].values())  # preprocess's counts, flushed independently
        if (predicted >= len(answered) and decoded >= len(answered)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {k: v["predictions"] for k, v in view["classes"].items() if v["predictions"]} == {
        str(k): float(answered.count(k)) for k in set(answered)}
    assert sum(v["reference_share"] for v in view["classes"].values()) == pytest.approx(1.0, abs=1e-3)
    assert view["images_by_format"] == {"png": 30.0} and view["images_by_encoding"] == {"binary": 30.0}
    # The confidence histogram counted every prediction; its median (as histogram_quantile computes it) is a
    # probability.
    assert view["confidence_buckets"]["+Inf"] == 30.0
    assert 0.0 < view["median_confidence"] <= 1.0
    assert set(snapshot.models) == {"digits", "digits_preprocess", "digits_classifier", "digits_postprocess"}
    assert snapshot.models["digits"]["images_per_s"] > 0
    assert snapshot.to_dict()["ensembles"]["digits"]["classes"]  # serialisable for --json


@pytest.mark.slow
@pytest.mark.server
def test_monitor_explains_a_repository_without_monitoring_in_one_line(triton_server):
    """The same server's metrics without the custom ones are what a repository without monitoring serves."""
    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url
    with urllib.request.urlopen(url, timeout=5) as response:
        text = "\n".join(line for line in response.read().decode().splitlines() if "triton_classifier_" not in line)
    from triton_deploy.loadtests import server_stats

    scrape = Scrape(0.0, server_stats.parse_metrics(text), server_stats.parse_samples(text))
    snapshot = take_snapshot(scrape, scrape, url)
    assert snapshot.ensembles == {}
    (note,) = snapshot.notes
    assert note.startswith("digits: no prediction metrics") and "without monitoring" in note and "\n" not in note


@pytest.mark.slow
@pytest.mark.server
def test_monitor_once_json_from_the_command_line(triton_server, capsys):
    from triton_deploy.cli import main

    code = main(["monitor", "--once", "--json", "--interval", "0.2",
                 "--metrics-url", f"127.0.0.1:{triton_server.options.metrics_port}"])
    snapshot = json.loads(capsys.readouterr().out)
    assert code == 0 and "digits" in snapshot["ensembles"] and snapshot["seconds"] >= 0.2
    assert set(snapshot["ensembles"]["digits"]["drift"]) == {"class", "confidence"}


def test_monitor_names_the_flag_when_the_endpoint_does_not_answer(capsys):
    from triton_deploy.cli import main
    from triton_deploy.server import free_ports

    (port,) = free_ports(1)
    assert main(["monitor", "--once", "--metrics-url", f"127.0.0.1:{port}"]) == 10
    error = capsys.readouterr().err.strip()
    assert "cannot read Triton metrics" in error and "--metrics-url" in error and "\n" not in error


# ---- what the project's metrics look like to Prometheus' own tools, and monitor's one-line errors -----------------


def our_series(text: str) -> str:
    """The lines of a /metrics page that belong to the project's metric families (HELP, TYPE and samples)."""
    kept, ours = [], False
    for line in text.splitlines():
        if line.startswith("# "):
            ours = line.split()[2].startswith("triton_classifier_")
        elif line:
            ours = line.startswith("triton_classifier_")
        if ours:
            kept.append(line)
    return "\n".join(kept) + "\n"


@pytest.mark.slow
@pytest.mark.server
def test_every_series_the_project_defines_passes_promtool_check_metrics(triton_server, heldout_digits):
    import shutil
    import subprocess

    from conftest import encode_digit

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run scripts/setup-system.sh (Debian package 'prometheus')")
    send(triton_server, [encode_digit(pixels) for pixels in heldout_digits[0][:5]])
    time.sleep(1.5)  # the models flush their metrics every 0.5 s
    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url
    with urllib.request.urlopen(url, timeout=5) as response:
        text = our_series(response.read().decode())
    families = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}
    assert set(families) == set(mm.METRICS)
    assert {name for name, kind in families.items() if kind == "histogram"} == set(mm.HISTOGRAMS)
    assert f'{mm.CONFIDENCE}_bucket{{model="digits",version="1",le="+Inf"}}' in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.server
def test_monitor_refuses_a_model_the_server_does_not_have_and_names_those_it_has(triton_server, capsys):
    from triton_deploy.cli import main

    code = main(["monitor", "--once", "--model", "digitz", "--interval", "0.1",
                 "--metrics-url", f"127.0.0.1:{triton_server.options.metrics_port}"])
    error = capsys.readouterr().err.strip()
    assert code == 31 and "no model digitz" in error and "digits, digits_classifier" in error and "\n" not in error


@pytest.mark.slow
@pytest.mark.server
def test_monitor_pointed_at_the_grpc_port_says_so_in_one_line(triton_server, capsys):
    from triton_deploy.cli import main

    code = main(["monitor", "--once", "--metrics-url", f"127.0.0.1:{triton_server.options.grpc_port}"])
    error = capsys.readouterr().err.strip()
    assert code == 10 and "not with HTTP" in error and "--metrics-url" in error and "\n" not in error
    assert "Traceback" not in error


@pytest.mark.slow
@pytest.mark.server
def test_evaluate_raises_the_prediction_count_by_exactly_the_images_it_evaluated(triton_server, heldout_digits,
                                                                                  tmp_path):
    """evaluate's label probe (one-hot rows sent to digits_postprocess) is tooling traffic, not predictions."""
    from conftest import encode_digit
    from triton_deploy.clients.evaluate import EvaluateOptions, evaluate

    images, labels = heldout_digits
    for n, (pixels, label) in enumerate(zip(images[:24], labels[:24], strict=True)):
        folder = tmp_path / "data" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n}.png").write_bytes(encode_digit(pixels))
    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url

    def predictions() -> float:
        time.sleep(1.5)  # longer than the metric flush period (0.5 s)
        return Scrape.read(url).total(mm.PREDICTIONS, "digits") or 0.0

    before = predictions()
    evaluate(EvaluateOptions(data_dir=tmp_path / "data", output=tmp_path / "report", url=triton_server.grpc_url,
                             protocol="grpc"))
    assert predictions() - before == 24


@pytest.mark.slow
@pytest.mark.server
def test_a_request_marked_as_tooling_is_answered_but_not_counted_even_through_the_ensemble(triton_server,
                                                                                            heldout_digits):
    """Health checks and probes carry the `tooling` request parameter; Triton passes an ensemble request's
    parameters on to its steps, so neither the preprocess nor the postprocess step counts them."""
    import tritonclient.http as httpclient

    from conftest import encode_digit

    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url

    def counts() -> tuple[float, float]:
        time.sleep(1.5)  # longer than the metric flush period (0.5 s)
        scrape = Scrape.read(url)
        return scrape.total(mm.PREDICTIONS, "digits") or 0.0, scrape.total(mm.IMAGES, "digits") or 0.0

    client = httpclient.InferenceServerClient(triton_server.http_url)
    tensor = httpclient.InferInput("IMAGE", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[encode_digit(p)] for p in heldout_digits[0][:2]], dtype=np.object_))
    before = counts()
    answer = client.infer("digits", [tensor], parameters={"tooling": "liveness-probe"})
    assert answer.as_numpy("CLASS_IDS").shape == (2, 5)
    assert counts() == before
    client.infer("digits", [tensor])
    assert counts() == (before[0] + 2, before[1] + 2)
