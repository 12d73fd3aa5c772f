"""The ``optimize`` and ``tensorrt-check`` subcommands: flags -> frozen options -> one core function each.

``optimize --publish`` hands a ``repository.publish.Publisher`` to ``optimize``: the orchestration is here, so the
optimiser itself never imports the repository writer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from triton_deploy.cliargs import add_common_flags, float_list, int_list, word_list
from triton_deploy.errors import VariantsFailedError
from triton_deploy.repository.publish import Publisher
from triton_deploy.repository.render import TensorRTAccelerator, gpu_classifier_config
from triton_deploy.spec import Manifest


def add_optimize(sub) -> None:
    from .options import DEFAULT_MIN_AGREEMENT  # late: the optimiser's modules load ONNX, kept off CLI start-up
    from .variants import DEFAULT_VARIANTS, VARIANTS

    p = sub.add_parser("optimize", help="FP16 / INT8 / pruned / distilled / LiteRT variants with accuracy gates, a "
                                        "speed report and a Pareto plot",
                       description="Build optimised variants of an export, measure accuracy, agreement, size, "
                                   "latency and throughput in one run, gate them on accuracy, write the passing ones "
                                   "as export directories, and optionally publish them to a model repository.")
    p.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="a directory written by 'export'")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="where variants and reports go")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--variants", type=word_list, default=DEFAULT_VARIANTS, metavar="A,B",
                   help=f"subset of {','.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="largest held-out accuracy loss a published variant may have, in points (default 1)")
    p.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT, metavar="SHARE",
                   help="smallest share of evaluation images on which a published variant must give FP32's top-1 "
                        f"class (default {DEFAULT_MIN_AGREEMENT:g}): the gate that still means something when "
                        "accuracy is near chance")
    q = p.add_argument_group("INT8 static calibration")
    q.add_argument("--calibration", type=Path, metavar="DIR",
                   help="images to calibrate on, through the export's transform (default: --eval-samples, else the "
                        "export's own images as its manifest records them; an export that records none is refused)")
    q.add_argument("--calibration-count", type=int, default=128, help="calibration images (default 128)")
    q.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax")
    q.add_argument("--calibration-percentile", type=float, default=99.999, help="for percentile (default 99.999)")
    q.add_argument("--no-per-channel", dest="per_channel", action="store_false", help="per-tensor weight scales")
    q.add_argument("--int8-symmetric", action="store_true",
                   help="INT8 activations with zero point 0 and float biases (what TensorRT needs)")
    p.add_argument("--no-keep-io-types", dest="keep_io_types", action="store_false",
                   help="FP16 variant takes and returns FP16 tensors (default: FP32 at the boundary)")
    d = p.add_argument_group("distillation (variant 'distilled')")
    d.add_argument("--distill", action="store_true", help="add the distilled student to the variants")
    d.add_argument("--distill-temperature", type=float, default=4.0)
    d.add_argument("--distill-alpha", type=float, default=0.7, help="weight of the soft targets (default 0.7)")
    d.add_argument("--distill-epochs", type=int, default=12)
    d.add_argument("--student-channels", type=int_list, default=(16, 16, 32, 64), metavar="N,N",
                   help="conv widths of the student (default 16,16,32,64)")
    r = p.add_argument_group("structured pruning (variants pruned_<percent>, pruned_<percent>_int8_static)")
    r.add_argument("--prune", type=_prune_fractions, default=(), metavar="F[,F]",
                   help="share of each layer's filters to remove, e.g. 0.5 or 0.25,0.5,0.75: one pruned variant "
                        "(and its INT8 versions) per value; needs the export's Keras source (model.keras)")
    r.add_argument("--prune-criterion", choices=["l1", "l2"], default="l1",
                   help="rank filters by the L1 (default) or L2 norm of their weights")
    r.add_argument("--fine-tune-epochs", type=int, default=3, metavar="N",
                   help="fine-tune each pruned model N epochs on the export's training images (the built-in "
                        "model's augmented drawings; a user model has none and is not fine-tuned), towards the "
                        "unpruned model's answers (default 3)")
    r.add_argument("--fine-tune-renderings", type=int, default=12, metavar="N",
                   help="draw each training image N times for that fine-tuning (default 12, as the built-in "
                        "model's training; fewer is quicker and recovers less robustness)")
    p.add_argument("--tflite", action="store_true",
                   help="add the LiteRT edge variants tflite_fp32 and tflite_int8 (full-integer), from model.keras")
    t = p.add_argument_group("timing")
    t.add_argument("--batch-sizes", type=int_list, default=(8, 32), help="throughput batch sizes (default 8,32)")
    t.add_argument("--bench-seconds", type=float, default=1.0, help="per variant, batch size and round")
    t.add_argument("--bench-rounds", type=int, default=3, help="interleaved rounds; the best is kept (default 3)")
    t.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    t.add_argument("--eval-limit", type=int, help="evaluate on the first N images only")
    t.add_argument("--robustness-limit", type=int, metavar="N",
                   help="score the robustness suite on the first N held-out images only (default: all of them)")
    t.add_argument("--eval-samples", type=Path, metavar="DIR",
                   help="images to measure accuracy (one sub-folder per label) and agreement on (default: the "
                        "export's own held-out images, as its manifest records them)")
    pub = p.add_argument_group("publishing")
    pub.add_argument("--publish", type=Path, metavar="REPO_DIR", help="write passing variants into this repository")
    pub.add_argument("--publish-as", choices=["versions", "siblings"], default="versions",
                     help="next classifier versions (default) or sibling models <name>_<variant>")
    pub.add_argument("--version-policy", default="latest:1", help="latest:N, all, specific:1,2 (default latest:1)")
    pub.add_argument("--max-batch-size", type=int, default=32, help="of the published models (default 32)")
    pub.add_argument("--publish-backend", choices=["python", "onnxruntime", "tensorrt"], default="python",
                     help="classifier backend of the published models (default python, the local server); tensorrt "
                          "publishes only variants that pass the TensorRT check (INT8: the symmetric flavours)")
    pub.add_argument("--publish-tensorrt-accelerator", action="store_true",
                     help="the onnxruntime backend will run with the TensorRT accelerator: publish as for tensorrt")
    add_common_flags(p, "print the machine-readable report on stdout")
    p.set_defaults(handler=run_optimize)


def run_optimize(args: argparse.Namespace, reporter) -> int:
    # Late: the optimiser loads ONNX, onnxruntime and its quantiser, kept off the CLI's start-up.
    from .distill import DistillOptions
    from .options import OptimizeOptions
    from .quantize import Calibration
    from .run import optimize
    from .variants import TFLITE_VARIANTS, pruned_names

    flavours = tuple(f for f in ("int8_static", "int8_symmetric") if f in args.variants) or ("int8_static",)
    extra = (("distilled",) if args.distill else ()) + pruned_names(args.prune, flavours) + (
        TFLITE_VARIANTS if args.tflite else ())
    variants = args.variants + tuple(v for v in extra if v not in args.variants)
    options = OptimizeOptions(
        export_dir=args.export_dir, output=args.output, variants=variants, max_accuracy_drop=args.max_accuracy_drop,
        min_agreement=args.min_agreement,
        calibration=Calibration(method=args.calibration_method, percentile=args.calibration_percentile,
                                per_channel=args.per_channel, symmetric_activations=args.int8_symmetric),
        calibration_dir=args.calibration, calibration_count=args.calibration_count, keep_io_types=args.keep_io_types,
        distill=DistillOptions(temperature=args.distill_temperature, alpha=args.distill_alpha,
                               epochs=args.distill_epochs, channels=args.student_channels, seed=0),
        batch_sizes=args.batch_sizes, bench_seconds=args.bench_seconds, bench_rounds=args.bench_rounds,
        threads=args.threads, eval_limit=args.eval_limit, robustness_limit=args.robustness_limit,
        eval_samples=args.eval_samples, force=args.force,
        prune_criterion=args.prune_criterion, fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_renderings=args.fine_tune_renderings,
    )
    publisher = None
    if args.publish is not None:  # the repository's step, after optimisation: data flows one way
        options.check()
        publisher = Publisher(args.publish, mode=args.publish_as, version_policy=args.version_policy,
                              max_batch_size=args.max_batch_size, classifier_backend=args.publish_backend,
                              tensorrt_accelerator=args.publish_tensorrt_accelerator)
        publisher.check()
    report = optimize(options, reporter, publish=publisher)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        reporter.console.print(report.markdown(), markup=False)
        if report.published:
            reporter.info(published_text(report.published))
    if report.failed:
        names = "; ".join(f"{v.name} ({v.reason})" for v in report.failed)
        raise VariantsFailedError(f"{len(report.failed)} of {len(report.variants) - 1} variants failed: {names}. The "
                                  f"others are in {report.output}" + (" and published" if report.published else ""),
                                  hint="see the status column of report.md; leave the failed variants out of "
                                       "--variants (or drop --tflite / --prune / --distill) to get exit code 0")
    return 0


def published_text(published: dict) -> str:
    """One line a person reads: where the variants went and what Triton will serve by default."""
    if published["mode"] == "versions":
        versions = ", ".join(f"{n} {v}" for n, v in published["classifier_versions"].items())
        served = ", ".join(f"version {n} ({v})" for n, v in published["served"].items())
        return (f"Published to {published['repository']}: '{published['ensemble']}' classifier versions {versions}; "
                f"with version policy {published['version_policy']} Triton serves {served}")
    models = ", ".join(f"{model} ({variant})" for variant, model in published["ensembles"].items())
    return f"Published to {published['repository']} as sibling models: {models}"


def _prune_fractions(text: str) -> tuple[float, ...]:
    """'0.25,0.5' -> (0.25, 0.5): whole percents strictly between 0 and 100 (they name the variants)."""
    fractions = float_list(text)
    bad = [f for f in fractions if not 0 < f < 1 or abs(f * 100 - round(f * 100)) > 1e-9]
    if bad or not fractions:
        raise argparse.ArgumentTypeError(f"expected fractions of filters to remove in whole percents between 0 and 1 "
                                         f"(e.g. 0.5 or 0.25,0.75), got {text!r}")
    return fractions


def add_tensorrt_check(sub) -> None:
    p = sub.add_parser("tensorrt-check", help="check an export for TensorRT; print the trtexec command and GPU config",
                       description="Check opset, dynamic batch dimension, static inner dimensions and operators "
                                   "against TensorRT's ONNX parser; print the trtexec command for the plan and the "
                                   "Triton onnxruntime-backend config with the TensorRT execution provider.")
    p.add_argument("export_dir", type=Path, metavar="EXPORT_DIR")
    p.add_argument("--max-batch-size", type=int, default=32, help="profile max batch (default 32)")
    p.add_argument("--opt-batch-size", type=int, help="profile opt batch (default: half the max)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    p.add_argument("--calibration-cache", metavar="FILE", help="for INT8 without Q/DQ nodes (trtexec --calib)")
    p.add_argument("--plan", default="model.plan", help="engine file trtexec writes (default model.plan)")
    add_common_flags(p, "print the machine-readable report on stdout")
    p.set_defaults(handler=run_tensorrt_check)


def run_tensorrt_check(args: argparse.Namespace, reporter) -> int:
    # Late: the TensorRT check reads the ONNX graph: ONNX only when the command runs.
    from .tensorrt import PlanOptions, TensorRTCompatibilityError, check_export

    options = PlanOptions(max_batch_size=args.max_batch_size, opt_batch_size=args.opt_batch_size,
                          precision=args.precision, onnx_path=str(args.export_dir / "model.onnx"),
                          plan_path=args.plan, calibration_cache=args.calibration_cache)
    report, command = check_export(args.export_dir, options)
    config = gpu_classifier_config(Manifest.read(args.export_dir), TensorRTAccelerator(precision=args.precision),
                                   max_batch_size=args.max_batch_size)
    if args.json:
        print(json.dumps(report.to_dict() | {"trtexec": command, "onnxruntime_gpu_config": config}, indent=2))
    else:
        print(report.text())
        print("\n# Build the plan on the target GPU (plans are bound to the GPU model and TensorRT version):")
        print(command)
        print("\n# Or let Triton's onnxruntime backend build and cache TensorRT engines (classifier config.pbtxt):")
        print(config, end="")
    if not report.compatible:
        raise TensorRTCompatibilityError(f"{args.export_dir} is not TensorRT-compatible: "
                                         + "; ".join(report.problems), hint="see the report above")
    return 0
