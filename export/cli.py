"""The ``export`` subcommand: flags -> ``ExportOptions`` -> ``export_model``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from triton_deploy.cliargs import add_common_flags, float_list
from triton_deploy.progress import Reporter

from .digits import EPOCHS
from .sources import ARCHITECTURES


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a Keras/TensorFlow model to a validated ONNX artifact",
                       description="Train or load a model, convert it to ONNX with tf2onnx, and validate it "
                                   "(ONNX checker, shape inference, TensorFlow vs ONNX Runtime parity).")
    source = p.add_argument_group("model source (one per run)")
    source.add_argument("--model", default="digits", help="built-in model to train (default: digits)")
    source.add_argument("--keras-model", type=Path, metavar="PATH", help="a .keras or .h5 model file")
    source.add_argument("--saved-model", type=Path, metavar="DIR", help="a TensorFlow SavedModel directory")
    source.add_argument("--arch", metavar="NAME", help="a keras.applications architecture with random weights: "
                                                       f"{', '.join(ARCHITECTURES)}")
    source.add_argument("--weights", type=Path, metavar="FILE", help="weights for --arch (.weights.h5)")
    source.add_argument("--image-size", type=int, metavar="N", help="input size for --arch (default 224)")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="export directory to write")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--allow-chance-accuracy", action="store_true",
                   help="write the export even when its accuracy on labelled --samples is no better than guessing "
                        "(default: refuse, exit 14; it usually means the wrong --scale/--mean/--std)")
    p.add_argument("--name", help="model name in the manifest (default: from the source)")
    p.add_argument("--labels", type=Path, metavar="FILE", help="class labels, one per line")
    p.add_argument("--samples", type=Path, metavar="DIR",
                   help="images for parity (and accuracy, when they sit in one folder per label)")
    p.add_argument("--outputs", dest="output_kind", default="auto", choices=["auto", "logits", "probabilities"],
                   help="what the model's output holds (default: detect)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--nchw", action="store_true", help="NCHW input instead of NHWC")
    p.add_argument("--input-name", default="image", help="ONNX input name (default: image)")
    p.add_argument("--output-name", help="ONNX output name (default: logits or probabilities)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance, max |TF - ORT| (default 1e-4)")
    p.add_argument("--min-agreement", type=float, default=1.0, help="required top-1 agreement (default 1.0)")
    p.add_argument("--epochs", type=int, default=EPOCHS,
                   help=f"passes over the augmented training digits (default {EPOCHS})")
    p.add_argument("--tflite", action="store_true",
                   help="also write model.tflite (LiteRT, float32) for Keras sources, validated with LiteRT's "
                        "interpreter against TensorFlow within --atol")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    norm = p.add_argument_group("preprocessing overrides",
                                "model input = (pixel * scale - mean) / std. Defaults come from the model source: "
                                "for --keras-model and --saved-model scale 1/255 (pixels 0-1), mean 0, std 1; for "
                                "--arch the architecture's own")
    norm.add_argument("--scale", type=float, help="pixel multiplier (default for user models 1/255 = 0.00392; "
                                                  "1 for a model that rescales its input itself)")
    norm.add_argument("--mean", type=float_list, help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    norm.add_argument("--std", type=float_list, help="per-channel std after scaling")
    norm.add_argument("--channel-order", choices=["RGB", "BGR"])
    add_common_flags(p)
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace, reporter: Reporter) -> int:
    # the export pipeline loads onnx, and TensorFlow when it trains: only when it runs
    from .pipeline import ExportOptions, export_model

    overrides = {k: getattr(args, k) for k in ("scale", "mean", "std", "channel_order") if getattr(args, k) is not None}
    options = ExportOptions(
        output=args.output, model=args.model, keras_model=args.keras_model, saved_model=args.saved_model,
        arch=args.arch, weights=args.weights, image_size=args.image_size, name=args.name, labels_file=args.labels,
        samples=args.samples, output_kind=args.output_kind, opset=args.opset, nchw=args.nchw, atol=args.atol,
        min_agreement=args.min_agreement, input_name=args.input_name, output_name=args.output_name,
        epochs=args.epochs, seed=args.seed, force=args.force, tflite=args.tflite, transform_overrides=overrides,
        allow_chance_accuracy=args.allow_chance_accuracy,
    )
    result = export_model(options, reporter)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        m = result.manifest
        accuracy = f"{m.accuracy:.4f}" if m.accuracy is not None else f"n/a ({result.accuracy_note})"
        reporter.info(
            f"Exported [bold]{m.name}[/] to {result.output}\n"
            f"  model      {summary['model']}  (opset {m.opset}, sha256 {m.model_sha256[:12]}...)\n"
            f"  input      {m.input.name} {list(m.input.shape)} {m.input.dtype} {m.input.layout}\n"
            f"  output     {m.output.name} {list(m.output.shape)} ({m.output_kind})\n"
            f"  parity     max |TF - ORT| = {m.parity.max_abs_diff:.2e} (atol {m.parity.atol:g}), "
            f"top-1 agreement {m.parity.top1_agreement:.1%} on {m.parity.samples} samples\n"
            f"  accuracy   {accuracy}"
            + (f"\n  robustness worst condition {m.robustness.worst.name}: {m.robustness.worst.accuracy:.4f} "
               f"({len(m.robustness.conditions)} conditions on {m.robustness.data}; all in manifest.json)"
               if m.robustness is not None else "")
            + (f"\n  compute    {m.flops_per_image / 2e6:.1f}M multiply-adds ({m.flops_per_image / 1e6:.0f} MFLOPs) per image"
               if m.flops_per_image else "")
            + (f"\n  tflite     {summary['tflite']['file']}  (LiteRT max |TF - LiteRT| = "
               f"{summary['tflite']['validation']['max_abs_diff']:.2e}, "
               f"{summary['tflite']['latency_ms_batch1']['p50']:.2f} ms per image, 1 thread)"
               if "tflite" in summary else "")
        )
    return 0
