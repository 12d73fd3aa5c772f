"""The LiteRT (TFLite) edge artifact with real TensorFlow and the real ``ai-edge-litert`` interpreter: ``export
--tflite`` writes a validated file and records it in the manifest, the record's figures are the file's, a damaged file
is refused with one line, and a SavedModel source is refused by flag.

The trained digits model's float and full-integer INT8 files are built, gated and timed in ``test_optimize.py``
(variants ``tflite_fp32`` and ``tflite_int8``), so they are not converted a second time here."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from triton_deploy.cli import main
from triton_deploy.export import tflite
from triton_deploy.spec import Manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A tiny Keras classifier exported with ``--tflite``: (export directory, --json summary, the Keras model)."""
    import keras

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3)])
    folder = tmp_path_factory.mktemp("tflite")
    model.save(folder / "tiny.keras")
    out = folder / "export"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--keras-model", str(folder / "tiny.keras"), "--output", str(out), "--tflite",
                     "--json", "-q"])
    assert code == 0
    return out, json.loads(stdout.getvalue()), model


def test_export_tflite_writes_a_file_that_matches_tensorflow_and_records_it(tiny_export):
    out, summary, model = tiny_export
    record = Manifest.read(out).tflite
    assert summary["tflite"] == record and record["file"] == "model.tflite" and (out / "model.keras").is_file()
    content = (out / "model.tflite").read_bytes()
    assert record["sha256"] == hashlib.sha256(content).hexdigest() and record["size_bytes"] == len(content)
    assert record["input"] == {"name": record["input"]["name"], "shape": [-1, 16, 16, 1], "dtype": "float32",
                               "quantization": None}
    assert record["validation"]["max_abs_diff"] <= 1e-4 and record["validation"]["top1_agreement"] == 1.0
    assert record["latency_ms_batch1"]["p50"] > 0 and record["runtime"].startswith("ai-edge-litert ")
    batch = np.random.default_rng(0).random((5, 16, 16, 1), dtype=np.float32)  # another batch size than validated
    lite = tflite.LiteRTModel.load(out / "model.tflite")
    np.testing.assert_allclose(lite.predict(batch), model(batch, training=False), atol=1e-4)


def test_damaged_tflite_files_are_refused_with_one_line(tiny_export, tmp_path):
    content = (tiny_export[0] / "model.tflite").read_bytes()
    for name, damaged in (("garbage", b"not a flatbuffer at all" * 10), ("truncated", content[: len(content) // 3])):
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(damaged)
        with pytest.raises(tflite.TFLiteError, match=r"is not a loadable TFLite model") as info:
            tflite.LiteRTModel.load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_file_without_its_weights_fails_validation(tiny_export):
    """The symptom of a conversion that lost its variables: it loads, but its outputs are NaN."""
    out, _, model = tiny_export
    lite = tflite.LiteRTModel.load(out / "model.tflite")
    inputs = np.random.default_rng(1).random((4, 16, 16, 1), dtype=np.float32)
    reference = np.asarray(model(inputs, training=False))
    with pytest.raises(tflite.TFLiteError, match="not finite"):
        tflite.check(lite, np.full_like(inputs, np.nan), reference, flavour="fp32", atol=1e-4, min_agreement=0.0)


def test_export_tflite_from_a_saved_model_is_refused_by_flag(tmp_path, capsys):
    code = main(["export", "--saved-model", str(tmp_path), "--output", str(tmp_path / "o"), "--tflite"])
    assert code == 2 and "--tflite" in capsys.readouterr().err and not (tmp_path / "o").exists()
