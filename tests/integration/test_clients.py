"""The application clients against the real local Triton server: every transport agrees, folders are classified
accurately and in order, every failure has its type and a message that says what to fix, and shared memory is
always cleaned up."""

from __future__ import annotations

import asyncio
import io
import math
import time

import numpy as np
import pytest
from PIL import Image

from conftest import encode_digit
from triton_deploy.clients import (
    AsyncImageClassifier,
    ClassificationError,
    ImageClassifier,
    InvalidInputError,
    ModelMismatchError,
    ModelNotFoundError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServerUnavailableError,
)
from triton_deploy.clients.shm import NAME_PREFIX, leftover_regions
from triton_deploy.server import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.server]


def url_of(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.fixture(scope="module")
def sample_images(heldout_digits):
    """40 held-out digits in every accepted form: PNG and JPEG bytes of several sizes, PIL images, numpy arrays."""
    from triton_deploy.export import digits

    images, _labels = heldout_digits
    samples = []
    for i, pixels in enumerate(images[:40]):
        kind = i % 4
        if kind == 0:
            samples.append(encode_digit(pixels, size=32 + i, fmt="PNG"))
        elif kind == 1:
            samples.append(encode_digit(pixels, size=48 + i, fmt="JPEG"))
        elif kind == 2:
            samples.append(digits.digit_image(pixels, 70))
        else:
            samples.append(np.asarray(digits.digit_image(pixels, 40)))
    return samples


@pytest.fixture(scope="module")
def reference(triton_server, sample_images):
    with ImageClassifier(triton_server.http_url) as client:
        return client.classify(sample_images)


def run(client_kind: str, url: str, images, **kwargs):
    """Classify with the sync or the asyncio client; both return the same structures."""
    if client_kind == "sync":
        with ImageClassifier(url, **kwargs) as client:
            return client.classify(images)

    async def go():
        async with AsyncImageClassifier(url, **kwargs) as client:
            return await client.classify(images)

    return asyncio.run(go())


@pytest.mark.parametrize("preprocess", ["server", "client"])
@pytest.mark.parametrize("shared_memory", [False, True], ids=["socket", "shm"])
@pytest.mark.parametrize("client_kind", ["sync", "async"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_transport_returns_the_same_top_k(triton_server, sample_images, reference, protocol, client_kind,
                                                shared_memory, preprocess):
    found = run(client_kind, url_of(triton_server, protocol), sample_images, protocol=protocol,
                shared_memory=shared_memory, preprocess=preprocess, admin_key=triton_server.admin_key,
                max_batch_size=16)
    assert [p.source for p in found] == [p.source for p in reference]
    for mine, theirs in zip(found, reference):
        assert [r.class_id for r in mine.ranks] == [r.class_id for r in theirs.ranks]
        assert [r.label for r in mine.ranks] == [r.label for r in theirs.ranks]
        np.testing.assert_allclose([r.score for r in mine.ranks], [r.score for r in theirs.ranks], atol=1e-5)
    assert leftover_regions() == []


def test_client_preprocessing_uses_the_servers_labels_and_transform(triton_server, digits_manifest):
    with ImageClassifier(triton_server.grpc_url, protocol="grpc", preprocess="client",
                         admin_key=triton_server.admin_key) as client:
        assert client.local.labels == tuple(digits_manifest.labels)
        assert client.local.transform == digits_manifest.preprocessing
        assert client.local.logits == (digits_manifest.output_kind == "logits")
    # Without the admin key, the export's own transform can be passed instead of the restricted config.
    with ImageClassifier(triton_server.http_url, preprocess="client",
                         transform=digits_manifest.preprocessing) as client:
        assert client.local.labels == tuple(digits_manifest.labels)


def test_a_folder_of_held_out_digits_is_classified_accurately_and_in_order(triton_server, heldout_digits, tmp_path):
    images, labels = heldout_digits
    count = min(240, len(images))
    assert count >= 200
    paths = []
    for i in range(count):
        fmt = "PNG" if i % 3 else "JPEG"
        path = tmp_path / f"{i:04d}.{fmt.lower()}"
        path.write_bytes(encode_digit(images[i], size=(28, 64, 96, 150)[i % 4], fmt=fmt))
        paths.append(path)
    with ImageClassifier(triton_server.grpc_url, protocol="grpc", concurrency=4) as client:
        found = client.classify(paths)
    assert [p.source for p in found] == [str(p) for p in paths]
    accuracy = np.mean([p.class_id == int(label) for p, label in zip(found, labels[:count])])
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f} on {count} held-out digits"


def _ensemble_requests(server) -> int:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.http_url) as raw:
        stats = raw.get_inference_statistics("digits")["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def test_large_inputs_are_split_into_requests_of_the_max_batch_size(triton_server, sample_images):
    images = (sample_images * 2)[:70]
    # Without the admin key the config is unreadable: the documented default of 8 applies.
    with ImageClassifier(triton_server.http_url) as client:
        assert (client.max_batch_size, client.plan.max_batch_size_from) == (8, "default")
        before = _ensemble_requests(triton_server)
        assert len(client.classify(images)) == 70
        assert _ensemble_requests(triton_server) - before == math.ceil(70 / 8)
    # With it, the server's own max batch size is read from the config.
    with ImageClassifier(triton_server.grpc_url, protocol="grpc", admin_key=triton_server.admin_key) as client:
        assert (client.max_batch_size, client.plan.max_batch_size_from) == (32, "config")
        before = _ensemble_requests(triton_server)
        client.classify(images)
        assert _ensemble_requests(triton_server) - before == math.ceil(70 / 32)


@pytest.mark.parametrize("preprocess", ["server", "client"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_bad_image_fails_alone_and_is_named(triton_server, heldout_digits, tmp_path, protocol, preprocess):
    images, _labels = heldout_digits
    good = [encode_digit(p) for p in images[:6]]
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image")
    batch = [good[0], good[1], str(text_file), good[2], b"", str(tmp_path / "missing.png"), *good[3:]]
    with ImageClassifier(url_of(triton_server, protocol), protocol=protocol, preprocess=preprocess,
                         admin_key=triton_server.admin_key, shared_memory=True) as client:
        outcomes = client.classify_many(batch)
        alone = client.classify(good)
        with pytest.raises(ClassificationError) as raised:
            client.classify(batch)
        assert [n for n in client.shared_memory_regions() if n.startswith(NAME_PREFIX)] == []
    assert [o.ok for o in outcomes] == [True, True, False, True, False, False, True, True, True]
    assert [o.prediction.ranks for o in outcomes if o.ok] == [p.ranks for p in alone]
    assert outcomes[2].error.source == str(text_file) and "not a supported image format" in outcomes[2].error.reason
    assert "empty" in outcomes[4].error.reason
    assert "No such file" in outcomes[5].error.reason
    assert "3 of 9 images could not be classified" in str(raised.value)
    assert len(raised.value.outcomes) == 9
    assert leftover_regions() == []


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_no_shared_memory_region_is_left_behind_even_when_a_request_fails(triton_server, sample_images, protocol):
    with ImageClassifier(url_of(triton_server, protocol), protocol=protocol, shared_memory=True) as client:
        client.classify(sample_images[:20])
        with pytest.raises(RequestTooLargeError):
            client.classify(sample_images * 2, batch_size=40)  # the server refuses batches above 32
        assert [n for n in client.shared_memory_regions() if n.startswith(NAME_PREFIX)] == []
    assert leftover_regions() == []


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_server_that_is_not_there_raises_server_unavailable(protocol):
    (port,) = free_ports(1)
    with pytest.raises(ServerUnavailableError) as raised:
        ImageClassifier(f"127.0.0.1:{port}", protocol=protocol, ready_timeout=1, retries=1, backoff=0.05)
    assert f"127.0.0.1:{port}" in str(raised.value) and "--url" in str(raised.value)

    async def go():
        await AsyncImageClassifier(f"127.0.0.1:{port}", protocol=protocol, ready_timeout=1).connect()

    with pytest.raises(ServerUnavailableError):
        asyncio.run(go())


@pytest.mark.parametrize("client_kind", ["sync", "async"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_closed_port_fails_fast_instead_of_waiting_the_ready_timeout(protocol, client_kind):
    (port,) = free_ports(1)
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=f"nothing listens at 127.0.0.1:{port} .connection refused."):
        run(client_kind, f"127.0.0.1:{port}", [], protocol=protocol, ready_timeout=30)
    assert time.monotonic() - started < 10  # the retries (about 1 s), not the 30 s ready timeout


@pytest.mark.parametrize("client_kind", ["sync", "async"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_client_on_the_other_protocols_port_names_the_mix_up(triton_server, protocol, client_kind):
    other = "grpc" if protocol == "http" else "http"
    started = time.monotonic()
    port_name = {"http": "HTTP", "grpc": "gRPC"}[other]
    with pytest.raises(ServerUnavailableError, match=f"looks like Triton's {port_name} port.*--protocol {other} with"):
        run(client_kind, url_of(triton_server, other), [], protocol=protocol, ready_timeout=30)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unknown_model_raises_model_not_found_with_the_servers_message(triton_server, protocol):
    with pytest.raises(ModelNotFoundError) as raised:
        ImageClassifier(url_of(triton_server, protocol), protocol=protocol, model="digitz")
    assert "'digitz'" in str(raised.value) and "--model" in str(raised.value)
    assert "unknown model" in raised.value.server_message


def test_a_model_that_is_not_a_classifier_ensemble_raises_model_mismatch(triton_server):
    with pytest.raises(ModelMismatchError, match="encoded-image input"):
        ImageClassifier(triton_server.http_url, model="digits_classifier")
    with pytest.raises(ModelMismatchError, match="admin key"):
        ImageClassifier(triton_server.grpc_url, protocol="grpc", preprocess="client")


def test_an_oversized_request_raises_request_too_large(triton_server, sample_images):
    with ImageClassifier(triton_server.grpc_url, protocol="grpc") as client:
        with pytest.raises(RequestTooLargeError, match="batch-size must be <= 32") as raised:
            client.classify(sample_images, batch_size=40)
    assert "--batch-size" in str(raised.value)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_request_slower_than_the_timeout_raises_request_timeout(triton_server, sample_images, protocol):
    with pytest.raises(RequestTimeoutError, match="timeout"):
        # 32 images through three python-backend models take far longer than 2 ms.
        run("sync", url_of(triton_server, protocol), sample_images[:32], protocol=protocol, timeout=0.002,
            retries=0, max_batch_size=32)


def test_inputs_of_the_wrong_kind_raise_invalid_input(triton_server, sample_images):
    with ImageClassifier(triton_server.http_url) as client:
        with pytest.raises(InvalidInputError, match="input #1 is a float"):
            client.classify([sample_images[0], 1.5])
        with pytest.raises(InvalidInputError, match="float32 array"):
            client.classify(np.zeros((8, 8), dtype=np.float32))
        with pytest.raises(InvalidInputError, match="top_k must be between 1 and 5"):
            client.classify(sample_images[:1], top_k=6)
        # A single image, a PIL image of an unusual mode and a batch array are all accepted.
        single = client.classify(sample_images[0], top_k=2)
        assert len(single) == 1 and len(single[0].ranks) == 2
        hsv = Image.open(io.BytesIO(sample_images[0])).convert("RGB").convert("HSV")
        assert len(client.classify([hsv])) == 1
        batch = np.stack([np.zeros((20, 20, 3), np.uint8), np.full((20, 20, 3), 255, np.uint8)])
        assert [p.source for p in client.classify(batch)] == ["#0 (array)", "#1 (array)"]
