"""Prediction monitoring without a server: the numpy math the python steps report with, option errors, and
``triton-deploy monitor`` against an endpoint that does not answer. The trained export's reference and a live Triton's
metrics are in tests/integration/test_monitoring_integration.py; the end-to-end test with a real Prometheus is
tests/integration/helm/test_monitoring_e2e.py."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from triton_deploy.errors import UsageError
from triton_deploy.monitoring import model_metrics as mm
from triton_deploy.monitoring.monitor import histogram_quantile
from triton_deploy.preprocessing import ImageTransform
from triton_deploy.spec import Reference


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


@pytest.mark.parametrize(("options", "flag"), [({"low_confidence": 1.5}, "--low-confidence"),
                                                ({"drift_window": 10, "drift_min_predictions": 20}, "--drift-window")])
def test_bad_monitoring_options_name_their_flag(options, flag):
    from triton_deploy.repository.render import RepositoryOptions

    with pytest.raises(UsageError, match=flag):
        RepositoryOptions(**options).check()


def test_monitor_names_the_flag_when_the_endpoint_does_not_answer(capsys):
    from triton_deploy.cli import main
    from triton_deploy.server import free_ports

    (port,) = free_ports(1)
    assert main(["monitor", "--once", "--metrics-url", f"127.0.0.1:{port}"]) == 10
    error = capsys.readouterr().err.strip()
    assert "cannot read Triton metrics" in error and "--metrics-url" in error and "\n" not in error
