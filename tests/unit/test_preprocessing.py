"""The shared image transform: decoding every supported kind of image, limits, and the batch normalisation."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from triton_deploy.postprocessing import classify, label_lookup, softmax, top_k
from triton_deploy.preprocessing import ImageDecodeError, ImageTransform

GREY = ImageTransform(height=16, width=16, color_mode="L", scale=1 / 255)
RGB = ImageTransform(height=8, width=8, color_mode="RGB", scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def gradient(mode: str = "L", size=(32, 24)) -> Image.Image:
    array = np.tile(np.linspace(0, 255, size[0], dtype=np.uint8), (size[1], 1))
    image = Image.fromarray(array, mode="L")
    return image.convert(mode)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF"])
def test_decodes_every_supported_format_to_model_size(fmt):
    array = GREY.decode(encode(gradient(), fmt))
    assert array.shape == (16, 16, 1) and array.dtype == np.uint8
    # A left-to-right gradient survives decoding and resizing (lossy formats within a few levels).
    assert array[:, 0].mean() < 30 and array[:, -1].mean() > 225


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "CMYK", "I;16", "I", "1"])
def test_converts_every_colour_mode(mode):
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I") else "PNG"
    source = gradient("I") if mode == "I;16" else gradient(mode)
    if mode == "I;16":
        source = Image.fromarray(np.asarray(source, dtype=np.uint16) * 257)  # Pillow infers I;16
    rgb = RGB.decode(encode(source, fmt))
    grey = GREY.decode(encode(source, fmt))
    assert rgb.shape == (8, 8, 3) and grey.shape == (16, 16, 1)
    if mode != "1":  # 16-bit images are scaled to 8 bits by their range, not clipped to white
        assert grey[:, -1].mean() > grey[:, 0].mean() + 100


def test_normalise_applies_scale_mean_std_per_channel():
    pixels = np.full((2, 8, 8, 3), 255, dtype=np.uint8)
    pixels[1] = 0
    tensor = RGB.normalise(pixels)
    assert tensor.dtype == np.float32 and tensor.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(tensor[0], (1.0 - 0.5) / 0.25)
    np.testing.assert_allclose(tensor[1], (0.0 - 0.5) / 0.25)


def test_bgr_and_nchw_reorder_channels_and_axes():
    transform = ImageTransform(height=4, width=4, color_mode="RGB", channel_order="BGR", layout="NCHW", scale=1.0)
    pixels = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    pixels[..., 0] = 10  # red
    pixels[..., 2] = 30  # blue
    tensor = transform.normalise(pixels)
    assert tensor.shape == (1, 3, 4, 4)
    assert tensor[0, 0].max() == 30 and tensor[0, 2].max() == 10  # blue first


@pytest.mark.parametrize("data, message", [
    (b"", r"empty \(0 bytes\)"),
    (b"hello, I am text", "not a supported image format"),
    (bytes(range(256)) * 4, "not a supported image format"),
])
def test_rejects_non_images_with_a_reason(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        GREY.decode(data)


def test_rejects_truncated_png():
    data = encode(gradient(size=(200, 200)))
    with pytest.raises(ImageDecodeError, match="cannot decode PNG|not a supported"):
        GREY.decode(data[: len(data) // 2])


def test_rejects_images_above_the_pixel_limit_before_decoding():
    small_cap = ImageTransform(height=8, width=8, color_mode="L", max_pixels=100 * 100)
    with pytest.raises(ImageDecodeError, match=r"200x150 pixels exceeds the limit of 10000 pixels"):
        small_cap.decode(encode(gradient(size=(200, 150))))


def test_rejects_inputs_above_the_byte_limit():
    capped = ImageTransform(height=8, width=8, color_mode="L", max_bytes=100)
    with pytest.raises(ImageDecodeError, match="above the limit of 100 bytes"):
        capped.decode(encode(gradient(size=(64, 64))))


def test_one_bad_image_does_not_spoil_the_batch():
    good = encode(gradient())
    tensor, ok, errors = GREY.preprocess([good, b"garbage", good])
    assert ok == [0, 2] and tensor.shape == (2, 16, 16, 1)
    assert errors[0] == errors[2] == "" and "not a supported image format" in errors[1]


def test_parameters_round_trip_through_config_strings():
    transform = ImageTransform(height=224, width=200, color_mode="RGB", channel_order="BGR", layout="NCHW",
                               scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0,), resample="bicubic")
    parameters = transform.to_parameters()
    assert all(isinstance(v, str) for v in parameters.values())
    assert ImageTransform.from_parameters(parameters | {"unrelated": "x"}) == transform


@pytest.mark.parametrize("kwargs, message", [
    ({"color_mode": "CMYK"}, "color_mode"),
    ({"mean": (0.1, 0.2)}, "mean needs 1 or 1 values"),
    ({"std": (0.0,)}, "std must not contain 0"),
    ({"layout": "HWC"}, "layout"),
])
def test_invalid_transforms_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageTransform(height=8, width=8, color_mode=kwargs.pop("color_mode", "L"), **kwargs)


def test_softmax_and_top_k_on_a_batch():
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [1000.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    probabilities = softmax(logits)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    ids, scores = top_k(probabilities, 3)
    assert ids.tolist() == [[1, 3, 2], [0, 1, 2]]  # ties keep the lower class id first
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert scores[1, 0] == pytest.approx(1.0)


def test_classify_takes_probabilities_as_they_are_and_caps_k():
    probabilities = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    ids, scores = classify(probabilities, 10, logits=False)
    assert ids.tolist() == [[1, 2, 0]] and scores[0].tolist() == pytest.approx([0.7, 0.2, 0.1])
    assert label_lookup(["a", "b", "c"])[ids].tolist() == [[b"b", b"c", b"a"]]


@pytest.mark.parametrize("wrap", [
    pytest.param(lambda data: base64.b64encode(data), id="base64"),
    pytest.param(lambda data: base64.encodebytes(data), id="mime-line-breaks"),
    pytest.param(lambda data: base64.urlsafe_b64encode(data), id="url-safe"),
    pytest.param(lambda data: b"data:image/png;base64," + base64.b64encode(data), id="data-url"),
])
def test_base64_text_of_an_image_decodes_like_the_image(wrap):
    """What a JSON-only request carries: Triton passes the string's characters, base64 and all."""
    transform = ImageTransform(height=8, width=8, color_mode="L")
    image = io.BytesIO()
    Image.fromarray(np.arange(16 * 12, dtype=np.uint8).reshape(12, 16)).save(image, format="PNG")
    batch = transform.preprocess_batch([image.getvalue(), wrap(image.getvalue())])
    assert batch.ok == [0, 1] and batch.errors == ["", ""]
    assert batch.formats == ["png", "png"] and batch.encodings == ["binary", "base64"] and batch.pixels == [192, 192]
    assert np.array_equal(batch.tensor[0], batch.tensor[1])


@pytest.mark.parametrize(("data", "extra"), [
    (b"this is not an image", ""),
    (base64.b64encode(b"plain text, then encoded"), "base64 text, of something that is not an image"),
    (b"GIF89a", ""),  # ASCII, but too short to be an image and not base64 of one
])
def test_an_element_that_is_neither_image_nor_base64_of_one_keeps_the_clear_error(data, extra):
    transform = ImageTransform(height=8, width=8, color_mode="L")
    batch = transform.preprocess_batch([data])
    assert batch.ok == [] and batch.reasons == ["not_an_image"]
    assert batch.errors[0].startswith("cannot decode image: not a supported image format") and extra in batch.errors[0]
