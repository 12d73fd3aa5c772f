"""The variants ``optimize`` can build, as a registry: variant name -> builder.

A builder reads the FP32 ``model.onnx`` (``BuildContext.source``), writes its variant to ``BuildContext.target`` and
returns a ``BuiltVariant``: how it was made (``details``, shown in the report and recorded in the variant's
manifest) and the manifest fields that belong to the variant itself (a retrained student has its own parity,
source and compute; a rewrite of the same model keeps the export's). A new variant is one ``@register`` function.

Families of variants with a parameter in their name (``pruned_50``, ``pruned_50_int8_static``: 50 % of the filters
removed) are one ``@register_family`` function that receives the name's match. Variants that are not ONNX models
(``tflite_fp32``, ``tflite_int8``: LiteRT files for edge devices) name their runtime and file suffix; they are
evaluated, gated and timed like the others but never published to Triton.

What is special about a variant lives here, in its registration and its builder, never in the generic loop: what it
needs (``needs``: the Keras source, calibration images, labelled training images; checked before any variant is
built) and, in its ``BuiltVariant``, the TensorRT precision, a parity promise, a report note, whether it may be
recommended, and a failed validation of its own.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from triton_deploy.errors import raise_problems
from triton_deploy.export import tflite
from triton_deploy.export.sources import keras_file, keras_from_export
from triton_deploy.progress import Reporter
from triton_deploy.spec import Manifest

from . import quantize
from .base import LITERT, ONNX_RUNTIME, BuildContext, BuiltVariant, Datasets, Runtime
from .distill import distill
from .prune import PruneOptions, prune_export

Builder = Callable[[BuildContext], BuiltVariant]
FamilyBuilder = Callable[[BuildContext, re.Match], BuiltVariant]
REGISTRY: dict[str, Builder] = {}
RUNTIMES: dict[str, Runtime] = {}
NEEDS: dict[str, frozenset[str]] = {}
FAMILIES: list[tuple[re.Pattern, FamilyBuilder, str, Callable[[re.Match], frozenset[str]]]] = []

# What a builder needs beyond the ONNX model, checked for every chosen variant before any is built:
# "keras" the export's model.keras, "calibration" images to calibrate INT8 on, "training" labelled training images.
KERAS, CALIBRATION, TRAINING = "keras", "calibration", "training"


def register(name: str, runtime: Runtime = ONNX_RUNTIME, needs: frozenset[str] = frozenset()
             ) -> Callable[[Builder], Builder]:
    """Add a builder under ``name``; the order of registration is the order of ``VARIANTS`` and of the report."""
    def add(builder: Builder) -> Builder:
        REGISTRY[name], RUNTIMES[name], NEEDS[name] = builder, runtime, needs
        return builder
    return add


def register_family(pattern: str, example: str, needs: Callable[[re.Match], frozenset[str]]
                    ) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Add a builder for every name matching ``pattern`` (a full match); ``example`` is shown in help texts."""
    def add(builder: FamilyBuilder) -> FamilyBuilder:
        FAMILIES.append((re.compile(pattern), builder, example, needs))
        return builder
    return add


def known(name: str) -> bool:
    return name in REGISTRY or any(p.fullmatch(name) for p, _, _, _ in FAMILIES)


def runtime(name: str) -> Runtime:
    return RUNTIMES.get(name, ONNX_RUNTIME)


def needs(name: str) -> frozenset[str]:
    if name in NEEDS:
        return NEEDS[name]
    for pattern, _, _, family_needs in FAMILIES:
        match = pattern.fullmatch(name)
        if match:
            return family_needs(match)
    return frozenset()


def shows_progress(name: str, context: BuildContext) -> bool:
    """True when building ``name`` trains a network (a progress bar of its own, not a spinner)."""
    if name == "distilled":
        return True
    match = re.fullmatch(PRUNED, name)
    return match is not None and _pruned_key(int(match["percent"])) not in context.shared


def build(name: str, context: BuildContext) -> BuiltVariant:
    if name in REGISTRY:
        return REGISTRY[name](context)
    for pattern, builder, _, _ in FAMILIES:
        match = pattern.fullmatch(name)
        if match:
            return builder(context, match)
    raise KeyError(name)


@register("fp32_slim")
def _slim(ctx: BuildContext) -> BuiltVariant:
    """A lossless rewrite: it must keep the export's parity tolerance as well as pass the gate."""
    quantize.simplify(ctx.source, ctx.target)
    return BuiltVariant({"tool": "onnxslim"}, atol=ctx.manifest.parity.atol)


@register("fp16")
def _fp16(ctx: BuildContext) -> BuiltVariant:
    quantize.to_fp16(ctx.source, ctx.target, keep_io_types=ctx.options.keep_io_types)
    return BuiltVariant({"tool": "onnxconverter-common float16", "keep_io_types": ctx.options.keep_io_types},
                        precision="fp16")


@register("int8_dynamic")
def _int8_dynamic(ctx: BuildContext) -> BuiltVariant:
    """Measured so the report shows it; for a convolutional model never recommended (see ``quantize``)."""
    quantize.int8_dynamic(ctx.source, ctx.target)
    convolutional = any(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(ctx.source)).graph.node)
    note = ("dynamic INT8 runs convolutions as ConvInteger, a slow fallback on CPU: never recommended for "
            "convolutional models") if convolutional else None
    return BuiltVariant({"tool": "onnxruntime quantize_dynamic", "weights": "int8"}, precision="int8", note=note,
                        recommendable=not convolutional)


@register("int8_static", needs=frozenset({CALIBRATION}))
def _int8_static(ctx: BuildContext) -> BuiltVariant:
    return _static_int8(ctx, ctx.source, ctx.options.calibration)


@register("int8_symmetric", needs=frozenset({CALIBRATION}))
def _int8_symmetric(ctx: BuildContext) -> BuiltVariant:
    """TensorRT-ready INT8: zero points 0, INT8 activations, float biases (``int8_static`` writes UINT8 activations
    with zero points, which ONNX Runtime on CPU likes and TensorRT refuses)."""
    return _static_int8(ctx, ctx.source, quantize.for_tensorrt(ctx.options.calibration))


def _static_int8(ctx: BuildContext, source: Path, calibration: quantize.Calibration) -> BuiltVariant:
    samples = ctx.calibration_samples()
    quantize.int8_static(source, ctx.target, samples, calibration)
    return BuiltVariant({"tool": "onnxruntime quantize_static", "format": "QDQ",
                         **dataclasses.asdict(calibration), "calibration_images": int(len(samples)),
                         "calibration_source": ctx.datasets.calibration.calibration_source}, precision="int8")


@register("distilled", needs=frozenset({TRAINING}))
def _distilled(ctx: BuildContext) -> BuiltVariant:
    reporter = ctx.reporter or Reporter(quiet=True)
    epochs = ctx.options.distill.epochs
    with reporter.bar(epochs, f"Training the distilled student ({epochs} epochs)") as bar:
        student = distill(ctx.source, ctx.manifest, ctx.options.distill, ctx.datasets.own, scratch=ctx.work,
                          on_epoch=lambda _e, logs: bar.advance(1, status=f"loss {logs.get('loss', 0):.3f}"))
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


def _pruned_key(percent: int) -> str:
    return f"pruned_{percent}"


@register_family(PRUNED, "pruned_50", needs=lambda match: frozenset({KERAS} | ({CALIBRATION} if match["int8"] else
                                                                                set())))
def _pruned(ctx: BuildContext, match: re.Match) -> BuiltVariant:
    """Filters removed from the Keras source, fine-tuned when the export has training images, exported with the
    export's checks; then INT8 if named. ``pruned_<p>`` built earlier in the same run is reused by its INT8
    siblings (``BuildContext.shared``)."""
    percent = int(match["percent"])
    key = _pruned_key(percent)
    if key not in ctx.shared:
        options = ctx.options
        path = ctx.work / "pruned" / f"{percent}.onnx"
        path.parent.mkdir(exist_ok=True)
        result = prune_export(ctx.options.export_dir, ctx.manifest, PruneOptions(percent / 100,
                              criterion=options.prune_criterion), path, ctx.datasets, ctx.nhwc,
                              fine_tune_epochs=options.fine_tune_epochs,
                              fine_tune_renderings=options.fine_tune_renderings, seed=options.seed,
                              reporter=ctx.reporter)
        ctx.shared[key] = (path, result)
    path, result = ctx.shared[key]
    details = result.details()
    # A new, smaller network: its compute is its own (and, unquantised, its parity: TensorFlow vs its ONNX export).
    macs = result.pruned.multiply_adds[1]
    updates = {"flops_per_image": 2 * macs, "multiply_adds_per_image": macs,
               "source": dict(ctx.manifest.source) | {"pruned": percent / 100}}
    if match["int8"] is None:
        shutil.copyfile(path, ctx.target)
        return BuiltVariant(details, updates | {"parity": result.parity})
    calibration = ctx.options.calibration if match["int8"] == "_int8_static" else quantize.for_tensorrt(
        ctx.options.calibration)
    quantized = _static_int8(ctx, path, calibration)
    return BuiltVariant(details | {"then": quantized.details}, updates, precision="int8")


@register("tflite_fp32", LITERT, needs=frozenset({KERAS}))
def _tflite_fp32(ctx: BuildContext) -> BuiltVariant:
    return _tflite(ctx, "fp32")


@register("tflite_int8", LITERT, needs=frozenset({KERAS, CALIBRATION}))
def _tflite_int8(ctx: BuildContext) -> BuiltVariant:
    return _tflite(ctx, "int8")


TFLITE_MIN_AGREEMENT = {"fp32": 1.0, "int8": 0.9}  # top-1 agreement with TensorFlow each flavour must keep


def _tflite(ctx: BuildContext, flavour: str) -> BuiltVariant:
    """The Keras source converted for LiteRT and checked against TensorFlow (float parity / INT8 agreement).

    A file that converts but fails that check is still written to ``target``, so the run measures it and reports
    it as failed with its figures, instead of losing every other variant."""
    model = keras_from_export(ctx.options.export_dir, ctx.manifest)
    nhwc = ctx.nhwc
    inputs = ctx.datasets.heldout.heldout(nhwc)[0][:64]
    representative = ctx.calibration_samples(nhwc) if flavour == "int8" else None
    content = tflite.convert(model, representative=representative)
    lite = tflite.LiteRTModel(content, origin=ctx.target.stem)
    checked, problems = tflite.validate(lite, inputs, np.asarray(model(inputs, training=False)), flavour=flavour,
                                        atol=ctx.manifest.parity.atol, min_agreement=TFLITE_MIN_AGREEMENT[flavour])
    failure = (f"fails its check against TensorFlow on {len(inputs)} images: {'; '.join(problems)}"
               if problems else None)
    ctx.target.write_bytes(content)
    entry = tflite.record(content, lite, checked, lite.latency_ms(inputs, seconds=ctx.options.bench_seconds),
                          threads=1)
    details = {"tool": "tf.lite.TFLiteConverter.from_keras_model", "runtime": entry["runtime"],
               "flavour": flavour, "input_quantization": entry["input"]["quantization"],
               "output_quantization": entry["output"]["quantization"],
               "validation_vs_tensorflow": entry["validation"],
               "representative_images": None if representative is None else int(len(representative))}
    return BuiltVariant(details, artifact=entry, precision=flavour, failure=failure)


def check_needs(names: tuple[str, ...], manifest: Manifest, context_datasets: Datasets, export_dir: Path) -> None:
    """Refuse, before any work, variants whose inputs the run does not have (one ``UsageError`` naming them all)."""
    wanted = {name: needs(name) for name in names}
    if any(KERAS in n for n in wanted.values()):
        keras_file(export_dir, manifest)  # a clear error naming model.keras
    problems = []
    calibrating = [name for name, n in wanted.items() if CALIBRATION in n]
    if calibrating and not context_datasets.calibration.calibrates:
        problems.append((f"{', '.join(calibrating)} {'needs' if len(calibrating) == 1 else 'need'} calibration images "
                         "like the model's inputs and the export "
                         f"of '{manifest.name}' records none",
                         "pass --calibration DIR (or export with --samples), or leave them out of --variants"))
    training = [name for name, n in wanted.items() if TRAINING in n]
    if training and not context_datasets.own.trains:
        problems.append((f"{', '.join(training)} {'trains' if len(training) == 1 else 'train'} on the export's "
                         "labelled training images and the export of "
                         f"'{manifest.name}' has none (only the built-in model's dataset does)",
                         "leave them out of --variants (drop --distill)"))
    if problems:
        raise_problems(problems)


VARIANTS = tuple(REGISTRY)
DEFAULT_VARIANTS = ("fp32_slim", "fp16", "int8_dynamic", "int8_static", "int8_symmetric")
TFLITE_VARIANTS = ("tflite_fp32", "tflite_int8")
