"""``optimize``: make cheaper variants of an export, measure them all the same way, gate them, write the passing ones.

Variants (``variants.REGISTRY`` and its families): ``fp32_slim`` (onnxslim), ``fp16`` (FP32 inputs/outputs kept),
``int8_dynamic``, ``int8_static`` (QDQ, per-channel, calibrated on real images), ``int8_symmetric`` (the TensorRT-ready
flavour), ``pruned_<p>`` and ``pruned_<p>_int8_*`` (structured pruning of the Keras source, fine-tuned),
``distilled`` (a smaller student trained on the teacher's soft targets) and ``tflite_fp32`` / ``tflite_int8`` (LiteRT
files for the edge). Every variant and the FP32 original are measured in one run:

* accuracy on the export's own held-out images (its manifest's dataset record, opened through
  ``export.datasets``; ``--eval-samples`` overrides), through the export's ``ImageTransform``; top-1 agreement with
  the FP32 model and the max absolute output difference for every model;
* size on disk; latency p50/p95 at batch 1 and throughput at batch 8 and 32 (``timing``), in ONNX Runtime or, for
  the ``.tflite`` variants, in LiteRT's interpreter.

The gate (``evaluate``): a variant whose accuracy drops more than ``max_accuracy_drop`` percentage points below FP32,
or whose top-1 agreement with FP32 is below ``min_agreement``, is reported as refused and not written. Without
labelled data the disagreement with FP32 (which bounds any accuracy loss) stands in for the accuracy drop. A variant
that promises parity (``fp32_slim``) must also stay within the export's ``atol``. A variant that cannot be built, or
fails a validation of its own (a LiteRT file against TensorFlow), is reported as failed (``OptimizeReport.failed``)
and the run goes on with the others. Passing variants are
written as export directories (``OUTPUT/<variant>/``) that ``triton-deploy repo`` takes as they are. Publishing them
into a model repository is the repository's job (``triton_deploy.repository.publish``): the caller passes it in as
``publish`` so data flows one way, export -> optimise -> repository.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from triton_deploy.errors import TritonDeployError, UsageError
from triton_deploy.export import validate
from triton_deploy.fsutil import atomic_directory, check_output_dir
from triton_deploy.progress import Reporter
from triton_deploy.spec import Manifest, Parity, Robustness

from . import evaluate, tensorrt, timing, variants
from .base import BASELINE, ONNX_RUNTIME, BuildContext, BuiltVariant, Datasets, VariantResult
from .options import OptimizeOptions
from .report import OptimizeReport, write_reports

Publish = Callable[[OptimizeReport], dict]  # writes the report's passing variants somewhere; returns a summary


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    """What every variant is scored against: the evaluation images, their labels, FP32's outputs on them."""

    inputs: np.ndarray
    labels: np.ndarray | None
    description: str
    reference: np.ndarray
    suite: evaluate.Suite | None
    baseline_robustness: dict | None
    threads: int
    layout: str


def optimize(options: OptimizeOptions, reporter: Reporter | None = None,
             publish: Publish | None = None) -> OptimizeReport:
    """Build, validate, measure and gate ``options.variants``; write the passing ones and report.md/json to
    ``options.output``; then, if given, ``publish(report)`` and record what it returns in the report."""
    reporter = reporter or Reporter(quiet=True)
    options.check()
    source = Path(options.export_dir)
    manifest = Manifest.read(source)
    source_model = source / manifest.model_file
    check_output_dir(options.output, force=options.force)
    datasets = evaluate.run_datasets(manifest, options.eval_samples, options.calibration_dir)
    variants.check_needs(options.variants, manifest, datasets, source)  # before minutes of work, not after

    evaluation = _evaluation(manifest, source_model, datasets, options, reporter)
    baseline_accuracy = evaluate.accuracy(evaluation.reference, evaluation.labels)
    baseline_details: dict = {"sha256": manifest.model_sha256}
    if evaluation.baseline_robustness is not None:
        baseline_details["robustness"] = evaluation.baseline_robustness

    with atomic_directory(options.output, force=options.force) as staging:
        work = staging / ".work"
        work.mkdir()
        results = [VariantResult(BASELINE, source_model, baseline_accuracy, 1.0, 0.0, source_model.stat().st_size,
                                 accuracy_drop=0.0, details=baseline_details)]
        built: dict[str, BuiltVariant] = {}
        shared: dict = {}
        for name in options.variants:
            runtime = variants.runtime(name)
            context = BuildContext(source_model, work / f"{name}{runtime.suffix}", manifest, options, work, datasets,
                                   reporter, shared)
            result, made = _build_and_score(name, context, evaluation, baseline_accuracy, reporter)
            results.append(result)
            if made is not None:
                built[name] = made

        measured = [r for r in results if r.measured]
        timing.benchmark(measured, evaluation.inputs, options.batch_sizes, seconds=options.bench_seconds,
                         rounds=options.bench_rounds, threads=evaluation.threads, reporter=reporter,
                         layout=evaluation.layout)
        base = results[0]
        first = options.batch_sizes[0]
        for r in measured:
            r.speedup = r.throughput[first] / base.throughput[first] if base.throughput.get(first) else None
            if r.runtime == ONNX_RUNTIME.name:
                precision = built[r.name].precision if r.name in built else "fp32"
                r.tensorrt = tensorrt.check_model(r.path, precision=precision).to_dict()
            r.details["sha256"] = sha256(r.path)
        recommendations = {"tensorrt": evaluate.recommend(results, first, target="tensorrt")}
        if any(r.runtime == "litert" for r in results):
            recommendations["edge (LiteRT)"] = evaluate.recommend(results, first, target="edge")

        for r in results[1:]:
            if r.passed and r.runtime == "litert":
                _write_edge_variant(staging / r.name, r, built[r.name], manifest, options)
            elif r.passed:
                _write_variant_export(staging / r.name, r, built[r.name], manifest, source, options)
        shutil.rmtree(work)
        report = OptimizeReport(
            source=source, output=Path(options.output), model=manifest.name,
            gate=evaluate.gate_rule(options.max_accuracy_drop, options.min_agreement, baseline_accuracy,
                                    int(len(evaluation.inputs))),
            variants=results, recommendation=evaluate.recommend(results, first), recommendations=recommendations,
            machine=timing.machine(evaluation.threads, seconds=options.bench_seconds, rounds=options.bench_rounds,
                                   batch_sizes=options.batch_sizes))
        for r in results[1:]:
            file = "model.tflite" if r.runtime == "litert" else "model.onnx"
            r.path = (Path(options.output) / r.name / file) if r.passed else Path("")
        results[0].path = source_model
        write_reports(staging, report)

    if publish is not None:
        with reporter.step(f"Publishing to {publish}"):
            report.published = publish(report)
        write_reports(Path(options.output), report)
    return report


def _evaluation(manifest: Manifest, source_model: Path, datasets: Datasets, options: OptimizeOptions,
                reporter: Reporter) -> _Evaluation:
    """The evaluation images and FP32's answers on them (and on the export's robustness suite, when it has one)."""
    with reporter.step("Reading the evaluation images"):
        inputs, labels, description = evaluate.evaluation_set(manifest, datasets.heldout, options.eval_limit)
    threads = options.threads or (os.cpu_count() or 1)
    layout = manifest.preprocessing.layout
    fp32 = evaluate.runner(source_model, ONNX_RUNTIME.name, threads)
    with reporter.step(f"Scoring FP32 on {len(inputs)} {description}"):
        reference = evaluate.run_model(fp32, inputs)
    suite = baseline_robustness = None
    if manifest.robustness is not None:
        with reporter.step("Drawing the export's robustness suite"):
            limits = [n for n in (options.eval_limit, options.robustness_limit) if n is not None]
            suite = datasets.own.robustness(manifest.preprocessing, min(limits, default=None))
    if suite is not None:
        images = len(suite[1]) * len(suite[0])
        with reporter.bar(images, f"Scoring FP32 on the robustness suite ({len(suite[0])} conditions)") as bar:
            baseline_robustness = evaluate.robustness_record(fp32, suite, progress=bar.advance)
    return _Evaluation(inputs, labels, description, reference, suite, baseline_robustness, threads, layout)


def _build_and_score(name: str, context: BuildContext, evaluation: _Evaluation, baseline_accuracy: float | None,
                     reporter: Reporter) -> tuple[VariantResult, BuiltVariant | None]:
    """Build one variant, run it on the evaluation images (and the robustness suite) and gate it. A variant that
    cannot be built or run comes back failed, with the reason, so the run goes on with the others."""
    runtime = variants.runtime(name)
    path = context.target
    try:
        if variants.shows_progress(name, context):  # training draws its own progress bars
            reporter.info(f"Building {name}")
            made = variants.build(name, context)
        else:
            with reporter.step(f"Building {name}"):
                made = variants.build(name, context)
        suite = evaluation.suite
        images = len(evaluation.inputs) + (len(suite[1]) * len(suite[0]) if suite is not None else 0)
        with reporter.bar(images, f"Validating {name} on {len(evaluation.inputs)} {evaluation.description}"
                          + (" and the robustness suite" if suite is not None else "")) as bar:
            if runtime is ONNX_RUNTIME:
                validate.check_graph(path)
            run = evaluate.runner(path, runtime.name, evaluation.threads, evaluation.layout)
            outputs = evaluate.run_model(run, evaluation.inputs, progress=bar.advance)
            scored = (evaluate.robustness_record(run, suite, evaluation.baseline_robustness, progress=bar.advance)
                      if suite is not None else None)
    except UsageError:
        raise  # a flag that cannot work fails the run, as before any work
    except Exception as exc:  # noqa: BLE001  (one variant's rewrite or runtime failing must not lose the others)
        reason = _one_line(exc)
        reporter.info(f"[red]\u2717[/] {name} failed: {reason}")
        return VariantResult(name, Path(""), None, 0.0, 0.0, 0, passed=False, failed=True, reason=reason,
                             runtime=runtime.name), None
    result = VariantResult(name, path, evaluate.accuracy(outputs, evaluation.labels),
                           evaluate.agreement(outputs, evaluation.reference),
                           evaluate.max_abs_diff(outputs, evaluation.reference), path.stat().st_size,
                           details=dict(made.details), runtime=runtime.name, recommendable=made.recommendable)
    if scored is not None:
        result.details["robustness"] = scored
    if made.note:
        result.details["note"] = made.note
    evaluate.gate(result, baseline_accuracy, context.options.max_accuracy_drop, context.options.min_agreement,
                  made.atol)
    if made.failure is not None:
        result.passed, result.failed = False, True
        result.reason = made.failure + (f"; {result.reason}" if result.reason else "")
        reporter.info(f"[red]\u2717[/] {name} failed: {result.reason}")
    return result, made


def _one_line(exc: BaseException) -> str:
    """A failure as one line: a project error's message (not its hint: raised inside a builder, it may name another
    command's flags, such as export's --atol), anything else as its type and first line."""
    if isinstance(exc, TritonDeployError):
        return exc.message.splitlines()[0]
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _write_variant_export(directory: Path, result: VariantResult, built: BuiltVariant, manifest: Manifest,
                          source: Path, options: OptimizeOptions) -> None:
    """An export directory like ``triton-deploy export`` writes: model, manifest, labels, sample image."""
    directory.mkdir()
    shutil.copyfile(result.path, directory / "model.onnx")
    sample = manifest.sample_image or "sample.png"
    if (source / sample).is_file():
        shutil.copyfile(source / sample, directory / sample)
    optimization = {"variant": result.name, "source_sha256": manifest.model_sha256,
                    "parity_reference": "the FP32 ONNX model on the held-out images",
                    "agreement_with_fp32": result.agreement, "max_abs_diff_vs_fp32": result.max_abs_diff,
                    "accuracy_drop_points": result.accuracy_drop, "max_accuracy_drop_points": options.max_accuracy_drop,
                    **{k: v for k, v in result.details.items() if k != "sha256"}}
    # A rewrite of the same model: its parity is against the FP32 ONNX model on the held-out images.
    parity = Parity(max_abs_diff=result.max_abs_diff, top1_agreement=result.agreement,
                    atol=manifest.parity.atol, samples=int(manifest.parity.samples), batch_sizes=(64,))
    variant_manifest = dataclasses.replace(
        manifest, model_sha256=sha256(directory / "model.onnx"),
        accuracy=result.accuracy if result.accuracy is not None else manifest.accuracy,
        robustness=_variant_robustness(manifest, result),
        variant=result.name, optimization=optimization,
        keras_file=None, tflite=None,  # the variant's directory holds its ONNX model only
        **({"parity": parity} | built.manifest_updates))
    variant_manifest.write(directory)


def _variant_robustness(manifest: Manifest, result: VariantResult) -> Robustness | None:
    """The variant's own scores on its source's robustness suite (None when optimize could not redraw the suite)."""
    scored = result.details.get("robustness")
    if manifest.robustness is None or scored is None:
        return None
    return Robustness(data=manifest.robustness.data, conditions=tuple(
        dataclasses.replace(c, accuracy=scored["conditions"][c.name], images=scored["images_per_condition"])
        for c in manifest.robustness.conditions))


def _write_edge_variant(directory: Path, result: VariantResult, built: BuiltVariant, manifest: Manifest,
                        options: OptimizeOptions) -> None:
    """A LiteRT variant: ``model.tflite``, ``labels.txt`` and ``tflite.json``, the file's record (sha256, I/O
    quantisation, validation against TensorFlow, single-image latency here) plus how it scored in this run. Not an
    export directory: Triton's repository takes ONNX models."""
    directory.mkdir()
    shutil.copyfile(result.path, directory / "model.tflite")
    (directory / manifest.labels_file).write_text("".join(f"{label}\n" for label in manifest.labels),
                                                  encoding="utf-8")
    entry = dict(built.artifact or {}) | {
        "variant": result.name, "source_sha256": manifest.model_sha256, "preprocessing":
        dataclasses.replace(manifest.preprocessing, layout="NHWC").to_dict(), "labels_file": manifest.labels_file,
        "accuracy": result.accuracy, "agreement_with_fp32_onnx": result.agreement,
        "accuracy_drop_points": result.accuracy_drop, "max_accuracy_drop_points": options.max_accuracy_drop}
    (directory / "tflite.json").write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
