"""Triton python-backend model: class scores -> top-k CLASS_IDS (INT64), SCORES (FP32), LABELS (BYTES).

Copied into the repository as ``<prefix>_postprocess/1/model.py`` with ``postprocessing.py`` and ``model_metrics.py``
beside it. Softmax is applied when the ``output_kind`` parameter says ``logits``; ``top_k`` and the labels file come
from parameters. With ``monitoring`` on, every batch also counts predictions per class, by confidence and margin
bucket and below the low-confidence threshold, and updates the drift score against ``reference.json`` (see
``model_metrics``): counted with numpy, one metric call per non-zero count.
"""

import json
import math
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_metrics as mm  # noqa: E402  (copied beside this file)
from postprocessing import label_lookup, softmax, top_k  # noqa: E402

# The drift gauges are set again only when the score moved by more than this: over a window of 1000 predictions
# the score hardly moves per batch, and every metric call is a round trip to the server.
DRIFT_RESOLUTION = 0.005


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.k = int(parameters["top_k"])
        self.logits = parameters["output_kind"] == "logits"
        self.input_name = config["input"][0]["name"]
        model_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(model_dir, parameters.get("labels_file", "labels.txt")), encoding="utf-8") as f:
            names = [line.rstrip("\n") for line in f]
        self.labels = label_lookup(names)
        self.metrics = None
        if parameters.get("monitoring", "false") == "true":
            self.metrics = PredictionMetrics(parameters, names, model_dir)
        self.warmup_batches = mm.warmup_executions(config)

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        outputs = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        scores = softmax(outputs.astype(np.float32)) if self.logits else outputs.astype(np.float32)
        ids, top = top_k(scores, self.k)
        names = self.labels[ids]
        responses, start = [], 0
        for array in arrays:
            rows = slice(start, start + len(array))
            start += len(array)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("CLASS_IDS", ids[rows]),
                pb_utils.Tensor("SCORES", top[rows]),
                pb_utils.Tensor("LABELS", names[rows]),
            ]))
        if self.warmup_batches:
            self.warmup_batches -= 1  # Triton warms the model up before it is ready: not traffic
        elif self.metrics is not None:
            self.metrics.record(scores)
        return responses


class PredictionMetrics:
    """The postprocess model's custom metrics, updated once per batch."""

    def __init__(self, parameters, labels, model_dir):
        base = {"model": parameters["ensemble"], "version": parameters["model_version"]}
        metrics = mm.MetricSet(pb_utils, base)
        self.metrics = metrics
        self.predictions = metrics.per_value(mm.PREDICTIONS, "Top-1 predictions per class", "COUNTER", "class", labels)
        self.confidence = metrics.per_value(
            mm.CONFIDENCE, "Predictions per bucket (lower, upper] of the top-1 probability", "COUNTER", "bucket",
            mm.bucket_labels(mm.CONFIDENCE_BUCKETS))
        self.margin = metrics.per_value(
            mm.MARGIN, "Predictions per bucket (lower, upper] of top-1 minus top-2 probability", "COUNTER", "bucket",
            mm.bucket_labels(mm.MARGIN_BUCKETS))
        self.threshold = float(parameters["low_confidence_threshold"])
        self.low_confidence = metrics.one(
            mm.LOW_CONFIDENCE, f"Predictions whose top-1 probability is below {self.threshold:g}", "COUNTER")
        self.reference = None
        reference_file = parameters.get("reference_file", "")
        if reference_file:
            with open(os.path.join(model_dir, reference_file), encoding="utf-8") as f:
                self.reference = json.load(f)
            ratios = metrics.per_value(mm.REFERENCE_RATIO, "Share of each top-1 class on the export's held-out data",
                                       "GAUGE", "class", labels)
            for gauge, ratio in zip(ratios, self.reference["class_ratios"]):
                gauge.set(float(ratio))
            self.drift = metrics.per_value(
                mm.DRIFT, "Jensen-Shannon distance (0-1) of the recent top-1 class / confidence distribution to the "
                "reference", "GAUGE", "distribution", mm.DRIFT_DISTRIBUTIONS)
            self.window_gauge = metrics.one(mm.DRIFT_WINDOW, "Predictions the drift score covers", "GAUGE")
            self.window = mm.PredictionWindow(int(parameters["drift_window"]), len(labels),
                                              len(mm.CONFIDENCE_BUCKETS))
            self.min_predictions = int(parameters["drift_min_predictions"])
            self.shown = [math.nan, math.nan]
            for gauge in self.drift:
                gauge.set(math.nan)  # no score until the window holds min_predictions

    def record(self, scores):
        classes, confidence, margin = mm.top_two(scores)
        mm.add_counts(self.predictions, np.bincount(classes, minlength=len(self.predictions)))
        confidence_bucket = mm.bucket_index(confidence, mm.CONFIDENCE_BUCKETS)
        mm.add_counts(self.confidence, np.bincount(confidence_bucket, minlength=len(self.confidence)))
        mm.add_counts(self.margin, mm.bucket_counts(margin, mm.MARGIN_BUCKETS))
        low = int(np.count_nonzero(confidence < self.threshold))
        if low:
            self.low_confidence.increment(float(low))
        if self.reference is not None:
            self._update_drift(classes, confidence_bucket)

    def _update_drift(self, classes, confidence_bucket):
        filling = self.window.filled < self.window.size
        self.window.add(classes, confidence_bucket)
        scores = self.window.drift(self.reference, self.min_predictions)
        moved = [not _close(new, old) for new, old in zip(scores, self.shown)]
        for gauge, score, changed in zip(self.drift, scores, moved):
            if changed:
                gauge.set(score)
        if any(moved) or filling:
            self.window_gauge.set(float(self.window.filled))
        self.shown = [score if changed else old for score, old, changed in zip(scores, self.shown, moved)]


def _close(new, old):
    if math.isnan(new) or math.isnan(old):
        return math.isnan(new) and math.isnan(old)
    return abs(new - old) <= DRIFT_RESOLUTION
