"""Triton python-backend model: encoded image bytes (IMAGE, TYPE_STRING [1]) -> the classifier's input tensor.

Copied into the repository as ``<prefix>_preprocess/1/model.py`` with ``preprocessing.py`` and ``model_metrics.py``
beside it. Sizes and normalisation come from ``config.pbtxt`` parameters. Every request of a dynamic batch is handled in one ``execute``
call: images are decoded one by one (Pillow's C code), then normalised as one array. An image that cannot be decoded
fails its own request with a message naming the problem; the other requests in the batch are answered normally.
An element that is base64 text of an image (a JSON-only request) is decoded first (``preprocessing.from_base64``).
Requests carrying the ``tooling`` parameter (health checks) are answered but not counted.
With ``monitoring`` on, every batch counts images by detected format and encoding, observes their sizes in a
histogram, and counts decode failures by reason (queued per batch; a background thread sends them to Triton).
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
            traffic = mm.traffic_rows(requests, counts)  # requests marked as tooling are not counted
            if traffic is None or traffic.any():
                self.metrics.record(batch, traffic)
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
        self.encoding_index = {name: i for i, name in enumerate(mm.IMAGE_ENCODINGS)}
        self.reason_index = {name: i for i, name in enumerate(mm.DECODE_REASONS)}
        images = metrics.family(mm.IMAGES, "Images received, by the format Pillow identified and how they were "
                                "encoded in the request (binary, or base64 text)", "COUNTER")
        # One counter per (format, encoding), row-major: index = format * len(encodings) + encoding.
        self.images = [images.Metric(labels={**metrics.base_labels, "format": name, "encoding": encoding})
                       for name in mm.IMAGE_FORMATS for encoding in mm.IMAGE_ENCODINGS]
        self.pixels = metrics.histogram(mm.IMAGE_PIXELS, "Width x height of each decoded image, in pixels",
                                        mm.PIXEL_BUCKETS)
        self.failures = metrics.per_value(mm.DECODE_FAILURES, "Images that could not be decoded, by reason",
                                          "COUNTER", "reason", mm.DECODE_REASONS)
        self.buffer = mm.MetricBuffer(self._summarise)

    def record(self, batch, traffic=None):
        """Queue the batch's per-image facts; ``traffic`` (a mask per image, or None for all) leaves tooling out."""
        facts = [batch.formats, batch.pixels, batch.reasons, batch.encodings]
        if traffic is not None:
            facts = [[value for value, keep in zip(values, traffic, strict=True) if keep] for values in facts]
        self.buffer.put(tuple(facts))

    def _summarise(self, batches):
        other, encodings = self.format_index["other"], len(mm.IMAGE_ENCODINGS)
        cells = [self.format_index.get(name, other) * encodings + self.encoding_index[encoding]
                 for names, _, _, kinds in batches for name, encoding in zip(names, kinds, strict=True)]
        mm.add_counts(self.images, np.bincount(cells, minlength=len(self.images)))
        mm.observe_all(self.pixels, [size for _, sizes, _, _ in batches for size in sizes if size])
        reasons = [self.reason_index[reason] for _, _, names, _ in batches for reason in names if reason]
        if reasons:
            mm.add_counts(self.failures, np.bincount(reasons, minlength=len(self.failures)))

    def close(self):
        self.buffer.close()


def _invalid_argument(message):
    try:
        return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):  # python backends before 23.xx take the message only
        return pb_utils.TritonError(message)
