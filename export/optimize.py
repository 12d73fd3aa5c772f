"""``triton-deploy optimize``: make cheaper variants of an export, measure them all the same way, gate, publish.

Variants (``VARIANTS``): ``fp32_slim`` (onnxslim), ``fp16`` (FP32 inputs/outputs kept), ``int8_dynamic``,
``int8_static`` (QDQ, per-channel, calibrated on real images) and ``distilled`` (a smaller student trained on the
teacher's soft targets). Every variant and the FP32 original are measured in one run:

* held-out accuracy on the digits held-out split (through the export's ``ImageTransform``) when the model is a digits
  classifier; top-1 agreement with the FP32 model and the max absolute output difference for every model;
* size on disk; ONNX Runtime latency p50/p95 at batch 1 and throughput at batch 8 and 32. Timing runs in rounds that
  interleave the variants, and each figure is the best round: on a shared machine that is the least-disturbed one.

The gate: a variant whose accuracy drops more than ``max_accuracy_drop`` percentage points below FP32 is reported but
not published. Without labelled data the disagreement with FP32 (which bounds any accuracy loss) is gated instead.
``fp32_slim`` must also keep numerical parity within the export's ``atol``. Passing variants are written as export
directories (``OUTPUT/<variant>/``) that ``triton-deploy repo`` takes as they are; ``publish`` writes them into a
model repository as the next classifier versions or as sibling models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from triton_deploy.errors import TritonDeployError, UsageError
from triton_deploy.fsutil import atomic_directory, check_output_dir
from triton_deploy.progress import Reporter
from triton_deploy.spec import Manifest, Parity

from . import digits, quantize, tensorrt, validate
from .distill import DistillOptions

VARIANTS = ("fp32_slim", "fp16", "int8_dynamic", "int8_static", "distilled")
DEFAULT_VARIANTS = ("fp32_slim", "fp16", "int8_dynamic", "int8_static")
BASELINE = "fp32"
PUBLISH_MODES = ("versions", "siblings")
REPORT_JSON, REPORT_MD = "report.json", "report.md"
MIN_SPEEDUP = 1.05  # below this a variant is not worth a deployment change


class GateError(TritonDeployError):
    """No variant could be published (e.g. ``--publish`` while every variant failed the accuracy gate)."""

    exit_code = 22


@dataclass(frozen=True)
class OptimizeOptions:
    export_dir: Path
    output: Path
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    max_accuracy_drop: float = 1.0  # percentage points
    calibration: quantize.Calibration = quantize.Calibration()
    calibration_dir: Path | None = None
    calibration_count: int = 128
    keep_io_types: bool = True
    distill: DistillOptions = DistillOptions()
    batch_sizes: tuple[int, ...] = (8, 32)
    bench_seconds: float = 1.0  # per variant, batch size and round
    bench_rounds: int = 3
    threads: int | None = None  # ONNX Runtime intra-op threads (default: all cores)
    eval_limit: int | None = None  # use only the first N held-out images (tests)
    tensorrt_max_batch_size: int = 32
    force: bool = False
    publish: Path | None = None
    publish_as: str = "versions"
    version_policy: str = "latest:1"
    publish_max_batch_size: int = 32
    seed: int = 0

    def check(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise UsageError(f"unknown variants {unknown}" if unknown else "no variant chosen",
                             hint=f"--variants takes a comma-separated subset of {','.join(VARIANTS)}")
        if self.max_accuracy_drop < 0:
            raise UsageError(f"--max-accuracy-drop {self.max_accuracy_drop} is negative; it is the largest loss "
                             "allowed, in percentage points", hint="check --max-accuracy-drop")
        if any(b < 1 for b in self.batch_sizes) or not self.batch_sizes:
            raise UsageError("throughput batch sizes must be positive", hint="check --batch-sizes")
        if self.bench_seconds <= 0 or self.bench_rounds < 1:
            raise UsageError("--bench-seconds must be > 0 and --bench-rounds >= 1", hint="check --bench-seconds")
        if self.publish_as not in PUBLISH_MODES:
            raise UsageError(f"unknown publish mode {self.publish_as!r}", hint="--publish-as takes versions|siblings")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise UsageError("--eval-limit must be at least 1", hint="check --eval-limit")
        self.calibration.check()
        if "distilled" in self.variants:
            self.distill.check()


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

    def to_dict(self) -> dict:
        return {"name": self.name, "accuracy": self.accuracy, "accuracy_drop_points": self.accuracy_drop,
                "agreement": self.agreement, "max_abs_diff": self.max_abs_diff, "size_bytes": self.size_bytes,
                "latency_ms": self.latency_ms, "throughput": {str(b): v for b, v in self.throughput.items()},
                "speedup": self.speedup, "passed": self.passed, "reason": self.reason,
                "tensorrt": self.tensorrt, "details": self.details}


@dataclass
class OptimizeReport:
    source: Path
    output: Path
    model: str
    gate: dict
    variants: list[VariantResult]
    recommendation: dict
    machine: dict
    published: dict | None = None

    def variant(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)

    def to_dict(self) -> dict:
        return {"source": str(self.source), "output": str(self.output), "model": self.model, "gate": self.gate,
                "variants": [v.to_dict() for v in self.variants], "recommendation": self.recommendation,
                "machine": self.machine, "published": self.published}

    def markdown(self) -> str:
        batches = sorted({b for v in self.variants for b in v.throughput})
        labelled = any(v.accuracy is not None for v in self.variants)
        head = ["variant", "accuracy" if labelled else "accuracy (n/a)", "drop (pts)", "agreement", "max |diff|",
                "size (MB)", "p50 ms b1", "p95 ms b1", *[f"img/s b{b}" for b in batches],
                f"speed-up b{batches[0]}" if batches else "speed-up", "TensorRT", "status"]
        rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for v in self.variants:
            trt = "ok" if v.tensorrt.get("compatible") else (
                "no: " + ", ".join(v.tensorrt.get("unsupported_operators", {})) if v.tensorrt.get(
                    "unsupported_operators") else "no: " + (v.tensorrt.get("problems") or ["?"])[0][:40])
            cells = [v.name, _fmt(v.accuracy, ".4f"), _fmt(v.accuracy_drop, "+.2f"), f"{v.agreement:.4f}",
                     f"{v.max_abs_diff:.3g}", f"{v.size_bytes / 1e6:.2f}", _fmt(v.latency_ms.get("p50"), ".2f"),
                     _fmt(v.latency_ms.get("p95"), ".2f"), *[_fmt(v.throughput.get(b), ".0f") for b in batches],
                     _fmt(v.speedup, ".2f") + ("x" if v.speedup is not None else ""), trt,
                     "baseline" if v.name == BASELINE else ("passed" if v.passed else f"refused: {v.reason}")]
            rows.append("| " + " | ".join(cells) + " |")
        rec = self.recommendation
        return (f"# Optimisation of {self.model}\n\n" + "\n".join(rows) + "\n\n"
                f"Gate: {self.gate['rule']}.\n\nRecommendation: **{rec['variant']}** ({rec['reason']}).\n\n"
                f"Measured on {self.machine['cpu_count']} cores with ONNX Runtime {self.machine['onnxruntime']} "
                f"({self.machine['threads']} intra-op threads), best of {self.machine['rounds']} interleaved rounds "
                f"of {self.machine['seconds']} s each; a shared machine: compare ratios, not absolutes.\n")


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def optimize(options: OptimizeOptions, reporter: Reporter | None = None) -> OptimizeReport:
    reporter = reporter or Reporter(quiet=True)
    options.check()
    source = Path(options.export_dir)
    manifest = Manifest.read(source)
    source_model = source / manifest.model_file
    check_output_dir(options.output, force=options.force)
    if options.publish is not None:
        from triton_deploy.repository.render import version_policy_text

        try:
            version_policy_text(options.version_policy)
        except ValueError as exc:
            raise UsageError(str(exc), hint="check --version-policy") from None

    inputs, labels = _evaluation_set(manifest, options.eval_limit)
    threads = options.threads or (os.cpu_count() or 1)
    reference = _run(validate.onnx_session(source_model, threads), inputs)
    baseline_accuracy = _accuracy(reference, labels)
    convolutional = any(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(source_model)).graph.node)

    with atomic_directory(options.output, force=options.force) as staging:
        work = staging / ".work"
        work.mkdir()
        results = [VariantResult(BASELINE, source_model, baseline_accuracy, 1.0, 0.0, source_model.stat().st_size,
                                 accuracy_drop=0.0, details={"sha256": manifest.model_sha256})]
        distilled = None
        for name in options.variants:
            path = work / f"{name}.onnx"
            with reporter.step(f"Building {name}"):
                details = _build(name, source_model, path, manifest, options, work)
            if name == "distilled":
                distilled = details.pop("_model")
            with reporter.step(f"Validating {name} on {len(inputs)} held-out images"):
                validate.check_graph(path)
                outputs = _run(validate.onnx_session(path, threads), inputs)
            result = VariantResult(
                name, path, _accuracy(outputs, labels),
                float(np.mean(outputs.argmax(-1) == reference.argmax(-1))),
                float(np.max(np.abs(outputs.astype(np.float64) - reference))), path.stat().st_size, details=details)
            _gate(result, baseline_accuracy, manifest, options)
            if name == "int8_dynamic" and convolutional:
                result.details["note"] = ("dynamic INT8 runs convolutions as ConvInteger, a slow fallback on CPU: "
                                          "never recommended for convolutional models")
            results.append(result)

        _benchmark(results, inputs, options, threads, reporter)
        base = results[0]
        first = options.batch_sizes[0]
        for r in results:
            r.speedup = r.throughput[first] / base.throughput[first] if base.throughput.get(first) else None
            precision = "int8" if r.name.startswith("int8") else ("fp16" if r.name == "fp16" else "fp32")
            r.tensorrt = tensorrt.check_model(r.path, precision=precision).to_dict()
            r.details["sha256"] = _sha256(r.path)
        recommendation = _recommend(results, convolutional, first)

        for r in results[1:]:
            if r.passed:
                _write_variant_export(staging / r.name, r, manifest, source, distilled, options)
        shutil.rmtree(work)
        report = OptimizeReport(
            source=source, output=Path(options.output), model=manifest.name,
            gate={"max_accuracy_drop_points": options.max_accuracy_drop,
                  "measure": "accuracy" if baseline_accuracy is not None else "agreement",
                  "rule": (f"held-out accuracy may drop at most {options.max_accuracy_drop:g} points below FP32"
                           if baseline_accuracy is not None else
                           f"top-1 disagreement with FP32 at most {options.max_accuracy_drop:g} points (no labels)"),
                  "evaluation_images": int(len(inputs))},
            variants=results, recommendation=recommendation, machine=_machine(options, threads))
        for r in results[1:]:
            r.path = (Path(options.output) / r.name / "model.onnx") if r.passed else Path("")
        results[0].path = source_model
        _write_reports(staging, report)

    if options.publish is not None:
        with reporter.step(f"Publishing to {options.publish} as {options.publish_as}"):
            report.published = publish(report, options)
        _write_reports(Path(options.output), report)
    return report


# ---- evaluation --------------------------------------------------------------------------------------------------


def _evaluation_set(manifest: Manifest, limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The digits held-out split through the export's transform; labels only for a digits classifier."""
    record = manifest.dataset or {}
    data = digits.load_digits_data(seed=int(record.get("seed", 0)),
                                   test_fraction=float(record.get("test_fraction", 0.25)))
    images, labels = data.split("heldout")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    inputs = digits.to_model_input(images, manifest.preprocessing)
    labelled = record.get("name") == "sklearn-digits" and manifest.num_classes == len(digits.LABELS)
    return inputs, (labels if labelled else None)


def _run(session, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i:i + batch_size]})[0]
                           for i in range(0, len(inputs), batch_size)]).astype(np.float64)


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(np.mean(outputs.argmax(-1) == labels))


def _gate(result: VariantResult, baseline_accuracy: float | None, manifest: Manifest,
          options: OptimizeOptions) -> None:
    if baseline_accuracy is not None and result.accuracy is not None:
        result.accuracy_drop = (baseline_accuracy - result.accuracy) * 100.0
        what = "accuracy drop"
    else:
        result.accuracy_drop = (1.0 - result.agreement) * 100.0
        what = "disagreement with FP32"
    if result.accuracy_drop > options.max_accuracy_drop + 1e-9:
        result.passed = False
        result.reason = f"{what} {result.accuracy_drop:.2f} pts > {options.max_accuracy_drop:g}"
    elif result.name == "fp32_slim" and result.max_abs_diff > manifest.parity.atol:
        result.passed = False
        result.reason = f"max |diff| {result.max_abs_diff:.3g} > atol {manifest.parity.atol:g}"


# ---- building ----------------------------------------------------------------------------------------------------


def _build(name: str, source: Path, target: Path, manifest: Manifest, options: OptimizeOptions,
           work: Path) -> dict:
    if name == "fp32_slim":
        quantize.simplify(source, target)
        return {"tool": "onnxslim"}
    if name == "fp16":
        quantize.to_fp16(source, target, keep_io_types=options.keep_io_types)
        return {"tool": "onnxconverter-common float16", "keep_io_types": options.keep_io_types}
    if name == "int8_dynamic":
        quantize.int8_dynamic(source, target)
        return {"tool": "onnxruntime quantize_dynamic", "weights": "int8"}
    if name == "int8_static":
        samples = quantize.calibration_samples(manifest.preprocessing, directory=options.calibration_dir,
                                               count=options.calibration_count, seed=options.seed)
        quantize.int8_static(source, target, samples, options.calibration)
        return {"tool": "onnxruntime quantize_static", "format": "QDQ", **dataclasses.asdict(options.calibration),
                "calibration_images": int(len(samples)),
                "calibration_source": str(options.calibration_dir) if options.calibration_dir else "digits train split"}
    if name == "distilled":
        from .distill import distill

        model = distill(source, manifest, options.distill, scratch=work)
        onnx.save(model.proto, str(target))
        return {"tool": "keras distillation", **model.source, "flops_per_image": model.flops_per_image,
                "_model": model}
    raise UsageError(f"unknown variant {name!r}")


# ---- timing ------------------------------------------------------------------------------------------------------


def _benchmark(results: list[VariantResult], inputs: np.ndarray, options: OptimizeOptions, threads: int,
               reporter: Reporter) -> None:
    sessions = {r.name: validate.onnx_session(r.path, threads) for r in results}
    input_name = sessions[BASELINE].get_inputs()[0].name
    batches = {b: np.ascontiguousarray(np.resize(inputs, (b, *inputs.shape[1:])), dtype=np.float32)
               for b in (1, *options.batch_sizes)}
    for session in sessions.values():  # first runs allocate and pick kernels
        for batch in batches.values():
            session.run(None, {input_name: batch})
    steps = options.bench_rounds * len(results) * (1 + len(options.batch_sizes))
    with reporter.bar(steps, "Timing every variant (interleaved rounds)") as bar:
        for _ in range(options.bench_rounds):
            for r in results:
                session = sessions[r.name]
                times = []
                deadline = time.perf_counter() + options.bench_seconds
                while time.perf_counter() < deadline or len(times) < 5:
                    start = time.perf_counter()
                    session.run(None, {input_name: batches[1]})
                    times.append(time.perf_counter() - start)
                p50, p95 = (float(np.percentile(times, q) * 1e3) for q in (50, 95))
                if not r.latency_ms or p50 < r.latency_ms["p50"]:
                    r.latency_ms = {"p50": p50, "p95": p95}
                bar.advance(1, status=r.name)
                for b in options.batch_sizes:
                    count, start = 0, time.perf_counter()
                    while time.perf_counter() - start < options.bench_seconds or count < 3 * b:
                        session.run(None, {input_name: batches[b]})
                        count += b
                    rate = count / (time.perf_counter() - start)
                    r.throughput[b] = max(rate, r.throughput.get(b, 0.0))
                    bar.advance(1, status=r.name)


def _recommend(results: list[VariantResult], convolutional: bool, batch: int) -> dict:
    candidates = [r for r in results[1:] if r.passed and not (r.name == "int8_dynamic" and convolutional)]
    best = max(candidates, key=lambda r: r.speedup or 0.0, default=None)
    if best is None or (best.speedup or 0.0) < MIN_SPEEDUP:
        return {"variant": BASELINE, "reason": f"no passing variant is at least {MIN_SPEEDUP:.2f}x faster than FP32 "
                                               f"at batch {batch} on this CPU"}
    drop = "n/a" if best.accuracy_drop is None else f"{best.accuracy_drop:+.2f} pts"
    return {"variant": best.name, "reason": f"{best.speedup:.2f}x the FP32 throughput at batch {batch}, "
                                            f"accuracy drop {drop}, top-1 agreement {best.agreement:.4f}"}


def _machine(options: OptimizeOptions, threads: int) -> dict:
    import onnxruntime

    return {"cpu_count": os.cpu_count(), "threads": threads, "onnxruntime": onnxruntime.__version__,
            "rounds": options.bench_rounds, "seconds": options.bench_seconds,
            "batch_sizes": list(options.batch_sizes), "shared_machine": True}


# ---- writing -----------------------------------------------------------------------------------------------------


def _write_variant_export(directory: Path, result: VariantResult, manifest: Manifest, source: Path, distilled,
                          options: OptimizeOptions) -> None:
    """An export directory like ``triton-deploy export`` writes: model, manifest, labels, sample image."""
    directory.mkdir()
    shutil.copyfile(result.path, directory / "model.onnx")
    sample = manifest.extra.get("sample_image", "sample.png")
    if (source / sample).is_file():
        shutil.copyfile(source / sample, directory / sample)
    optimization = {"variant": result.name, "source_sha256": manifest.model_sha256,
                    "parity_reference": "the FP32 ONNX model on the held-out images",
                    "agreement_with_fp32": result.agreement, "max_abs_diff_vs_fp32": result.max_abs_diff,
                    "accuracy_drop_points": result.accuracy_drop, "max_accuracy_drop_points": options.max_accuracy_drop,
                    **{k: v for k, v in result.details.items() if k != "sha256"}}
    if distilled is not None and result.name == "distilled":
        parity = distilled.parity  # the student: TensorFlow vs its own ONNX export
        updates = {"source": distilled.source, "flops_per_image": distilled.flops_per_image}
    else:
        parity = Parity(max_abs_diff=result.max_abs_diff, top1_agreement=result.agreement,
                        atol=manifest.parity.atol, samples=int(manifest.parity.samples), batch_sizes=(64,))
        updates = {}
    variant_manifest = dataclasses.replace(
        manifest, model_sha256=_sha256(directory / "model.onnx"), parity=parity,
        accuracy=result.accuracy if result.accuracy is not None else manifest.accuracy,
        extra=manifest.extra | {"variant": result.name, "optimization": optimization}, **updates)
    variant_manifest.write(directory)


def _write_reports(directory: Path, report: OptimizeReport) -> None:
    (directory / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    (directory / REPORT_MD).write_text(report.markdown(), encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- publishing --------------------------------------------------------------------------------------------------


def publish(report: OptimizeReport, options: OptimizeOptions) -> dict:
    """Write the FP32 original and every passing variant into ``options.publish``.

    ``versions``: one classifier, FP32 first, the recommended variant last, so ``latest:1`` serves the recommendation
    and ``all`` / ``specific:N`` serve an A/B set. ``siblings``: the FP32 model under its own prefix and each variant
    as ``<name>_<variant>``, all in one repository.
    """
    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.writer import generate_repository

    passing = [v for v in report.variants[1:] if v.passed]
    if not passing:
        raise GateError("no variant passed the accuracy gate, nothing to publish",
                        hint="see the report; relax --max-accuracy-drop or change --variants")
    output = Path(report.output)
    base = RepositoryOptions(output=Path(options.publish), version_policy=options.version_policy,
                             max_batch_size=options.publish_max_batch_size)
    if options.publish_as == "versions":
        recommended = report.recommendation["variant"]
        ordered = sorted(passing, key=lambda v: v.name == recommended)  # stable: the recommendation goes last
        exports = [Path(report.source), *(output / v.name for v in ordered)]
        result = generate_repository(exports, base)
        classifier = Path(options.publish) / f"{report.model}_classifier"
        by_sha = {report.variants[0].details["sha256"]: BASELINE, **{v.details["sha256"]: v.name for v in passing}}
        versions = {}
        for version_dir in sorted((p for p in classifier.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            sha = _sha256(version_dir / "model.onnx")
            versions[version_dir.name] = by_sha.get(sha, "earlier export")
        return {"repository": str(options.publish), "mode": "versions", "ensemble": report.model,
                "classifier_versions": versions, "version_policy": options.version_policy,
                "latest": result.ensembles.get(report.model)}
    models = {BASELINE: report.model}
    generate_repository([Path(report.source)], base)
    for v in passing:
        prefix = f"{report.model}_{v.name}"
        generate_repository([output / v.name], dataclasses.replace(base, prefix=prefix))
        models[v.name] = prefix
    return {"repository": str(options.publish), "mode": "siblings", "ensembles": models,
            "version_policy": options.version_policy}
