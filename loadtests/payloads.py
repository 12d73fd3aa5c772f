"""A pool of real encoded images for load generation: files from a folder, or digits rendered at a mix of sizes and
formats. Requests pick from the pool at random, so the server decodes the same variety a real client would send.

Importable without the rest of the project's heavy parts (numpy, Pillow, scikit-learn only) because Locust workers
load it in every process.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triton_deploy.contract import IMAGE_SUFFIXES
from triton_deploy.errors import Problem, UsageError, raise_problems
from triton_deploy.export.digits import digit_image, load_digits_data

FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "JPG": "JPEG", "BMP": "BMP", "WEBP": "WEBP"}


@dataclass(frozen=True)
class PoolOptions:
    """``image_dir`` wins when set; otherwise ``count`` digits are drawn, rendered at each of ``sizes`` and encoded
    in each of ``formats`` in turn (so ``sizes=(64, 224)`` and ``formats=("PNG", "JPEG")`` give a four-way mix)."""

    image_dir: Path | None = None
    count: int = 64
    sizes: tuple[int, ...] = (64,)
    formats: tuple[str, ...] = ("PNG",)
    seed: int = 0

    def digit_problems(self) -> list[Problem]:
        """What is wrong with the rendered digits' settings (count, sizes, formats)."""
        problems: list[Problem] = []
        unknown = [name for name in self.formats if name.strip().upper() not in FORMATS]
        if unknown:
            problems.append((f"unknown image format{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(sorted(set(FORMATS.values())))}", "check --image-formats"))
        if not self.sizes or any(s < 1 or s > 4096 for s in self.sizes):
            problems.append((f"image sizes {list(self.sizes)} must lie in 1..4096", "check --image-sizes"))
        if self.count < 1:
            problems.append((f"the pool needs at least one image, got {self.count}", "check --pool-size"))
        return problems

    def problems(self) -> list[Problem]:
        """The digits' settings matter only without ``image_dir`` (a folder's images are sent as they are)."""
        return self.digit_problems() if self.image_dir is None else []

    def check(self) -> None:
        raise_problems(self.problems())


class ImagePool:
    """Encoded images held in memory; ``batch(n)`` returns ``n`` of them chosen at random."""

    def __init__(self, images: Sequence[bytes], description: str, seed: int = 0) -> None:
        if not images:
            raise UsageError(f"the image pool is empty ({description})", hint="check --image-dir")
        self.images = list(images)
        self.description = description
        self._random = random.Random(seed)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def mean_bytes(self) -> float:
        return sum(len(i) for i in self.images) / len(self.images)

    def batch(self, size: int) -> list[bytes]:
        return [self._random.choice(self.images) for _ in range(size)]

    def tensor(self, size: int) -> np.ndarray:
        """A ``[size, 1]`` BYTES tensor, what the ensemble's IMAGE input takes."""
        array = np.empty((size, 1), dtype=np.object_)
        array[:, 0] = self.batch(size)
        return array


def load_pool(options: PoolOptions) -> ImagePool:
    if options.image_dir is not None:
        return pool_from_folder(Path(options.image_dir), options.seed)
    return pool_from_digits(options)


def pool_from_folder(folder: Path, seed: int = 0) -> ImagePool:
    if not folder.is_dir():
        raise UsageError(f"image folder {folder} does not exist", hint="check --image-dir")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                         hint="check --image-dir")
    return ImagePool([p.read_bytes() for p in files], f"{len(files)} files from {folder}", seed)


def pool_from_digits(options: PoolOptions) -> ImagePool:
    raise_problems(options.digit_problems())
    formats = [parse_format(f) for f in options.formats]
    images, _ = load_digits_data().split("heldout")
    rng = np.random.default_rng(options.seed)
    chosen = rng.choice(len(images), size=min(options.count, len(images)), replace=False)
    encoded = []
    for n, index in enumerate(chosen):
        size = options.sizes[n % len(options.sizes)]
        fmt = formats[(n // len(options.sizes)) % len(formats)]
        buffer = io.BytesIO()
        image = digit_image(images[index], size)
        image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        encoded.append(buffer.getvalue())
    mix = f"sizes {','.join(map(str, options.sizes))}, formats {','.join(formats)}"
    return ImagePool(encoded, f"{len(encoded)} digits ({mix})", options.seed)


def parse_format(name: str) -> str:
    try:
        return FORMATS[name.strip().upper()]
    except KeyError:
        raise UsageError(f"unknown image format {name!r}; choose from {', '.join(sorted(set(FORMATS.values())))}",
                         hint="check --image-formats") from None
