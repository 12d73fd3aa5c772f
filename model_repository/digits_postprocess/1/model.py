"""Triton python-backend model: class scores -> top-k CLASS_IDS (INT64), SCORES (FP32), LABELS (BYTES).

Copied into the repository as ``<prefix>_postprocess/1/model.py`` with ``postprocessing.py`` beside it. Softmax is
applied when the ``output_kind`` parameter says ``logits``; ``top_k`` and the labels file come from parameters.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from postprocessing import classify, label_lookup  # noqa: E402  (copied beside this file)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.k = int(parameters["top_k"])
        self.logits = parameters["output_kind"] == "logits"
        self.input_name = config["input"][0]["name"]
        model_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(model_dir, parameters.get("labels_file", "labels.txt")), encoding="utf-8") as f:
            self.labels = label_lookup([line.rstrip("\n") for line in f])

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        scores = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        ids, top = classify(scores, self.k, logits=self.logits)
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
        return responses
