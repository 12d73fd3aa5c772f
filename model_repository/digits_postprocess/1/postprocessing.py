"""Classifier output -> top-k class ids, scores and labels, on whole batches.

Used by the Triton ``postprocess`` model (this file is copied beside its ``model.py``), the client's local mode and
the benchmark's in-process baseline. numpy only.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best class ids (int64) and their scores (float32), best first; ties keep the lower id."""
    k = min(k, scores.shape[-1])
    # A stable sort on the negated scores orders ties by class id, so results are deterministic.
    ids = np.argsort(-scores, axis=-1, kind="stable")[..., :k].astype(np.int64)
    return ids, np.take_along_axis(scores, ids, axis=-1).astype(np.float32)


def classify(outputs: np.ndarray, k: int, *, logits: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores from logits or probabilities, then top-k."""
    scores = softmax(outputs.astype(np.float32)) if logits else outputs.astype(np.float32)
    return top_k(scores, k)


def label_lookup(labels: list[str] | tuple[str, ...]) -> np.ndarray:
    """Labels as a numpy object array of bytes, so ``table[ids]`` gives a BYTES tensor for a whole batch."""
    return np.array([label.encode("utf-8") for label in labels], dtype=np.object_)
