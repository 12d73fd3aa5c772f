"""Triton python-backend model: encoded image bytes (IMAGE, TYPE_STRING [1]) -> the classifier's input tensor.

Copied into the repository as ``<prefix>_preprocess/1/model.py`` with ``preprocessing.py`` beside it. Sizes and
normalisation come from ``config.pbtxt`` parameters. Every request of a dynamic batch is handled in one ``execute``
call: images are decoded one by one (Pillow's C code), then normalised as one array. An image that cannot be decoded
fails its own request with a message naming the problem; the other requests in the batch are answered normally.
"""

import json
import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preprocessing import ImageTransform  # noqa: E402  (copied beside this file)

INPUT = "IMAGE"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.transform = ImageTransform.from_parameters(parameters)
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        images: list[bytes] = []
        counts: list[int] = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy().reshape(-1)
            images.extend(bytes(item) for item in encoded)
            counts.append(len(encoded))
        tensor, decoded, errors = self.transform.preprocess(images)
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


def _invalid_argument(message):
    try:
        return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):  # python backends before 23.xx take the message only
        return pb_utils.TritonError(message)
