"""The export manifest and the tensor specs in it: one source of truth for every later step.

``manifest.json`` is written by ``triton-deploy export`` and read by the repository generator, the clients and the
load tests. Nothing downstream re-types a tensor name, a shape or a normalisation constant by hand.

Manifest format, version 1 (``manifest_version``)::

    name                model name, also the default prefix of the Triton models
    model_file          "model.onnx";  model_sha256: its sha256
    labels_file         "labels.txt", one label per line, line i = class id i
    input               TensorSpec: name, shape (batch first, -1 = dynamic), dtype (Triton name), layout
    output              TensorSpec plus ``kind``: "logits" or "probabilities"
    preprocessing       how encoded images become the input tensor (see ``ImageTransform``)
    opset, versions     ONNX opset and the versions of TensorFlow, Keras, tf2onnx, onnx, onnxruntime, numpy
    parity              max_abs_diff, top1_agreement, atol, samples, batch_sizes: TensorFlow vs ONNX Runtime
    accuracy            held-out top-1 accuracy of the ONNX model, or null without labelled data
    dataset             for the built-in digits model: seed, test_fraction and the held-out indices
    source, flops_per_image, created_by
    sample_image        optional: a sample image file in the export directory (the repository's warm-up input)
    multiply_adds_per_image            optional: the model's multiply-adds for one image
    largest_activation_bytes_per_image optional: the largest intermediate tensor for one image, in bytes (sizes
                        the classifier's ONNX Runtime calls; absent in exports made before it was recorded)
    variant, optimization              optional, written by ``optimize``: the variant's name (e.g. "int8_static")
                        and how it was made and checked against its FP32 source
    keras_file          optional: the Keras source beside the ONNX model ("model.keras"), where pruning and TFLite
                        conversion start
    tflite              optional, with ``export --tflite``: the LiteRT file's record (file, sha256, input/output
                        dtype, shape and quantisation, validation against TensorFlow, batch-1 latency here)

Keys the tool does not know are kept in ``Manifest.extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ManifestError
from .preprocessing import ImageTransform

MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
# Optional fields: written only when set, so manifests without them (older exports) read and write back the same.
OPTIONAL_KEYS = ("sample_image", "multiply_adds_per_image", "largest_activation_bytes_per_image", "variant",
                 "optimization", "keras_file", "tflite")

# Triton's datatype names <-> numpy. BYTES covers TYPE_STRING tensors (numpy object arrays of bytes).
TRITON_TO_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor. ``shape`` includes the batch dimension first when ``batched`` (``-1`` = dynamic)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # Triton datatype name, e.g. "FP32"
    layout: str | None = None  # "NHWC" / "NCHW" for image inputs

    def __post_init__(self) -> None:
        if self.dtype not in TRITON_TO_NUMPY:
            raise ManifestError(f"unknown tensor dtype {self.dtype!r} for {self.name!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape without the batch dimension: what a Triton config with ``max_batch_size > 0`` declares."""
        return self.shape[1:]

    @property
    def numpy_dtype(self) -> Any:
        return TRITON_TO_NUMPY[self.dtype]

    @property
    def config_dtype(self) -> str:
        """The ``data_type`` enum name used in ``config.pbtxt``."""
        return "TYPE_STRING" if self.dtype == "BYTES" else f"TYPE_{self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout:
            data["layout"] = self.layout
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], shape=tuple(data["shape"]), dtype=data["dtype"], layout=data.get("layout"))


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top1_agreement: float
    atol: float
    samples: int
    batch_sizes: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    name: str
    input: TensorSpec
    output: TensorSpec
    output_kind: str  # "logits" | "probabilities"
    preprocessing: ImageTransform
    labels: tuple[str, ...]
    opset: int
    model_sha256: str
    parity: Parity
    versions: dict[str, str]
    source: dict[str, Any]
    accuracy: float | None = None
    dataset: dict[str, Any] | None = None
    flops_per_image: int | None = None
    created_by: str = ""
    model_file: str = "model.onnx"
    labels_file: str = "labels.txt"
    manifest_version: int = MANIFEST_VERSION
    sample_image: str | None = None
    multiply_adds_per_image: int | None = None
    largest_activation_bytes_per_image: int | None = None
    variant: str | None = None
    optimization: dict[str, Any] | None = None
    keras_file: str | None = None
    tflite: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version of the tool does not know

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest_version": self.manifest_version,
            "name": self.name,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "labels_file": self.labels_file,
            "num_classes": self.num_classes,
            "input": self.input.to_dict(),
            "output": {**self.output.to_dict(), "kind": self.output_kind},
            "preprocessing": self.preprocessing.to_dict(),
            "opset": self.opset,
            "parity": dataclasses.asdict(self.parity) | {"batch_sizes": list(self.parity.batch_sizes)},
            "accuracy": self.accuracy,
            "dataset": self.dataset,
            "flops_per_image": self.flops_per_image,
            "source": self.source,
            "versions": self.versions,
            "created_by": self.created_by,
            **{key: getattr(self, key) for key in OPTIONAL_KEYS if getattr(self, key) is not None},
            **self.extra,
        }

    def write(self, directory: Path) -> Path:
        """Write ``manifest.json`` and ``labels.txt`` into ``directory``."""
        directory = Path(directory)
        (directory / self.labels_file).write_text("".join(f"{label}\n" for label in self.labels), encoding="utf-8")
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """Load an export directory's manifest and labels; any problem is a ``ManifestError`` naming the file."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not directory.is_dir():
            raise ManifestError(f"export directory {directory} does not exist", hint="run 'triton-deploy export' first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"{path} not found: {directory} is not an export directory") from None
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from None
        version = data.get("manifest_version")
        if version != MANIFEST_VERSION:
            raise ManifestError(f"{path} has manifest_version {version!r}; this tool reads version {MANIFEST_VERSION}")
        try:
            labels_path = directory / data.get("labels_file", "labels.txt")
            labels = tuple(line for line in labels_path.read_text(encoding="utf-8").splitlines())
            known = {f.name for f in dataclasses.fields(cls)} | {"num_classes"}
            parity = dict(data["parity"])
            parity["batch_sizes"] = tuple(parity["batch_sizes"])
            manifest = cls(
                name=data["name"],
                input=TensorSpec.from_dict(data["input"]),
                output=TensorSpec.from_dict(data["output"]),
                output_kind=data["output"]["kind"],
                preprocessing=ImageTransform.from_dict(data["preprocessing"]),
                labels=labels,
                opset=int(data["opset"]),
                model_sha256=data["model_sha256"],
                parity=Parity(**parity),
                versions=dict(data["versions"]),
                source=dict(data["source"]),
                accuracy=data.get("accuracy"),
                dataset=data.get("dataset"),
                flops_per_image=data.get("flops_per_image"),
                created_by=data.get("created_by", ""),
                model_file=data.get("model_file", "model.onnx"),
                labels_file=data.get("labels_file", "labels.txt"),
                **{key: data[key] for key in OPTIONAL_KEYS if data.get(key) is not None},
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path} is malformed: {type(exc).__name__}: {exc}") from None
        if any(not label.strip() for label in labels) or len(set(labels)) != len(labels):
            raise ManifestError(f"{labels_path}: labels must be non-empty and unique, one per line")
        if manifest.output.shape[-1] != manifest.num_classes:
            raise ManifestError(
                f"{labels_path} has {manifest.num_classes} labels but output {manifest.output.name!r} "
                f"has {manifest.output.shape[-1]} classes"
            )
        return manifest
