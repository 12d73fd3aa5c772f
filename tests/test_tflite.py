"""The LiteRT (TFLite) edge artifact with real TensorFlow and the real ``ai-edge-litert`` interpreter: float and
full-integer INT8 files of the trained digits model validate (parity, agreement, held-out accuracy), ``export --tflite``
records the file in the manifest, and a damaged file is refused with one line."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from triton_deploy.cli import main
from triton_deploy.export import digits, tflite
from triton_deploy.optimize import quantize
from triton_deploy.spec import Manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_keras(digits_export):
    import keras

    return keras.models.load_model(digits_export / "model.keras", compile=False)


@pytest.fixture(scope="module")
def heldout_inputs(digits_manifest):
    images, labels = digits.load_digits_data().split("heldout")
    return digits.to_model_input(images[:160], digits_manifest.preprocessing), labels[:160]


@pytest.fixture(scope="module")
def float_tflite(digits_keras, heldout_inputs, tmp_path_factory):
    """The digits model as a validated float TFLite file: (directory, manifest entry)."""
    inputs, labels = heldout_inputs
    directory = tmp_path_factory.mktemp("tflite")
    reference = np.asarray(digits_keras(inputs, training=False))
    return directory, tflite.write(digits_keras, directory, inputs, reference, atol=1e-4, min_agreement=1.0,
                                   labels=labels, latency_seconds=0.2)


def test_float_tflite_matches_tensorflow_and_keeps_the_accuracy(float_tflite, digits_keras, heldout_inputs):
    inputs, labels = heldout_inputs
    reference = np.asarray(digits_keras(inputs, training=False))
    directory, entry = float_tflite
    content = (directory / "model.tflite").read_bytes()
    assert entry["sha256"] == hashlib.sha256(content).hexdigest() and entry["size_bytes"] == len(content)
    assert entry["validation"]["max_abs_diff"] <= 1e-4 and entry["validation"]["top1_agreement"] == 1.0
    assert entry["input"]["dtype"] == "float32" and entry["input"]["quantization"] is None
    assert entry["input"]["shape"] == [-1, 64, 64, 1] and entry["latency_ms_batch1"]["p50"] > 0
    assert entry["validation"]["accuracy"] == pytest.approx(float(np.mean(reference.argmax(-1) == labels)))


def test_int8_tflite_is_integer_end_to_end_and_agrees_with_tensorflow(digits_keras, digits_manifest, heldout_inputs,
                                                                      tmp_path):
    inputs, labels = heldout_inputs
    reference = np.asarray(digits_keras(inputs, training=False))
    representative = quantize.calibration_samples(digits_manifest.preprocessing, count=64)
    entry = tflite.write(digits_keras, tmp_path, inputs, reference, flavour="int8", atol=1e-4, min_agreement=0.95,
                         labels=labels, representative=representative, latency_seconds=0.2)
    for tensor in ("input", "output"):
        assert entry[tensor]["dtype"] == "int8" and entry[tensor]["quantization"]["scale"] > 0
    fp32_accuracy = float(np.mean(reference.argmax(-1) == labels))
    assert entry["validation"]["accuracy"] >= fp32_accuracy - 0.02
    # The float file is about 0.97 MB (about 240k float32 weights); INT8 weights take a quarter of that.
    assert (tmp_path / "model.tflite").stat().st_size < 400_000


def test_damaged_tflite_files_are_refused_with_one_line(float_tflite, tmp_path):
    content = (float_tflite[0] / "model.tflite").read_bytes()
    for name, damaged in (("garbage", b"not a flatbuffer at all" * 10), ("truncated", content[: len(content) // 3])):
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(damaged)
        with pytest.raises(tflite.TFLiteError, match=r"is not a loadable TFLite model") as info:
            tflite.LiteRTModel.load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_export_tflite_writes_and_records_the_file(tmp_path, capsys):
    import keras

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    model.save(tmp_path / "tiny.keras")
    out = tmp_path / "export"
    assert main(["export", "--keras-model", str(tmp_path / "tiny.keras"), "--output", str(out), "--tflite",
                 "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    record = Manifest.read(out).tflite
    assert summary["tflite"] == record and record["file"] == "model.tflite"
    assert record["sha256"] == hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    assert record["runtime"].startswith("ai-edge-litert ") and (out / "model.keras").is_file()


def test_export_tflite_from_a_saved_model_is_refused_by_flag(tmp_path, capsys):
    code = main(["export", "--saved-model", str(tmp_path), "--output", str(tmp_path / "o"), "--tflite"])
    assert code == 2 and "--tflite" in capsys.readouterr().err and not (tmp_path / "o").exists()
