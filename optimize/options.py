"""``OptimizeOptions``: what ``optimize`` builds, how it measures and gates; checked all at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triton_deploy.errors import UsageError

from .distill import DistillOptions
from .quantize import Calibration
from .variants import DEFAULT_VARIANTS, VARIANTS


@dataclass(frozen=True)
class OptimizeOptions:
    export_dir: Path
    output: Path
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    max_accuracy_drop: float = 1.0  # percentage points
    calibration: Calibration = Calibration()
    calibration_dir: Path | None = None
    calibration_count: int = 128
    keep_io_types: bool = True
    distill: DistillOptions = DistillOptions()
    batch_sizes: tuple[int, ...] = (8, 32)
    bench_seconds: float = 1.0  # per variant, batch size and round
    bench_rounds: int = 3
    threads: int | None = None  # ONNX Runtime intra-op threads (default: all cores)
    eval_limit: int | None = None  # use only the first N held-out images (tests)
    tensorrt_max_batch_size: int = 32
    force: bool = False
    seed: int = 0

    def check(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise UsageError(f"unknown variants {unknown}" if unknown else "no variant chosen",
                             hint=f"--variants takes a comma-separated subset of {','.join(VARIANTS)}")
        if self.max_accuracy_drop < 0:
            raise UsageError(f"--max-accuracy-drop {self.max_accuracy_drop} is negative; it is the largest loss "
                             "allowed, in percentage points", hint="check --max-accuracy-drop")
        if any(b < 1 for b in self.batch_sizes) or not self.batch_sizes:
            raise UsageError("throughput batch sizes must be positive", hint="check --batch-sizes")
        if self.bench_seconds <= 0 or self.bench_rounds < 1:
            raise UsageError("--bench-seconds must be > 0 and --bench-rounds >= 1", hint="check --bench-seconds")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise UsageError("--eval-limit must be at least 1", hint="check --eval-limit")
        self.calibration.check()
        if "distilled" in self.variants:
            self.distill.check()
