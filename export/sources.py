"""Where a model comes from: the built-in digits CNN, a user's Keras file or SavedModel, or a keras.applications
architecture. Each source yields a ``LoadedModel``: one TensorFlow callable plus everything the manifest needs."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triton_deploy.errors import ModelSourceError, UsageError
from triton_deploy.preprocessing import ImageTransform

from . import digits, graph

# keras.applications architectures: constructor name, default input size, and the preprocessing each one expects,
# written as (pixel * scale - mean) / std so one formula serves all of them.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mobilenet_v2": {"cls": "MobileNetV2", "size": 224, "scale": 1 / 255, "mean": (0.5,), "std": (0.5,)},
    "resnet50": {"cls": "ResNet50", "size": 224, "scale": 1.0, "channel_order": "BGR",
                 "mean": (103.939, 116.779, 123.68), "std": (1.0,)},
    "efficientnet_b0": {"cls": "EfficientNetB0", "size": 224, "scale": 1.0, "mean": (0.0,), "std": (1.0,)},
    "mobilenet_v3_small": {"cls": "MobileNetV3Small", "size": 224, "scale": 1.0, "mean": (0.0,), "std": (1.0,)},
}


@dataclass
class LoadedModel:
    """A model ready to convert: ``call`` maps a float32 NHWC batch to the output batch."""

    name: str
    call: Callable[[Any], Any]  # tf tensor -> tf tensor; traced into a tf.function for conversion
    input_shape: tuple[int, int, int]  # H, W, C
    num_classes: int
    transform: ImageTransform
    labels: tuple[str, ...]
    source: dict[str, Any]
    output_kind: str | None = None  # None: decide from sample outputs
    keras_model: Any = None
    dataset: digits.DigitsData | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.call(batch))


def _keras():
    # TensorFlow: seconds to import, paid only by the commands that build, train or convert a model
    import keras

    return keras


def from_digits(*, seed: int, epochs: int, progress=None, render_progress=None) -> LoadedModel:
    data = digits.load_digits_data(seed=seed)
    model = digits.train_digits_model(data, epochs=epochs, progress=progress, render_progress=render_progress)
    return LoadedModel(
        name="digits",
        call=lambda x: model(x, training=False),
        input_shape=(digits.IMAGE_SIZE, digits.IMAGE_SIZE, 1),
        num_classes=len(digits.LABELS),
        transform=digits.TRANSFORM,
        labels=digits.LABELS,
        source={"kind": "digits", "epochs": epochs, "augmented_per_image": digits.AUGMENTED_PER_IMAGE},
        output_kind="logits",
        keras_model=model,
        dataset=data,
        extra={"multiply_adds_per_image": graph.count_multiply_adds(model)},
    )


def from_architecture(arch: str, *, image_size: int | None, weights: Path | None, seed: int) -> LoadedModel:
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}", hint=f"--arch takes one of: {', '.join(ARCHITECTURES)}")
    keras = _keras()
    preset = ARCHITECTURES[arch]
    size = image_size or preset["size"]
    keras.utils.set_random_seed(seed)
    constructor = getattr(keras.applications, preset["cls"])
    model = constructor(weights=None, input_shape=(size, size, 3), classes=1000)
    if weights is not None:
        if not Path(weights).is_file():
            raise ModelSourceError(f"weights file {weights} not found", hint="check --weights")
        try:
            model.load_weights(str(weights))
        except Exception as exc:
            raise ModelSourceError(f"cannot load weights {weights} into {arch}: {exc}", hint="check --weights") from None
    transform = ImageTransform(
        height=size, width=size, color_mode="RGB", channel_order=preset.get("channel_order", "RGB"),
        scale=preset["scale"], mean=preset["mean"], std=preset["std"],
    )
    return LoadedModel(
        name=arch,
        call=lambda x: model(x, training=False),
        input_shape=(size, size, 3),
        num_classes=1000,
        transform=transform,
        labels=tuple(f"class_{i}" for i in range(1000)),
        source={"kind": "arch", "arch": arch, "weights": str(weights) if weights else "random"},
        output_kind="probabilities",  # keras.applications end in softmax
        keras_model=model,
    )


def from_keras_file(path: Path) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"Keras model file {path} not found", hint="check --keras-model")
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ModelSourceError(f"{path} is not a .keras or .h5 file", hint="--keras-model takes .keras or .h5; "
                               "use --saved-model for a SavedModel directory")
    _check_keras_format(path)
    keras = _keras()
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise ModelSourceError(f"cannot load {path} as a Keras model: {_first_line(exc)}",
                               hint="check --keras-model") from None
    if len(model.inputs) != 1:
        raise ModelSourceError(
            f"{path} has {len(model.inputs)} inputs; an image classifier takes exactly one image tensor",
            hint="export a single-input model with --keras-model",
        )
    if len(model.outputs) != 1:
        raise ModelSourceError(f"{path} has {len(model.outputs)} outputs; expected one class-score tensor",
                               hint="check --keras-model")
    input_shape = _image_shape(tuple(model.inputs[0].shape), path, "--keras-model")
    num_classes = _num_classes(tuple(model.outputs[0].shape), path, "--keras-model")
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    kind = "probabilities" if activation == "softmax" or type(last).__name__ == "Softmax" else None
    return LoadedModel(
        name=_safe_name(path.stem), call=lambda x: model(x, training=False), input_shape=input_shape,
        num_classes=num_classes, transform=_default_transform(input_shape), labels=_default_labels(num_classes),
        source={"kind": "keras", "path": str(path)}, output_kind=kind, keras_model=model,
    )


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # at 0, or after a user block of 512, 1024, 2048... bytes


def _check_keras_format(path: Path) -> None:
    """Keras reports a file it cannot parse as "File not found" (a file that exists): look at the bytes first. A
    ``.keras`` model is a zip archive, an ``.h5`` one an HDF5 file."""
    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ModelSourceError(f"{path} is not a Keras file: a .keras model is a zip archive (model.save("
                                   "'name.keras')) and this file is not one", hint="check --keras-model")
        return
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not any(head[offset:offset + 8] == HDF5_SIGNATURE for offset in (0, 512, 1024, 2048, 4096, 8192, 16384, 32768)):
        raise ModelSourceError(f"{path} is not a Keras file: an .h5 model is an HDF5 file and this file is not one",
                               hint="check --keras-model")


def from_saved_model(directory: Path) -> LoadedModel:
    directory = Path(directory)
    if not (directory / "saved_model.pb").is_file():
        raise ModelSourceError(f"{directory} is not a SavedModel directory (no saved_model.pb)",
                               hint="check --saved-model")
    # TensorFlow: seconds to import, paid only by the commands that build, train or convert a model
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(directory))
        signature = loaded.signatures["serving_default"]
    except KeyError:
        raise ModelSourceError(f"{directory} has no 'serving_default' signature", hint="check --saved-model") from None
    except Exception as exc:
        raise ModelSourceError(f"cannot load SavedModel {directory}: {_first_line(exc)}",
                               hint="check --saved-model") from None
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(inputs) != 1:
        raise ModelSourceError(f"{directory} has {len(inputs)} inputs ({', '.join(sorted(inputs))}); "
                               "an image classifier takes exactly one image tensor", hint="check --saved-model")
    if len(outputs) != 1:
        raise ModelSourceError(f"{directory} has {len(outputs)} outputs ({', '.join(sorted(outputs))}); "
                               "expected one class-score tensor", hint="check --saved-model")
    (input_key, input_spec), = inputs.items()
    (output_key, output_spec), = outputs.items()
    if input_spec.dtype != tf.float32:
        raise ModelSourceError(f"input {input_key!r} of {directory} is {input_spec.dtype.name}; expected float32",
                               hint="check --saved-model")
    input_shape = _image_shape(tuple(input_spec.shape), directory, "--saved-model")
    num_classes = _num_classes(tuple(output_spec.shape), directory, "--saved-model")
    # Keep `loaded` alive with the function: the signature's variables belong to it.
    def call(x, _keep=loaded):
        return signature(**{input_key: x})[output_key]

    return LoadedModel(
        name=_safe_name(directory.name), call=call, input_shape=input_shape, num_classes=num_classes,
        transform=_default_transform(input_shape), labels=_default_labels(num_classes),
        source={"kind": "saved_model", "path": str(directory)},
    )


def keras_file(export_dir: Path, manifest) -> Path:
    """``model.keras`` of an export (written by ``export`` for Keras sources); a clear error when there is none."""
    name = manifest.keras_file
    path = Path(export_dir) / name if name else None
    if path is None or not path.is_file():
        raise ModelSourceError(f"{export_dir} has no Keras source (model.keras); pruning and TFLite conversion "
                               "rebuild the network from it", hint="re-export the built-in model, a --keras-model or "
                                                                   "an --arch with this version of 'triton-deploy export'")
    return path


def keras_from_export(export_dir: Path, manifest) -> Any:
    """The Keras model an export was converted from: where pruning and TFLite conversion start."""
    path = keras_file(export_dir, manifest)
    try:
        return _keras().models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelSourceError(f"cannot load {path}: {_first_line(exc)}", hint="re-export it") from None


def _image_shape(shape: tuple, origin: Path, flag: str) -> tuple[int, int, int]:
    if len(shape) != 4 or any(d is None for d in shape[1:]) or shape[3] not in (1, 3):
        raise ModelSourceError(
            f"the input of {origin} has shape {_fmt(shape)}; expected an image batch (N, H, W, C) with fixed "
            "H and W and C = 1 or 3", hint=f"check {flag}")
    return int(shape[1]), int(shape[2]), int(shape[3])


def _num_classes(shape: tuple, origin: Path, flag: str) -> int:
    if len(shape) != 2 or shape[1] is None or shape[1] < 2:
        raise ModelSourceError(f"the output of {origin} has shape {_fmt(shape)}; expected class scores (N, classes)",
                               hint=f"check {flag}")
    return int(shape[1])


def _default_transform(input_shape: tuple[int, int, int]) -> ImageTransform:
    height, width, channels = input_shape
    return ImageTransform(height=height, width=width, color_mode="L" if channels == 1 else "RGB")


def _default_labels(num_classes: int) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(num_classes))


def _safe_name(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem).strip("_-")
    return cleaned or "model"


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
