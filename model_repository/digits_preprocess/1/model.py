"""Triton python-backend model: encoded image bytes (IMAGE, TYPE_STRING [1]) -> the classifier's input tensor.

Copied into the repository as ``<prefix>_preprocess/1/model.py`` with ``preprocessing.py`` and ``model_metrics.py``
beside it. Sizes and normalisation come from ``config.pbtxt`` parameters. Every request of a dynamic batch is handled in one ``execute``
call: images are decoded one by one (Pillow's C code), then normalised as one array. An image that cannot be decoded
fails its own request with a message naming the problem; the other requests in the batch are answered normally.
With ``monitoring`` on, every batch counts images by detected format and size bucket, and decode failures by reason
(numpy per batch; a background thread sends the counts to Triton).
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_metrics as mm  # noqa: E402  (copied beside this file)
from preprocessing import ImageTransform  # noqa: E402

INPUT = "IMAGE"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.transform = ImageTransform.from_parameters(parameters)
        self.output_name = config["output"][0]["name"]
        self.metrics = ImageMetrics(parameters) if parameters.get("monitoring", "false") == "true" else None
        self.warmup_batches = mm.warmup_executions(config)

    def execute(self, requests):
        images: list[bytes] = []
        counts: list[int] = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy().reshape(-1)
            images.extend(bytes(item) for item in encoded)
            counts.append(len(encoded))
        batch = self.transform.preprocess_batch(images)
        tensor, decoded, errors = batch.tensor, batch.ok, batch.errors
        if self.warmup_batches:
            self.warmup_batches -= 1  # Triton warms the model up before it is ready: not traffic
        elif self.metrics is not None:
            self.metrics.record(batch)
        all_decoded = len(decoded) == len(images)
        row_of = {image: row for row, image in enumerate(decoded)}

        responses, start = [], 0
        for count in counts:
            span = range(start, start + count)
            start += count
            failures = [f"image {n} of the request: {errors[i]}" for n, i in enumerate(span) if errors[i]]
            if failures:
                error = _invalid_argument("; ".join(failures))
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            # When every image decoded, rows line up with images and a slice (no copy) is enough.
            batch = tensor[span.start:span.stop] if all_decoded else tensor[[row_of[i] for i in span]]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, batch)]))
        return responses

    def finalize(self):
        if self.metrics is not None:
            self.metrics.close()  # stops the metric thread and sends what it still holds


class ImageMetrics:
    """The preprocess model's custom metrics. ``record`` only queues the batch's per-image formats, sizes and
    failure reasons; ``_summarise`` runs in ``MetricBuffer``'s thread, counts with numpy and makes the metric calls."""

    def __init__(self, parameters):
        metrics = mm.MetricSet(pb_utils, {"model": parameters["ensemble"], "version": parameters["model_version"]})
        self.metrics = metrics
        self.format_index = {name: i for i, name in enumerate(mm.IMAGE_FORMATS)}
        self.reason_index = {name: i for i, name in enumerate(mm.DECODE_REASONS)}
        self.images = metrics.per_value(mm.IMAGES, "Images received, by the format Pillow identified", "COUNTER",
                                        "format", mm.IMAGE_FORMATS)
        self.pixels = metrics.per_value(mm.IMAGE_PIXELS, "Decoded images per bucket (lower, upper] of width x "
                                        "height in pixels", "COUNTER", "bucket", mm.bucket_labels(mm.PIXEL_BUCKETS))
        self.failures = metrics.per_value(mm.DECODE_FAILURES, "Images that could not be decoded, by reason",
                                          "COUNTER", "reason", mm.DECODE_REASONS)
        self.buffer = mm.MetricBuffer(self._summarise)

    def record(self, batch):
        self.buffer.put((batch.formats, batch.pixels, batch.reasons))

    def _summarise(self, batches):
        other = self.format_index["other"]
        formats = [self.format_index.get(name, other) for names, _, _ in batches for name in names]
        mm.add_counts(self.images, np.bincount(formats, minlength=len(self.images)))
        pixels = np.asarray([size for _, sizes, _ in batches for size in sizes if size], dtype=np.float64)
        if len(pixels):
            mm.add_counts(self.pixels, mm.bucket_counts(pixels, mm.PIXEL_BUCKETS))
        reasons = [self.reason_index[reason] for _, _, names in batches for reason in names if reason]
        if reasons:
            mm.add_counts(self.failures, np.bincount(reasons, minlength=len(self.failures)))

    def close(self):
        self.buffer.close()


def _invalid_argument(message):
    try:
        return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):  # python backends before 23.xx take the message only
        return pb_utils.TritonError(message)
