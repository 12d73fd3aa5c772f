"""Triton's own example clients' logic, unmodified where it can be, against the served digits models.

Written here after the published behaviour of `image_client.py` and `ensemble_image_client.py` (triton-inference-
server/client, src/python/examples): read the model metadata and configuration, check the model's shape as they do,
request the output with the classification extension (`class_count`), and parse each answer as
"score:index:label". Two departures, both documented in docs/protocol.md: `image_client.py`'s fixed scalings
(NONE, INCEPTION, VGG) cannot express the digits model's 1/255, so the client here takes the scale the classifier's
config states in `parameters`; and `ensemble_image_client.py` asks `class_count` of every output, which on a BYTES
output kills Triton 2.51, so it is asked of PROBABILITIES only.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from triton_deploy.contract import ADMIN_HEADER, PROBABILITIES

pytestmark = [pytest.mark.slow, pytest.mark.server]

FORMATS = {"FORMAT_NHWC": 2, "FORMAT_NCHW": 1}  # ModelInput.Format enum values, as image_client compares them
IMAGES = 20


def client_module(protocol: str):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return grpcclient if protocol == "grpc" else httpclient


def read_model(server, protocol: str, model: str) -> tuple[dict, dict]:
    """Metadata and configuration as plain dicts, as the examples read them (gRPC: protobuf as JSON)."""
    lib = client_module(protocol)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    client = lib.InferenceServerClient(url)
    # The configuration API may be restricted to the admin key (gRPC: as metadata with Triton's protocol prefix).
    headers = {("triton-grpc-protocol-" if protocol == "grpc" else "") + ADMIN_HEADER: server.admin_key}
    if protocol == "grpc":
        metadata = client.get_model_metadata(model, as_json=True)
        config = client.get_model_config(model, as_json=True, headers=headers)["config"]
        for tensor in metadata["inputs"] + metadata["outputs"]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]  # int64 as strings in protobuf's JSON
        config["max_batch_size"] = int(config.get("max_batch_size", 0))
    else:
        metadata = client.get_model_metadata(model)
        config = client.get_model_config(model, headers=headers)
    return metadata, config


def parse_classifier(metadata: dict, config: dict) -> tuple[int, str, str, int, int, int, str]:
    """image_client.py's checks: one input of 3 dims (+ batch) in NHWC or NCHW, one FP32 vector output."""
    if len(metadata["inputs"]) != 1 or len(metadata["outputs"]) != 1 or len(config["input"]) != 1:
        raise AssertionError(f"expecting 1 input and 1 output, got {metadata}")
    tensor_in, tensor_out = metadata["inputs"][0], metadata["outputs"][0]
    assert tensor_out["datatype"] == "FP32"
    batching = config["max_batch_size"] > 0
    assert sum(1 for d in tensor_out["shape"][1 if batching else 0:] if d > 1) == 1, "output must be a vector"
    assert len(tensor_in["shape"]) == 3 + batching
    layout = config["input"][0]["format"]
    assert layout in FORMATS, f"unexpected input format {layout}"
    dims = tensor_in["shape"][1 if batching else 0:]
    h, w, c = dims if layout == "FORMAT_NHWC" else (dims[1], dims[2], dims[0])
    return config["max_batch_size"], tensor_in["name"], tensor_out["name"], c, h, w, layout


def preprocess(png: bytes, layout: str, c: int, h: int, w: int, parameters: dict[str, str]) -> np.ndarray:
    """image_client.py's preprocessing (colour mode by channels, bilinear resize, float, optional transpose), with
    the scale, mean and std the classifier's config states in place of its fixed -s choices."""
    image = Image.open(io.BytesIO(png)).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    pixels = np.array(image).astype(np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    scale = float(parameters["input_scale"])
    mean = np.array([float(v) for v in parameters["input_mean"].split(",")], dtype=np.float32)
    std = np.array([float(v) for v in parameters["input_std"].split(",")], dtype=np.float32)
    scaled = (pixels * scale - mean) / std
    return np.transpose(scaled, (2, 0, 1)) if layout == "FORMAT_NCHW" else scaled


def parse_classes(results: np.ndarray) -> list[list[tuple[float, int, str]]]:
    """The examples' postprocess: every element "score:index:label" (bytes) -> (score, index, label)."""
    ranked = []
    for row in results:
        entries = []
        for result in row:
            cls = (result.decode() if isinstance(result, bytes) else "".join(chr(x) for x in result)).split(":")
            entries.append((float(cls[0]), int(cls[1]), cls[2]))  # cls[2]: the label the examples print
        ranked.append(entries)
    return ranked


@pytest.fixture(scope="module")
def digits(heldout_digits):
    from conftest import encode_digit

    images, labels = heldout_digits
    return [encode_digit(pixels) for pixels in images[:IMAGES]], [str(label) for label in labels[:IMAGES]]


def check_top3(ranked: list[list[tuple[float, int, str]]], truth: list[str]) -> None:
    assert all(len(entries) == 3 for entries in ranked)
    for entries in ranked:
        scores = [score for score, _, _ in entries]
        assert scores == sorted(scores, reverse=True)
        assert all(str(index) == label for _, index, label in entries)  # digits: label i is the text of i
    first = [entries[0][2] for entries in ranked]
    assert np.mean([a == b for a, b in zip(first, truth, strict=True)]) >= 0.95, (first, truth)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_client_logic_classifies_through_the_classifier_with_labels(triton_server, digits, protocol):
    metadata, config = read_model(triton_server, protocol, "digits_classifier")
    max_batch_size, input_name, output_name, c, h, w, layout = parse_classifier(metadata, config)
    parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
    assert float(parameters["input_scale"]) == pytest.approx(1 / 255) and parameters["input_color_mode"] == "L"
    assert config["output"][0]["label_filename"] == "labels.txt"
    images, truth = digits
    lib = client_module(protocol)
    client = lib.InferenceServerClient(triton_server.grpc_url if protocol == "grpc" else triton_server.http_url)
    ranked = []
    for start in range(0, len(images), max_batch_size):
        batch = np.stack([preprocess(png, layout, c, h, w, parameters) for png in images[start:start + max_batch_size]])
        tensor = lib.InferInput(input_name, list(batch.shape), metadata["inputs"][0]["datatype"])
        tensor.set_data_from_numpy(batch)
        result = client.infer("digits_classifier", [tensor],
                              outputs=[lib.InferRequestedOutput(output_name, class_count=3)])
        ranked += parse_classes(result.as_numpy(output_name))
    check_top3(ranked, truth)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_image_client_logic_classifies_encoded_images_with_class_count(triton_server, digits, protocol):
    metadata, config = read_model(triton_server, protocol, "digits")
    assert len(metadata["inputs"]) == 1 and len(config["input"]) == 1  # ensemble_image_client.py's checks
    input_name, batch_size = metadata["inputs"][0]["name"], config["max_batch_size"]
    assert PROBABILITIES in {o["name"] for o in metadata["outputs"]}
    images, truth = digits
    lib = client_module(protocol)
    client = lib.InferenceServerClient(triton_server.grpc_url if protocol == "grpc" else triton_server.http_url)
    ranked = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([np.array([png], dtype=bytes) for png in images[start:start + batch_size]], axis=0)
        tensor = lib.InferInput(input_name, list(batch.shape), "BYTES")
        tensor.set_data_from_numpy(batch, **({} if protocol == "grpc" else {"binary_data": True}))
        requested = lib.InferRequestedOutput(PROBABILITIES, class_count=3,
                                             **({} if protocol == "grpc" else {"binary_data": True}))
        ranked += parse_classes(client.infer("digits", [tensor], outputs=[requested]).as_numpy(PROBABILITIES))
    check_top3(ranked, truth)
