"""``triton-deploy export`` with real TensorFlow, tf2onnx and ONNX Runtime: the digits model, tiny user models in
every supported format, and every error case with its message and exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from triton_deploy.cli import main
from triton_deploy.export.sources import ARCHITECTURES
from triton_deploy.spec import MANIFEST_VERSION, Manifest

pytestmark = pytest.mark.slow


# ---- tiny user models, built inline ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sequential():
    """A Keras 3 Sequential classifier (the kind tf2onnx's from_keras trips on), 16x16 greyscale, softmax output."""
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])


@pytest.fixture(scope="module")
def model_files(tiny_sequential, tmp_path_factory) -> dict[str, Path]:
    import keras

    folder = tmp_path_factory.mktemp("user-models")
    paths = {"keras": folder / "tiny.keras", "h5": folder / "tiny.h5", "saved_model": folder / "tiny_savedmodel"}
    tiny_sequential.save(paths["keras"])
    tiny_sequential.save(paths["h5"])
    tiny_sequential.export(str(paths["saved_model"]), verbose=False)

    two_inputs = keras.Input((16, 16, 1)), keras.Input((16, 16, 1))
    merged = keras.layers.Add()(list(two_inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(merged)
    keras.Model(list(two_inputs), keras.layers.Dense(2)(pooled)).save(folder / "two_inputs.keras")
    vector = keras.Input((20,))
    keras.Model(vector, keras.layers.Dense(2)(vector)).save(folder / "tabular.keras")
    (folder / "corrupt.keras").write_bytes(b"PK\x03\x04 this is not a keras archive")
    paths |= {name: folder / f"{name}.keras" for name in ("two_inputs", "tabular", "corrupt")}
    return paths


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- the digits model ------------------------------------------------------------------------------------------


def test_digits_export_is_accurate_and_matches_tensorflow(digits_export, digits_manifest):
    m = digits_manifest
    assert m.accuracy >= 0.95
    assert m.parity.max_abs_diff <= 1e-4 and m.parity.top1_agreement == 1.0
    assert 1 in m.parity.batch_sizes and max(m.parity.batch_sizes) >= 8
    assert m.dataset["test_fraction"] >= 0.2 and len(m.dataset["heldout_indices"]) == m.dataset["heldout_size"]
    # 20-50 "MFLOPs" in the multiply-add convention (MobileNetV2's "300 MFLOPs"): realistic compute, not a toy.
    assert 20e6 <= m.multiply_adds_per_image <= 50e6 and m.flops_per_image == 2 * m.multiply_adds_per_image
    assert (m.input.name, m.input.shape, m.input.layout) == ("image", (-1, 64, 64, 1), "NHWC")
    assert (m.output.name, m.output.shape, m.output_kind) == ("logits", (-1, 10), "logits")
    assert m.labels == tuple("0123456789")
    # The first convolution's output, 64 x 64 x 32 float32, is the biggest tensor one image makes.
    assert m.largest_activation_bytes_per_image == 64 * 64 * 32 * 4


def test_digits_onnx_has_named_tensors_and_one_dynamic_batch_dimension(digits_export):
    model = onnx.load(str(digits_export / "model.onnx"))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch"
        assert all(d.HasField("dim_value") for d in dims[1:])
        assert not value.name.startswith("unk__")


def test_manifest_round_trips_and_records_versions(digits_export, digits_manifest, tmp_path):
    data = json.loads((digits_export / "manifest.json").read_text())
    assert data["manifest_version"] == MANIFEST_VERSION
    assert {"tensorflow", "tf2onnx", "onnx", "onnxruntime"} <= set(data["versions"])
    import hashlib

    assert data["model_sha256"] == hashlib.sha256((digits_export / "model.onnx").read_bytes()).hexdigest()
    digits_manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == digits_manifest


# ---- user models ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, flag", [("keras", "--keras-model"), ("h5", "--keras-model"),
                                        ("saved_model", "--saved-model")])
def test_exports_user_models_in_every_format(kind, flag, model_files, tmp_path, capsys):
    output = tmp_path / "out"
    code, out, err = run(["export", flag, str(model_files[kind]), "--output", str(output), "--json", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    manifest = Manifest.read(output)
    assert manifest.input.shape == (-1, 16, 16, 1) and manifest.preprocessing.color_mode == "L"
    assert manifest.output_kind == "probabilities"  # a softmax head, detected
    assert manifest.parity.top1_agreement == 1.0 and summary["parity"]["max_abs_diff"] <= 1e-4
    assert manifest.accuracy is None  # no labelled data for a user model without --samples
    assert (output / "sample.png").is_file() and manifest.labels == ("class_0", "class_1", "class_2")


def test_nchw_export_transposes_the_input(model_files, tmp_path, capsys):
    output = tmp_path / "nchw"
    code, _, err = run(["export", "--keras-model", str(model_files["keras"]), "--output", str(output), "--nchw",
                        "--quiet"], capsys)
    assert code == 0, err
    manifest = Manifest.read(output)
    assert manifest.input.shape == (-1, 1, 16, 16) and manifest.input.layout == "NCHW"
    assert manifest.preprocessing.layout == "NCHW"


def test_samples_in_label_folders_give_accuracy(model_files, tmp_path, capsys):
    from PIL import Image

    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\ntwo\n")
    for label in ("zero", "one"):
        (tmp_path / "samples" / label).mkdir(parents=True)
        for i in range(9):
            Image.fromarray(np.full((20, 20), 30 * i, dtype=np.uint8)).save(tmp_path / "samples" / label / f"{i}.png")
    code, out, err = run(["export", "--keras-model", str(model_files["keras"]), "--output", str(tmp_path / "o"),
                          "--labels", str(labels), "--samples", str(tmp_path / "samples"), "--json", "-q",
                          "--allow-chance-accuracy"], capsys)  # random weights: no better than guessing
    assert code == 0, err
    summary = json.loads(out)
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["parity"]["samples"] == 17
    assert Manifest.read(tmp_path / "o").labels == ("zero", "one", "two")


def test_accuracy_at_chance_level_is_refused_and_names_the_scale(rescaling_model, tmp_path, capsys):
    model, folder = rescaling_model
    argv = ["export", "--keras-model", str(model), "--labels", str(folder / "labels.txt"),
            "--samples", str(folder / "samples"), "-q"]
    code, _, err = run([*argv, "--output", str(tmp_path / "default")], capsys)
    assert code == 14, err
    assert "accuracy 0.333 on 18 labelled samples is at chance level (0.333 by guessing" in err
    assert "(pixel * 0.00392157 - mean [0.0]) / std [1.0]" in err and "--scale" in err
    assert "--allow-chance-accuracy" in err and not (tmp_path / "default").exists()
    code, out, err = run([*argv, "--output", str(tmp_path / "scaled"), "--scale", "1", "--json"], capsys)
    assert code == 0 and json.loads(out)["accuracy"] == 1.0, err
    code, _, err = run([*argv, "--output", str(tmp_path / "allowed"), "--allow-chance-accuracy"], capsys)
    assert code == 0 and Manifest.read(tmp_path / "allowed").accuracy == pytest.approx(1 / 3), err


def test_samples_that_give_no_accuracy_say_why(rescaling_model, tmp_path, capsys):
    model, folder = rescaling_model
    argv = ["export", "--keras-model", str(model), "--samples", str(folder / "samples"), "--scale", "1"]
    code, out, err = run([*argv, "--output", str(tmp_path / "no-labels")], capsys)  # labels default to class_0..2
    assert code == 0, err
    assert "accuracy   n/a (--samples folders blue, green, red are not labels (labels: class_0, class_1, class_2; " \
           "set them with --labels))" in err
    loose = tmp_path / "loose"
    loose.mkdir()
    for image in sorted((folder / "samples" / "red").iterdir())[:2]:
        (loose / image.name).write_bytes(image.read_bytes())
    code, out, err = run([*argv[:-4], "--samples", str(loose), "--output", str(tmp_path / "loose-out"), "--json",
                          "-q"], capsys)
    assert code == 0, err
    assert json.loads(out)["accuracy_note"] == f"2 of 2 images in --samples {loose} sit directly in it, not in one " \
                                              "sub-folder per label"


def test_export_help_states_the_default_scale():
    from triton_deploy.cli import build_parser

    export = build_parser()._subparsers._group_actions[0].choices["export"]
    assert "scale 1/255 (pixels 0-1), mean 0, std 1" in " ".join(export.format_help().split())


# ---- errors: one line, the flag to fix, an exit code, nothing left behind ---------------------------------------


@pytest.mark.parametrize("case, argv, code, message", [
    ("unknown arch", ["--arch", "vgg99"], 2, "unknown architecture 'vgg99' (--arch takes one of: mobilenet_v2"),
    ("missing file", ["--keras-model", "{missing}"], 4, "not found (check --keras-model)"),
    ("corrupt file", ["--keras-model", "{corrupt}"], 4, "cannot load"),
    ("several inputs", ["--keras-model", "{two_inputs}"], 4, "has 2 inputs; an image classifier takes exactly one"),
    ("non-image input", ["--keras-model", "{tabular}"], 4, "expected an image batch (N, H, W, C)"),
    ("not a saved model", ["--saved-model", "{tmp}"], 4, "is not a SavedModel directory"),
    ("two sources", ["--arch", "resnet50", "--keras-model", "{keras}"], 2, "export one model per run"),
    ("bad opset", ["--opset", "3"], 2, "opset 3 is outside"),
])
def test_bad_input_gets_one_clear_line_and_no_output(case, argv, code, message, model_files, tmp_path, capsys):
    paths = {k: str(v) for k, v in model_files.items()} | {"missing": str(tmp_path / "nope.keras"),
                                                             "tmp": str(tmp_path)}
    output = tmp_path / "out"
    status, out, err = run(["export", *[a.format(**paths) for a in argv], "--output", str(output), "-q"], capsys)
    assert status == code, err
    assert message in err and err.startswith("triton-deploy export: error:")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not output.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_existing_output_needs_force_and_is_left_untouched(model_files, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    status, _, err = run(["export", "--keras-model", str(model_files["keras"]), "--output", str(output), "-q"], capsys)
    assert status == 3 and "already exists" in err and "--force" in err
    assert (output / "keep.txt").read_text() == "mine"
    status, _, err = run(["export", "--keras-model", str(model_files["keras"]), "--output", str(output), "-q",
                          "--force"], capsys)
    assert status == 0, err
    assert not (output / "keep.txt").exists() and (output / "model.onnx").exists()


def test_parity_failure_names_the_output_and_numbers(tmp_path, capsys):
    import keras

    keras.utils.set_random_seed(3)
    loud = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(64, 3), keras.layers.Flatten(),
                             keras.layers.Dense(5), keras.layers.Rescaling(1e6)])
    path = tmp_path / "loud.keras"
    loud.save(path)
    status, _, err = run(["export", "--keras-model", str(path), "--output", str(tmp_path / "out"), "--atol", "1e-9",
                          "-q"], capsys)
    assert status == 6
    assert "parity check failed: output 'logits' differs by max |TF - ORT| =" in err and "atol 1e-09" in err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="unknown architecture"):
        main(["export", "--arch", "nope", "--output", str(tmp_path / "o"), "--debug", "-q"])


def test_mobilenet_v2_exports_with_parity_at_224(tmp_path, capsys):
    code, out, err = run(["export", "--arch", "mobilenet_v2", "--output", str(tmp_path / "mnv2"), "--json", "-q"],
                         capsys)
    assert code == 0, err
    manifest = Manifest.read(tmp_path / "mnv2")
    assert manifest.input.shape == (-1, 224, 224, 3) and manifest.output.shape == (-1, 1000)
    assert manifest.output_kind == "probabilities" and manifest.parity.top1_agreement == 1.0
    assert manifest.parity.max_abs_diff <= 1e-4
    assert manifest.preprocessing.mean == (0.5,) and manifest.preprocessing.std == (0.5,)  # x / 127.5 - 1
    # The first block's expansion to 96 channels at 112 x 112, zero-padded to 113 x 113 for its strided depthwise
    # convolution (float32), is MobileNetV2's largest activation.
    assert manifest.largest_activation_bytes_per_image == 113 * 113 * 96 * 4


@pytest.mark.parametrize("arch", [name for name in ARCHITECTURES if name != "mobilenet_v2"])  # that one: above
def test_every_listed_architecture_exports_with_parity(arch, tmp_path, capsys):
    # 32x32, the smallest input keras.applications accepts, keeps the conversion of random-weight models quick.
    code, _, err = run(["export", "--arch", arch, "--image-size", "32", "--output", str(tmp_path / arch), "-q"], capsys)
    assert code == 0, err
    manifest = Manifest.read(tmp_path / arch)
    assert manifest.input.shape == (-1, 32, 32, 3) and manifest.output.shape == (-1, 1000)
    assert manifest.parity.top1_agreement == 1.0 and manifest.parity.max_abs_diff <= 1e-4


def test_the_cli_lists_exactly_the_architectures_it_exports():
    from triton_deploy.cli import build_parser

    export = build_parser()._subparsers._group_actions[0].choices["export"]
    help_text = " ".join(export.format_help().split())
    assert f"random weights: {', '.join(ARCHITECTURES)}" in help_text


def test_duplicate_labels_are_refused(model_files, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\ncat\n")
    status, _, err = run(["export", "--keras-model", str(model_files["keras"]), "--labels", str(labels),
                          "--output", str(tmp_path / "out"), "-q"], capsys)
    assert status == 4 and "repeats labels ['cat']" in err and "--labels" in err
    assert not (tmp_path / "out").exists()
