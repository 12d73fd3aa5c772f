"""``optimize``: make cheaper variants of an export, measure them all the same way, gate them, write the passing ones.

Variants (``variants.REGISTRY`` and its families): ``fp32_slim`` (onnxslim), ``fp16`` (FP32 inputs/outputs kept),
``int8_dynamic``, ``int8_static`` (QDQ, per-channel, calibrated on real images), ``int8_symmetric`` (the TensorRT-ready
flavour), ``pruned_<p>`` and ``pruned_<p>_int8_*`` (structured pruning of the Keras source, fine-tuned),
``distilled`` (a smaller student trained on the teacher's soft targets) and ``tflite_fp32`` / ``tflite_int8`` (LiteRT
files for the edge). Every variant and the FP32 original are measured in one run:

* accuracy on the export's own labelled samples (recorded in its manifest; ``--eval-samples`` overrides), or on the
  digits held-out split for the digits model, through the export's ``ImageTransform``; top-1 agreement with the FP32
  model and the max absolute output difference for every model;
* size on disk; latency p50/p95 at batch 1 and throughput at batch 8 and 32 (``timing``), in ONNX Runtime or, for
  the ``.tflite`` variants, in LiteRT's interpreter.

The gate (``evaluate``): a variant whose accuracy drops more than ``max_accuracy_drop`` percentage points below FP32
is reported but not written. Without labelled data the disagreement with FP32 (which bounds any accuracy loss) is
gated instead. ``fp32_slim`` must also keep numerical parity within the export's ``atol``. Passing variants are
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

import onnx

from triton_deploy.export import validate
from triton_deploy.export.sources import keras_file
from triton_deploy.fsutil import atomic_directory, check_output_dir
from triton_deploy.progress import Reporter
from triton_deploy.spec import Manifest, Parity, Robustness

from . import evaluate, tensorrt, timing, variants
from .options import OptimizeOptions
from .report import OptimizeReport, VariantResult, write_reports
from .variants import BASELINE, BuildContext, BuiltVariant

Publish = Callable[[OptimizeReport], dict]  # writes the report's passing variants somewhere; returns a summary


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
    if any(variants.needs_keras_source(name) for name in options.variants):
        keras_file(source, manifest)  # fail before minutes of work, not after

    inputs, labels, evaluated_on = evaluate.evaluation_set(manifest, options.eval_limit, options.eval_samples)
    threads = options.threads or (os.cpu_count() or 1)
    layout = manifest.preprocessing.layout
    fp32 = evaluate.runner(source_model, "onnxruntime", threads)
    reference = evaluate.run_model(fp32, inputs)
    baseline_accuracy = evaluate.accuracy(reference, labels)
    suite = evaluate.robustness_set(manifest, options.eval_limit)
    baseline_details: dict = {"sha256": manifest.model_sha256}
    if suite is not None:
        with reporter.step(f"Scoring FP32 on the robustness suite ({len(suite[0])} conditions)"):
            baseline_details["robustness"] = evaluate.robustness_record(fp32, suite)
    convolutional = any(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(source_model)).graph.node)

    with atomic_directory(options.output, force=options.force) as staging:
        work = staging / ".work"
        work.mkdir()
        results = [VariantResult(BASELINE, source_model, baseline_accuracy, 1.0, 0.0, source_model.stat().st_size,
                                 accuracy_drop=0.0, details=baseline_details)]
        built: dict[str, BuiltVariant] = {}
        for name in options.variants:
            runtime = variants.runtime(name)
            path = work / f"{name}{runtime.suffix}"
            context = BuildContext(source_model, path, manifest, options, work, reporter)
            if variants.shows_progress(name, work):  # fine-tuning draws its own progress bar
                reporter.info(f"Building {name}")
                built[name] = variants.build(name, context)
            else:
                with reporter.step(f"Building {name}"):
                    built[name] = variants.build(name, context)
            with reporter.step(f"Validating {name} on {len(inputs)} {evaluated_on}"):
                if runtime is variants.ONNX_RUNTIME:
                    validate.check_graph(path)
                run = evaluate.runner(path, runtime.name, threads, layout)
                outputs = evaluate.run_model(run, inputs)
                scored = (evaluate.robustness_record(run, suite, baseline_details["robustness"])
                          if suite is not None else None)
            result = VariantResult(name, path, evaluate.accuracy(outputs, labels),
                                   evaluate.agreement(outputs, reference), evaluate.max_abs_diff(outputs, reference),
                                   path.stat().st_size, details=dict(built[name].details), runtime=runtime.name)
            if scored is not None:
                result.details["robustness"] = scored
            evaluate.gate(result, baseline_accuracy, manifest, options.max_accuracy_drop)
            if name == "int8_dynamic" and convolutional:
                result.details["note"] = ("dynamic INT8 runs convolutions as ConvInteger, a slow fallback on CPU: "
                                          "never recommended for convolutional models")
            results.append(result)

        timing.benchmark(results, inputs, options.batch_sizes, seconds=options.bench_seconds,
                         rounds=options.bench_rounds, threads=threads, reporter=reporter, layout=layout)
        base = results[0]
        first = options.batch_sizes[0]
        for r in results:
            r.speedup = r.throughput[first] / base.throughput[first] if base.throughput.get(first) else None
            if r.runtime == "onnxruntime":
                r.tensorrt = tensorrt.check_model(r.path, precision=_precision(r.name)).to_dict()
            r.details["sha256"] = sha256(r.path)
        recommendation = evaluate.recommend(results, convolutional, first)
        recommendations = {"tensorrt": evaluate.recommend(results, convolutional, first, target="tensorrt")}
        if any(r.runtime == "litert" for r in results):
            recommendations["edge (LiteRT)"] = evaluate.recommend(results, convolutional, first, target="edge")

        for r in results[1:]:
            if r.passed and r.runtime == "litert":
                _write_edge_variant(staging / r.name, r, built[r.name], manifest, options)
            elif r.passed:
                _write_variant_export(staging / r.name, r, built[r.name], manifest, source, options)
        shutil.rmtree(work)
        report = OptimizeReport(
            source=source, output=Path(options.output), model=manifest.name,
            gate=evaluate.gate_rule(options.max_accuracy_drop, baseline_accuracy, int(len(inputs))),
            variants=results, recommendation=recommendation, recommendations=recommendations,
            machine=timing.machine(threads, seconds=options.bench_seconds, rounds=options.bench_rounds,
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


def _precision(name: str) -> str:
    """The TensorRT build precision a variant is meant for."""
    return "int8" if "int8" in name else ("fp16" if name == "fp16" else "fp32")


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
        manifest.preprocessing.to_dict() | {"layout": "NHWC"}, "labels_file": manifest.labels_file,
        "accuracy": result.accuracy, "agreement_with_fp32_onnx": result.agreement,
        "accuracy_drop_points": result.accuracy_drop, "max_accuracy_drop_points": options.max_accuracy_drop}
    (directory / "tflite.json").write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
