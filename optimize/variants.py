"""The variants ``optimize`` can build, as a registry: variant name -> builder.

A builder reads the FP32 ``model.onnx`` (``BuildContext.source``), writes its variant to ``BuildContext.target`` and
returns a ``BuiltVariant``: how it was made (``details``, shown in the report and recorded in the variant's
manifest) and the manifest fields that belong to the variant itself (a retrained student has its own parity,
source and compute; a rewrite of the same model keeps the export's). A new variant is one ``@register`` function.

Families of variants with a parameter in their name (``pruned_50``, ``pruned_50_int8_static``: 50 % of the filters
removed) are one ``@register_family`` function that receives the name's match. Variants that are not ONNX models
(``tflite_fp32``, ``tflite_int8``: LiteRT files for edge devices) name their runtime and file suffix; they are
evaluated, gated and timed like the others but never published to Triton.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from triton_deploy.errors import UsageError

from . import quantize

if TYPE_CHECKING:
    from triton_deploy.progress import Reporter
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
    reporter: Reporter | None = None  # for builders with long steps of their own (fine-tuning)


@dataclass(frozen=True)
class BuiltVariant:
    details: dict[str, Any]  # tool and settings, for the report and the variant's manifest
    manifest_updates: dict[str, Any] = field(default_factory=dict)  # Manifest fields of the variant's own
    artifact: dict[str, Any] | None = None  # non-ONNX variants: the record written beside the file (tflite.json)


@dataclass(frozen=True)
class Runtime:
    name: str  # "onnxruntime" or "litert"
    suffix: str  # of the variant's file


ONNX_RUNTIME, LITERT = Runtime("onnxruntime", ".onnx"), Runtime("litert", ".tflite")

Builder = Callable[[BuildContext], BuiltVariant]
REGISTRY: dict[str, Builder] = {}
RUNTIMES: dict[str, Runtime] = {}
FAMILIES: list[tuple[re.Pattern, Callable[[BuildContext, re.Match], BuiltVariant], str]] = []


def register(name: str, runtime: Runtime = ONNX_RUNTIME) -> Callable[[Builder], Builder]:
    """Add a builder under ``name``; the order of registration is the order of ``VARIANTS`` and of the report."""
    def add(builder: Builder) -> Builder:
        REGISTRY[name] = builder
        RUNTIMES[name] = runtime
        return builder
    return add


def register_family(pattern: str, example: str):
    """Add a builder for every name matching ``pattern`` (a full match); ``example`` is shown in help texts."""
    def add(builder):
        FAMILIES.append((re.compile(pattern), builder, example))
        return builder
    return add


def known(name: str) -> bool:
    return name in REGISTRY or any(p.fullmatch(name) for p, _, _ in FAMILIES)


def runtime(name: str) -> Runtime:
    return RUNTIMES.get(name, ONNX_RUNTIME)


def needs_keras_source(name: str) -> bool:
    """Pruned and LiteRT variants rebuild the network from the export's ``model.keras``."""
    return bool(re.fullmatch(PRUNED, name)) or runtime(name) is LITERT


def shows_progress(name: str, work: Path) -> bool:
    """True when building ``name`` fine-tunes a network (a progress bar of its own, not a spinner)."""
    match = re.fullmatch(PRUNED, name)
    return match is not None and not _pruned_scratch(work, int(match["percent"])).with_suffix(".json").is_file()


def _pruned_scratch(work: Path, percent: int) -> Path:
    """Where ``pruned_<percent>`` keeps its ONNX model (and a .json of how it was made) for its INT8 siblings."""
    return work / "pruned" / f"{percent}.onnx"


def build(name: str, context: BuildContext) -> BuiltVariant:
    if name in REGISTRY:
        return REGISTRY[name](context)
    for pattern, builder, _ in FAMILIES:
        match = pattern.fullmatch(name)
        if match:
            return builder(context, match)
    raise KeyError(name)


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
    return _static_int8(ctx, ctx.source, ctx.options.calibration)


@register("int8_symmetric")
def _int8_symmetric(ctx: BuildContext) -> BuiltVariant:
    """TensorRT-ready INT8: zero points 0, INT8 activations, float biases (``int8_static`` writes UINT8 activations
    with zero points, which ONNX Runtime on CPU likes and TensorRT refuses)."""
    return _static_int8(ctx, ctx.source, quantize.for_tensorrt(ctx.options.calibration))


def _static_int8(ctx: BuildContext, source: Path, calibration: quantize.Calibration) -> BuiltVariant:
    from . import evaluate  # evaluate imports this module's BASELINE

    options = ctx.options
    directory = options.calibration_dir or evaluate.sample_folder(ctx.manifest, options.eval_samples)
    if directory is None and not evaluate.is_digits_model(ctx.manifest):
        raise UsageError(f"{ctx.target.stem} would calibrate '{ctx.manifest.name}' on digits images, which are not "
                         "its inputs, and its INT8 ranges would be wrong",
                         hint="pass --calibration DIR with images like the model's (or export with --samples), or "
                              "leave the INT8 variants out of --variants")
    samples = quantize.calibration_samples(ctx.manifest.preprocessing, directory=directory,
                                           count=options.calibration_count, seed=options.seed)
    quantize.int8_static(source, ctx.target, samples, calibration)
    return BuiltVariant({"tool": "onnxruntime quantize_static", "format": "QDQ",
                         **dataclasses.asdict(calibration), "calibration_images": int(len(samples)),
                         "calibration_source": str(directory) if directory else "digits train split"})


@register("distilled")
def _distilled(ctx: BuildContext) -> BuiltVariant:
    from .distill import distill

    student = distill(ctx.source, ctx.manifest, ctx.options.distill, scratch=ctx.work)
    onnx.save(student.proto, str(ctx.target))
    # The student is a new model: its parity is TensorFlow vs its own ONNX export, its source and compute its own.
    return BuiltVariant({"tool": "keras distillation", **student.source, "flops_per_image": student.flops_per_image},
                        {"parity": student.parity, "source": student.source,
                         "flops_per_image": student.flops_per_image})


PRUNED = r"pruned_(?P<percent>\d{1,2})(?P<int8>_int8_static|_int8_symmetric)?"


def pruned_names(fractions: tuple[float, ...], int8: tuple[str, ...] = ("int8_static",)) -> tuple[str, ...]:
    """``pruned_<percent>`` and, per INT8 flavour, ``pruned_<percent>_<flavour>`` for each fraction."""
    names = []
    for fraction in fractions:
        percent = round(fraction * 100)
        names += [f"pruned_{percent}", *(f"pruned_{percent}_{flavour}" for flavour in int8)]
    return tuple(names)


@register_family(PRUNED, "pruned_50")
def _pruned(ctx: BuildContext, match: re.Match) -> BuiltVariant:
    """Filters removed from the Keras source, fine-tuned, exported with the export's checks; then INT8 if named.

    ``pruned_<p>`` built earlier in the same run is reused by its INT8 siblings (``_pruned_scratch``)."""
    import json

    from .prune import PruneOptions, prune_export

    percent = int(match["percent"])
    pruned = _pruned_scratch(ctx.work, percent)
    record = pruned.with_suffix(".json")
    if not record.is_file():
        pruned.parent.mkdir(exist_ok=True)
        options = ctx.options
        result = prune_export(ctx.options.export_dir, ctx.manifest,
                              PruneOptions(percent / 100, criterion=options.prune_criterion), pruned,
                              fine_tune_epochs=options.fine_tune_epochs, seed=options.seed, reporter=ctx.reporter)
        record.write_text(json.dumps({"details": result.details(), "parity": dataclasses.asdict(result.parity),
                                      "multiply_adds": result.pruned.multiply_adds[1],
                                      "source": dict(ctx.manifest.source) | {"pruned": percent / 100}}))
    saved = json.loads(record.read_text())
    details = saved["details"]
    # A new, smaller network: its compute is its own (and, unquantised, its parity: TensorFlow vs its ONNX export).
    updates = {"flops_per_image": 2 * saved["multiply_adds"], "multiply_adds_per_image": saved["multiply_adds"],
               "source": saved["source"]}
    if match["int8"] is None:
        shutil.copyfile(pruned, ctx.target)
        from triton_deploy.spec import Parity

        parity = Parity(**(saved["parity"] | {"batch_sizes": tuple(saved["parity"]["batch_sizes"])}))
        return BuiltVariant(details, updates | {"parity": parity})
    calibration = ctx.options.calibration if match["int8"] == "_int8_static" else quantize.for_tensorrt(
        ctx.options.calibration)
    quantized = _static_int8(ctx, pruned, calibration)
    return BuiltVariant(details | {"then": quantized.details}, updates)


@register("tflite_fp32", LITERT)
def _tflite_fp32(ctx: BuildContext) -> BuiltVariant:
    return _tflite(ctx, "fp32")


@register("tflite_int8", LITERT)
def _tflite_int8(ctx: BuildContext) -> BuiltVariant:
    return _tflite(ctx, "int8")


def _tflite(ctx: BuildContext, flavour: str) -> BuiltVariant:
    """The Keras source converted for LiteRT and checked against TensorFlow (float parity / INT8 agreement)."""
    from triton_deploy.export import digits, tflite
    from triton_deploy.export.sources import keras_from_export

    model = keras_from_export(ctx.options.export_dir, ctx.manifest)
    nhwc = type(ctx.manifest.preprocessing).from_dict(ctx.manifest.preprocessing.to_dict() | {"layout": "NHWC"})
    record = ctx.manifest.dataset or {}
    heldout, _ = digits.load_digits_data(seed=int(record.get("seed", 0)),
                                         test_fraction=float(record.get("test_fraction", 0.25))).split("heldout")
    inputs = digits.to_model_input(heldout[:64], nhwc)
    representative = None
    if flavour == "int8":
        representative = quantize.calibration_samples(nhwc, directory=ctx.options.calibration_dir,
                                                      count=ctx.options.calibration_count, seed=ctx.options.seed)
    scratch = ctx.work / f"{ctx.target.stem}-tflite"
    scratch.mkdir()
    entry = tflite.write(model, scratch, inputs, np.asarray(model(inputs, training=False)), flavour=flavour,
                         atol=ctx.manifest.parity.atol, min_agreement=1.0 if flavour == "fp32" else 0.9,
                         representative=representative, latency_seconds=ctx.options.bench_seconds)
    shutil.move(scratch / tflite.TFLITE_FILE, ctx.target)
    scratch.rmdir()
    details = {"tool": "tf.lite.TFLiteConverter.from_keras_model", "runtime": entry["runtime"],
               "flavour": flavour, "input_quantization": entry["input"]["quantization"],
               "output_quantization": entry["output"]["quantization"],
               "representative_images": None if representative is None else int(len(representative))}
    return BuiltVariant(details, artifact=entry)


VARIANTS = tuple(REGISTRY)
DEFAULT_VARIANTS = ("fp32_slim", "fp16", "int8_dynamic", "int8_static", "int8_symmetric")
TFLITE_VARIANTS = ("tflite_fp32", "tflite_int8")
