"""What the ensemble's python steps report about the images they receive and the answers they give.

One source of truth for the custom metrics: their names, label names, bucket bounds, and the numpy math behind them
(bucket counts, the drift window, the Jensen-Shannon distance). numpy only, because this file is also copied beside
the preprocess and postprocess ``model.py`` in a generated repository and runs inside Triton's python-backend stub.
The export computes the reference distributions with it, ``triton-deploy monitor`` reads the metrics by these names.

Drift: the postprocess model keeps the top-1 class and confidence bucket of the last ``window`` predictions (a ring
buffer with running counts, so one batch costs O(batch)) and compares their distribution with the reference recorded
on held-out data at export time. The score is the Jensen-Shannon distance (base 2): 0 for identical distributions,
1 for distributions with no class in common; it is symmetric, bounded and needs no smoothing of empty classes.
"""

from __future__ import annotations

import threading

import numpy as np

# ---- metric names (Prometheus conventions: counters end in _total and name what they count, distributions are
# histograms (_bucket{le}, _sum, _count) in base units, ratios are 0..1, sizes in pixels) --------------------------
PREDICTIONS = "triton_classifier_predictions_total"  # counter {model, version, class}: top-1 answers per class
CONFIDENCE = "triton_classifier_prediction_confidence_ratio"  # histogram {model, version}: top-1 probability
MARGIN = "triton_classifier_prediction_margin_ratio"  # histogram {model, version}: top-1 minus top-2 probability
LOW_CONFIDENCE = "triton_classifier_low_confidence_predictions_total"  # counter {model, version}
DRIFT = "triton_classifier_drift_score"  # gauge {model, version, distribution="class"|"confidence"}
DRIFT_WINDOW = "triton_classifier_drift_window_predictions"  # gauge {model, version}: predictions the score covers
REFERENCE_RATIO = "triton_classifier_reference_class_ratio"  # gauge {model, version, class}: share on held-out data
IMAGES = "triton_classifier_images_total"  # counter {model, version, format, encoding}: every image received
IMAGE_PIXELS = "triton_classifier_image_pixels"  # histogram {model, version}: width x height of decoded images
DECODE_FAILURES = "triton_classifier_decode_failures_total"  # counter {model, version, reason}
HISTOGRAMS = (CONFIDENCE, MARGIN, IMAGE_PIXELS)  # exposed as <name>_bucket{le=...}, <name>_sum, <name>_count
METRICS = (PREDICTIONS, CONFIDENCE, MARGIN, LOW_CONFIDENCE, DRIFT, DRIFT_WINDOW, REFERENCE_RATIO, IMAGES, IMAGE_PIXELS,
           DECODE_FAILURES)
# The series names Prometheus stores (what PromQL selects): a histogram as its three series.
SERIES = tuple(series for name in METRICS
               for series in ((f"{name}_bucket", f"{name}_sum", f"{name}_count") if name in HISTOGRAMS else (name,)))

DRIFT_DISTRIBUTIONS = ("class", "confidence")

# Upper bounds (Prometheus `le`) of the confidence and margin buckets. Top-1 probabilities of a healthy classifier
# crowd near 1, so the buckets are finer there.
CONFIDENCE_BUCKETS = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0)
MARGIN_BUCKETS = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
# Decoded image sizes in pixels: 32x32 ... 4096x4096.
PIXEL_BUCKETS = tuple(float(side * side) for side in (32, 64, 128, 256, 512, 1024, 2048, 4096))

# Label values are fixed sets, created when the model loads, so every series exists (at 0) before the first request:
# rate() ratios and "stopped being predicted" alerts need a series to compare.
IMAGE_FORMATS = ("png", "jpeg", "gif", "bmp", "webp", "tiff", "other", "unknown")  # unknown: not identified
# How the image arrived: its bytes as sent ("binary"), or base64 text of them (a JSON-only request), decoded first.
IMAGE_ENCODINGS = ("binary", "base64")
DECODE_REASONS = ("empty", "too_many_bytes", "not_an_image", "too_many_pixels", "no_pixels", "truncated", "corrupt")

DEFAULT_WINDOW = 1000  # predictions in the drift window
DEFAULT_MIN_PREDICTIONS = 200  # below this many predictions in the window the score is NaN (too noisy to judge)


def bucket_index(values: np.ndarray, bounds: tuple[float, ...]) -> np.ndarray:
    """Index of the bucket (``bounds[i-1] < v <= bounds[i]``) of each value; values above the last bound go into
    the last bucket."""
    return np.minimum(np.searchsorted(np.asarray(bounds), values, side="left"), len(bounds) - 1)


def bucket_counts(values: np.ndarray, bounds: tuple[float, ...]) -> np.ndarray:
    """How many values fall into each bucket (not cumulative)."""
    return np.bincount(bucket_index(values, bounds), minlength=len(bounds))


def top_two(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: top-1 class id, top-1 probability and the margin to the runner-up (1.0 with a single class)."""
    classes = probabilities.argmax(axis=-1)
    if probabilities.shape[-1] < 2:
        return classes, probabilities[:, 0].astype(np.float32), np.ones(len(probabilities), np.float32)
    best_two = np.partition(probabilities, -2, axis=-1)[:, -2:]
    return classes, best_two[:, 1].astype(np.float32), (best_two[:, 1] - best_two[:, 0]).astype(np.float32)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count or probability vectors."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl_to_m(a: np.ndarray) -> float:
        nonzero = a > 0
        return float(np.sum(a[nonzero] * np.log2(a[nonzero] / m[nonzero])))

    return float(np.sqrt(max(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0)))


def reference_distributions(probabilities: np.ndarray) -> dict:
    """The reference behaviour of a model on held-out data: share of each top-1 class and of each confidence
    bucket. Stored in the export manifest as ``reference`` and in the repository as ``reference.json``."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    classes, confidence, _ = top_two(probabilities)
    n = len(probabilities)
    class_counts = np.bincount(classes, minlength=probabilities.shape[-1])
    return {
        "samples": int(n),
        "class_ratios": [round(float(c) / n, 6) for c in class_counts],
        "confidence_buckets": list(CONFIDENCE_BUCKETS),
        "confidence_ratios": [round(float(c) / n, 6) for c in bucket_counts(confidence, CONFIDENCE_BUCKETS)],
    }


class PredictionWindow:
    """The top-1 class and confidence bucket of the last ``size`` predictions, with running counts per class and
    per bucket. ``add`` costs O(batch): the counts of the overwritten slots are subtracted, the new ones added."""

    def __init__(self, size: int, num_classes: int, num_buckets: int) -> None:
        self.size = size
        self.classes = np.zeros(size, dtype=np.int64)
        self.buckets = np.zeros(size, dtype=np.int64)
        self.class_counts = np.zeros(num_classes, dtype=np.int64)
        self.bucket_counts = np.zeros(num_buckets, dtype=np.int64)
        self.filled = 0
        self.next = 0

    def add(self, classes: np.ndarray, buckets: np.ndarray) -> None:
        classes, buckets = classes[-self.size:], buckets[-self.size:]  # a batch above the window keeps its tail
        slots = (self.next + np.arange(len(classes))) % self.size
        occupied = slots[slots < self.filled]  # before the ring is full, slots at and after `filled` are empty
        self.class_counts -= np.bincount(self.classes[occupied], minlength=len(self.class_counts))
        self.bucket_counts -= np.bincount(self.buckets[occupied], minlength=len(self.bucket_counts))
        self.classes[slots], self.buckets[slots] = classes, buckets
        self.class_counts += np.bincount(classes, minlength=len(self.class_counts))
        self.bucket_counts += np.bincount(buckets, minlength=len(self.bucket_counts))
        self.filled = min(self.size, self.filled + len(classes))
        self.next = int((self.next + len(classes)) % self.size)

    def drift(self, reference: dict, min_predictions: int) -> tuple[float, float]:
        """(class, confidence) Jensen-Shannon distance to the reference; NaN while the window holds fewer than
        ``min_predictions``."""
        if self.filled < min_predictions:
            return float("nan"), float("nan")
        return (js_distance(self.class_counts, reference["class_ratios"]),
                js_distance(self.bucket_counts, reference["confidence_ratios"]))


# ---- helpers for the python models (they pass in their pb_utils module; this file imports nothing of Triton's) ----
# Measured in Triton 2.51 on the 2-core machine: one metric call (increment, set, observe) is a round trip to the
# server of about 25 µs, whatever the kind. So the work leaves the hot path: ``MetricBuffer`` queues each batch's raw
# results and a background thread, every half second, counts with numpy (one increment per counter whose count is not
# zero) and observes the histograms. A histogram observe() takes one value, so histograms cost one call per image
# and histogram in that thread; Prometheus' histogram convention is what lets histogram_quantile() and the usual
# dashboards read them (per-bucket counters with a `bucket` label, the earlier form, could not be).


class MetricSet:
    """Custom metric families of one python model, with the labels every series carries (``model``, ``version``).
    Keeps the families alive: Triton refuses (and has crashed on) updates of a metric whose family was freed."""

    def __init__(self, pb_utils, base_labels: dict[str, str]) -> None:
        self.pb_utils = pb_utils
        self.base_labels = dict(base_labels)
        self.families: list = []

    def family(self, name: str, description: str, kind: str):
        family = self.pb_utils.MetricFamily(name=name, description=description,
                                            kind=getattr(self.pb_utils.MetricFamily, kind))
        self.families.append(family)
        return family

    def one(self, name: str, description: str, kind: str):
        return self.family(name, description, kind).Metric(labels=self.base_labels)

    def per_value(self, name: str, description: str, kind: str, label: str, values) -> list:
        family = self.family(name, description, kind)
        return [family.Metric(labels={**self.base_labels, label: str(value)}) for value in values]

    def histogram(self, name: str, description: str, bounds: tuple[float, ...]):
        """A histogram with upper bounds ``bounds`` (Triton adds +Inf). Triton 2.51 needs ``buckets=`` on every
        histogram metric and has crashed the stub on invalid metric calls, so only this form is used."""
        family = self.family(name, description, "HISTOGRAM")
        return family.Metric(labels=self.base_labels, buckets=[float(b) for b in bounds])


# A request parameter marking tooling traffic (the clients' label probe, health checks): answered, never counted.
# The same as triton_deploy.contract.TOOLING_PARAMETER (this file cannot import the package; a test checks).
TOOLING_PARAMETER = "tooling"
_TOOLING_KEY = f'"{TOOLING_PARAMETER}"'


def traffic_rows(requests, rows_per_request: list[int]) -> np.ndarray | None:
    """Per batch row, whether it belongs to a request that is traffic rather than tooling; None when every request
    is traffic (the usual case: no mask to apply). Looks for the key in each request's parameters (a JSON string)
    without parsing it, so the check costs about a microsecond per request."""
    tooling = [_is_tooling(request) for request in requests]
    if not any(tooling):
        return None
    return np.repeat(np.logical_not(tooling), rows_per_request)


def _is_tooling(request) -> bool:
    try:
        return _TOOLING_KEY in request.parameters()
    except AttributeError:  # python backends before request parameters existed
        return False


def warmup_executions(model_config: dict) -> int:
    """How many times Triton runs ``execute`` for the config's ``model_warmup`` samples before the model is ready
    (``count`` times each, 1 when unset). The models leave those batches out of their metrics: a warmup sample is
    not traffic (the postprocess one, all-zero scores, would count as a low-confidence prediction of class 0)."""
    return sum(max(1, int(sample.get("count", 1) or 1)) for sample in model_config.get("model_warmup", []))


def observe_all(histogram, values) -> None:
    """Observe every finite value (one call each: Triton's observe takes one value). A NaN (a model emitting NaN
    scores) would make the histogram's _sum NaN for the life of the server, so it is left out."""
    values = np.asarray(values, dtype=np.float64)
    for value in values[np.isfinite(values)].tolist():
        histogram.observe(value)


def add_counts(counters: list, counts: np.ndarray) -> None:
    """Increment each counter by its count, calling only those whose count is not zero."""
    for index in np.flatnonzero(counts):
        counters[index].increment(float(counts[index]))


class MetricBuffer:
    """Takes the metric work off the hot path: ``put`` only queues what a batch produced (under a lock, about a
    microsecond), and a background thread hands everything queued since its last round to ``summarise`` every
    ``period_s``, which counts with numpy and makes the metric calls. ``close()`` (from the model's ``finalize``)
    stops the thread and summarises what is left. Metrics lag the traffic by at most ``period_s``, far below any
    scrape interval."""

    def __init__(self, summarise, period_s: float = 0.5) -> None:
        self.summarise = summarise
        self.period_s = period_s
        self._lock = threading.Lock()
        self._items: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metric-buffer", daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        with self._lock:
            self._items.append(item)

    def flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        if items:
            self.summarise(items)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.flush()
