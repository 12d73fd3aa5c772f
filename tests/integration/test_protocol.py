"""The ensemble called without the project's client: every `sh` block of docs/protocol.md (curl with JSON+base64,
the classification extension, the binary-data extension, grpcurl) run as written against a real server, and the
preprocess step's counting of base64 images."""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from triton_deploy.monitoring import model_metrics as mm

pytestmark = [pytest.mark.slow, pytest.mark.server]

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def doc_commands() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)


def test_protocol_page_has_the_commands_the_issue_asks_for():
    commands = doc_commands()
    assert [c.split()[0] for c in commands] == ["IMAGE_B64=$(base64", "curl", "SIZE=$(wc", ".venv/bin/python",
                                                "grpcurl"]
    assert "Inference-Header-Content-Length" in commands[2] and "binary_data_size" in commands[2]
    assert '"classification": 3' in commands[1]


@pytest.fixture(scope="module")
def known_digit(triton_server, heldout_digits):
    """(encoded PNG, label) of the first held-out digit the server classifies right through the tritonclient path."""
    import tritonclient.grpc as grpcclient

    from conftest import encode_digit

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    images, labels = heldout_digits
    for pixels, label in zip(images, labels, strict=True):
        png = encode_digit(pixels)
        tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[png]], dtype=np.object_))
        if int(client.infer("digits", [tensor]).as_numpy("CLASS_IDS")[0, 0]) == label:
            return png, str(label)
    pytest.fail("the server classifies no held-out digit right")


def run_block(command: str, server, cwd: Path) -> str:
    """One block of the page as written, with the test server's ports for the documented defaults."""
    command = (command.replace("127.0.0.1:8000", f"127.0.0.1:{server.options.http_port}")
               .replace("127.0.0.1:8001", f"127.0.0.1:{server.options.grpc_port}"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # grpcurl
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True,
                            timeout=120)
    assert result.returncode == 0, f"{command}\nexit {result.returncode}: {result.stderr.decode()}"
    return result.stdout.decode()


def images_by_encoding(server) -> dict[str, float]:
    time.sleep(1.5)  # the preprocess model flushes its metrics every 0.5 s
    url = f"http://127.0.0.1:{server.options.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for match in re.finditer(rf'^{mm.IMAGES}{{([^}}]*)}} (\S+)$', text, flags=re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels["model"] == "digits" and labels["format"] == "png":
            counts[labels["encoding"]] = counts.get(labels["encoding"], 0.0) + float(match.group(2))
    return counts


def test_every_command_of_the_protocol_page_classifies_the_digit(triton_server, known_digit, tmp_path):
    png, label = known_digit
    (tmp_path / "build" / "digits").mkdir(parents=True)
    (tmp_path / "build" / "digits" / "sample.png").write_bytes(png)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    python = tmp_path / ".venv" / "bin" / "python"  # the page runs from a checkout: this environment's python
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    before = images_by_encoding(triton_server)
    json_base64, classification, binary, protoset, grpcurl = doc_commands()

    # JSON only, the image as base64 text: the top-k outputs, the true label first.
    answer = json.loads(run_block(json_base64, triton_server, tmp_path))
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["LABELS"]["shape"] == [1, 5] and outputs["LABELS"]["data"][0] == label
    assert outputs["CLASS_IDS"]["data"][0] == int(label) and outputs["SCORES"]["datatype"] == "FP32"

    # class_count=3 on PROBABILITIES: Triton's own top 3 as score:index:label, the true label first.
    (top3,) = json.loads(run_block(classification, triton_server, tmp_path))["outputs"]
    ranks = [entry.split(":") for entry in top3["data"]]
    assert top3["shape"] == [1, 3] and [r[2] for r in ranks][0] == label and ranks[0][1] == label
    assert [float(r[0]) for r in ranks] == sorted((float(r[0]) for r in ranks), reverse=True)

    # The binary-data extension: the same answer from the raw bytes.
    binary_answer = {o["name"]: o for o in json.loads(run_block(binary, triton_server, tmp_path))["outputs"]}
    assert binary_answer["LABELS"]["data"] == outputs["LABELS"]["data"]
    assert binary_answer["SCORES"]["data"] == pytest.approx(outputs["SCORES"]["data"])
    body = (tmp_path / "request.bin").read_bytes()
    (size,) = struct.unpack_from("<I", body, len(body) - len(png) - 4)
    assert size == len(png) and body.endswith(png)  # the 4-byte little-endian length prefix, then the file

    # grpcurl with a descriptor set written from tritonclient's definitions (Triton has no reflection).
    run_block(protoset, triton_server, tmp_path)
    assert (tmp_path / "triton.protoset").stat().st_size > 10_000
    grpc_answer = json.loads(run_block(grpcurl, triton_server, tmp_path))
    assert grpc_answer["outputs"][0]["name"] == "PROBABILITIES" and grpc_answer["outputs"][0]["shape"] == ["1", "3"]
    raw = base64.b64decode(grpc_answer["raw_output_contents"][0])
    (length,) = struct.unpack_from("<I", raw)
    assert raw[4:4 + length].decode().split(":")[1:] == [label, label]

    # The preprocess step counted the two base64 images (JSON, classification) apart from the raw ones.
    after = images_by_encoding(triton_server)
    assert after.get("base64", 0) - before.get("base64", 0) == 2
    assert after.get("binary", 0) - before.get("binary", 0) == 2  # the binary extension and grpcurl


def test_json_element_that_is_neither_an_image_nor_base64_of_one_keeps_the_clear_error(triton_server):
    body = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES",
                                   "data": ["this is not an image"]}]}).encode()
    request = urllib.request.Request(f"http://{triton_server.http_url}/v2/models/digits/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 400
    assert "cannot decode image: not a supported image format" in json.loads(error.value.read())["error"]
