"""The python-backend classifier inside the real server: how it sizes its ONNX Runtime threads and splits dynamic
batches into cache-sized calls, and that a split batch answers exactly as one call would."""

from __future__ import annotations

import os
import re

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from conftest import encode_digit
from triton_deploy.postprocessing import classify

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_each_instance_takes_its_share_of_the_cpus_and_a_cache_sized_call(triton_server):
    lines = [line for line in triton_server.log_tail(400) if "intra-op thread" in line]
    cpus = len(os.sched_getaffinity(0))
    assert len(lines) == 2, lines  # two instances by default, each says what it chose
    for line in lines:
        match = re.search(r"(\d+) intra-op thread\(s\) \((\d+) instance\(s\), (\d+) CPU\(s\) available\), "
                          r"up to (\w+) image\(s\) per ONNX Runtime call", line)
        assert match, line
        threads, instances, available, chunk = match.groups()
        assert (int(threads), int(instances), int(available)) == (max(1, cpus // 2), 2, cpus)
        assert chunk == "8"  # 4 MiB budget / the digits CNN's 512 KiB largest activation


def test_a_batch_split_into_several_calls_answers_as_one_call_would(triton_server, digits_export, digits_manifest,
                                                                   heldout_digits):
    images, _ = heldout_digits
    blobs = [encode_digit(images[i]) for i in range(27)]  # 8 + 8 + 8 + 3 in the classifier
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    tensor = grpcclient.InferInput("IMAGE", [len(blobs), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    result = client.infer("digits", [tensor])

    batch, _, errors = digits_manifest.preprocessing.preprocess(blobs)
    assert not any(errors)
    session = ort.InferenceSession(str(digits_export / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {digits_manifest.input.name: batch})[0]  # all 27 in one call
    ids, scores = classify(logits, 5, logits=True)
    np.testing.assert_array_equal(result.as_numpy("CLASS_IDS"), ids)
    np.testing.assert_allclose(result.as_numpy("SCORES"), scores, rtol=1e-5, atol=1e-6)


def test_a_server_confined_to_one_cpu_gives_each_instance_one_thread(digits_repository, tmp_path):
    """What a container's cpuset does: the classifier counts the CPUs it may use, not the machine's."""
    from triton_deploy.server import ServerOptions, TritonServer, free_ports

    http_port, grpc_port, metrics_port = free_ports(3)
    options = ServerOptions(repository=digits_repository, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, log_file=tmp_path / "triton.log", exit_timeout_s=5)
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # the server started now inherits a one-CPU mask
    try:
        server = TritonServer(options)
        server.start()
    finally:
        os.sched_setaffinity(0, allowed)
    try:
        server.wait_ready()
        lines = [line for line in server.log_tail(400) if "intra-op thread" in line]
    finally:
        server.stop()
    assert len(lines) == 2 and all("1 intra-op thread(s) (2 instance(s), 1 CPU(s) available)" in line
                                   for line in lines), lines
