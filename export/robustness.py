"""The robustness suite: accuracy of an exported model on labelled images made in named ways.

For the built-in digits model the held-out digits (never trained on) are drawn under each ``DIGIT_CONDITIONS``
entry with ``render.py``: one factor changed from the old training rendering at a time, plus a drawing made in a
paint program and a random mix from the training distribution. For a user's model with labelled ``--samples`` the
``SAMPLE_CONDITIONS`` that make sense for any image (resampling, size, JPEG quality, colour mode) are applied to their
images. Either way every image goes through the model's own ``ImageTransform``, as the server would compute it, and
the result is a ``Robustness`` record for the manifest.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from triton_deploy.preprocessing import ImageTransform
from triton_deploy.spec import ConditionAccuracy, Robustness

from . import render
from .render import Rendering

REFERENCE = Rendering()  # 64 px, bilinear, white on black: the rendering the model was first trained on
BLACK, WHITE = (0, 0, 0), (255, 255, 255)


@dataclass(frozen=True)
class DigitCondition:
    """Held-out digit i is drawn with ``renderings[i % len(renderings)]`` (several: e.g. +-12 degrees in turn), or
    with random renderings from the training distribution (seeded) when ``renderings`` is empty."""

    name: str
    description: str
    renderings: tuple[Rendering, ...] = ()

    def renderings_for(self, count: int, seed: int) -> list[Rendering]:
        if not self.renderings:
            return render.sample_renderings(count, np.random.default_rng([seed, 1]))  # not the training draws
        return [self.renderings[i % len(self.renderings)] for i in range(count)]


def _one(name: str, description: str, **changes) -> DigitCondition:
    return DigitCondition(name, description, (replace(REFERENCE, **changes),))


DIGIT_CONDITIONS: tuple[DigitCondition, ...] = (
    _one("reference", "64 px, bilinear upscale, white ink on black (the old training rendering)"),
    *(_one(f"{name}-128px", f"upscaled to 128 px with Pillow's {name} filter", size=128, resample=name)
      for name in render.FILTERS),
    _one("small-16px", "drawn at 16 px (bicubic)", size=16, resample="bicubic"),
    _one("large-300px", "upscaled to 300 px (lanczos)", size=300, resample="lanczos"),
    _one("large-512px-nearest", "512 px blocky pixel art (nearest)", size=512, resample="nearest"),
    _one("dark-on-light", "black ink on white paper", ink=BLACK, background=WHITE),
    _one("margin-centred", "digit fills 50 % of the canvas, centred", fill=0.5),
    _one("margin-corner", "digit fills 40 % of the canvas, near a corner", fill=0.4, position=(0.1, 0.85)),
    _one("jpeg-q50", "JPEG at quality 50", format="JPEG", quality=50),
    _one("webp-q50", "WebP at quality 50", format="WEBP", quality=50),
    _one("rgb-colour", "RGB image, yellow ink on navy", mode="RGB", ink=(250, 215, 60), background=(20, 30, 90)),
    _one("palette", "16-colour palette PNG (as GIFs and paint programs save)", mode="P"),
    DigitCondition("low-contrast-colour", "RGB, ink and paper a quarter of the grey range apart in luminance (63-64 "
                   "levels), alternately ochre ink on teal and wine ink on pale blue",
                   (replace(REFERENCE, mode="RGB", ink=(200, 150, 90), background=(45, 115, 125)),
                    replace(REFERENCE, mode="RGB", ink=(150, 60, 70), background=(140, 150, 190)))),
    _one("noise", "Gaussian pixel noise, sigma 20 grey levels", noise=20.0),
    DigitCondition("rotated", "rotated by 12 degrees, alternately each way",
                   (replace(REFERENCE, rotation=12.0), replace(REFERENCE, rotation=-12.0))),
    _one("blur", "Gaussian blur of half a digit pixel", blur=0.5),
    _one("paint-program", "black on white, 280 px canvas, digit 70 % of it, bicubic", size=280, fill=0.7,
         resample="bicubic", ink=BLACK, background=WHITE),
    DigitCondition("mixed", "random renderings from the training distribution (other draws)"),
)


def digit_condition_pixels(condition: DigitCondition, images: np.ndarray, transform: ImageTransform,
                           seed: int) -> np.ndarray:
    """The server's uint8 pixels for ``images`` drawn under ``condition`` (noise seeded per image)."""
    renderings = condition.renderings_for(len(images), seed)
    return render.model_batch(images, renderings, transform, noise_seeds=np.arange(len(images)) + seed * 100_003)


def evaluate_digits(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
                    transform: ImageTransform, *, seed: int, data: str,
                    conditions: tuple[DigitCondition, ...] = DIGIT_CONDITIONS, progress=None) -> Robustness:
    """Accuracy under each condition. ``predict`` maps float NHWC input to class scores."""
    results = []
    for condition in conditions:
        pixels = digit_condition_pixels(condition, images, transform, seed)
        results.append(_accuracy(condition.name, condition.description, predict, transform, pixels, labels))
        if progress is not None:
            progress(condition.name)
    return Robustness(data=data, conditions=tuple(results))


# ---- any labelled images (a user's --samples) --------------------------------------------------------------------


@dataclass(frozen=True)
class SampleCondition:
    """A change any image can undergo before it reaches the server: ``make(image, transform)`` -> encoded bytes."""

    name: str
    description: str
    make: Callable[[Image.Image, ImageTransform], bytes]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _resized(scale: float, filter_name: str, minimum: int = 8) -> Callable[[Image.Image, ImageTransform], bytes]:
    def make(image: Image.Image, transform: ImageTransform) -> bytes:
        side = max(minimum, round(scale * max(transform.height, transform.width)))
        return _png(image.resize((side, side), render.FILTERS[filter_name]))
    return make


def _jpeg(image: Image.Image, _transform: ImageTransform) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def _other_colour_mode(image: Image.Image, transform: ImageTransform) -> bytes:
    return _png(image.convert("RGB" if transform.color_mode == "L" else "L"))


SAMPLE_CONDITIONS: tuple[SampleCondition, ...] = (
    SampleCondition("as-given", "the sample files as they are", lambda image, _t: _png(image)),
    *(SampleCondition(f"{name}-1.5x", f"resized to 1.5x the model's input with Pillow's {name} filter",
                      _resized(1.5, name)) for name in render.FILTERS),
    SampleCondition("small", "shrunk to a quarter of the model's input (bicubic)", _resized(0.25, "bicubic")),
    SampleCondition("large", "enlarged to 4x the model's input, at least 256 px (bicubic)",
                    lambda image, t: _resized(max(4.0, 256 / max(t.height, t.width)), "bicubic")(image, t)),
    SampleCondition("jpeg-q50", "re-saved as JPEG at quality 50", _jpeg),
    SampleCondition("other-colour-mode", "greyscale for an RGB model, RGB for a greyscale one", _other_colour_mode),
)


def evaluate_samples(predict: Callable[[np.ndarray], np.ndarray], images: list[Image.Image], labels: np.ndarray,
                     transform: ImageTransform, *, data: str,
                     conditions: tuple[SampleCondition, ...] = SAMPLE_CONDITIONS) -> Robustness:
    results = []
    for condition in conditions:
        pixels = np.stack([transform.decode(condition.make(image, transform)) for image in images])
        results.append(_accuracy(condition.name, condition.description, predict, transform, pixels, labels))
    return Robustness(data=data, conditions=tuple(results))


def _accuracy(name: str, description: str, predict: Callable[[np.ndarray], np.ndarray], transform: ImageTransform,
              pixels: np.ndarray, labels: np.ndarray) -> ConditionAccuracy:
    nhwc = replace(transform, layout="NHWC")
    correct = 0
    for start in range(0, len(pixels), 128):
        scores = predict(nhwc.normalise(pixels[start:start + 128]))
        correct += int(np.sum(np.argmax(scores, axis=-1) == labels[start:start + 128]))
    return ConditionAccuracy(name=name, description=description, accuracy=correct / len(pixels), images=len(pixels))
