"""Shared fixtures: one trained digits export, one generated repository and one live Triton server per session.

They are real: TensorFlow trains the model, tf2onnx converts it, and the tritonserver binary from the nvidia-pytriton
wheel serves it on free local ports.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory) -> Path:
    """The built-in digits model, trained and exported once per session."""
    from triton_deploy.export.pipeline import ExportOptions, export_model

    output = tmp_path_factory.mktemp("exports") / "digits"
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
