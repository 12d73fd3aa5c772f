"""How every variant is judged the same way: where the images come from, accuracy and agreement with FP32, the
gate, and the recommendation.

The gate has two rules, both shown in the report: accuracy may drop at most ``max_accuracy_drop`` points below FP32
(without labels: disagreement with FP32 at most that many points), and top-1 agreement with FP32 must reach
``min_agreement``. The second matters when accuracy means little: a model near chance accuracy keeps its accuracy
whatever a broken rewrite answers, but not its answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from triton_deploy.export import datasets, validate
from triton_deploy.export.tflite import LiteRTModel
from triton_deploy.spec import Manifest

from .base import BASELINE, Datasets, VariantResult

MIN_SPEEDUP = 1.05  # below this a variant is not worth a deployment change


def run_datasets(manifest: Manifest, eval_samples: Path | None, calibration_dir: Path | None) -> Datasets:
    """The export's own images unless a flag names a folder: ``--eval-samples`` for judging (and, by default,
    calibrating), ``--calibration`` for calibrating."""
    own = datasets.open_dataset(manifest)
    heldout = datasets.folder(eval_samples, manifest, "--eval-samples") if eval_samples is not None else own
    calibration = (datasets.folder(calibration_dir, manifest, "--calibration") if calibration_dir is not None
                   else heldout)
    return Datasets(heldout=heldout, calibration=calibration, own=own)


def evaluation_set(manifest: Manifest, source: datasets.Dataset,
                   limit: int | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Model inputs, their labels when known, and what they are."""
    inputs, labels = source.heldout(manifest.preprocessing)
    what = source.description + ("" if labels is not None else " (no labels: agreement only; --eval-samples DIR "
                                                                "with one sub-folder per label gives accuracy)")
    if limit is not None:
        inputs, labels = inputs[:limit], (labels[:limit] if labels is not None else None)
    return inputs, labels, what


Runner = Callable[[np.ndarray], np.ndarray]  # a float input batch (the export's layout) -> the output batch


def runner(path: Path, runtime: str, threads: int, layout: str = "NHWC") -> Runner:
    """One variant's model as a function of a batch: an ONNX Runtime session, or LiteRT's interpreter for a
    ``.tflite`` file (always NHWC, like the Keras model it came from; NCHW batches are transposed for it)."""
    if runtime == "litert":
        model = LiteRTModel.load(path, threads=threads)
        return (lambda batch: model.predict(batch.transpose(0, 2, 3, 1))) if layout == "NCHW" else model.predict
    session = validate.onnx_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def run_model(run: Runner, inputs: np.ndarray, batch_size: int = 64,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The model's outputs on every input, in float64 for exact comparisons; ``progress(n)`` after each batch."""
    outputs = []
    for i in range(0, len(inputs), batch_size):
        outputs.append(run(inputs[i:i + batch_size]))
        if progress is not None:
            progress(len(outputs[-1]))
    return np.concatenate(outputs).astype(np.float64)


Suite = tuple[dict[str, np.ndarray], np.ndarray]  # condition name -> model inputs, and their labels


def robustness_record(run: Runner, suite: Suite, baseline: dict | None = None,
                      progress: Callable[[int], None] | None = None) -> dict:
    """Accuracy per condition, the worst condition, and (given the FP32 record) how many points the worst fell."""
    inputs, labels = suite
    conditions = {name: float(np.mean(run_model(run, x, progress=progress).argmax(-1) == labels))
                  for name, x in inputs.items()}
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


def gate(result: VariantResult, baseline_accuracy: float | None, max_accuracy_drop: float, min_agreement: float,
         atol: float | None = None) -> None:
    """Mark ``result`` refused, with every reason: too much accuracy lost (or, without labels, too much
    disagreement), too little top-1 agreement with FP32, or, for a rewrite that promises parity (``atol``), outputs
    outside it."""
    if baseline_accuracy is not None and result.accuracy is not None:
        result.accuracy_drop = (baseline_accuracy - result.accuracy) * 100.0
        what = "accuracy drop"
    else:
        result.accuracy_drop = (1.0 - result.agreement) * 100.0
        what = "disagreement with FP32"
    reasons = []
    if result.accuracy_drop > max_accuracy_drop + 1e-9:
        reasons.append(f"{what} {result.accuracy_drop:.2f} points > {max_accuracy_drop:g}")
    if result.agreement < min_agreement - 1e-12:
        reasons.append(f"top-1 agreement with FP32 {result.agreement:.4f} < {min_agreement:g}")
    if atol is not None and result.max_abs_diff > atol:
        reasons.append(f"max |diff| {result.max_abs_diff:.3g} > atol {atol:g}")
    if reasons:
        result.passed = False
        result.reason = "; ".join(reasons)


def gate_rule(max_accuracy_drop: float, min_agreement: float, baseline_accuracy: float | None,
              evaluation_images: int) -> dict:
    points = "point" if max_accuracy_drop == 1 else "points"
    accuracy_rule = (f"held-out accuracy at most {max_accuracy_drop:g} {points} below FP32"
                     if baseline_accuracy is not None else
                     f"top-1 disagreement with FP32 at most {max_accuracy_drop:g} {points} (no labels)")
    return {"max_accuracy_drop_points": max_accuracy_drop, "min_agreement": min_agreement,
            "measure": "accuracy" if baseline_accuracy is not None else "agreement",
            "rule": f"{accuracy_rule}, and top-1 agreement with FP32 at least {min_agreement:g}",
            "evaluation_images": evaluation_images}


def recommend(results: list[VariantResult], batch: int, *, target: str = "cpu") -> dict:
    """The fastest variant that passed the gate (never a refused or failed one), if it is at least ``MIN_SPEEDUP``
    faster than FP32; otherwise FP32.

    ``target`` "cpu": among the ONNX variants served by ONNX Runtime on CPU. "tensorrt": only variants that pass the
    TensorRT check at their precision (so INT8 means symmetric Q/DQ); CPU throughput stands in for GPU speed, which
    cannot be measured here. "edge": among the LiteRT files, by single-image latency."""
    passing = [r for r in results[1:] if r.passed and not r.failed and r.recommendable]
    if target == "edge":
        edge = [r for r in passing if r.runtime == "litert" and r.latency_ms]
        best = min(edge, key=lambda r: r.latency_ms["p50"], default=None)
        if best is None:
            return {"variant": None, "reason": "no LiteRT variant passed the gate (build them with --tflite)"}
        return {"variant": best.name, "reason": f"{best.latency_ms['p50']:.2f} ms per image in LiteRT, accuracy "
                                                f"drop {_drop(best)}, top-1 agreement {best.agreement:.4f}"}
    candidates = [r for r in passing if r.runtime == "onnxruntime"
                  and (target == "cpu" or r.tensorrt.get("compatible"))]
    chosen = max(candidates, key=lambda r: r.speedup or 0.0, default=None)
    where = "on this CPU" if target == "cpu" else "on this CPU, among variants that pass the TensorRT check"
    if chosen is None or (chosen.speedup or 0.0) < MIN_SPEEDUP:
        return {"variant": BASELINE, "reason": f"no passing variant is at least {MIN_SPEEDUP:.2f}x faster than FP32 "
                                               f"at batch {batch} {where}"}
    return {"variant": chosen.name, "reason": f"{chosen.speedup:.2f}x the FP32 throughput at batch {batch} {where}, "
                                              f"accuracy drop {_drop(chosen)}, top-1 agreement "
                                              f"{chosen.agreement:.4f}"}


def _drop(result: VariantResult) -> str:
    return "n/a" if result.accuracy_drop is None else f"{result.accuracy_drop:+.2f} points"
