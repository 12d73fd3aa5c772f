"""``OptimizeOptions``: what ``optimize`` builds, how it measures and gates; checked all at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triton_deploy.errors import Problem, raise_problems, unknown_choice

from .distill import DistillOptions
from .prune import CRITERIA
from .quantize import Calibration
from .variants import DEFAULT_VARIANTS, FAMILIES, VARIANTS, known

# Top-1 agreement with FP32 every variant must keep. Measured on the built-in model (2026-12-06, see
# docs/optimize-notes.md): FP16, both INT8 flavours and the LiteRT files agreed on all 450 held-out digits, the 50 %
# pruned and fine-tuned network (a new model) on 0.9956; a rewrite that broke a model at chance accuracy on 1/3.
DEFAULT_MIN_AGREEMENT = 0.95


@dataclass(frozen=True)
class OptimizeOptions:
    export_dir: Path
    output: Path
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    max_accuracy_drop: float = 1.0  # percentage points
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # share of evaluation images with FP32's top-1 class
    calibration: Calibration = Calibration()
    calibration_dir: Path | None = None  # default: eval_samples, else the export's own dataset's calibration images
    eval_samples: Path | None = None  # default: the export's own held-out images (its manifest's dataset)
    calibration_count: int = 128
    keep_io_types: bool = True
    distill: DistillOptions = DistillOptions()
    batch_sizes: tuple[int, ...] = (8, 32)
    bench_seconds: float = 1.0  # per variant, batch size and round
    bench_rounds: int = 3
    threads: int | None = None  # ONNX Runtime intra-op threads (default: all cores)
    eval_limit: int | None = None  # use only the first N held-out images (tests)
    # Score the robustness suite on the first N held-out images of each condition only (the held-out accuracy and the
    # gate keep every image): the suite is 22 drawings of every held-out image, most of a quick run's time.
    robustness_limit: int | None = None
    tensorrt_max_batch_size: int = 32
    prune_criterion: str = "l1"  # how the pruned_<p> variants rank filters (see optimize/prune.py)
    fine_tune_epochs: int = 3  # of the pruned_<p> variants, on the export's training images (if it has any)
    fine_tune_renderings: int = 12  # drawings of each training image to fine-tune on (the export trained on 12)
    force: bool = False
    seed: int = 0

    def check(self) -> None:
        """Raise one ``UsageError`` naming every problem (the calibration's and the student's included)."""
        problems: list[Problem] = []
        unknown = [v for v in self.variants if not known(v)]
        if unknown or not self.variants:
            examples = ",".join([*VARIANTS, *(example for _, _, example, _ in FAMILIES)])
            problems.append((f"unknown variants {unknown}" if unknown else "no variant chosen",
                             f"--variants takes a comma-separated subset of {examples}"))
        pruned = [v for v in self.variants if v.startswith("pruned_")]
        if pruned and not 0 < min(int(v.split("_")[1]) for v in pruned):
            problems.append(("a pruned variant removes 0 % of the filters", "--prune takes fractions in (0, 1)"))
        if self.prune_criterion not in CRITERIA:
            problems.append(unknown_choice("pruning criterion", self.prune_criterion, "--prune-criterion", CRITERIA))
        if self.fine_tune_epochs < 0:
            problems.append(("--fine-tune-epochs must be 0 or more", "check --fine-tune-epochs"))
        if self.fine_tune_renderings < 1:
            problems.append(("--fine-tune-renderings must be at least 1", "check --fine-tune-renderings"))
        if self.max_accuracy_drop < 0:
            problems.append((f"--max-accuracy-drop {self.max_accuracy_drop} is negative; it is the largest loss "
                             "allowed, in percentage points", "check --max-accuracy-drop"))
        if not 0.0 <= self.min_agreement <= 1.0:
            problems.append((f"--min-agreement {self.min_agreement:g} must lie between 0 and 1 (the share of "
                             "evaluation images whose top-1 class must be FP32's)", "check --min-agreement"))
        if any(b < 1 for b in self.batch_sizes) or not self.batch_sizes:
            problems.append(("throughput batch sizes must be positive", "check --batch-sizes"))
        if self.bench_seconds <= 0 or self.bench_rounds < 1:
            problems.append(("--bench-seconds must be > 0 and --bench-rounds >= 1", "check --bench-seconds"))
        if self.eval_limit is not None and self.eval_limit < 1:
            problems.append(("--eval-limit must be at least 1", "check --eval-limit"))
        if self.robustness_limit is not None and self.robustness_limit < 1:
            problems.append(("--robustness-limit must be at least 1", "check --robustness-limit"))
        if self.calibration_count < 1:
            problems.append((f"calibration count must be at least 1, got {self.calibration_count}",
                             "check --calibration-count"))
        problems += self.calibration.problems()
        if "distilled" in self.variants:
            problems += self.distill.problems()
        raise_problems(problems)
