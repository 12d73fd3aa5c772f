"""The edge artifact: a LiteRT (TFLite) flatbuffer converted from the Keras source, validated with LiteRT's own
interpreter.

Conversion goes through ``tf.lite.TFLiteConverter.from_keras_model``. Measured here: ``from_concrete_functions``
with the model as the trackable object silently wrote an 8 KiB file whose variables were never loaded (NaN logits),
so every file is run before it is kept, and non-finite outputs are a failure.

Two flavours:

* float32: the same weights and I/O as the ONNX model; parity with TensorFlow within the export's ``atol``.
* full-integer INT8: weights and activations INT8 with ranges from a representative dataset (training images through
  the export's transform); input and output tensors are INT8 too, as integer-only edge accelerators need. Their
  scale and zero point are recorded, and ``LiteRTModel.predict`` applies them so callers pass and get floats.

Validation and timing use ``ai_edge_litert.interpreter.Interpreter``, the supported successor of
``tf.lite.Interpreter`` (which warns that it is deprecated): the runtime a phone or an edge board runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triton_deploy.errors import TFLiteError

TFLITE_FILE = "model.tflite"
FLAVOURS = ("fp32", "int8")


def convert(keras_model, *, representative: np.ndarray | None = None) -> bytes:
    """The model as a TFLite flatbuffer: float32, or full-integer INT8 when ``representative`` inputs are given."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow: seconds to import, paid only by the commands that build, train or convert a model
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if representative is not None:
        if len(representative) == 0:
            raise TFLiteError("full-integer INT8 needs at least one representative image")
        samples = np.asarray(representative, dtype=np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample[None]] for sample in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        with _quiet_native_output(), warnings.catch_warnings():
            # INT8 inputs draw "Statistics for quantized inputs were expected": the representative data provides them.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as exc:  # noqa: BLE001  (the converter raises many kinds; the first line says what)
        kind = "INT8" if representative is not None else "float32"
        raise TFLiteError(f"TFLite {kind} conversion of {getattr(keras_model, 'name', 'the model')} failed: "
                          f"{_first_line(exc)}") from None


@dataclass(frozen=True)
class TFLiteTensor:
    name: str
    shape: tuple[int, ...]  # -1 for the batch dimension
    dtype: str
    scale: float  # 0.0 for a float tensor
    zero_point: int

    @classmethod
    def from_details(cls, details: dict) -> TFLiteTensor:
        scale, zero_point = details.get("quantization", (0.0, 0))
        shape = tuple(int(d) for d in details.get("shape_signature", details["shape"]))
        return cls(details["name"], shape, np.dtype(details["dtype"]).name, float(scale), int(zero_point))

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "quantization": {"scale": self.scale, "zero_point": self.zero_point} if self.quantized else None}


class LiteRTModel:
    """A TFLite flatbuffer loaded into LiteRT's interpreter; ``predict`` takes and returns float arrays."""

    def __init__(self, content: bytes, *, threads: int = 1, origin: str = TFLITE_FILE) -> None:
        # LiteRT's interpreter: only for TFLite files
        from ai_edge_litert.interpreter import Interpreter

        self.origin = origin
        try:
            with _quiet_native_output():
                self._interpreter = Interpreter(model_content=bytes(content), num_threads=threads)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise TFLiteError(f"{origin} is not a loadable TFLite model: {_first_line(exc)}",
                              hint="re-export it with --tflite") from None
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise TFLiteError(f"{origin} has {len(inputs)} inputs and {len(outputs)} outputs; an image classifier "
                              "has one of each")
        self.input, self.output = TFLiteTensor.from_details(inputs[0]), TFLiteTensor.from_details(outputs[0])
        self._input_index, self._output_index = inputs[0]["index"], outputs[0]["index"]
        self._batch = int(inputs[0]["shape"][0])

    @classmethod
    def load(cls, path: Path, *, threads: int = 1) -> LiteRTModel:
        try:
            content = Path(path).read_bytes()
        except OSError as exc:
            raise TFLiteError(f"cannot read {path}: {exc.strerror}") from None
        return cls(content, threads=threads, origin=str(path))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Float inputs (N, H, W, C) -> float outputs (N, classes); INT8 I/O is quantised and dequantised here."""
        batch = np.asarray(batch, dtype=np.float32)
        if len(batch) != self._batch:
            self._interpreter.resize_tensor_input(self._input_index, [len(batch), *batch.shape[1:]])
            self._interpreter.allocate_tensors()
            self._batch = len(batch)
        if self.input.quantized:
            info = np.iinfo(np.dtype(self.input.dtype))
            batch = np.clip(np.round(batch / self.input.scale) + self.input.zero_point, info.min, info.max)
        self._interpreter.set_tensor(self._input_index, batch.astype(self.input.dtype))
        self._interpreter.invoke()
        result = self._interpreter.get_tensor(self._output_index)
        if self.output.quantized:
            return (result.astype(np.float32) - self.output.zero_point) * self.output.scale
        return result.astype(np.float32)

    def predict_all(self, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return np.concatenate([self.predict(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])

    def latency_ms(self, sample: np.ndarray, *, seconds: float = 1.0, minimum: int = 20) -> dict[str, float]:
        """p50 / p95 wall time of one single-image call, after a warm-up call."""
        one = np.asarray(sample[:1], dtype=np.float32)
        self.predict(one)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < minimum:
            start = time.perf_counter()
            self.predict(one)
            times.append(time.perf_counter() - start)
        return {"p50": float(np.percentile(times, 50) * 1e3), "p95": float(np.percentile(times, 95) * 1e3)}


@dataclass(frozen=True)
class TFLiteCheck:
    """What validating a TFLite file against its TensorFlow reference found."""

    flavour: str
    max_abs_diff: float
    top1_agreement: float
    samples: int
    accuracy: float | None = None


def check(model: LiteRTModel, inputs: np.ndarray, reference: np.ndarray, *, flavour: str, atol: float,
          min_agreement: float, labels: np.ndarray | None = None) -> TFLiteCheck:
    """Float files must match ``reference`` within ``atol``; INT8 files must agree on top-1 at ``min_agreement``.

    Non-finite outputs fail either way (the symptom of a file written without its weights)."""
    outputs = model.predict_all(inputs)
    problems = []
    if outputs.shape != reference.shape:
        raise TFLiteError(f"{model.origin} returns shape {outputs.shape}, TensorFlow {reference.shape}")
    if not np.all(np.isfinite(outputs)):
        problems.append("outputs are not finite (weights missing from the file?)")
    diff = float(np.max(np.abs(outputs.astype(np.float64) - reference))) if len(outputs) else 0.0
    agreement = float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))
    if flavour == "fp32" and not diff <= atol:
        problems.append(f"max |TF - LiteRT| = {diff:.3g} > atol {atol:g}")
    if agreement < min_agreement:
        problems.append(f"top-1 agreement with TensorFlow {agreement:.1%} < {min_agreement:.1%}")
    if problems:
        raise TFLiteError(f"{model.origin} ({flavour}) fails validation on {len(inputs)} images: "
                          + "; ".join(problems), hint="see --atol / --min-agreement")
    accuracy = None if labels is None else float(np.mean(outputs.argmax(-1) == labels))
    return TFLiteCheck(flavour, diff, agreement, int(len(inputs)), accuracy)


def record(content: bytes, model: LiteRTModel, result: TFLiteCheck, latency: dict[str, float], *,
           threads: int) -> dict:
    """The manifest entry of a TFLite file: what it is, how it was checked, how fast one image ran here."""
    return {"file": TFLITE_FILE, "sha256": hashlib.sha256(content).hexdigest(), "size_bytes": len(content),
            "flavour": result.flavour, "input": model.input.to_dict(), "output": model.output.to_dict(),
            "validation": {"reference": "TensorFlow (Keras source)", "max_abs_diff": result.max_abs_diff,
                           "top1_agreement": result.top1_agreement, "samples": result.samples,
                           "accuracy": result.accuracy},
            "latency_ms_batch1": latency | {"threads": threads},
            "runtime": f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"}


@contextlib.contextmanager
def _quiet_native_output():
    """The converter prints the traced signature to stdout (from Python) and LiteRT logs its delegate to stderr (from
    C++): keep both off the terminal, where stdout carries ``--json`` output. Errors still surface as exceptions."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "wb") as null, contextlib.redirect_stdout(io.StringIO()):
        try:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def write(keras_model, directory: Path, inputs: np.ndarray, reference: np.ndarray, *, flavour: str = "fp32",
          atol: float, min_agreement: float, labels: np.ndarray | None = None,
          representative: np.ndarray | None = None, threads: int = 1, latency_seconds: float = 1.0) -> dict:
    """Convert, load into LiteRT, validate against ``reference`` (TensorFlow's outputs on ``inputs``), time one
    image, and only then write ``directory/model.tflite``. Returns the manifest record."""
    if flavour not in FLAVOURS:
        raise TFLiteError(f"unknown TFLite flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    if flavour == "int8" and representative is None:
        raise TFLiteError("the INT8 TFLite file needs representative images")
    content = convert(keras_model, representative=representative if flavour == "int8" else None)
    target = Path(directory) / TFLITE_FILE
    model = LiteRTModel(content, threads=threads, origin=str(target))
    result = check(model, inputs, reference, flavour=flavour, atol=atol, min_agreement=min_agreement, labels=labels)
    latency = model.latency_ms(inputs, seconds=latency_seconds)
    target.write_bytes(content)
    return record(content, model, result, latency, threads=threads)
