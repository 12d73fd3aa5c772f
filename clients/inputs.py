"""The kinds of image a caller may pass, turned into what a request carries.

Accepted: file paths (``str`` / ``os.PathLike``), encoded bytes, PIL images and uint8 numpy arrays (``H x W``,
``H x W x 1|3|4``, or a ``N x H x W x C`` batch). For the server's preprocessing everything becomes encoded bytes:
files and bytes as they are, in-memory pixels losslessly as PNG (TIFF for 16-bit and float images). For client-side
preprocessing, files and bytes are decoded by the same ``ImageTransform.decode`` the server runs and in-memory images
go through its ``resize``; a lossless encoding means both routes see identical pixels.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from triton_deploy.preprocessing import ImageDecodeError, ImageTransform

from .errors import ImageError, InvalidInputError

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})
TIFF_MODES = frozenset({"I", "I;16", "F", "CMYK"})


@dataclass(frozen=True)
class Item:
    """One input with its place in the caller's list and a name for messages (a path, or ``#i (kind)``)."""

    index: int
    source: str
    value: Any


def as_items(images: ImageLike | Iterable[ImageLike]) -> list[Item]:
    """A single image or an iterable of images -> ``Item``s; raises ``InvalidInputError`` for unsupported kinds."""
    if _is_single(images):
        values = list(images) if isinstance(images, np.ndarray) and images.ndim == 4 else [images]
    else:
        try:
            values = list(images)  # type: ignore[arg-type]
        except TypeError:
            raise InvalidInputError(f"cannot classify a {type(images).__name__}: pass a path, bytes, a PIL image, "
                                    "a uint8 numpy array, or a list of them") from None
    return [Item(index, _source(index, value), _checked(index, value)) for index, value in enumerate(values)]


def _is_single(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray))


def _source(index: int, value: Any) -> str:
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    kind = "bytes" if isinstance(value, (bytes, bytearray, memoryview)) else \
        "PIL image" if isinstance(value, Image.Image) else "array"
    return f"#{index} ({kind})"


def _checked(index: int, value: Any) -> Any:
    if isinstance(value, (str, os.PathLike, Image.Image)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise InvalidInputError(f"input #{index} is a {value.dtype} array; image arrays must be uint8 pixels "
                                    "(H x W or H x W x 1|3|4)")
        if value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (1, 3, 4)):
            raise InvalidInputError(f"input #{index} has shape {value.shape}; image arrays must be H x W or "
                                    "H x W x 1|3|4 (N x H x W x C for a batch)")
        return value
    raise InvalidInputError(f"input #{index} is a {type(value).__name__}; pass a path, bytes, a PIL image or a "
                            "uint8 numpy array")


# ---- to encoded bytes (server-side preprocessing) --------------------------------------------------------------


def encoded(item: Item) -> bytes:
    """The bytes to send as the ensemble's image input; raises ``ImageError`` for an unreadable file."""
    value = item.value
    if isinstance(value, bytes):
        return value
    if isinstance(value, (str, os.PathLike)):
        return _read(item)
    image = _canonical(_pil(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if image.mode in PNG_MODES else "TIFF")
    return buffer.getvalue()


# ---- to pixels (client-side preprocessing) ---------------------------------------------------------------------


def pixels(item: Item, transform: ImageTransform) -> np.ndarray:
    """uint8 ``(H, W, C)`` at the model's size, exactly as the server's preprocess model would make it."""
    value = item.value
    try:
        if isinstance(value, (str, os.PathLike)):
            return transform.decode(_read(item))
        if isinstance(value, bytes):
            return transform.decode(value)
        return transform.resize(_canonical(_pil(value)))
    except ImageDecodeError as exc:
        raise ImageError(item.source, str(exc), index=item.index) from None


def _read(item: Item) -> bytes:
    try:
        return Path(item.value).read_bytes()
    except OSError as exc:
        raise ImageError(item.source, f"cannot read the file: {exc.strerror or exc}", index=item.index) from None


def _pil(value: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    array = value[..., 0] if value.ndim == 3 and value.shape[2] == 1 else value
    return Image.fromarray(np.ascontiguousarray(array))


def _canonical(image: Image.Image) -> Image.Image:
    """Modes PNG or TIFF store losslessly stay as they are; anything else (HSV, LAB, YCbCr...) becomes RGB."""
    if image.mode in PNG_MODES or image.mode in TIFF_MODES:
        return image
    return image.convert("RGB")
