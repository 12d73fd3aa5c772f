"""Bad input on every path (HTTP, gRPC, the Python client, Locust payloads) against the real server.

Each bad request gets a clear error naming what was wrong, for that request alone; requests batched with it still
succeed; the next valid request is served; the python-backend stubs neither die nor gain shared-memory regions.
The cases and the answers asserted here are the table in docs/reliability.md.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from conftest import encode_digit
from triton_deploy.clients import ImageClassifier
from triton_deploy.server import SHM_REGION_PREFIX

pytestmark = [pytest.mark.slow, pytest.mark.server]


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` pixels with no pixel data: an image bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


GOOD = encode(Image.new("L", (64, 64), 0))
GOOD_LABEL = None
# name -> (encoded bytes, what the error says; None = classified normally)
IMAGE_CASES = {
    "zero-length": (b"", "image is empty (0 bytes)"),
    "text": (b"this is text, not an image", "cannot decode image: not a supported image format"),
    "random bytes": (np.random.default_rng(0).bytes(4096), "cannot decode image: not a supported image format"),
    "truncated PNG": (encode(Image.new("L", (64, 64), 9))[:60], "cannot decode PNG data: image file is truncated"),
    "image bomb header": (png_claiming(100_000, 100_000),
                          "image of 100000x100000 pixels exceeds the limit of 40000000 pixels"),
    "compressed bomb": (encode(Image.new("L", (7000, 7000), 0)),
                        "image of 7000x7000 pixels exceeds the limit of 40000000 pixels"),
    "unsupported format (SVG)": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
                                 "cannot decode image: not a supported image format"),
    "1x1": (encode(Image.new("RGB", (1, 1), (255, 0, 0))), None),
    "very wide 20000x1": (encode(Image.new("L", (20000, 1), 100)), None),
    "16-bit greyscale": (encode(Image.fromarray(np.arange(4096, dtype=np.uint16).reshape(64, 64) * 16)), None),
    "CMYK JPEG": (encode(Image.new("CMYK", (40, 40), (0, 0, 0, 100)), "JPEG"), None),
}


def _stubs_and_regions(server) -> tuple[set[int], set[str]]:
    triton = psutil.Process(server.process.pid)
    stubs = {child.pid for child in triton.children() if child.status() != psutil.STATUS_ZOMBIE}
    maps = open(f"/proc/{server.process.pid}/maps").read().splitlines()
    return stubs, {line.split()[-1] for line in maps if SHM_REGION_PREFIX in line}


@pytest.fixture(scope="module")
def stable_server(triton_server):
    """The live server; after the module, its stubs are the same processes and it maps the same regions."""
    global GOOD_LABEL
    before = _stubs_and_regions(triton_server)
    GOOD_LABEL = infer("grpc", triton_server, [GOOD])[0, 0]  # what a valid request is answered before bad input
    yield triton_server
    assert _stubs_and_regions(triton_server) == before, "a stub died or shared memory regions were added"


def infer(protocol: str, server, blobs: list[bytes]):
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    image = module.InferInput("IMAGE", [len(blobs), 1], "BYTES")
    image.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    try:
        return client.infer("digits", [image]).as_numpy("LABELS")
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_each_bad_image_gets_a_clear_error_and_the_next_request_is_served(stable_server, protocol, case):
    data, message = IMAGE_CASES[case]
    if message is None:
        assert infer(protocol, stable_server, [data]).shape == (1, 5)
    else:
        with pytest.raises(InferenceServerException) as raised:
            infer(protocol, stable_server, [GOOD, data])
        text = str(raised.value)
        assert f"image 1 of the request: {message}" in text
        assert ("400" if protocol == "http" else "INVALID_ARGUMENT") in str(raised.value.status())
    assert infer(protocol, stable_server, [GOOD])[0, 0] == GOOD_LABEL


def test_bad_images_fail_alone_while_their_dynamic_batch_mates_succeed(stable_server, heldout_digits):
    images, labels = heldout_digits
    bad = {i: IMAGE_CASES[name][0] for i, name in zip(range(2, 48, 6), [n for n, c in IMAGE_CASES.items() if c[1]])}
    stats = grpcclient.InferenceServerClient(stable_server.grpc_url)

    def counts():
        model = stats.get_inference_statistics("digits_preprocess", as_json=True)["model_stats"][0]
        return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))

    def one(i):
        try:
            return infer("grpc", stable_server, [bad[i] if i in bad else encode_digit(images[i])])[0, 0].decode()
        except InferenceServerException as exc:
            return exc

    for _attempt in range(3):  # until Triton actually batched requests together (it does under a burst)
        before = counts()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(48)))
        inferences, executions = (a - b for a, b in zip(counts(), before))
        if executions < inferences:
            break
    assert executions < inferences, "no dynamic batching happened in three bursts"
    failed = {i for i, r in enumerate(results) if isinstance(r, InferenceServerException)}
    assert failed == set(bad)
    good = [i for i in range(48) if i not in bad]
    assert np.mean([results[i] == str(labels[i]) for i in good]) >= 0.9


# ---- tensor-level mistakes, per protocol ---------------------------------------------------------------------


def _raw(protocol: str, server, name="IMAGE", dtype="BYTES", shape=(1, 1), array=None):
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    tensor = module.InferInput(name, list(shape), dtype)
    tensor.set_data_from_numpy(array if array is not None else np.full(shape, GOOD, dtype=np.object_))
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.infer("digits", [tensor])
        return str(raised.value)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wrong_tensor_name_dtype_shape_and_batch_size_are_named(stable_server, protocol):
    assert "unexpected inference input 'PIXELS' for model 'digits'" in _raw(protocol, stable_server, name="PIXELS")
    assert "data-type is 'FP32', but model 'digits' expects 'BYTES'" in _raw(
        protocol, stable_server, dtype="FP32", array=np.zeros((1, 1), np.float32))
    assert "unexpected shape for input 'IMAGE' for model 'digits'. Expected [-1,1], got [1,2]" in _raw(
        protocol, stable_server, shape=(1, 2))
    assert "batch-size must be <= 32 for 'digits'" in _raw(protocol, stable_server, shape=(33, 1))
    assert infer(protocol, stable_server, [GOOD]).shape == (1, 5)


def _post(server, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/digits/infer", data=body, method="POST",
                                     headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]


def test_malformed_json_is_a_parse_error_naming_the_offset(stable_server):
    assert _post(stable_server, b'{"inputs": [ {') == (
        500, "failed to parse the request JSON buffer: Missing a name for object member. at 14")
    assert _post(stable_server, b"hello")[1] == "failed to parse the request JSON buffer: Invalid value. at 0"
    assert infer("http", stable_server, [GOOD]).shape == (1, 5)


def test_an_http_body_above_64_mib_is_not_capped_by_triton_2_51_and_the_image_byte_limit_answers(stable_server):
    # Triton 2.51 has no --http-max-input-size (added in later releases with a 64 MiB default): the body is read
    # whole, and the preprocess model's per-image limit (max_bytes, 32 MiB) is what refuses it.
    size = 70 * 1024 * 1024
    header = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": size + 4}}]}).encode()
    body = header + struct.pack("<I", size) + b"\x89PNG" + bytes(size - 4)
    status, message = _post(stable_server, body, {"Inference-Header-Content-Length": str(len(header)),
                                                  "Content-Type": "application/octet-stream"})
    assert (status, message) == (400, f"in ensemble 'digits', image 0 of the request: image is {size} bytes, "
                                      f"above the limit of 33554432 bytes")
    assert infer("http", stable_server, [GOOD]).shape == (1, 5)


# ---- the Python client and Locust payloads -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_python_client_reports_each_bad_image_by_name_and_classifies_the_rest(stable_server, protocol):
    names = list(IMAGE_CASES)
    url = stable_server.http_url if protocol == "http" else stable_server.grpc_url
    with ImageClassifier(url, protocol=protocol) as client:
        outcomes = client.classify_many([IMAGE_CASES[name][0] for name in names])
        assert client.classify([GOOD])[0].label == GOOD_LABEL.decode()
    for name, outcome in zip(names, outcomes):
        message = IMAGE_CASES[name][1]
        if message is None:
            assert outcome.ok, f"{name}: {outcome.error}"
        else:
            assert not outcome.ok and message in outcome.error.reason, f"{name}: {outcome.error}"


def test_locust_payloads_with_bad_images_count_them_as_failures_naming_the_reason(stable_server, tmp_path):
    from triton_deploy.loadtests.runner import LoadTestOptions, run_loadtest
    from triton_deploy.loadtests.slo import SLO

    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(6):
        (folder / f"good{n}.png").write_bytes(encode(Image.new("L", (64, 64), 40 * n)))
    (folder / "text.png").write_bytes(IMAGE_CASES["text"][0])
    (folder / "bomb.png").write_bytes(IMAGE_CASES["image bomb header"][0])
    result = run_loadtest(LoadTestOptions(output=tmp_path / "lt", url=stable_server.http_url,
                                          metrics_url=stable_server.metrics_url, users=2, duration_s=3,
                                          image_dir=folder, slo=SLO(error_rate=None)))  # failures expected
    run = result.summary["runs"][0]
    assert 0 < run["failures"] < run["requests"]
    with open(result.directory / "locust_failures.csv", newline="") as f:
        errors = " ".join(row["Error"] for row in csv.DictReader(f))
    assert "not a supported image format" in errors and "exceeds the limit of 40000000 pixels" in errors
