"""What ``optimize`` measured: the ``OptimizeReport`` (one ``VariantResult`` per model) and its report.md/json;
report.png is drawn by ``plot``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .base import VariantResult
from .plot import ParetoPoint, pareto_front, plot_report

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"

__all__ = ["REPORT_JSON", "REPORT_MD", "REPORT_PNG", "OptimizeReport", "ParetoPoint", "VariantResult",
           "pareto_front", "plot_report", "write_reports"]


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

    @property
    def failed(self) -> list[VariantResult]:
        """Variants that could not be built or failed their own validation (refusals by the gate are not here)."""
        return [v for v in self.variants if v.failed]

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
            seen = v.measured  # a variant that failed before it ran has no figures
            cells = [v.name, v.runtime, _fmt(v.accuracy, ".4f"), _drop(v.accuracy_drop),
                     *(_worst_condition(v.details.get("robustness")) if robust else []),
                     _fmt(v.agreement if seen else None, ".4f"), _fmt(v.max_abs_diff if seen else None, ".3g"),
                     _fmt(v.size_bytes / 1e6 if seen else None, ".2f"), _fmt(v.latency_ms.get("p50"), ".2f"),
                     _fmt(v.latency_ms.get("p95"), ".2f"), *[_fmt(v.throughput.get(b), ".0f") for b in batches],
                     _fmt(v.speedup, ".2f") + ("x" if v.speedup is not None else ""), trt, v.status]
            rows.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")
        rec = self.recommendation
        others = "".join(f"Recommendation for {target}: **{r['variant']}** ({r['reason']}).\n\n"
                         for target, r in self.recommendations.items())
        notes = "".join(f"- {v.name}: {v.details['note']}\n" for v in self.variants if v.details.get("note"))
        failed = "".join(f"- **{v.name} failed**: {v.reason}\n" for v in self.failed)
        return (f"# Optimisation of {self.model}\n\n" + "\n".join(rows) + "\n\n"
                f"Gate: {self.gate['rule']}.\n\nRecommendation: **{rec['variant']}** ({rec['reason']}).\n\n"
                + others + (f"Failed variants (not written, not published; the others are):\n{failed}\n"
                            if failed else "") + (f"Notes:\n{notes}\n" if notes else "") +
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
