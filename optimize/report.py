"""What ``optimize`` measured: one ``VariantResult`` per model, the ``OptimizeReport``, and its report.md/json and
report.png.

``report.png`` plots every variant's accuracy against its throughput and against its size, marks the Pareto front
and draws the accuracy gate. A variant is on the front when no other variant is at least as accurate *and* at least
as fast (or as small) and strictly better in one of the two. To choose: start from the front, drop what is below the
gate line, then take the fastest (for a server) or the smallest (for an edge device) of what remains.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .variants import BASELINE

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"


@dataclass
class VariantResult:
    name: str
    path: Path
    accuracy: float | None
    agreement: float
    max_abs_diff: float
    size_bytes: int
    accuracy_drop: float | None = None  # percentage points vs FP32 (or disagreement points without labels)
    passed: bool = True
    reason: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95 at batch 1
    throughput: dict[int, float] = field(default_factory=dict)  # batch size -> images/s
    speedup: float | None = None  # throughput vs FP32 at the first batch size
    tensorrt: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    runtime: str = "onnxruntime"  # or "litert" for the .tflite edge variants

    def to_dict(self) -> dict:
        return {"name": self.name, "runtime": self.runtime, "accuracy": self.accuracy, "accuracy_drop_points": self.accuracy_drop,
                "agreement": self.agreement, "max_abs_diff": self.max_abs_diff, "size_bytes": self.size_bytes,
                "latency_ms": self.latency_ms, "throughput": {str(b): v for b, v in self.throughput.items()},
                "speedup": self.speedup, "passed": self.passed, "reason": self.reason,
                "tensorrt": self.tensorrt, "details": self.details}


@dataclass
class OptimizeReport:
    source: Path
    output: Path
    model: str
    gate: dict
    variants: list[VariantResult]
    recommendation: dict  # for ONNX Runtime on CPU
    machine: dict
    published: dict | None = None
    recommendations: dict = field(default_factory=dict)  # target ("tensorrt", "edge") -> {variant, reason}

    def variant(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)

    def to_dict(self) -> dict:
        return {"source": str(self.source), "output": str(self.output), "model": self.model, "gate": self.gate,
                "variants": [v.to_dict() for v in self.variants], "recommendation": self.recommendation,
                "recommendations": self.recommendations, "machine": self.machine, "published": self.published}

    def markdown(self) -> str:
        batches = sorted({b for v in self.variants for b in v.throughput})
        labelled = any(v.accuracy is not None for v in self.variants)
        robust = any("robustness" in v.details for v in self.variants)
        head = ["variant", "runtime", "accuracy" if labelled else "accuracy (n/a)", "drop (pts)",
                *(["worst condition", "worst drop (pts)"] if robust else []), "agreement", r"max \|diff\|",
                "size (MB)", "p50 ms b1", "p95 ms b1", *[f"img/s b{b}" for b in batches],
                f"speed-up b{batches[0]}" if batches else "speed-up", "TensorRT", "status"]
        rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for v in self.variants:
            trt = "n/a" if not v.tensorrt else "ok" if v.tensorrt.get("compatible") else (
                "no: " + ", ".join(v.tensorrt.get("unsupported_operators", {})) if v.tensorrt.get(
                    "unsupported_operators") else "no: " + (v.tensorrt.get("problems") or ["?"])[0])  # whole: it names the fix
            cells = [v.name, v.runtime, _fmt(v.accuracy, ".4f"), _drop(v.accuracy_drop),
                     *(_worst_condition(v.details.get("robustness")) if robust else []), f"{v.agreement:.4f}",
                     f"{v.max_abs_diff:.3g}", f"{v.size_bytes / 1e6:.2f}", _fmt(v.latency_ms.get("p50"), ".2f"),
                     _fmt(v.latency_ms.get("p95"), ".2f"), *[_fmt(v.throughput.get(b), ".0f") for b in batches],
                     _fmt(v.speedup, ".2f") + ("x" if v.speedup is not None else ""), trt,
                     "baseline" if v.name == BASELINE else ("passed" if v.passed else f"refused: {v.reason}")]
            rows.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")
        rec = self.recommendation
        others = "".join(f"Recommendation for {target}: **{r['variant']}** ({r['reason']}).\n\n"
                         for target, r in self.recommendations.items())
        notes = "".join(f"- {v.name}: {v.details['note']}\n" for v in self.variants if v.details.get("note"))
        return (f"# Optimisation of {self.model}\n\n" + "\n".join(rows) + "\n\n"
                f"Gate: {self.gate['rule']}.\n\nRecommendation: **{rec['variant']}** ({rec['reason']}).\n\n"
                + others + (f"Notes:\n{notes}\n" if notes else "") +
                f"![accuracy against throughput and size]({REPORT_PNG})\n\n"
                f"Measured on {self.machine['cpu_count']} cores with ONNX Runtime {self.machine['onnxruntime']} "
                f"({self.machine['threads']} intra-op threads), best of {self.machine['rounds']} interleaved rounds "
                f"of {self.machine['seconds']} s each; a shared machine: compare ratios, not absolutes.\n")


def _worst_condition(record: dict | None) -> list[str]:
    """The robustness suite's worst condition for a variant, and how far it fell below FP32's worst."""
    if record is None:
        return ["", ""]
    worst = record["worst"]
    drop = _drop(record["worst_drop_points"]) if "worst_drop_points" in record else ""  # FP32 is the reference
    return [f"{worst['condition']} {worst['accuracy']:.3f}", drop]


def _drop(points: float | None) -> str:
    """A loss as a positive number of points; a gain says so instead of showing as a negative drop."""
    if points is None:
        return "n/a"
    return f"gain {-points:.2f}" if points <= -0.005 else f"{max(points, 0.0):.2f}"


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_reports(directory: Path, report: OptimizeReport) -> None:
    (directory / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    (directory / REPORT_MD).write_text(report.markdown(), encoding="utf-8")
    plot_report(report, directory / REPORT_PNG)


# ---- report.png: accuracy against throughput and size ------------------------------------------------------------


@dataclass(frozen=True)
class ParetoPoint:
    name: str
    accuracy: float  # held-out accuracy, or top-1 agreement with FP32 without labels
    throughput: float  # images/s at the report's first batch size
    size_bytes: int
    passed: bool  # passed the accuracy gate (the FP32 baseline counts as passed)
    runtime: str = "onnxruntime"


def pareto_front(points: Sequence[ParetoPoint], cost: str = "throughput") -> list[str]:
    """Names of the points no other point dominates: higher accuracy is better and, for ``cost`` "throughput",
    more images/s; for "size", fewer bytes."""
    def at_least(a: ParetoPoint, b: ParetoPoint) -> bool:
        cheaper = a.throughput >= b.throughput if cost == "throughput" else a.size_bytes <= b.size_bytes
        return a.accuracy >= b.accuracy and cheaper

    def strictly(a: ParetoPoint, b: ParetoPoint) -> bool:
        cheaper = a.throughput > b.throughput if cost == "throughput" else a.size_bytes < b.size_bytes
        return a.accuracy > b.accuracy or cheaper

    return [p.name for p in points if not any(at_least(q, p) and strictly(q, p) for q in points if q is not p)]


def pareto_points(report: OptimizeReport) -> list[ParetoPoint]:
    batch = report.machine["batch_sizes"][0]
    return [ParetoPoint(v.name, v.agreement if v.accuracy is None else v.accuracy, v.throughput.get(batch, 0.0),
                        v.size_bytes, v.passed, v.runtime) for v in report.variants if v.throughput.get(batch)]


def plot_report(report: OptimizeReport, path: Path) -> Path:
    """Two panels, accuracy vs throughput at the first batch size and accuracy vs size, each with the Pareto front
    of the variants that passed the gate (green) and the gate (red dashed line); refused variants are grey crosses,
    LiteRT files squares, FP32 a star."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pareto_points(report)
    batch = report.machine["batch_sizes"][0]
    base = report.variants[0]
    labelled = base.accuracy is not None
    drop = report.gate["max_accuracy_drop_points"] / 100.0
    gate = (base.accuracy - drop) if labelled else 1.0 - drop
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    panels = ((axes[0], "throughput", f"images/s at batch {batch}, log scale (more is better)"),
              (axes[1], "size", "size on disk, MB, log scale (less is better)"))
    for ax, cost, xlabel in panels:
        front = set(pareto_front([p for p in points if p.passed], cost))  # what the gate lets through
        x_of = (lambda p: p.throughput) if cost == "throughput" else (lambda p: p.size_bytes / 1e6)
        line = sorted((p for p in points if p.name in front), key=x_of)
        ax.plot([x_of(p) for p in line], [p.accuracy for p in line], color="tab:green", alpha=0.5,
                label="Pareto front")
        span = (max(p.accuracy for p in points) - min(p.accuracy for p in points)) or 1.0
        placed: list[tuple[float, float]] = []
        for p in points:
            marker = "x" if not p.passed else ("*" if p.name == BASELINE else ("s" if p.runtime == "litert" else "o"))
            color = "tab:gray" if not p.passed else ("tab:green" if p.name in front else "tab:blue")
            ax.scatter(x_of(p), p.accuracy, marker=marker, s=120 if marker == "*" else 45, color=color, zorder=3)
            # Variants often coincide (same accuracy, similar speed): stack their labels instead of overprinting.
            near = sum(1 for x, y in placed if abs(np.log(x_of(p) / x)) < 0.25 and abs(p.accuracy - y) < 0.03 * span)
            placed.append((x_of(p), p.accuracy))
            ax.annotate(p.name, (x_of(p), p.accuracy), textcoords="offset points", xytext=(5, 4 - 9 * near),
                        fontsize=7)
        ax.axhline(gate, color="tab:red", linestyle="--", linewidth=1,
                   label=f"gate: {report.gate['max_accuracy_drop_points']:g} pts below FP32")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy" if labelled else "top-1 agreement with FP32 (no labels)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_title("Accuracy vs throughput")
    axes[1].set_title("Accuracy vs size")
    fig.suptitle(f"{report.model}: green = Pareto front, grey x = refused by the gate, squares = LiteRT, "
                 f"star = FP32 (shared {report.machine['cpu_count']}-core machine)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
