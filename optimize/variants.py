"""The variants ``optimize`` can build, as a registry: variant name -> builder.

A builder reads the FP32 ``model.onnx`` (``BuildContext.source``), writes its variant to ``BuildContext.target`` and
returns a ``BuiltVariant``: how it was made (``details``, shown in the report and recorded in the variant's
manifest) and the manifest fields that belong to the variant itself (a retrained student has its own parity,
source and compute; a rewrite of the same model keeps the export's). A new variant is one ``@register`` function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from . import quantize

if TYPE_CHECKING:
    from triton_deploy.spec import Manifest

    from .options import OptimizeOptions

BASELINE = "fp32"  # the export's own model, measured beside every variant


@dataclass(frozen=True)
class BuildContext:
    source: Path  # the export's FP32 model.onnx
    target: Path  # where the builder writes the variant's ONNX model
    manifest: Manifest
    options: OptimizeOptions
    work: Path  # scratch space, removed after the run


@dataclass(frozen=True)
class BuiltVariant:
    details: dict[str, Any]  # tool and settings, for the report and the variant's manifest
    manifest_updates: dict[str, Any] = field(default_factory=dict)  # Manifest fields of the variant's own


Builder = Callable[[BuildContext], BuiltVariant]
REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Add a builder under ``name``; the order of registration is the order of ``VARIANTS`` and of the report."""
    def add(builder: Builder) -> Builder:
        REGISTRY[name] = builder
        return builder
    return add


def build(name: str, context: BuildContext) -> BuiltVariant:
    return REGISTRY[name](context)


@register("fp32_slim")
def _slim(ctx: BuildContext) -> BuiltVariant:
    quantize.simplify(ctx.source, ctx.target)
    return BuiltVariant({"tool": "onnxslim"})


@register("fp16")
def _fp16(ctx: BuildContext) -> BuiltVariant:
    quantize.to_fp16(ctx.source, ctx.target, keep_io_types=ctx.options.keep_io_types)
    return BuiltVariant({"tool": "onnxconverter-common float16", "keep_io_types": ctx.options.keep_io_types})


@register("int8_dynamic")
def _int8_dynamic(ctx: BuildContext) -> BuiltVariant:
    quantize.int8_dynamic(ctx.source, ctx.target)
    return BuiltVariant({"tool": "onnxruntime quantize_dynamic", "weights": "int8"})


@register("int8_static")
def _int8_static(ctx: BuildContext) -> BuiltVariant:
    options = ctx.options
    samples = quantize.calibration_samples(ctx.manifest.preprocessing, directory=options.calibration_dir,
                                           count=options.calibration_count, seed=options.seed)
    quantize.int8_static(ctx.source, ctx.target, samples, options.calibration)
    return BuiltVariant({"tool": "onnxruntime quantize_static", "format": "QDQ",
                         **dataclasses.asdict(options.calibration), "calibration_images": int(len(samples)),
                         "calibration_source": str(options.calibration_dir) if options.calibration_dir
                         else "digits train split"})


@register("distilled")
def _distilled(ctx: BuildContext) -> BuiltVariant:
    from .distill import distill

    student = distill(ctx.source, ctx.manifest, ctx.options.distill, scratch=ctx.work)
    onnx.save(student.proto, str(ctx.target))
    # The student is a new model: its parity is TensorFlow vs its own ONNX export, its source and compute its own.
    return BuiltVariant({"tool": "keras distillation", **student.source, "flops_per_image": student.flops_per_image},
                        {"parity": student.parity, "source": student.source,
                         "flops_per_image": student.flops_per_image})


VARIANTS = tuple(REGISTRY)
DEFAULT_VARIANTS = ("fp32_slim", "fp16", "int8_dynamic", "int8_static")
