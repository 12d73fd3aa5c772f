"""How well a classifier did on labelled images, from its answers: accuracy, per-class precision/recall/F1, the
confusion matrix, top-k accuracy, confidence of right and wrong answers, and an A/B comparison of two models on the
same images with McNemar's exact test. Plain numpy and the standard library; nothing here talks to a server."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Answers:
    """One model's answers on the images that decoded: ``ranked[i]`` are image i's class ids, best first, and
    ``confidence[i]`` the score of its top answer."""

    truth: np.ndarray  # (N,) int class ids
    ranked: np.ndarray  # (N, k) int class ids
    confidence: np.ndarray  # (N,) float

    @property
    def predicted(self) -> np.ndarray:
        return self.ranked[:, 0]

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.truth


@dataclass(frozen=True)
class ClassScore:
    """One class's scores; ``None`` is "not applicable": recall and F1 of a class with no image in the data, and
    precision of a class the model never answered (a 0.0 there would read as a measured failure)."""

    label: str
    precision: float | None
    recall: float | None
    f1: float | None
    support: int

    @property
    def present(self) -> bool:
        return self.support > 0


@dataclass(frozen=True)
class Macro:
    """Unweighted means over the classes that have images in the data: a folder covering 3 of 10 labels is scored
    on those 3, not dragged towards 0 by 7 classes nobody asked about."""

    precision: float
    recall: float
    f1: float
    classes: int  # classes averaged over (present in the data)
    of: int  # classes the model has

    @property
    def note(self) -> str:
        if self.classes == self.of:
            return f"macro averages over all {self.of} classes"
        return (f"macro averages over the {self.classes} of {self.of} classes that have images in DATA_DIR; the "
                f"other {self.of - self.classes} are n/a")


@dataclass(frozen=True)
class Scores:
    accuracy: float
    images: int
    top_k: dict[int, float]  # k -> accuracy of "the truth is among the first k answers"
    per_class: tuple[ClassScore, ...]
    confusion: np.ndarray  # (classes, classes): row = true class, column = predicted class
    confidence_right: dict[str, float]  # mean, median
    confidence_wrong: dict[str, float]

    @property
    def macro(self) -> Macro:
        present = [c for c in self.per_class if c.present]

        def mean(values: list[float | None]) -> float:
            # a present class the model never answered has precision n/a; it counts as 0 (sklearn's zero_division=0)
            return float(np.mean([v or 0.0 for v in values])) if values else float("nan")

        return Macro(mean([c.precision for c in present]), mean([c.recall for c in present]),
                     mean([c.f1 for c in present]), len(present), len(self.per_class))

    def to_dict(self) -> dict:
        macro = self.macro
        return {"accuracy": self.accuracy, "images": self.images,
                "top_k_accuracy": {str(k): v for k, v in self.top_k.items()},
                "per_class": [{**vars(c), "present": c.present} for c in self.per_class],
                "macro_f1": macro.f1 if macro.classes else None,
                "macro": {"precision": macro.precision, "recall": macro.recall, "f1": macro.f1,
                          "classes": macro.classes, "of": macro.of, "note": macro.note} if macro.classes else None,
                "confusion": self.confusion.tolist(),
                "confidence": {"right": self.confidence_right, "wrong": self.confidence_wrong}}


def score(answers: Answers, labels: tuple[str, ...]) -> Scores:
    classes = len(labels)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (answers.truth, answers.predicted), 1)
    per_class = []
    for c, label in enumerate(labels):
        true_positive = int(confusion[c, c])
        predicted, actual = int(confusion[:, c].sum()), int(confusion[c, :].sum())
        precision = true_positive / predicted if predicted else None
        recall = true_positive / actual if actual else None
        f1 = None
        if recall is not None:
            p = precision or 0.0
            f1 = 2 * p * recall / (p + recall) if p + recall else 0.0
        per_class.append(ClassScore(label, precision, recall, f1, actual))
    hits = answers.ranked == answers.truth[:, None]
    top_k = {k: float(np.mean(hits[:, :k].any(axis=1))) if len(hits) else 0.0
             for k in range(1, answers.ranked.shape[1] + 1)}
    correct = answers.correct
    return Scores(
        accuracy=float(np.mean(correct)) if len(correct) else 0.0, images=len(correct), top_k=top_k,
        per_class=tuple(per_class), confusion=confusion,
        confidence_right=_summary(answers.confidence[correct]), confidence_wrong=_summary(answers.confidence[~correct]))


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"images": 0, "mean": float("nan"), "median": float("nan")}
    return {"images": int(len(values)), "mean": float(np.mean(values)), "median": float(np.median(values))}


@dataclass(frozen=True)
class Comparison:
    """Two models on the same images (those both could classify)."""

    images: int
    accuracy_a: float
    accuracy_b: float
    agreement: float  # same top-1 answer
    only_a_right: int  # McNemar's b
    only_b_right: int  # McNemar's c
    p_value: float  # McNemar's exact test, two-sided: are the two error rates different?
    disagreements: tuple[int, ...]  # indices into the compared images

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05

    def verdict(self, name_a: str, name_b: str) -> str:
        if self.accuracy_a == self.accuracy_b or not self.significant:
            return (f"no significant difference (McNemar p = {self.p_value:.3g}; {self.only_a_right} images only "
                    f"{name_a} got right, {self.only_b_right} only {name_b})")
        better = name_a if self.accuracy_a > self.accuracy_b else name_b
        return (f"{better} is more accurate (McNemar p = {self.p_value:.3g}; {self.only_a_right} images only "
                f"{name_a} got right, {self.only_b_right} only {name_b})")

    def to_dict(self) -> dict:
        return {"images": self.images, "accuracy_a": self.accuracy_a, "accuracy_b": self.accuracy_b,
                "agreement": self.agreement, "only_a_right": self.only_a_right, "only_b_right": self.only_b_right,
                "mcnemar_p_value": self.p_value, "significant_at_0.05": self.significant}


def compare(a: Answers, b: Answers) -> Comparison:
    if not np.array_equal(a.truth, b.truth):
        raise ValueError("the two models must be compared on the same images")
    right_a, right_b = a.correct, b.correct
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    same = a.predicted == b.predicted
    return Comparison(
        images=len(a.truth), accuracy_a=float(np.mean(right_a)) if len(right_a) else 0.0,
        accuracy_b=float(np.mean(right_b)) if len(right_b) else 0.0,
        agreement=float(np.mean(same)) if len(same) else 0.0, only_a_right=only_a, only_b_right=only_b,
        p_value=mcnemar_exact(only_a, only_b), disagreements=tuple(int(i) for i in np.flatnonzero(~same)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test: under "both models are equally accurate" each of the b + c images that only one
    model got right is equally likely to favour either, so min(b, c) follows Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def percentile_ms(latencies_s: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies_s) * 1000.0, q)) if latencies_s else float("nan")
