"""``OptimizeOptions``: what ``optimize`` builds, how it measures and gates; checked all at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triton_deploy.errors import UsageError

from .distill import DistillOptions
from .quantize import Calibration
from .variants import DEFAULT_VARIANTS, FAMILIES, VARIANTS, known


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
    prune_criterion: str = "l1"  # how the pruned_<p> variants rank filters (see optimize/prune.py)
    fine_tune_epochs: int = 3  # of the pruned_<p> variants, on the digits training split
    force: bool = False
    seed: int = 0

    def check(self) -> None:
        from .prune import CRITERIA

        unknown = [v for v in self.variants if not known(v)]
        if unknown or not self.variants:
            examples = ",".join([*VARIANTS, *(example for _, _, example in FAMILIES)])
            raise UsageError(f"unknown variants {unknown}" if unknown else "no variant chosen",
                             hint=f"--variants takes a comma-separated subset of {examples}")
        pruned = [v for v in self.variants if v.startswith("pruned_")]
        if pruned and not 0 < min(int(v.split("_")[1]) for v in pruned):
            raise UsageError("a pruned variant removes 0 % of the filters", hint="--prune takes fractions in (0, 1)")
        if self.prune_criterion not in CRITERIA:
            raise UsageError(f"unknown pruning criterion {self.prune_criterion!r}",
                             hint=f"--prune-criterion takes {'|'.join(CRITERIA)}")
        if self.fine_tune_epochs < 0:
            raise UsageError("--fine-tune-epochs must be 0 or more", hint="check --fine-tune-epochs")
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
