"""The export manifest and the tensor specs in it: one source of truth for every later step.

``manifest.json`` is written by ``triton-deploy export`` and read by the repository generator, the clients and the
load tests. Nothing downstream re-types a tensor name, a shape or a normalisation constant by hand.

Manifest format, version 2 (``manifest_version``; version 1 files, which lack ``robustness``, are still read)::

    name                model name, also the default prefix of the Triton models
    model_file          "model.onnx";  model_sha256: its sha256
    labels_file         "labels.txt", one label per line, line i = class id i
    input               TensorSpec: name, shape (batch first, -1 = dynamic), dtype (Triton name), layout
    output              TensorSpec plus ``kind``: "logits" or "probabilities"
    preprocessing       how encoded images become the input tensor (see ``ImageTransform``)
    opset, versions     ONNX opset and the versions of TensorFlow, Keras, tf2onnx, onnx, onnxruntime, numpy
    parity              max_abs_diff, top1_agreement, atol, samples, batch_sizes: TensorFlow vs ONNX Runtime
    accuracy            held-out top-1 accuracy of the ONNX model, or null without labelled data
    dataset             what the accuracy was measured on (``DatasetRecord``): the built-in digits split (seed,
                        test_fraction, held-out indices) or the ``--samples`` folder; null when the export had none
    robustness          accuracy per named condition (how the images were made: resampling filter, size, polarity,
                        margin, compression, colour, noise...), images per condition, and the worst condition;
                        null when the export had no labelled data (new in version 2)
    source, flops_per_image, created_by
    reference           optional: how the model answers held-out data (``Reference``), the baseline of the drift
                        score the postprocess model reports; older manifests without it still read (no drift score)
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

MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 is version 2 without ``robustness``
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
class Reference:
    """The model's answers on held-out data: share of each top-1 class and of each top-1 confidence bucket
    (upper bounds ``confidence_buckets``, as in ``monitoring.model_metrics``)."""

    samples: int
    class_ratios: tuple[float, ...]
    confidence_buckets: tuple[float, ...]
    confidence_ratios: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "class_ratios": list(self.class_ratios),
                "confidence_buckets": list(self.confidence_buckets),
                "confidence_ratios": list(self.confidence_ratios)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reference:
        reference = cls(int(data["samples"]), tuple(float(v) for v in data["class_ratios"]),
                        tuple(float(v) for v in data["confidence_buckets"]),
                        tuple(float(v) for v in data["confidence_ratios"]))
        if len(reference.confidence_ratios) != len(reference.confidence_buckets):
            raise ValueError("reference: confidence_ratios and confidence_buckets differ in length")
        for name in ("class_ratios", "confidence_ratios"):
            if abs(sum(getattr(reference, name)) - 1.0) > 1e-3:
                raise ValueError(f"reference: {name} must sum to 1")
        return reference


@dataclass(frozen=True)
class ConditionAccuracy:
    """Top-1 accuracy of the exported model on images made one named way (see ``export/robustness.py``)."""

    name: str
    description: str
    accuracy: float
    images: int


@dataclass(frozen=True)
class Robustness:
    """Accuracy per condition of the robustness suite, on ``data`` (held-out digits or the user's samples)."""

    data: str
    conditions: tuple[ConditionAccuracy, ...]

    def __post_init__(self) -> None:
        if not self.conditions:
            raise ManifestError("robustness needs at least one condition")

    @property
    def worst(self) -> ConditionAccuracy:
        return min(self.conditions, key=lambda c: c.accuracy)

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {"data": self.data,
                "worst": {"condition": worst.name, "accuracy": worst.accuracy},
                "conditions": [dataclasses.asdict(c) for c in self.conditions]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Robustness:
        return cls(data=str(data["data"]), conditions=tuple(
            ConditionAccuracy(name=str(c["name"]), description=str(c.get("description", "")),
                              accuracy=float(c["accuracy"]), images=int(c["images"])) for c in data["conditions"]))


@dataclass(frozen=True)
class DatasetRecord:
    """What an export was scored on, so later steps (``optimize``) evaluate, calibrate and fine-tune on the same data.

    ``source`` names the dataset source that can redraw it (``export/datasets.py`` maps it to an object with
    ``heldout``, ``calibration`` and ``training``): ``"sklearn-digits"`` for the built-in model's seeded split,
    ``"samples"`` for a user's ``--samples`` folder. It is written under the key ``name``, as exports always have."""

    source: str
    labelled: bool = True
    path: str | None = None  # samples: the folder (absolute)
    seed: int | None = None  # built-in split: how it was drawn
    test_fraction: float | None = None
    train_size: int | None = None
    heldout_size: int | None = None
    heldout_indices: tuple[int, ...] = ()
    image_size: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, written back

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.source}
        if self.path is not None:  # a folder's record: as exports have written it
            data |= {"path": self.path, "labelled": self.labelled}
        for key in ("image_size", "seed", "test_fraction", "train_size", "heldout_size"):
            value = getattr(self, key)
            if value is not None:
                data[key] = list(value) if isinstance(value, tuple) else value
        if self.heldout_indices:
            data["heldout_indices"] = list(self.heldout_indices)
        return data | self.extra

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetRecord:
        """The record as any export since manifest version 1 wrote it (``name`` plus the source's own keys)."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("dataset: expected an object with a 'name'")
        known = {"name", "path", "labelled", "image_size", "seed", "test_fraction", "train_size", "heldout_size",
                 "heldout_indices"}
        size = data.get("image_size")
        return cls(source=data["name"], labelled=bool(data.get("labelled", True)), path=data.get("path"),
                   seed=None if data.get("seed") is None else int(data["seed"]),
                   test_fraction=None if data.get("test_fraction") is None else float(data["test_fraction"]),
                   train_size=data.get("train_size"), heldout_size=data.get("heldout_size"),
                   heldout_indices=tuple(int(i) for i in data.get("heldout_indices", ())),
                   image_size=None if size is None else tuple(int(d) for d in size),
                   extra={k: v for k, v in data.items() if k not in known})


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
    dataset: DatasetRecord | None = None
    flops_per_image: int | None = None
    created_by: str = ""
    robustness: Robustness | None = None
    model_file: str = "model.onnx"
    labels_file: str = "labels.txt"
    manifest_version: int = MANIFEST_VERSION
    reference: Reference | None = None
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
            "dataset": self.dataset.to_dict() if self.dataset is not None else None,
            "flops_per_image": self.flops_per_image,
            "robustness": self.robustness.to_dict() if self.robustness is not None else None,
            "source": self.source,
            "versions": self.versions,
            "created_by": self.created_by,
            **({"reference": self.reference.to_dict()} if self.reference is not None else {}),
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
        if version not in READABLE_VERSIONS:
            raise ManifestError(f"{path} has manifest_version {version!r}; this tool reads versions "
                                f"{', '.join(map(str, READABLE_VERSIONS))}")
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
                dataset=DatasetRecord.from_dict(data["dataset"]) if data.get("dataset") else None,
                flops_per_image=data.get("flops_per_image"),
                created_by=data.get("created_by", ""),
                robustness=Robustness.from_dict(data["robustness"]) if data.get("robustness") else None,
                model_file=data.get("model_file", "model.onnx"),
                labels_file=data.get("labels_file", "labels.txt"),
                reference=Reference.from_dict(data["reference"]) if data.get("reference") else None,
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
        if manifest.reference is not None and len(manifest.reference.class_ratios) != manifest.num_classes:
            raise ManifestError(f"{path}: reference has {len(manifest.reference.class_ratios)} class ratios for "
                                f"{manifest.num_classes} labels")
        return manifest
