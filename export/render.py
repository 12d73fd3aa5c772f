"""Digits drawn the ways people really send them, with Pillow: any size, resampling filter, polarity, margin, colour,
palette, rotation, blur, noise and compression.

One ``Rendering`` describes how one image is made; ``render`` makes it as the encoded file a user would send, and
``model_pixels`` turns it into what the server's ``ImageTransform`` computes from that file (the model's uint8
input before normalisation). Training augmentation (``sample_renderings``) and the robustness suite
(``robustness.py``) both go through these two functions, so what the model learns from is what serving computes.

The digit is drawn as ink coverage (0 = paper, 255 = full ink) - scaled with the chosen filter, rotated, placed on
the canvas, blurred - and only then coloured: ``background + (ink - background) * coverage / 255``, per channel.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from triton_deploy.preprocessing import ImageTransform

# Pillow's resampling filters by name: all of them are used to make the training set and each has a condition.
FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}
MODES = ("L", "RGB", "P")
FORMATS = ("PNG", "JPEG", "WEBP")
LOSSLESS = ("PNG",)
CHEAP_EFFECTS_PX = 192  # see sample_renderings
# Share of training renderings at low contrast (faded scans); why 0.2: docs/export.md#low-contrast-training
LOW_CONTRAST_SHARE = 0.2
MIN_DIGIT_PX = 8  # below its native 8x8 a digit loses strokes; canvases of 8-16 px therefore hold larger digits

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Rendering:
    """How one digit image is made. The defaults are the old training rendering: 64 px, bilinear, white on black."""

    size: int = 64  # canvas side, pixels
    fill: float = 1.0  # digit side / canvas side
    position: tuple[float, float] = (0.5, 0.5)  # where the digit sits in the free space (0 = left/top, 1 = right)
    resample: str = "bilinear"  # Pillow filter that scales the 8x8 digit to its side
    ink: Colour = (255, 255, 255)
    background: Colour = (0, 0, 0)
    rotation: float = 0.0  # degrees, counter-clockwise
    blur: float = 0.0  # Gaussian radius in units of the digit's own pixels (1/8 of its side)
    noise: float = 0.0  # standard deviation of Gaussian pixel noise, grey levels
    mode: str = "L"  # "L", "RGB" or "P" (a 16-colour palette image, as GIFs and paint programs save)
    format: str = "PNG"  # "PNG", "JPEG" or "WEBP"
    quality: int = 90  # JPEG / WebP quality

    def __post_init__(self) -> None:
        if self.resample not in FILTERS:
            raise ValueError(f"resample must be one of {sorted(FILTERS)}, not {self.resample!r}")
        if self.mode not in MODES or self.format not in FORMATS:
            raise ValueError(f"mode must be in {MODES} and format in {FORMATS}")
        if self.mode == "P" and (self.format != "PNG" or self.noise):
            raise ValueError("palette images are clean PNGs here (JPEG and WebP have no palette)")

    @property
    def digit_side(self) -> int:
        return min(self.size, max(MIN_DIGIT_PX, round(self.fill * self.size)))

    @property
    def dark_on_light(self) -> bool:
        return _luminance(self.ink) < _luminance(self.background)


def render_image(pixels: np.ndarray, rendering: Rendering, noise_seed: int = 0) -> Image.Image:
    """One 8x8 uint8 digit (bright = ink) drawn as ``rendering`` says, before compression."""
    r = rendering
    side = r.digit_side
    digit = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L")
    digit = digit.resize((side, side), FILTERS[r.resample])
    if r.rotation:
        digit = digit.rotate(r.rotation, resample=Image.Resampling.BILINEAR, fillcolor=0)
    if side == r.size:
        coverage = digit
    else:
        coverage = Image.new("L", (r.size, r.size), 0)
        free = r.size - side
        coverage.paste(digit, (round(r.position[0] * free), round(r.position[1] * free)))
    if r.blur:
        coverage = coverage.filter(ImageFilter.GaussianBlur(r.blur * side / 8))
    if r.mode == "P":
        return _palette_image(coverage, r.ink, r.background)
    if r.mode == "L" and r.noise == 0:
        ink, paper = _luminance(r.ink), _luminance(r.background)
        return coverage.point([round(paper + (ink - paper) * a / 255) for a in range(256)])
    image = ImageOps.colorize(coverage, black=r.background, white=r.ink)
    if r.noise:
        rng = np.random.default_rng(noise_seed)
        array = np.asarray(image, dtype=np.float32) + rng.normal(0.0, r.noise, size=(r.size, r.size, 1))
        image = Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8), mode="RGB")
    return image.convert("L") if r.mode == "L" else image


def _palette_image(coverage: Image.Image, ink: Colour, paper: Colour, colours: int = 16) -> Image.Image:
    """A palette image as a paint program saves one: ``colours`` shades from paper to ink. (Pillow's adaptive
    ``quantize`` reaches much the same palette but cost 40 ms per 512 px image here.)"""
    index = coverage.point([round(a * (colours - 1) / 255) for a in range(256)])
    image = Image.frombytes("P", coverage.size, index.tobytes())
    steps = np.linspace(0.0, 1.0, colours)[:, None]
    palette = np.round(np.asarray(paper) + (np.asarray(ink) - np.asarray(paper)) * steps).astype(np.uint8)
    image.putpalette(palette.tobytes())
    return image


def encode(image: Image.Image, rendering: Rendering) -> bytes:
    """The file a user would send: PNG, or JPEG/WebP at the rendering's quality."""
    buffer = io.BytesIO()
    options = {} if rendering.format in LOSSLESS else {"quality": rendering.quality}
    image.save(buffer, format=rendering.format, **options)
    return buffer.getvalue()


def render(pixels: np.ndarray, rendering: Rendering, noise_seed: int = 0) -> bytes:
    """One digit as the encoded image file a user would send."""
    return encode(render_image(pixels, rendering, noise_seed), rendering)


def model_pixels(pixels: np.ndarray, rendering: Rendering, transform: ImageTransform, noise_seed: int = 0) -> np.ndarray:
    """What the server's preprocessing computes from ``render(pixels, rendering)``: uint8 (H, W, C).

    Lossy formats are encoded and decoded by ``transform.decode``, exactly as the server does (including its JPEG
    draft mode). A PNG decodes to the very pixels it was made from, so those skip the encoder (a test checks that
    both routes agree)."""
    image = render_image(pixels, rendering, noise_seed)
    if rendering.format in LOSSLESS:
        return transform.resize(image)
    return transform.decode(encode(image, rendering))


def model_batch(images: np.ndarray, renderings: list[Rendering], transform: ImageTransform,
                noise_seeds: np.ndarray | None = None, progress=None) -> np.ndarray:
    """``model_pixels`` for many digits: uint8 (N, H, W, C). ``progress(n)`` is called every 256 images."""
    out = np.empty((len(images), *transform_dims(transform)), dtype=np.uint8)
    seeds = noise_seeds if noise_seeds is not None else np.arange(len(images))
    for i, (pixels, rendering) in enumerate(zip(images, renderings, strict=True)):
        out[i] = model_pixels(pixels, rendering, transform, int(seeds[i]))
        if progress is not None and (i + 1) % 256 == 0:
            progress(256)
    if progress is not None and len(images) % 256:
        progress(len(images) % 256)
    return out


def transform_dims(transform: ImageTransform) -> tuple[int, int, int]:
    return transform.height, transform.width, transform.channels


# ---- the training distribution ----------------------------------------------------------------------------------


def sample_renderings(count: int, rng: np.random.Generator) -> list[Rendering]:
    """``count`` random renderings covering how digit images arrive. Every random draw is made up front from
    ``rng`` in a fixed order, so the set depends on the seed only.

    - size log-uniform over 8-512 px; the digit fills 35-100 % of the canvas (100 % a third of the time) at a random
      position; any of the five filters; rotations up to 15 degrees (half);
    - half light-on-dark, half dark-on-light, at random ink and paper levels at least 100 grey levels apart; a third
      in colour (RGB), a sixth as 16-colour palette images;
    - a ``LOW_CONTRAST_SHARE`` of them instead with ink and paper only 40-100 grey levels of luminance apart, around
      any middle level (faded scans, coloured forms: in colour the hues differ while the luminance barely does);
    - blur (a fifth), noise (a fifth), JPEG (a third) or WebP (a sixth) at quality 30-95.

    Blur, noise and WebP are drawn on canvases up to ``CHEAP_EFFECTS_PX`` only: their cost grows with the canvas
    area (noise, blur and WebP took 17-30 ms per 256-512 px image here, 0.2-0.8 ms at 64 px) while the server's
    downscale to 64 px averages most of what they do at large sizes away.
    """
    size = np.round(np.exp(rng.uniform(np.log(8), np.log(512), count))).astype(int)
    fill = np.where(rng.random(count) < 1 / 3, 1.0, rng.uniform(0.35, 1.0, count))
    position = rng.random((count, 2))
    resample = rng.choice(list(FILTERS), count)
    dark_on_light = rng.random(count) < 0.5
    colour = rng.random(count)
    ink_level = rng.uniform(170, 255, count)
    paper_level = rng.uniform(0, 70, count)
    hues = rng.uniform(0, 1, (count, 2))
    rotation = np.where(rng.random(count) < 0.5, rng.uniform(-15, 15, count), 0.0)
    small = size <= CHEAP_EFFECTS_PX
    blur = np.where(small & (rng.random(count) < 0.2), rng.uniform(0.2, 0.6, count), 0.0)
    compression = rng.random(count)
    quality = rng.integers(30, 96, count)
    noise_levels = rng.uniform(4, 25, count)
    noisy = small & (rng.random(count) < 0.2)
    # drawn after the draws above, so those (and every rendering that is not low-contrast) stay as they were
    low_contrast = rng.random(count) < LOW_CONTRAST_SHARE
    contrast = rng.uniform(40, 100, count)
    middle = rng.uniform(20 + contrast / 2, 235 - contrast / 2)
    ink_level = np.where(low_contrast, middle + contrast / 2, ink_level)
    paper_level = np.where(low_contrast, middle - contrast / 2, paper_level)

    renderings = []
    for i in range(count):
        mode = "RGB" if colour[i] < 1 / 3 else "P" if colour[i] < 0.5 else "L"
        if mode == "L":
            ink, paper = _grey(ink_level[i]), _grey(paper_level[i])
        else:
            ink, paper = _tinted(ink_level[i], hues[i, 0]), _tinted(paper_level[i], hues[i, 1])
        if dark_on_light[i]:
            ink, paper = paper, ink
        fmt = "PNG" if mode == "P" or compression[i] < 0.5 else "JPEG" if compression[i] < 5 / 6 else "WEBP"
        if fmt == "WEBP" and not small[i]:
            fmt = "JPEG"
        renderings.append(Rendering(
            size=int(size[i]), fill=float(fill[i]), position=(float(position[i, 0]), float(position[i, 1])),
            resample=str(resample[i]), ink=ink, background=paper, rotation=float(rotation[i]), blur=float(blur[i]),
            noise=float(noise_levels[i]) if noisy[i] and mode != "P" else 0.0, mode=mode, format=fmt,
            quality=int(quality[i])))
    return renderings


def inverted(rendering: Rendering) -> Rendering:
    return replace(rendering, ink=rendering.background, background=rendering.ink)


def _grey(level: float) -> Colour:
    value = int(round(level))
    return value, value, value


def _tinted(level: float, hue: float) -> Colour:
    """A colour of about ``level`` luminance with the given hue (saturation kept moderate so it stays reachable)."""
    angle = 2 * np.pi * hue
    tint = 60.0 * np.array([np.cos(angle), np.cos(angle - 2.1), np.cos(angle + 2.1)])
    rgb = np.clip(level + tint - _luminance(tuple(tint)), 0, 255)
    return int(round(rgb[0])), int(round(rgb[1])), int(round(rgb[2]))


def _luminance(colour) -> float:
    """ITU-R 601 luma, the weights Pillow's RGB -> L conversion uses."""
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
