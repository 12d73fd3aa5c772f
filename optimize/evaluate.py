"""How every variant is judged the same way: the evaluation set, accuracy and agreement with FP32, the accuracy
gate, and the recommendation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from triton_deploy.errors import UsageError
from triton_deploy.export import digits, robustness, validate
from triton_deploy.spec import Manifest

from .report import VariantResult
from .variants import BASELINE

MIN_SPEEDUP = 1.05  # below this a variant is not worth a deployment change


def sample_folder(manifest: Manifest, eval_samples: Path | None) -> Path | None:
    """The images to evaluate (and calibrate) on: ``--eval-samples``, else the ``--samples`` the export recorded."""
    if eval_samples is not None:
        return Path(eval_samples)
    record = manifest.dataset or {}
    return Path(record["path"]) if record.get("name") == "samples" else None


def is_digits_model(manifest: Manifest) -> bool:
    return (manifest.dataset or {}).get("name") == "sklearn-digits"


def is_labelled_digits_model(manifest: Manifest) -> bool:
    """Trained on the digits with their ten labels, so the held-out digits' labels are its answers' labels."""
    return is_digits_model(manifest) and manifest.num_classes == len(digits.LABELS)


def evaluation_set(manifest: Manifest, limit: int | None,
                   eval_samples: Path | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Model inputs, their labels when known, and what they are: the export's samples (or ``--eval-samples``), the
    digits held-out split for the digits model, or else digits rendered at the model's size (agreement only)."""
    folder = sample_folder(manifest, eval_samples)
    if folder is not None:
        if not folder.is_dir():
            raise UsageError(f"evaluation images {folder} not found" + ("" if eval_samples else
                             " (the export's --samples, recorded in its manifest)"), hint="pass --eval-samples DIR")
        from triton_deploy.export.pipeline import load_sample_folder

        inputs, labels, _png, _note = load_sample_folder(folder, manifest.preprocessing, manifest.labels)
        what = f"images from {folder}" + ("" if labels is not None else " (unlabelled: agreement only)")
    else:
        images, labels = _heldout_digits(manifest)
        inputs = digits.to_model_input(images, manifest.preprocessing)
        labelled = is_labelled_digits_model(manifest)
        labels = labels if labelled else None
        what = "held-out digits" if labelled else "digit images (agreement only: give --eval-samples DIR)"
    if limit is not None:
        inputs, labels = inputs[:limit], (labels[:limit] if labels is not None else None)
    return inputs, labels, what


def _heldout_digits(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """The digits held-out split the export drew (its seed and fraction, from the manifest): images and labels."""
    record = manifest.dataset or {}
    data = digits.load_digits_data(seed=_seed(manifest), test_fraction=float(record.get("test_fraction", 0.25)))
    return data.split("heldout")


def _seed(manifest: Manifest) -> int:
    return int((manifest.dataset or {}).get("seed", 0))


Runner = Callable[[np.ndarray], np.ndarray]  # a float input batch (the export's layout) -> the output batch


def runner(path: Path, runtime: str, threads: int, layout: str = "NHWC") -> Runner:
    """One variant's model as a function of a batch: an ONNX Runtime session, or LiteRT's interpreter for a
    ``.tflite`` file (always NHWC, like the Keras model it came from; NCHW batches are transposed for it)."""
    if runtime == "litert":
        from triton_deploy.export.tflite import LiteRTModel

        model = LiteRTModel.load(path, threads=threads)
        return (lambda batch: model.predict(batch.transpose(0, 2, 3, 1))) if layout == "NCHW" else model.predict
    session = validate.onnx_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def run_model(run: Runner, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The model's outputs on every input, in float64 for exact comparisons."""
    return np.concatenate([run(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
                          ).astype(np.float64)


RobustnessSet = dict[str, np.ndarray]  # condition name -> model inputs (the held-out digits drawn that way)


def robustness_set(manifest: Manifest, limit: int | None) -> tuple[RobustnessSet, np.ndarray] | None:
    """The export's robustness suite as model inputs, so a variant is scored on the same drawings as its source: the
    digits model only (a user model's suite ran on its --samples, which ``evaluation_set`` already covers)."""
    if manifest.robustness is None or not is_labelled_digits_model(manifest):
        return None
    seed = _seed(manifest)
    images, labels = _heldout_digits(manifest)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    transform = manifest.preprocessing
    inputs = {condition.name: transform.normalise(robustness.digit_condition_pixels(condition, images, transform, seed))
              for condition in robustness.DIGIT_CONDITIONS}
    return inputs, labels


def robustness_record(run: Runner, suite: tuple[RobustnessSet, np.ndarray],
                      baseline: dict | None = None) -> dict:
    """Accuracy per condition, the worst condition, and (given the FP32 record) how many points the worst fell."""
    inputs, labels = suite
    conditions = {name: float(np.mean(run_model(run, x).argmax(-1) == labels)) for name, x in inputs.items()}
    worst = min(conditions, key=conditions.__getitem__)
    record: dict = {"conditions": conditions, "images_per_condition": int(len(labels)),
                    "worst": {"condition": worst, "accuracy": conditions[worst]}}
    if baseline is not None:
        record["worst_drop_points"] = (baseline["worst"]["accuracy"] - conditions[worst]) * 100.0
    return record


def accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(np.mean(outputs.argmax(-1) == labels))


def agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """The share of inputs whose top-1 class is the FP32 model's."""
    return float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))


def max_abs_diff(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(outputs.astype(np.float64) - reference)))


def gate(result: VariantResult, baseline_accuracy: float | None, manifest: Manifest,
         max_accuracy_drop: float) -> None:
    """Mark ``result`` refused, with the reason, when it loses too much accuracy (or, without labels, agreement),
    or, for the lossless ``fp32_slim``, leaves the export's parity tolerance."""
    if baseline_accuracy is not None and result.accuracy is not None:
        result.accuracy_drop = (baseline_accuracy - result.accuracy) * 100.0
        what = "accuracy drop"
    else:
        result.accuracy_drop = (1.0 - result.agreement) * 100.0
        what = "disagreement with FP32"
    if result.accuracy_drop > max_accuracy_drop + 1e-9:
        result.passed = False
        result.reason = f"{what} {result.accuracy_drop:.2f} pts > {max_accuracy_drop:g}"
    elif result.name == "fp32_slim" and result.max_abs_diff > manifest.parity.atol:
        result.passed = False
        result.reason = f"max |diff| {result.max_abs_diff:.3g} > atol {manifest.parity.atol:g}"


def gate_rule(max_accuracy_drop: float, baseline_accuracy: float | None, evaluation_images: int) -> dict:
    return {"max_accuracy_drop_points": max_accuracy_drop,
            "measure": "accuracy" if baseline_accuracy is not None else "agreement",
            "rule": (f"held-out accuracy may drop at most {max_accuracy_drop:g} points below FP32"
                     if baseline_accuracy is not None else
                     f"top-1 disagreement with FP32 at most {max_accuracy_drop:g} points (no labels)"),
            "evaluation_images": evaluation_images}


def recommend(results: list[VariantResult], convolutional: bool, batch: int, *, target: str = "cpu") -> dict:
    """The fastest passing variant, if it is at least ``MIN_SPEEDUP`` faster than FP32; otherwise FP32.

    ``target`` "cpu": among the ONNX variants served by ONNX Runtime on CPU. "tensorrt": only variants that pass the
    TensorRT check at their precision (so INT8 means symmetric Q/DQ); CPU throughput stands in for GPU speed, which
    cannot be measured here. "edge": among the LiteRT files, by single-image latency."""
    if target == "edge":
        edge = [r for r in results if r.passed and r.runtime == "litert" and r.latency_ms]
        best = min(edge, key=lambda r: r.latency_ms["p50"], default=None)
        if best is None:
            return {"variant": None, "reason": "no LiteRT variant passed the gate (build them with --tflite)"}
        drop = "n/a" if best.accuracy_drop is None else f"{best.accuracy_drop:+.2f} pts"
        return {"variant": best.name, "reason": f"{best.latency_ms['p50']:.2f} ms per image in LiteRT, accuracy "
                                                f"drop {drop}"}
    candidates = [r for r in results[1:] if r.passed and r.runtime == "onnxruntime"
                  and not (r.name == "int8_dynamic" and convolutional)
                  and (target == "cpu" or r.tensorrt.get("compatible"))]
    best = max(candidates, key=lambda r: r.speedup or 0.0, default=None)
    where = "on this CPU" if target == "cpu" else "on this CPU, among variants that pass the TensorRT check"
    if best is None or (best.speedup or 0.0) < MIN_SPEEDUP:
        return {"variant": BASELINE, "reason": f"no passing variant is at least {MIN_SPEEDUP:.2f}x faster than FP32 "
                                               f"at batch {batch} {where}"}
    drop = "n/a" if best.accuracy_drop is None else f"{best.accuracy_drop:+.2f} pts"
    return {"variant": best.name, "reason": f"{best.speedup:.2f}x the FP32 throughput at batch {batch} {where}, "
                                            f"accuracy drop {drop}, top-1 agreement {best.agreement:.4f}"}
