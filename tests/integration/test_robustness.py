"""The robustness suite recorded in every export: each condition draws what its name says, and the accuracy the
manifest reports for it matches an independent recomputation (files encoded and decoded exactly as a user would send
them to the server, scored with ONNX Runtime). Manifest version 1 files are still read."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from triton_deploy.errors import ManifestError
from triton_deploy.export import digits, render, robustness
from triton_deploy.spec import MANIFEST_VERSION, Manifest

pytestmark = pytest.mark.slow

CONDITIONS = {c.name: c for c in robustness.DIGIT_CONDITIONS}


def _onnx_scores(export_dir, manifest):
    from triton_deploy.export.validate import onnx_predictor, onnx_session

    return onnx_predictor(onnx_session(export_dir / manifest.model_file, threads=2), nchw=False)


@pytest.fixture(scope="module")
def heldout_files(digits_manifest):
    """Every held-out digit drawn under every condition, as the encoded files a user would send."""
    images, labels = digits.load_digits_data(seed=digits_manifest.dataset["seed"]).split("heldout")
    files = {}
    for name, condition in CONDITIONS.items():
        renderings = condition.renderings_for(len(images), seed=0)
        files[name] = [render.render(image, r, noise_seed=i) for i, (image, r) in enumerate(zip(images, renderings))]
    return files, labels


def test_manifest_records_every_condition_with_its_image_count(digits_manifest):
    suite = digits_manifest.robustness
    assert [c.name for c in suite.conditions] == list(CONDITIONS)
    assert all(c.images == digits_manifest.dataset["heldout_size"] for c in suite.conditions)
    assert suite.worst.accuracy == min(c.accuracy for c in suite.conditions)
    assert {"resampling", "polarity", "margin"} <= _covered(CONDITIONS)


def _covered(conditions) -> set[str]:
    """Which kinds of change the suite covers, read from the renderings themselves (not from the names)."""
    kinds = set()
    for condition in conditions.values():
        for r in condition.renderings:
            kinds |= {"resampling"} if r.resample != "bilinear" else set()
            kinds |= {"polarity"} if r.dark_on_light else set()
            kinds |= {"margin"} if r.fill < 1 else set()
    return kinds


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_condition_accuracy_matches_an_independent_recomputation(name, heldout_files, digits_export, digits_manifest):
    files, labels = heldout_files
    transform = digits_manifest.preprocessing
    pixels = np.stack([transform.decode(data) for data in files[name]])  # the server's own decode path
    scores = _onnx_scores(digits_export, digits_manifest)(transform.normalise(pixels))
    recomputed = float(np.mean(scores.argmax(-1) == labels))
    reported = next(c for c in digits_manifest.robustness.conditions if c.name == name)
    assert reported.accuracy == pytest.approx(recomputed, abs=1e-9)
    assert reported.images == len(files[name])


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_condition_draws_what_its_name_says(name, heldout_files, heldout_digits):
    files, _labels = heldout_files
    condition = CONDITIONS[name]
    image = Image.open(io.BytesIO(files[name][0]))
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    if not condition.renderings:  # the random mix: many sizes and formats
        sizes = {Image.open(io.BytesIO(f)).size for f in files[name][:50]}
        assert len(sizes) > 20
        return
    r = condition.renderings[0]
    assert image.size == (r.size, r.size) and image.format == r.format
    if r.format == "PNG":  # WebP and JPEG files keep no palette, and WebP no greyscale
        assert image.mode == r.mode
    corner = pixels[0, 0]
    assert (corner > 200) == r.dark_on_light  # paper colour in the corner, white only for dark-on-light
    if r.fill < 1:  # a margin of paper around the digit
        side = r.digit_side
        free = r.size - side
        left, top = round(r.position[0] * free), round(r.position[1] * free)
        outside = np.ones_like(pixels, dtype=bool)
        outside[top:top + side, left:left + side] = False
        assert np.all(np.abs(pixels[outside] - corner) < 2)
    if r.resample == "nearest" and r.size % 8 == 0:  # blocky: each source pixel is a constant square
        block = r.size // 8
        assert np.all(pixels[:block, :block] == pixels[0, 0]) and np.all(pixels[-block:, -block:] == pixels[-1, -1])
    if r.noise:
        assert np.std(pixels[:4, :4]) > 5  # the paper is no longer flat
    if r.rotation or r.blur:  # the same digit, drawn without them, is another picture
        plain = replace(r, rotation=0.0, blur=0.0)
        assert files[name][0] != render.render(heldout_digits[0][0], plain, noise_seed=0)


def test_png_drawings_reach_the_model_as_the_server_decodes_them(heldout_digits):
    """Training and the suite skip the PNG encoder for lossless renderings; the server decodes files. Same pixels."""
    images, _ = heldout_digits
    renderings = render.sample_renderings(60, np.random.default_rng(3))
    for i, r in enumerate(renderings):
        from_file = digits.TRANSFORM.decode(render.render(images[i], r, noise_seed=i))
        assert np.array_equal(render.model_pixels(images[i], r, digits.TRANSFORM, noise_seed=i), from_file)


def test_training_renderings_are_deterministic_and_cover_every_factor():
    a = render.sample_renderings(400, np.random.default_rng(0))
    assert a == render.sample_renderings(400, np.random.default_rng(0))
    assert {r.resample for r in a} == set(render.FILTERS)
    assert {r.mode for r in a} == {"L", "RGB", "P"} and {r.format for r in a} == {"PNG", "JPEG", "WEBP"}
    assert min(r.size for r in a) <= 10 and max(r.size for r in a) >= 400
    assert 0.3 < np.mean([r.dark_on_light for r in a]) < 0.7
    assert min(r.fill for r in a) < 0.45 and any(r.rotation for r in a) and any(r.noise for r in a)


def test_augmented_training_set_draws_training_digits_only():
    data = digits.load_digits_data()
    poisoned = data.labels.copy()
    poisoned[data.heldout_indices] = -1  # a held-out digit in the training set would carry this label
    small = type(data)(data.images, poisoned, data.train_indices[:40], data.heldout_indices, data.seed,
                       data.test_fraction)
    pixels, labels = digits.augmented_training_set(small, per_image=3)
    assert len(pixels) == 120 and not np.any(labels == -1)
    again, _ = digits.augmented_training_set(small, per_image=3)
    assert np.array_equal(pixels, again)  # deterministic for the seed


def test_manifest_version_1_is_still_read(digits_export, tmp_path):
    old = tmp_path / "v1"
    shutil.copytree(digits_export, old)
    data = json.loads((old / "manifest.json").read_text())
    assert data["manifest_version"] == MANIFEST_VERSION == 2
    data["manifest_version"] = 1
    del data["robustness"]
    (old / "manifest.json").write_text(json.dumps(data))
    manifest = Manifest.read(old)
    assert manifest.robustness is None and manifest.accuracy == data["accuracy"]
    data["manifest_version"] = 3
    (old / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="manifest_version 3; this tool reads versions 1, 2"):
        Manifest.read(old)


# ---- a user's model with labelled --samples ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples_export(tmp_path_factory):
    """A tiny RGB Keras model exported with 24 labelled sample images (two labels, varied sizes and modes)."""
    import keras

    from triton_deploy.export.pipeline import ExportOptions, export_model

    root = tmp_path_factory.mktemp("samples-export")
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.save(root / "tiny.keras")
    rng = np.random.default_rng(0)
    for label in ("dark", "light"):
        (root / "samples" / label).mkdir(parents=True)
        for i in range(12):
            level = 40 if label == "dark" else 210
            size = (20 + 7 * i, 30 + 5 * i)
            pixels = np.clip(rng.normal(level, 30, (*size[::-1], 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            (image.convert("L") if i % 3 == 0 else image).save(root / "samples" / label / f"{i}.png")
    (root / "labels.txt").write_text("dark\nlight\n")
    # An untrained model: the suite's bookkeeping is under test, not its accuracy, which is at chance.
    export_model(ExportOptions(output=root / "export", keras_model=root / "tiny.keras", samples=root / "samples",
                               labels_file=root / "labels.txt", allow_chance_accuracy=True))
    return root


@pytest.mark.parametrize("name", [c.name for c in robustness.SAMPLE_CONDITIONS])
def test_sample_condition_accuracy_matches_an_independent_recomputation(name, samples_export):
    export = samples_export / "export"
    manifest = Manifest.read(export)
    transform = manifest.preprocessing
    condition = next(c for c in robustness.SAMPLE_CONDITIONS if c.name == name)
    files = sorted((samples_export / "samples").rglob("*.png"))
    labels = np.asarray([manifest.labels.index(f.parent.name) for f in files])
    pixels = []
    for path in files:
        data = condition.make(Image.open(path), transform)
        image = Image.open(io.BytesIO(data))
        assert image.format in ("PNG", "JPEG")
        if name == "small":
            assert max(image.size) == 8  # a quarter of 24 px, but never below 8
        if name == "other-colour-mode":
            assert image.mode == "L"  # the model is RGB
        pixels.append(transform.decode(data))
    scores = _onnx_scores(export, manifest)(transform.normalise(np.stack(pixels)))
    reported = next(c for c in manifest.robustness.conditions if c.name == name)
    assert reported.images == len(files) == 24
    assert reported.accuracy == pytest.approx(float(np.mean(scores.argmax(-1) == labels)), abs=1e-9)
    assert manifest.robustness.data.startswith("samples in")
