"""What ``optimize`` measured: one ``VariantResult`` per model, the ``OptimizeReport``, and its report.md/json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .variants import BASELINE

REPORT_JSON, REPORT_MD = "report.json", "report.md"


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

    def to_dict(self) -> dict:
        return {"name": self.name, "accuracy": self.accuracy, "accuracy_drop_points": self.accuracy_drop,
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
    recommendation: dict
    machine: dict
    published: dict | None = None

    def variant(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)

    def to_dict(self) -> dict:
        return {"source": str(self.source), "output": str(self.output), "model": self.model, "gate": self.gate,
                "variants": [v.to_dict() for v in self.variants], "recommendation": self.recommendation,
                "machine": self.machine, "published": self.published}

    def markdown(self) -> str:
        batches = sorted({b for v in self.variants for b in v.throughput})
        labelled = any(v.accuracy is not None for v in self.variants)
        head = ["variant", "accuracy" if labelled else "accuracy (n/a)", "drop (pts)", "agreement", "max |diff|",
                "size (MB)", "p50 ms b1", "p95 ms b1", *[f"img/s b{b}" for b in batches],
                f"speed-up b{batches[0]}" if batches else "speed-up", "TensorRT", "status"]
        rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for v in self.variants:
            trt = "ok" if v.tensorrt.get("compatible") else (
                "no: " + ", ".join(v.tensorrt.get("unsupported_operators", {})) if v.tensorrt.get(
                    "unsupported_operators") else "no: " + (v.tensorrt.get("problems") or ["?"])[0][:40])
            cells = [v.name, _fmt(v.accuracy, ".4f"), _fmt(v.accuracy_drop, "+.2f"), f"{v.agreement:.4f}",
                     f"{v.max_abs_diff:.3g}", f"{v.size_bytes / 1e6:.2f}", _fmt(v.latency_ms.get("p50"), ".2f"),
                     _fmt(v.latency_ms.get("p95"), ".2f"), *[_fmt(v.throughput.get(b), ".0f") for b in batches],
                     _fmt(v.speedup, ".2f") + ("x" if v.speedup is not None else ""), trt,
                     "baseline" if v.name == BASELINE else ("passed" if v.passed else f"refused: {v.reason}")]
            rows.append("| " + " | ".join(cells) + " |")
        rec = self.recommendation
        return (f"# Optimisation of {self.model}\n\n" + "\n".join(rows) + "\n\n"
                f"Gate: {self.gate['rule']}.\n\nRecommendation: **{rec['variant']}** ({rec['reason']}).\n\n"
                f"Measured on {self.machine['cpu_count']} cores with ONNX Runtime {self.machine['onnxruntime']} "
                f"({self.machine['threads']} intra-op threads), best of {self.machine['rounds']} interleaved rounds "
                f"of {self.machine['seconds']} s each; a shared machine: compare ratios, not absolutes.\n")


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_reports(directory: Path, report: OptimizeReport) -> None:
    (directory / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    (directory / REPORT_MD).write_text(report.markdown(), encoding="utf-8")
