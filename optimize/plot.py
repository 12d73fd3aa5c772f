"""``report.png``: every variant's accuracy against its throughput and against its size, the Pareto front and the
gate, readable when variants sit close together.

A variant is on the front when no other variant is at least as accurate *and* at least as fast (or as small) and
strictly better in one of the two. To choose: start from the front, drop what is below the gate line, then take the
fastest (for a server) or the smallest (for an edge device) of what remains.

Variants often coincide (a pruned network and its INT8 versions; ``fp32``, ``fp32_slim`` and ``tflite_fp32`` have the
same accuracy and nearly the same size), so labels are placed one by one where they overlap no other label, marker or
the axes' edge, with a leader line to their point when they had to move away from it. Tick labels are plain numbers
on 1-2-5 steps (a log axis's default minor labels run into each other), and the legend sits below the panels, where
it cannot hide a point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import BASELINE

if TYPE_CHECKING:  # types only: report imports this module to draw its picture
    from .report import OptimizeReport


@dataclass(frozen=True)
class ParetoPoint:
    name: str
    accuracy: float  # held-out accuracy, or top-1 agreement with FP32 without labels
    throughput: float  # images/s at the report's first batch size
    size_bytes: int
    passed: bool  # passed the gate (the FP32 baseline counts as passed)
    runtime: str = "onnxruntime"
    failed: bool = False  # failed its own validation (measured all the same)


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
                        v.size_bytes, v.passed, v.runtime, v.failed)
            for v in report.variants if v.throughput.get(batch)]


def _points_word(value: float) -> str:
    return f"{value:g} point" + ("" if value == 1 else "s")


def plot_report(report: OptimizeReport, path: Path) -> Path:
    """Two panels, accuracy vs throughput at the first batch size and accuracy vs size."""
    import matplotlib  # late: plotting libraries load only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen
    from matplotlib.lines import Line2D

    points = pareto_points(report)
    batch = report.machine["batch_sizes"][0]
    labelled = report.variants[0].accuracy is not None
    drop = report.gate["max_accuracy_drop_points"]
    base = report.variants[0]
    gate = (base.accuracy - drop / 100.0) if labelled and base.accuracy is not None else 1.0 - drop / 100.0
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.2))
    panels = ((axes[0], "throughput", f"images/s at batch {batch}, log scale (more is better)"),
              (axes[1], "size", "size on disk, MB, log scale (less is better)"))
    ys = [p.accuracy for p in points] + [gate]
    span = (max(ys) - min(ys)) or 0.01
    for ax, cost, xlabel in panels:
        front = set(pareto_front([p for p in points if p.passed], cost))
        x_of = (lambda p: p.throughput) if cost == "throughput" else (lambda p: p.size_bytes / 1e6)
        line = sorted((p for p in points if p.name in front), key=x_of)
        ax.plot([x_of(p) for p in line], [p.accuracy for p in line], color="tab:green", alpha=0.5, zorder=2)
        for p in points:
            marker, color, size = _style(p, front)
            ax.scatter(x_of(p), p.accuracy, marker=marker, s=size, color=color, zorder=3, linewidths=1.5)
        ax.axhline(gate, color="tab:red", linestyle="--", linewidth=1)
        xs = [x_of(p) for p in points]
        _log_axis(ax, min(xs), max(xs))
        ax.set_ylim(min(ys) - 0.12 * span, max(ys) + 0.12 * span)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy" if labelled else "top-1 agreement with FP32 (no labels)")
        ax.grid(alpha=0.3, which="major")
    axes[0].set_title("Accuracy vs throughput")
    axes[1].set_title("Accuracy vs size")
    gate_text = (f"gate: accuracy at most {_points_word(drop)} below FP32" if labelled else
                 f"gate: disagreement with FP32 at most {_points_word(drop)}")
    if "min_agreement" in report.gate:
        gate_text += f" (and top-1 agreement with FP32 at least {report.gate['min_agreement']:g}, not drawn)"
    handles = [Line2D([], [], marker="*", color="0.35", linestyle="", markersize=12,
                      label="FP32, the export (coloured like the others)"),
               Line2D([], [], marker="o", color="tab:green", linestyle="-", alpha=0.7, label="Pareto front (passed)"),
               Line2D([], [], marker="o", color="tab:blue", linestyle="", label="passed, not on the front"),
               Line2D([], [], marker="s", color="tab:blue", linestyle="", label="LiteRT file (edge)"),
               Line2D([], [], marker="x", color="tab:gray", linestyle="", markeredgewidth=2,
                      label="refused by the gate"),
               Line2D([], [], marker="x", color="tab:red", linestyle="", markeredgewidth=2,
                      label="failed its own validation"),
               Line2D([], [], color="tab:red", linestyle="--", label=gate_text)]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{report.model}: {len(points)} models measured on a shared {report.machine['cpu_count']}-core "
                 "machine (compare ratios, not absolutes)", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.9, bottom=0.2, wspace=0.18)
    fig.canvas.draw()  # positions are final: labels are placed in pixels from here on
    for ax, cost, _ in panels:
        x_of = (lambda p: p.throughput) if cost == "throughput" else (lambda p: p.size_bytes / 1e6)
        _place_labels(ax, [(p.name, x_of(p), p.accuracy) for p in points])
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _style(point: ParetoPoint, front: set[str]) -> tuple[str, str, int]:
    """Marker, colour and size of one point (see the legend)."""
    if point.failed:
        return "x", "tab:red", 60
    if not point.passed:
        return "x", "tab:gray", 60
    colour = "tab:green" if point.name in front else "tab:blue"
    if point.name == BASELINE:
        return "*", colour, 160
    return ("s" if point.runtime == "litert" else "o"), colour, 45


def _log_axis(ax: Any, low: float, high: float) -> None:
    """A log x axis a little wider than the data, with 3 to 8 ticks labelled as plain numbers, no minor labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # late: as in plot_report

    pad = 1.35 if high / low < 30 else 1.6
    left, right = low / pad, high * pad
    ax.set_xscale("log")
    ax.set_xlim(left, right)
    ticks = _ticks(left, right)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: _plain(value)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _ticks(left: float, right: float) -> list[float]:
    """Round numbers between ``left`` and ``right``: the coarsest of 1-10-100, 1-2-5, 1-1.5-2-3-5-7 and every
    integer multiple that gives at least three ticks, thinned to at most eight."""
    decades = range(math.floor(math.log10(left)) - 1, math.ceil(math.log10(right)) + 1)
    ticks: list[float] = []
    for steps in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [float(f"{m * 10 ** k:.6g}") for k in decades for m in steps if left <= m * 10 ** k <= right]
        if len(ticks) >= 3:
            break
    while len(ticks) > 8:
        ticks = ticks[::2]
    return ticks


def _plain(value: float) -> str:
    """500, 2k, 10k, 0.2, 0.05: a tick label a person reads at a glance."""
    if value >= 1000:
        thousands = value / 1000
        return f"{thousands:g}k"
    return f"{value:g}"


# Where a label may go, in pixels from its point: right, left, above, below, then the diagonals, further out each ring.
_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0.5), (-1, 0.5),
               (1, -0.5), (-1, -0.5))
_RINGS = (7, 16, 28, 42, 58, 76, 96)


def _place_labels(ax: Any, items: list[tuple[str, float, float]]) -> None:
    """Label each point where the text overlaps no placed label, no marker and stays inside the axes; points that
    share a spot are labelled in turn around it, joined to it by a thin line."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    centres = [tuple(ax.transData.transform((x, y))) for _, x, y in items]
    markers = [(cx - 6, cy - 6, cx + 6, cy + 6) for cx, cy in centres]
    placed: list[tuple[float, float, float, float]] = []
    # Crowded points first: they have the fewest free spots.
    order = sorted(range(len(items)), key=lambda i: -sum(math.dist(centres[i], c) < 40 for c in centres))
    for i in order:
        name, x, y = items[i]
        best: tuple[float, Any, int] | None = None
        for radius in _RINGS:
            for dx, dy in _DIRECTIONS:
                norm = math.hypot(dx, dy)
                offset = (radius * dx / norm, radius * dy / norm)
                text = ax.annotate(name, (x, y), xytext=offset, textcoords="offset pixels", fontsize=8,
                                   ha="left" if dx > 0 else "right" if dx < 0 else "center",
                                   va="bottom" if dy > 0 else "top" if dy < 0 else "center", zorder=4,
                                   bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none",
                                         "alpha": 0.8})  # grid and gate lines pass behind the text
                box = text.get_window_extent(renderer)
                rect = (box.x0 - 4, box.y0 - 2, box.x1 + 4, box.y1 + 2)  # a gap, so two labels never read as one
                cost = sum(_overlap(rect, other) for other in (*placed, *markers))
                cost += _outside(rect, (frame.x0, frame.y0, frame.x1, frame.y1)) * 10
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, text, radius)
                else:
                    text.remove()
                if best[0] == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        _, text, radius = best
        if radius > _RINGS[0]:  # moved away from its point: show which point it names
            ax.annotate("", (x, y), xytext=_anchor(text, renderer, ax), textcoords="data",
                        arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 0,
                                    "shrinkB": 3}, zorder=1)
        box = text.get_window_extent(renderer)
        placed.append((box.x0, box.y0, box.x1, box.y1))


def _anchor(text: Any, renderer: Any, ax: Any) -> tuple[float, float]:
    """The point of a label's box nearest its marker, in data coordinates (where its leader line starts)."""
    box = text.get_window_extent(renderer)
    px, py = ax.transData.transform(text.xy)
    ax_x = min(max(px, box.x0), box.x1)
    ax_y = min(max(py, box.y0), box.y1)
    return tuple(ax.transData.inverted().transform((ax_x, ax_y)))


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def _outside(rect: tuple[float, float, float, float], frame: tuple[float, float, float, float]) -> float:
    """Area of ``rect`` outside ``frame``."""
    area = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return area - _overlap(rect, frame)
