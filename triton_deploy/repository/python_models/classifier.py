"""Triton python-backend model: runs the exported ``model.onnx`` with ONNX Runtime.

The local ``tritonserver`` from the nvidia-pytriton wheel has only the python backend, so this is how the classifier
runs here; the NGC container uses the native ``onnxruntime`` backend with the same ONNX file. All requests of a
dynamic batch go through ONNX Runtime as one batch; a single request is passed without a copy.
Thread counts come from ``config.pbtxt`` parameters.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "0"))
        options.inter_op_num_threads = int(parameters.get("inter_op_thread_count", "0"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's threads spin while waiting for work by default; beside Triton, the other python steps and
        # any load on the same cores that burns CPU they need (measured: half the classifier's CPU per request).
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         parameters.get("allow_spinning", "0"))
        path = os.path.join(args["model_repository"], args["model_version"],
                            parameters.get("model_filename", "model.onnx"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        outputs = self.session.run([self.output_name], {self.input_name: batch})[0]
        responses, start = [], 0
        for array in arrays:
            rows = outputs[start:start + len(array)]
            start += len(array)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, rows)]))
        return responses
