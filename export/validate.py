"""Checks every export passes before it is written: the ONNX checker, shape inference, and numerical parity between
TensorFlow and ONNX Runtime. Problems are collected, then raised together with the numbers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from triton_deploy.errors import ChanceAccuracyError, ConversionError, ParityError
from triton_deploy.spec import Parity

from .sources import LoadedModel


def check_graph(path: Path) -> None:
    """Full ONNX checker plus strict shape inference; a failure is a ``ConversionError`` with the checker's words."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"{path} fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", check_type=True, strict_mode=True)
    except Exception as exc:
        raise ConversionError(f"{path} fails ONNX shape inference: {str(exc).splitlines()[0]}") from None
    finally:
        Path(str(path) + ".inferred").unlink(missing_ok=True)


def onnx_session(path: Path, threads: int | None = None):
    # ONNX Runtime: loaded when a model is run, not to parse flags
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class ParityPlan:
    atol: float = 1e-4
    min_agreement: float = 1.0
    batch_sizes: tuple[int, ...] = (1, 16)


def check_parity(model: LoadedModel, session, samples: np.ndarray, plan: ParityPlan, *, nchw: bool) -> Parity:
    """Run the same inputs through TensorFlow and ONNX Runtime at each batch size; compare values and top-1."""
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    worst = 0.0
    agree = total = 0
    problems: list[str] = []
    for batch_size in plan.batch_sizes:
        batch = samples[:batch_size]
        if len(batch) < batch_size:
            raise ParityError(f"parity needs {batch_size} samples, only {len(samples)} available",
                              hint="give more images with --samples")
        reference = model.predict(batch)
        onnx_input = batch.transpose(0, 3, 1, 2) if nchw else batch
        result = session.run([output_name], {input_name: np.ascontiguousarray(onnx_input)})[0]
        if result.shape != reference.shape:
            problems.append(f"output {output_name!r} has shape {result.shape} in ONNX Runtime but "
                            f"{reference.shape} in TensorFlow at batch {batch_size}")
            continue
        diff = float(np.max(np.abs(result.astype(np.float64) - reference.astype(np.float64))))
        worst = max(worst, diff)
        if not np.isfinite(diff) or diff > plan.atol:
            problems.append(f"output {output_name!r} differs by max |TF - ORT| = {diff:.3g} > atol {plan.atol:g} "
                            f"at batch {batch_size}")
        agree += int(np.sum(result.argmax(-1) == reference.argmax(-1)))
        total += len(batch)
    agreement = agree / total if total else 0.0
    if total and agreement < plan.min_agreement:
        problems.append(f"top-1 agreement of output {output_name!r} is {agreement:.1%} < {plan.min_agreement:.1%} "
                        f"on {total} samples")
    if problems:
        raise ParityError("parity check failed: " + "; ".join(problems), hint="see --atol / --min-agreement")
    return Parity(max_abs_diff=worst, top1_agreement=agreement, atol=plan.atol, samples=total,
                  batch_sizes=tuple(plan.batch_sizes))


def looks_like_probabilities(outputs: np.ndarray) -> bool:
    """Rows that are non-negative and sum to 1 are probabilities; anything else is treated as logits."""
    return bool(np.all(outputs >= -1e-6) and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


def run_batches(session, samples: np.ndarray, *, nchw: bool, batch_size: int = 64) -> np.ndarray:
    """The model's outputs for NHWC ``samples``, run in batches of ``batch_size``."""
    input_name = session.get_inputs()[0].name
    outputs = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        batch = batch.transpose(0, 3, 1, 2) if nchw else batch
        outputs.append(session.run(None, {input_name: np.ascontiguousarray(batch)})[0])
    return np.concatenate(outputs)


def onnx_predictor(session, *, nchw: bool, batch_size: int = 64):
    """A function from float NHWC images to the model's output, through ONNX Runtime in batches."""
    return lambda samples: run_batches(session, samples, nchw=nchw, batch_size=batch_size)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of model outputs (logits or probabilities) against class ids."""
    return float(np.mean(outputs.argmax(-1) == labels))


def chance_level(labels: np.ndarray, num_classes: int) -> float:
    """What guessing scores on these samples: one class in ``num_classes``, or always the most frequent label."""
    majority = np.bincount(labels).max() / len(labels) if len(labels) else 0.0
    return max(1.0 / num_classes, float(majority))


def check_above_chance(accuracy: float, labels: np.ndarray, num_classes: int, transform) -> None:
    """Refuse an accuracy that guessing would reach (within two standard errors on this many samples).

    Seen with a model that rescales its input itself exported with the default scale 1/255: parity passed (TensorFlow
    and ONNX Runtime agree on the same wrong input), and the accuracy, 0.33 on 3 classes, was the only sign."""
    chance = chance_level(labels, num_classes)
    margin = 2 * float(np.sqrt(chance * (1 - chance) / len(labels)))
    if accuracy <= chance + margin:
        raise ChanceAccuracyError(
            f"accuracy {accuracy:.3f} on {len(labels)} labelled samples is at chance level ({chance:.3f} by guessing, "
            f"+/- {margin:.3f}): the model probably expects other preprocessing than (pixel * {transform.scale:g} - "
            f"mean {list(transform.mean)}) / std {list(transform.std)}",
            hint="set --scale (1 for a model that rescales its input itself) / --mean / --std, check --labels order, "
                 "or add --allow-chance-accuracy to export it anyway")
