"""Triton python-backend model: runs the exported ``model.onnx`` with ONNX Runtime.

The local ``tritonserver`` from the nvidia-pytriton wheel has only the python backend, so this is how the classifier
runs here; the NGC container uses the native ``onnxruntime`` backend with the same ONNX file. The requests of a
dynamic batch are joined and run in ONNX Runtime calls of at most ``session_batch_size`` images (0: one call), so a
large batch does not outgrow the CPU caches; a single request that fits is passed without a copy.
Thread counts come from ``config.pbtxt`` parameters; ``intra_op_thread_count: auto`` shares the CPUs this server may
use among the classifier's instances.
"""

import json
import math
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
        threads = intra_op_threads(parameters.get("intra_op_thread_count", "auto"), instances)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
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
        self.chunk = int(parameters.get("session_batch_size", "0"))
        pb_utils.Logger.log_info(
            f"{args['model_instance_name']}: {threads} intra-op thread(s) ({instances} instance(s), "
            f"{available_cpus()} CPU(s) available), up to {self.chunk or 'all'} image(s) per ONNX Runtime call")

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        outputs = self.run(batch)
        responses, start = [], 0
        for array in arrays:
            rows = outputs[start:start + len(array)]
            start += len(array)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, rows)]))
        return responses

    def run(self, batch):
        if not self.chunk or len(batch) <= self.chunk:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        parts = [self.session.run([self.output_name], {self.input_name: batch[i:i + self.chunk]})[0]
                 for i in range(0, len(batch), self.chunk)]
        return np.concatenate(parts)


def intra_op_threads(setting, instances):
    """``auto`` -> this instance's share of the available CPUs (at least 1); a number is used as given."""
    if setting.strip().lower() != "auto":
        return int(setting)
    return max(1, available_cpus() // instances)


def available_cpus():
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a Kubernetes CPU limit; cgroup v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us``). ONNX Runtime's own default counts the node's cores and oversubscribes a
    pod with a lower limit."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return min(count, max(1, math.ceil(quota))) if quota else count


def cgroup_cpu_quota():
    """CPUs' worth of time per period the cgroup allows, or None when unlimited or unknown."""
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = _read("/sys/fs/cgroup/cpu.max").split()[:2]
    except (OSError, ValueError):
        try:  # cgroup v1: quota -1 when unlimited
            quota = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").strip()
            period = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us").strip()
        except OSError:
            return None
    try:
        return int(quota) / int(period) if int(quota) > 0 else None
    except (ValueError, ZeroDivisionError):  # "max"
        return None


def _read(path):
    with open(path, encoding="ascii") as f:
        return f.read()
