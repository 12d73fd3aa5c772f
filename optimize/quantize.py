"""ONNX -> ONNX rewrites that make a model cheaper: graph simplification, FP16 weights, INT8 dynamic and INT8 static.

Each function reads one ONNX file and writes another; none of them judges the result (``optimize`` measures and gates
every variant the same way). Calibration for static INT8 uses real images through the export's own
``ImageTransform``: the digits training split by default, or a folder of images.

Notes that drive the choices here:

* Static INT8 is written in QDQ format with per-channel weight scales (``QuantizeLinear``/``DequantizeLinear`` pairs
  around float ops). ONNX Runtime fuses those into integer kernels on CPU (VNNI on AVX-512 machines), and TensorRT reads
  the same graph as explicit quantisation.
* Dynamic INT8 quantises activations at run time. For convolutions that means ``ConvInteger``, which ONNX Runtime's CPU
  provider runs through a slow reference path: on a CNN it is several times *slower* than FP32. It is produced so the
  report can show that, never recommended for convolutional models.
* FP16 keeps FP32 inputs and outputs by default (``keep_io_types``), so clients and the preprocess model do not change.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from triton_deploy.contract import IMAGE_SUFFIXES
from triton_deploy.errors import Problem, QuantizationError, UsageError, raise_problems, unknown_choice
from triton_deploy.preprocessing import ImageDecodeError, ImageTransform

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def simplify(source: Path, target: Path) -> None:
    """Constant folding, dead-node removal and op fusion with onnxslim; the graph's inputs and outputs are kept."""
    import onnxslim

    try:
        slimmed = onnxslim.slim(onnx.load(str(source)))
    except Exception as exc:
        raise QuantizationError(f"onnxslim could not simplify {source}: {_first_line(exc)}") from None
    onnx.save(slimmed, str(target))


def to_fp16(source: Path, target: Path, *, keep_io_types: bool = True) -> None:
    """Weights and activations in FP16; with ``keep_io_types`` the graph still takes and returns FP32 tensors."""
    import warnings

    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per tiny weight truncated to FP16's range: noise, not news
        try:
            converted = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=keep_io_types)
        except Exception as exc:
            raise QuantizationError(f"FP16 conversion of {source} failed: {_first_line(exc)}") from None
    onnx.save(converted, str(target))


def int8_dynamic(source: Path, target: Path) -> None:
    """Weights INT8 ahead of time, activations quantised per batch at run time (ConvInteger / MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantization(), tempfile.TemporaryDirectory() as scratch:
        prepared = _pre_process(source, Path(scratch) / "prepared.onnx")
        try:
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        except Exception as exc:
            raise QuantizationError(f"dynamic INT8 quantisation of {source} failed: {_first_line(exc)}") from None


@dataclass(frozen=True)
class Calibration:
    """How static INT8 finds activation ranges."""

    method: str = "minmax"  # minmax | entropy | percentile
    percentile: float = 99.999  # for "percentile": the share of each activation's histogram kept inside the range
    per_channel: bool = True
    symmetric_activations: bool = False  # True: INT8 activations with zero point 0, as TensorRT requires

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.method not in CALIBRATION_METHODS:
            problems.append(unknown_choice("calibration method", self.method, "--calibration-method",
                                           CALIBRATION_METHODS))
        if not 50.0 < self.percentile <= 100.0:
            problems.append((f"calibration percentile {self.percentile} must be in (50, 100]",
                             "check --calibration-percentile"))
        return problems

    def check(self) -> None:
        raise_problems(self.problems())


def for_tensorrt(calibration: Calibration) -> Calibration:
    """The same calibration with symmetric INT8 Q/DQ (zero points 0, float biases): what TensorRT's explicit
    quantisation reads, and what ``tensorrt-check`` accepts for INT8."""
    return dataclasses.replace(calibration, symmetric_activations=True)


def int8_static(source: Path, target: Path, samples: np.ndarray, calibration: Calibration = Calibration()) -> None:
    """QDQ INT8 with ranges calibrated on ``samples`` (float model inputs, batch first)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibration.check()
    if len(samples) == 0:
        raise UsageError("static INT8 needs at least one calibration image", hint="check --calibration / "
                         "--calibration-count")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibration.method]
    extra: dict[str, bool | float] = {"ActivationSymmetric": calibration.symmetric_activations}
    if calibration.symmetric_activations:
        extra["QuantizeBias"] = False  # TensorRT's explicit quantisation keeps biases in float
    if calibration.method == "percentile":
        extra["CalibPercentile"] = calibration.percentile
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    with _quiet_quantization(), tempfile.TemporaryDirectory() as scratch:
        prepared = _pre_process(source, Path(scratch) / "prepared.onnx")
        try:
            quantize_static(
                str(prepared), str(target), _SampleReader(input_name, samples),
                quant_format=QuantFormat.QDQ, per_channel=calibration.per_channel,
                activation_type=QuantType.QInt8 if calibration.symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra,
            )
        except Exception as exc:
            raise QuantizationError(f"static INT8 quantisation of {source} failed ({calibration.method}): "
                                    f"{_first_line(exc)}") from None


class _SampleReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over an in-memory batch, fed in small chunks."""

    def __init__(self, input_name: str, samples: np.ndarray, chunk: int = 16) -> None:
        self._batches: Iterator[dict] = iter(
            [{input_name: np.ascontiguousarray(samples[i:i + chunk], dtype=np.float32)}
             for i in range(0, len(samples), chunk)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _pre_process(source: Path, target: Path) -> Path:
    """ONNX Runtime's recommended preparation (symbolic shape inference + graph optimisation) before quantising;
    a model it cannot handle is quantised as it is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(target))
        return target
    except Exception:  # noqa: BLE001  (an optional step: quantisation itself reports real problems)
        return source


class _quiet_quantization:
    """ONNX Runtime's quantiser logs through ``logging`` and prints histogram banners; keep progress output clean."""

    def __enter__(self):
        import contextlib
        import io

        self._logger = logging.getLogger()
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        self._stdout = contextlib.redirect_stdout(io.StringIO())
        self._stdout.__enter__()
        return self

    def __exit__(self, *exc):
        self._stdout.__exit__(*exc)
        self._logger.setLevel(self._level)
        return False


# ---- calibration data ------------------------------------------------------------------------------------------


def calibration_samples(transform: ImageTransform, *, directory: Path | None = None, count: int = 128,
                        seed: int = 0) -> np.ndarray:
    """Float model inputs for calibration: images from ``directory`` (recursively), or the digits training split.

    Either way the pixels go through ``transform``, the same preprocessing the server applies.
    """
    if count < 1:
        raise UsageError(f"calibration count must be at least 1, got {count}", hint="check --calibration-count")
    if directory is None:
        from triton_deploy.export import digits

        images, _ = digits.load_digits_data(seed=seed).split("train")
        chosen = np.random.default_rng(seed).permutation(len(images))[:count]
        return digits.to_model_input(images[np.sort(chosen)], transform)
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"calibration directory {directory} not found", hint="check --calibration")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise UsageError(f"no images in {directory}", hint="--calibration needs .png/.jpg/... files")
    arrays = []
    for path in files:
        try:
            arrays.append(transform.decode(path.read_bytes()))
        except ImageDecodeError as exc:
            raise UsageError(f"calibration image {path}: {exc}", hint="check --calibration") from None
    return transform.normalise(np.stack(arrays))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
