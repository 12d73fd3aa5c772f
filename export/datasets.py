"""Where an export's images come from, behind one interface: held-out images to score on, calibration images, and
labelled training images, each as model inputs through a given ``ImageTransform``.

``open_dataset(manifest)`` turns the manifest's ``DatasetRecord`` into a ``Dataset``: the built-in model's seeded
digits split (``DigitsSplit``), a user's ``--samples`` folder (``SampleFolder``), or, for an export that recorded no
images, ``NoImages`` (digits drawn at the model's size: enough to compare a variant's answers with FP32's, nothing
else). What is special about a source lives in its class, so the optimiser (``optimize/``) asks a ``Dataset`` for
images and never tests which dataset it has. A new source is one class and one entry in ``SOURCES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from triton_deploy.contract import IMAGE_SUFFIXES
from triton_deploy.errors import UsageError
from triton_deploy.preprocessing import ImageDecodeError, ImageTransform
from triton_deploy.spec import DatasetRecord, Manifest

from . import digits, robustness
from .pipeline import load_sample_folder

Labelled = tuple[np.ndarray, np.ndarray]  # model inputs, class indices
Suite = tuple[dict[str, np.ndarray], np.ndarray]  # condition name -> model inputs, and their labels


class Dataset(Protocol):
    """Images for one export. Every array is model input: the source's pixels through ``transform``."""

    @property
    def description(self) -> str:
        """What the held-out images are, for reports ("held-out digits", "images from DIR", ...)."""
        ...

    def heldout(self, transform: ImageTransform) -> tuple[np.ndarray, np.ndarray | None]:
        """Images the model was not trained on, and their class indices when the source knows them."""
        ...

    def calibration(self, transform: ImageTransform, count: int, seed: int) -> np.ndarray | None:
        """Up to ``count`` images like the model's inputs, to calibrate INT8 ranges on; None when there are none."""
        ...

    def training(self, transform: ImageTransform, renderings: int = 0,
                 progress: Callable[[int], None] | None = None) -> Labelled | None:
        """Labelled training images (``renderings`` > 0: each drawn that many random ways, where the source can
        draw; ``progress(n)`` as images are drawn); None when the source has no training data."""
        ...

    def robustness(self, transform: ImageTransform, limit: int | None) -> Suite | None:
        """The export's robustness suite redrawn as model inputs, when the source can redraw it."""
        ...

    @property
    def calibration_source(self) -> str:
        """Where calibration images come from, for the report."""
        ...

    @property
    def calibrates(self) -> bool:
        """Whether ``calibration`` has images (checked before a run starts)."""
        ...

    @property
    def trains(self) -> bool:
        """Whether ``training`` has labelled images (checked before a run starts)."""
        ...


@dataclass(frozen=True)
class DigitsSplit:
    """The built-in model's data: scikit-learn's digits, split as the export recorded (seed, test fraction)."""

    record: DatasetRecord
    labelled: bool = True  # False when the export does not answer with the ten digits

    @classmethod
    def from_record(cls, record: DatasetRecord, manifest: Manifest) -> DigitsSplit:
        return cls(record, labelled=manifest.num_classes == len(digits.LABELS))

    @property
    def data(self) -> digits.DigitsData:
        return digits.load_digits_data(seed=self.record.seed or 0, test_fraction=self.record.test_fraction or 0.25)

    @property
    def description(self) -> str:
        return "held-out digits" if self.labelled else "digit images"

    @property
    def calibration_source(self) -> str:
        return "digits train split"

    calibrates = True

    @property
    def trains(self) -> bool:
        return self.labelled

    def heldout(self, transform: ImageTransform) -> tuple[np.ndarray, np.ndarray | None]:
        images, labels = self.data.split("heldout")
        return digits.to_model_input(images, transform), (labels if self.labelled else None)

    def calibration(self, transform: ImageTransform, count: int, seed: int) -> np.ndarray:
        images, _ = digits.load_digits_data(seed=seed).split("train")
        chosen = np.random.default_rng(seed).permutation(len(images))[:count]
        return digits.to_model_input(images[np.sort(chosen)], transform)

    def training(self, transform: ImageTransform, renderings: int = 0,
                 progress: Callable[[int], None] | None = None) -> Labelled | None:
        if not self.labelled:
            return None
        data = self.data
        if renderings:  # the model's own augmented renderings (every filter, size, polarity, colour it learnt)
            pixels, labels = digits.augmented_training_set(data, per_image=renderings, transform=transform,
                                                           progress=progress)
            return transform.normalise(pixels), labels
        images, labels = data.split("train")
        return digits.to_model_input(images, transform), labels

    def robustness(self, transform: ImageTransform, limit: int | None) -> Suite | None:
        if not self.labelled:
            return None
        seed = self.record.seed or 0
        images, labels = self.data.split("heldout")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        inputs = {condition.name: transform.normalise(robustness.digit_condition_pixels(condition, images, transform,
                                                                                        seed))
                  for condition in robustness.DIGIT_CONDITIONS}
        return inputs, labels


@dataclass(frozen=True)
class SampleFolder:
    """A folder of images (one sub-folder per label for accuracy): the export's ``--samples`` or a flag's folder.

    Held-out and calibration images both come from it; it has no training images (training on the images accuracy
    is measured on would flatter the result), and its robustness suite is the export's own, already covered by
    scoring these images."""

    path: Path
    labels: tuple[str, ...]
    flag: str = "--samples"  # the flag that named the folder, for messages

    @property
    def description(self) -> str:
        return f"images from {self.path}"

    @property
    def calibration_source(self) -> str:
        return str(self.path)

    calibrates, trains = True, False

    def heldout(self, transform: ImageTransform) -> tuple[np.ndarray, np.ndarray | None]:
        self._check()
        inputs, labels, _png, _note = load_sample_folder(self.path, transform, self.labels)
        return inputs, labels

    def calibration(self, transform: ImageTransform, count: int, seed: int) -> np.ndarray:
        self._check()
        files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if not files:
            raise UsageError(f"no images in {self.path}", hint=f"{self.flag} needs .png/.jpg/... files")
        arrays = []
        for path in files:
            try:
                arrays.append(transform.decode(path.read_bytes()))
            except ImageDecodeError as exc:
                raise UsageError(f"calibration image {path}: {exc}", hint=f"check {self.flag}") from None
        return transform.normalise(np.stack(arrays))

    def training(self, transform: ImageTransform, renderings: int = 0,
                 progress: Callable[[int], None] | None = None) -> Labelled | None:
        return None

    def robustness(self, transform: ImageTransform, limit: int | None) -> Suite | None:
        return None

    def _check(self) -> None:
        if not self.path.is_dir():
            recorded = " (recorded in the export's manifest)" if self.flag == "--samples" else ""
            raise UsageError(f"image folder {self.path}{recorded} not found",
                             hint="pass --eval-samples DIR" if self.flag == "--samples" else f"check {self.flag}")


@dataclass(frozen=True)
class NoImages:
    """An export that recorded no images (``--arch`` or a user model without ``--samples``): digits drawn at the
    model's size stand in for held-out images, to compare a variant's answers with FP32's; there is nothing to
    calibrate or train on."""

    @property
    def description(self) -> str:
        return "digit images drawn at the model's size"

    @property
    def calibration_source(self) -> str:
        return "none"

    calibrates, trains = False, False

    def heldout(self, transform: ImageTransform) -> tuple[np.ndarray, np.ndarray | None]:
        images, _ = digits.load_digits_data().split("heldout")
        return digits.to_model_input(images, transform), None

    def calibration(self, transform: ImageTransform, count: int, seed: int) -> np.ndarray | None:
        return None

    def training(self, transform: ImageTransform, renderings: int = 0,
                 progress: Callable[[int], None] | None = None) -> Labelled | None:
        return None

    def robustness(self, transform: ImageTransform, limit: int | None) -> Suite | None:
        return None


def _samples(record: DatasetRecord, manifest: Manifest) -> Dataset:
    return SampleFolder(Path(record.path or ""), manifest.labels)


SOURCES: dict[str, Callable[[DatasetRecord, Manifest], Dataset]] = {
    "sklearn-digits": DigitsSplit.from_record,
    "samples": _samples,
}


def open_dataset(manifest: Manifest) -> Dataset:
    """The export's own images, as its manifest records them."""
    record = manifest.dataset
    if record is None:
        return NoImages()
    if record.source not in SOURCES:
        raise UsageError(f"the export's dataset {record.source!r} is not one this version can redraw "
                         f"({', '.join(SOURCES)})", hint="pass --eval-samples DIR and --calibration DIR")
    return SOURCES[record.source](record, manifest)


def folder(path: Path, manifest: Manifest, flag: str) -> SampleFolder:
    """A folder named by a flag (``--eval-samples``, ``--calibration``), read with the export's labels."""
    return SampleFolder(Path(path), manifest.labels, flag)
