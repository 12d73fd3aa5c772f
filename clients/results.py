"""What a classification returns: a ``Prediction`` per image (ranked labels, class ids and scores) and an
``Outcome`` that holds either the prediction or that image's error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ImageError


@dataclass(frozen=True)
class Rank:
    """One of the top-k answers for an image."""

    label: str
    class_id: int
    score: float


@dataclass(frozen=True)
class Prediction:
    """The top-k answers for one image, best first. ``label``/``class_id``/``score`` are those of rank 1."""

    source: str
    ranks: tuple[Rank, ...]

    @property
    def label(self) -> str:
        return self.ranks[0].label

    @property
    def class_id(self) -> int:
        return self.ranks[0].class_id

    @property
    def score(self) -> float:
        return self.ranks[0].score

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source,
                "predictions": [{"rank": n, "label": r.label, "class_id": r.class_id, "score": r.score}
                                for n, r in enumerate(self.ranks, start=1)]}


@dataclass(frozen=True)
class Outcome:
    """One input's result: exactly one of ``prediction`` and ``error`` is set."""

    index: int
    source: str
    prediction: Prediction | None = None
    error: ImageError | None = None
    request_s: float | None = None  # how long the request that carried this image took (retries included)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.prediction is not None:
            return self.prediction.to_dict()
        return {"source": self.source, "error": self.error.reason if self.error else "unknown"}


def predictions(sources: list[str], ids: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                k: int) -> list[Prediction]:
    """Rows of (class ids, scores, labels) tensors -> one ``Prediction`` per source, cut to ``k`` ranks."""
    result = []
    for row, source in enumerate(sources):
        ranks = tuple(Rank(label=_text(labels[row][j]), class_id=int(ids[row][j]), score=float(scores[row][j]))
                      for j in range(min(k, ids.shape[1])))
        result.append(Prediction(source=source, ranks=ranks))
    return result


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)
