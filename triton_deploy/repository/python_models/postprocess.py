"""Triton python-backend model: class scores -> top-k CLASS_IDS (INT64), SCORES (FP32), LABELS (BYTES), and every
class's PROBABILITIES (FP32, labelled in the config for Triton's classification extension).

Copied into the repository as ``<prefix>_postprocess/1/model.py`` with ``postprocessing.py`` and ``model_metrics.py``
beside it. Softmax is applied when the ``output_kind`` parameter says ``logits``; ``top_k`` and the labels file come
from parameters. With ``monitoring`` on, every batch also counts predictions per class, observes the confidence and
margin histograms, counts predictions below the low-confidence threshold, and keeps the window the drift score against
``reference.json`` is computed from (see ``model_metrics``): queued per batch, sent to Triton by a background thread.
Requests carrying the ``tooling`` parameter (the clients' label probe) are answered but not counted:
tooling traffic is not predictions.
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
                pb_utils.Tensor("PROBABILITIES", scores[rows]),
            ]))
        if self.warmup_batches:
            self.warmup_batches -= 1  # Triton warms the model up before it is ready: not traffic
        elif self.metrics is not None:
            traffic = mm.traffic_rows(requests, [len(a) for a in arrays])
            if traffic is None:
                self.metrics.record(scores)
            elif traffic.any():
                self.metrics.record(scores[traffic])
        return responses

    def finalize(self):
        if self.metrics is not None:
            self.metrics.close()  # stops the metric thread and sends what it still holds


class PredictionMetrics:
    """The postprocess model's custom metrics. ``record`` only queues the batch's probabilities; ``_summarise`` runs
    in ``MetricBuffer``'s thread, counts with numpy, updates the drift window and makes the metric calls."""

    def __init__(self, parameters, labels, model_dir):
        metrics = mm.MetricSet(pb_utils, {"model": parameters["ensemble"], "version": parameters["model_version"]})
        self.metrics = metrics
        self.predictions = metrics.per_value(mm.PREDICTIONS, "Top-1 predictions per class", "COUNTER", "class", labels)
        self.confidence = metrics.histogram(mm.CONFIDENCE, "Top-1 probability of each prediction (0-1)",
                                            mm.CONFIDENCE_BUCKETS)
        self.margin = metrics.histogram(mm.MARGIN, "Top-1 minus top-2 probability of each prediction (0-1)",
                                        mm.MARGIN_BUCKETS)
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
            for gauge, ratio in zip(ratios, self.reference["class_ratios"], strict=True):
                gauge.set(float(ratio))
            self.drift = metrics.per_value(
                mm.DRIFT, "Jensen-Shannon distance (0-1) of the recent top-1 class / confidence distribution to the "
                "reference", "GAUGE", "distribution", mm.DRIFT_DISTRIBUTIONS)
            self.window_gauge = metrics.one(mm.DRIFT_WINDOW, "Predictions the drift score covers", "GAUGE")
            self.window = mm.PredictionWindow(int(parameters["drift_window"]), len(labels),
                                              len(mm.CONFIDENCE_BUCKETS))
            self.min_predictions = int(parameters["drift_min_predictions"])
            self.shown = [math.nan, math.nan]  # what the drift gauges show
            for gauge in self.drift:
                gauge.set(math.nan)  # no score until the window holds min_predictions
        self.buffer = mm.MetricBuffer(self._summarise)

    def record(self, scores):
        self.buffer.put(scores)

    def _summarise(self, batches):
        scores = batches[0] if len(batches) == 1 else np.concatenate(batches)
        classes, confidence, margin = mm.top_two(scores)
        mm.add_counts(self.predictions, np.bincount(classes, minlength=len(self.predictions)))
        mm.observe_all(self.confidence, confidence)
        mm.observe_all(self.margin, margin)
        low = int(np.count_nonzero(confidence < self.threshold))
        if low:
            self.low_confidence.increment(float(low))
        if self.reference is None:
            return
        self.window.add(classes, mm.bucket_index(confidence, mm.CONFIDENCE_BUCKETS))
        for index, score in enumerate(self.window.drift(self.reference, self.min_predictions)):
            if not _same(score, self.shown[index]):
                self.drift[index].set(score)
                self.shown[index] = score
        self.window_gauge.set(float(self.window.filled))

    def close(self):
        self.buffer.close()


def _same(new, old):
    return (math.isnan(new) and math.isnan(old)) or new == old
