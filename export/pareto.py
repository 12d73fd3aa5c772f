"""``report.png``: every variant's accuracy against its throughput and its size, the Pareto front marked and the
accuracy gate drawn, so the trade-off can be read at a glance.

A variant is on the front when no other variant is at least as accurate *and* at least as fast (or as small), and
strictly better in one of the two. Choosing: start from the front, drop what is below the gate line, then pick the
fastest (or the smallest, for edge devices) of what remains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

REPORT_PNG = "report.png"


@dataclass(frozen=True)
class ParetoPoint:
    name: str
    accuracy: float  # held-out accuracy, or top-1 agreement with FP32 without labels
    throughput: float  # images/s at the report's first batch size
    size_bytes: int
    passed: bool  # passed the accuracy gate (the FP32 baseline counts as passed)
    runtime: str = "onnxruntime"


def pareto_front(points: Sequence[ParetoPoint], cost: str = "throughput") -> list[str]:
    """Names of the points no other point dominates: accuracy higher is better and, for ``cost`` = "throughput",
    more is better; for "size", less is better."""
    def better_or_equal(a: ParetoPoint, b: ParetoPoint) -> bool:
        speed = a.throughput >= b.throughput if cost == "throughput" else a.size_bytes <= b.size_bytes
        return a.accuracy >= b.accuracy and speed

    def strictly_better(a: ParetoPoint, b: ParetoPoint) -> bool:
        speed = a.throughput > b.throughput if cost == "throughput" else a.size_bytes < b.size_bytes
        return a.accuracy > b.accuracy or speed

    return [p.name for p in points
            if not any(better_or_equal(q, p) and strictly_better(q, p) for q in points if q is not p)]


def plot_pareto(points: Sequence[ParetoPoint], path: Path, *, title: str, gate_accuracy: float | None,
                accuracy_label: str, batch: int) -> Path:
    """Two panels: accuracy vs throughput at ``batch`` and accuracy vs size, each with its front and the gate."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    panels = ((axes[0], "throughput", f"images/s at batch {batch} (more is better)"),
              (axes[1], "size", "size on disk, MB (less is better)"))
    for ax, cost, xlabel in panels:
        front = set(pareto_front(points, cost))
        x_of = (lambda p: p.throughput) if cost == "throughput" else (lambda p: p.size_bytes / 1e6)
        ordered = sorted((p for p in points if p.name in front), key=x_of)
        ax.step([x_of(p) for p in ordered], [p.accuracy for p in ordered],
                where="post" if cost == "size" else "pre", color="tab:green", alpha=0.5, label="Pareto front")
        for p in points:
            marker = "*" if p.name == "fp32" else ("o" if p.runtime == "onnxruntime" else "s")
            color = "tab:gray" if not p.passed else ("tab:green" if p.name in front else "tab:blue")
            ax.scatter(x_of(p), p.accuracy, marker="x" if not p.passed else marker, s=90 if marker == "*" else 45,
                       color=color, zorder=3)
            ax.annotate(p.name, (x_of(p), p.accuracy), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if gate_accuracy is not None:
            ax.axhline(gate_accuracy, color="tab:red", linestyle="--", linewidth=1, label="accuracy gate")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(accuracy_label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_title("Accuracy vs throughput")
    axes[1].set_title("Accuracy vs size")
    fig.suptitle(f"{title}  (x: refused by the gate; squares: LiteRT; star: FP32)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
