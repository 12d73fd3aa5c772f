"""Shared fixtures: one trained digits export, one generated repository and one live Triton server per session.

They are real: TensorFlow trains the model, tf2onnx converts it, and the tritonserver binary from the nvidia-pytriton
wheel serves it on free local ports. Only tests/integration/ may use them (the collection hook below refuses them under
tests/unit/); the unit tier builds tiny exports by hand with ``make_export``.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from triton_deploy.preprocessing import ImageTransform
from triton_deploy.spec import Manifest, Parity, TensorSpec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent


# The unit tier's rule: no training, no server. A test under tests/unit/ that asks for one of these fixtures (each
# trains the digits model or starts Triton, directly or through another) or carries the slow or server mark is a
# collection error, so `make test-fast` cannot silently grow slow again.
HEAVY_FIXTURES = frozenset({"digits_export", "digits_manifest", "digits_repository", "triton_server", "rescaling_model"})
UNIT_TIER = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    problems = []
    for item in items:
        if UNIT_TIER not in Path(item.path).resolve().parents:
            continue
        heavy = HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        marks = {mark.name for mark in item.iter_markers()} & {"slow", "server"}
        if heavy or marks:
            problems.append(f"{item.nodeid}: {', '.join(sorted(heavy | marks))}")
    if problems:
        raise pytest.UsageError("tests/unit/ needs neither training nor a server; move these to tests/integration/:\n  "
                                + "\n  ".join(problems))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak-seconds", type=int, default=30, metavar="S",
                     help="length of the sustained-load test at saturation (default 30; at least 20)")


@pytest.fixture(scope="session")
def soak_seconds(request) -> int:
    seconds = request.config.getoption("soak_seconds")
    if seconds < 20:  # the first 10 s of load are warm-up; memory is compared over the rest
        raise pytest.UsageError(f"--soak-seconds {seconds}: give at least 20")
    return seconds


DEMO_EXPORT = ROOT / "build" / "digits"  # what `make demo` exports (CI runs the demo before the tests)


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory) -> Path:
    """The built-in digits model, trained and exported once per session, or a copy of the demo's export when the demo
    made it from these very sources and library versions (the same training: 2-4 minutes saved on 2 cores)."""
    import shutil

    from triton_deploy import fingerprint
    from triton_deploy.export.pipeline import ExportOptions, export_model

    output = tmp_path_factory.mktemp("exports") / "digits"
    if fingerprint.matches(DEMO_EXPORT):
        shutil.copytree(DEMO_EXPORT, output)  # a copy: no test can change the demo's files
    else:
        export_model(ExportOptions(output=output))
    return output


@pytest.fixture(scope="session")
def digits_manifest(digits_export):
    from triton_deploy.spec import Manifest

    return Manifest.read(digits_export)


@pytest.fixture(scope="session")
def digits_repository(digits_export, tmp_path_factory) -> Path:
    """A repository with the python classifier backend, as the local server needs."""
    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.writer import generate_repository

    output = tmp_path_factory.mktemp("repos") / "model_repository"
    generate_repository([digits_export], RepositoryOptions(output=output, max_queue_delay_us=2000))
    return output


@pytest.fixture(scope="session")
def triton_server(digits_repository, tmp_path_factory):
    """A live Triton server on free ports, serving ``digits_repository``."""
    from triton_deploy.server import ServerOptions, TritonServer, free_ports

    http_port, grpc_port, metrics_port = free_ports(3)
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    options = ServerOptions(repository=digits_repository, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, log_file=log, exit_timeout_s=10)
    with TritonServer(options) as server:
        yield server


@pytest.fixture(scope="session")
def rescaling_model(tmp_path_factory) -> tuple[Path, Path]:
    """A model that rescales its input itself (pixels 0-255 in) and names an image's dominant colour, and labelled
    samples: six images per colour. Its bias favours "red", so inputs scaled twice (by the default 1/255 and again
    inside) all come out red: chance level."""
    import keras
    from PIL import Image

    folder = tmp_path_factory.mktemp("rescaling")
    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(3)
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([np.eye(3, dtype=np.float32), np.array([0.3, 0.0, 0.0], dtype=np.float32)])
    model.save(folder / "rescaling.keras")
    for channel, colour in enumerate(("red", "green", "blue")):
        (folder / "samples" / colour).mkdir(parents=True)
        for i in range(6):
            pixels = np.full((16, 16, 3), 20 + i, dtype=np.uint8)
            pixels[..., channel] = 230
            Image.fromarray(pixels).save(folder / "samples" / colour / f"{i}.png")
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    return folder / "rescaling.keras", folder


@pytest.fixture(scope="session")
def heldout_digits():
    """(images 8x8 uint8, labels) of the recorded held-out split."""
    from triton_deploy.export import digits

    return digits.load_digits_data().split("heldout")


def encode_digit(pixels: np.ndarray, size: int = 64, fmt: str = "PNG") -> bytes:
    """One digit as an encoded image file of the given size and format."""
    from triton_deploy.export import digits

    buffer = io.BytesIO()
    digits.digit_image(pixels, size).save(buffer, format=fmt)
    return buffer.getvalue()


def tiny_onnx(path: Path, seed: int = 0, classes: int = 3) -> None:
    """image [batch, 8, 8, 1] -> Flatten -> MatMul -> logits [batch, classes]."""
    weights = np.random.default_rng(seed).normal(size=(64, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 8, 8, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(weights, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def make_export(folder: Path, name: str = "tiny", seed: int = 0, classes: int = 3) -> Path:
    """An export directory (model.onnx, manifest, labels, a sample) around ``tiny_onnx``: no TensorFlow needed."""
    folder.mkdir(parents=True)
    tiny_onnx(folder / "model.onnx", seed, classes)
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format="PNG")
    (folder / "sample.png").write_bytes(buffer.getvalue())
    manifest = Manifest(
        name=name, input=TensorSpec("image", (-1, 8, 8, 1), "FP32", layout="NHWC"),
        output=TensorSpec("logits", (-1, classes), "FP32"), output_kind="logits",
        preprocessing=ImageTransform(height=8, width=8, color_mode="L"),
        labels=tuple(f"label {i}" for i in range(classes)), opset=17,
        model_sha256=hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest(),
        parity=Parity(0.0, 1.0, 1e-4, 2, (1, 1)), versions={}, source={"kind": "test"},
        sample_image="sample.png",
    )
    manifest.write(folder)
    return folder


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA with server and client certificates (and a stranger's), made at test time."""
    from tls_certs import make_pki  # cryptography: only for the TLS tests

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_repository(tmp_path_factory) -> Path:
    """The tiny hand-built model's repository, for the servers the TLS tests start (no training)."""
    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.writer import generate_repository

    folder = tmp_path_factory.mktemp("tls-repo")
    generate_repository([make_export(folder / "export")], RepositoryOptions(output=folder / "repository"))
    return folder / "repository"
