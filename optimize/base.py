"""The types every part of the optimiser shares, so its modules import in one direction (base <- rewrites <- variants
<- run): the baseline's name, runtimes, what a builder receives (``BuildContext``) and returns (``BuiltVariant``),
and what was measured (``VariantResult``).

A variant's own rules (the precision TensorRT builds it at, a parity tolerance it promises, a note for the report,
whether it may be recommended, a validation of its own that failed) travel in its ``BuiltVariant``; the generic
loop in ``run.py`` applies them without testing a variant's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from triton_deploy.errors import UsageError
from triton_deploy.export.datasets import Dataset
from triton_deploy.preprocessing import ImageTransform

if TYPE_CHECKING:  # types only: options imports the variant registry, which imports this module
    from triton_deploy.progress import Reporter
    from triton_deploy.spec import Manifest

    from .options import OptimizeOptions

BASELINE = "fp32"  # the export's own model, measured beside every variant


@dataclass(frozen=True)
class Runtime:
    name: str  # "onnxruntime" or "litert"
    suffix: str  # of the variant's file


ONNX_RUNTIME, LITERT = Runtime("onnxruntime", ".onnx"), Runtime("litert", ".tflite")


@dataclass(frozen=True)
class Datasets:
    """Where a run's images come from: ``heldout`` to judge every variant on (the export's images or
    ``--eval-samples``), ``calibration`` for INT8 ranges (``--calibration``, else the held-out source), ``training``
    for fine-tuning and distillation and the robustness suite (``own``: the export's own dataset)."""

    heldout: Dataset
    calibration: Dataset
    own: Dataset


@dataclass(frozen=True)
class BuildContext:
    source: Path  # the export's FP32 model.onnx
    target: Path  # where the builder writes the variant's file
    manifest: Manifest
    options: OptimizeOptions
    work: Path  # scratch space, removed after the run
    datasets: Datasets
    reporter: Reporter | None = None  # for builders with long steps of their own (fine-tuning)
    shared: dict[str, Any] = field(default_factory=dict)  # one run's results builders reuse (a pruned network)

    @property
    def nhwc(self) -> ImageTransform:
        """The export's transform in Keras' layout (Keras models take NHWC whatever the ONNX layout)."""
        return dataclasses.replace(self.manifest.preprocessing, layout="NHWC")

    def calibration_samples(self, transform: ImageTransform | None = None) -> np.ndarray:
        """Calibration images through ``transform`` (default: the export's), or a ``UsageError`` naming the flag."""
        options = self.options
        samples = self.datasets.calibration.calibration(transform or self.manifest.preprocessing,
                                                        options.calibration_count, options.seed)
        if samples is None:
            raise UsageError(f"{self.target.stem} needs calibration images like the model's inputs and the export "
                             f"of '{self.manifest.name}' records none",
                             hint="pass --calibration DIR (or export with --samples), or leave it out of --variants")
        return samples


@dataclass(frozen=True)
class BuiltVariant:
    details: dict[str, Any]  # tool and settings, for the report and the variant's manifest
    manifest_updates: dict[str, Any] = field(default_factory=dict)  # Manifest fields of the variant's own
    artifact: dict[str, Any] | None = None  # non-ONNX variants: the record written beside the file (tflite.json)
    precision: str = "fp32"  # what TensorRT would build it at: fp32, fp16 or int8
    atol: float | None = None  # a lossless rewrite's promise: max |diff| vs FP32 within this
    note: str | None = None  # shown under the report's table
    recommendable: bool = True  # False: measured and reported, never recommended
    failure: str | None = None  # the variant's own validation failed: measured, reported as failed, not written


@dataclass
class VariantResult:
    name: str
    path: Path
    accuracy: float | None
    agreement: float
    max_abs_diff: float
    size_bytes: int
    accuracy_drop: float | None = None  # percentage points vs FP32 (or disagreement points without labels)
    passed: bool = True
    reason: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95 at batch 1
    throughput: dict[int, float] = field(default_factory=dict)  # batch size -> images/s
    speedup: float | None = None  # throughput vs FP32 at the first batch size
    tensorrt: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    runtime: str = "onnxruntime"  # or "litert" for the .tflite edge variants
    failed: bool = False  # could not be built, or failed its own validation (not merely refused by the gate)
    recommendable: bool = True

    @property
    def status(self) -> str:
        if self.name == BASELINE:
            return "baseline"
        if self.passed:
            return "passed"
        return f"{'failed' if self.failed else 'refused'}: {self.reason}"

    @property
    def measured(self) -> bool:
        """False for a variant that failed before it could be run (no file, no figures)."""
        return self.size_bytes > 0

    def to_dict(self) -> dict:
        return {"name": self.name, "runtime": self.runtime, "accuracy": self.accuracy,
                "accuracy_drop_points": self.accuracy_drop, "agreement": self.agreement,
                "max_abs_diff": self.max_abs_diff, "size_bytes": self.size_bytes, "latency_ms": self.latency_ms,
                "throughput": {str(b): v for b, v in self.throughput.items()}, "speedup": self.speedup,
                "passed": self.passed, "failed": self.failed, "reason": self.reason, "tensorrt": self.tensorrt,
                "details": self.details}
