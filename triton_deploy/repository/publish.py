"""Publishing ``optimize``'s passing variants into a model repository, next to the code that writes repositories.

``versions``: one classifier, FP32 first, the recommended variant last, so ``latest:1`` serves the recommendation and
``all`` / ``specific:N`` serve an A/B set. ``siblings``: the FP32 model under its own prefix and each variant as
``<name>_<variant>``, all in one repository. A ``Publisher`` is what the CLI hands to ``optimize`` as its
``publish`` step, so the optimiser never imports the repository writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from triton_deploy.errors import GateError, Problem, raise_problems, unknown_choice

from .render import RepositoryOptions, version_policy_text

if TYPE_CHECKING:
    from triton_deploy.optimize.report import OptimizeReport

PUBLISH_MODES = ("versions", "siblings")


@dataclass(frozen=True)
class Publisher:
    """Where and how ``optimize --publish`` writes: the repository, versions or siblings, and the config settings
    of the published models. Called with a report, it publishes it."""

    repository: Path
    mode: str = "versions"
    version_policy: str = "latest:1"
    max_batch_size: int = 32
    classifier_backend: str = "python"  # python (local server) | onnxruntime | tensorrt
    tensorrt_accelerator: bool = False  # onnxruntime backend with the TensorRT execution provider

    @property
    def for_tensorrt(self) -> bool:
        """TensorRT builds the engine: publish only variants that pass the TensorRT check (INT8 = symmetric Q/DQ)."""
        return self.classifier_backend == "tensorrt" or self.tensorrt_accelerator

    def check(self) -> None:
        problems: list[Problem] = []
        if self.mode not in PUBLISH_MODES:
            problems.append(unknown_choice("publish mode", self.mode, "--publish-as", PUBLISH_MODES))
        if self.tensorrt_accelerator and self.classifier_backend != "onnxruntime":
            problems.append(("the TensorRT accelerator belongs to the onnxruntime backend",
                             "add --publish-backend onnxruntime or drop --publish-tensorrt-accelerator"))
        try:
            version_policy_text(self.version_policy)
        except ValueError as exc:
            problems.append((str(exc), "check --version-policy"))
        if self.max_batch_size < 1:
            problems.append((f"max batch size {self.max_batch_size} must be at least 1", "check --max-batch-size"))
        raise_problems(problems)

    def __str__(self) -> str:
        return f"{self.repository} as {self.mode}"

    def __call__(self, report: OptimizeReport) -> dict:
        return publish(report, self)


def publish(report: OptimizeReport, publisher: Publisher) -> dict:
    """Write the FP32 original and every passing variant of ``report`` into ``publisher.repository``."""
    # the writer checks configs with tritonclient's protobuf schema: only when it writes
    from .writer import generate_repository

    # LiteRT files are edge artifacts, not Triton models; a TensorRT target takes only what TensorRT can build.
    passing = [v for v in report.variants[1:] if v.passed and v.runtime == "onnxruntime"
               and (not publisher.for_tensorrt or v.tensorrt.get("compatible"))]
    if not passing:
        what = "passed the accuracy gate and the TensorRT check" if publisher.for_tensorrt else \
            "passed the accuracy gate"
        raise GateError(f"no ONNX variant {what}, nothing to publish",
                        hint="see the report; relax --max-accuracy-drop or change --variants")
    output = Path(report.output)
    repository = Path(publisher.repository)
    base = RepositoryOptions(output=repository, version_policy=publisher.version_policy,
                             max_batch_size=publisher.max_batch_size, classifier_backend=publisher.classifier_backend,
                             instance_kind="gpu" if publisher.for_tensorrt else "cpu")
    if publisher.mode == "versions":
        chosen = report.recommendations.get("tensorrt") if publisher.for_tensorrt else None
        recommended = (chosen or report.recommendation)["variant"]
        by_name = {report.variants[0].name: Path(report.source)} | {v.name: output / v.name for v in passing}
        # The recommendation goes last, so latest:1 serves it; when FP32 is recommended (no variant was fast enough)
        # that is FP32 itself, published after the variants instead of first.
        ordered = sorted(by_name, key=lambda name: name == recommended)  # stable otherwise
        result = generate_repository([by_name[name] for name in ordered], base)
        classifier = repository / f"{report.model}_classifier"
        baseline = report.variants[0]  # the export's own model
        by_sha = {baseline.details["sha256"]: baseline.name, **{v.details["sha256"]: v.name for v in passing}}
        versions = {}
        for version_dir in sorted((p for p in classifier.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            sha = hashlib.sha256((version_dir / "model.onnx").read_bytes()).hexdigest()
            versions[version_dir.name] = by_sha.get(sha, "earlier export")
        latest = result.ensembles.get(report.model)
        return {"repository": str(repository), "mode": "versions", "ensemble": report.model,
                "classifier_versions": versions, "version_policy": publisher.version_policy,
                "latest": latest, "served": served_versions(versions, publisher.version_policy)}
    models = {report.variants[0].name: report.model}
    generate_repository([Path(report.source)], base)
    for v in passing:
        prefix = f"{report.model}_{v.name}"
        generate_repository([output / v.name], dataclasses.replace(base, prefix=prefix))
        models[v.name] = prefix
    return {"repository": str(repository), "mode": "siblings", "ensembles": models,
            "version_policy": publisher.version_policy}


def served_versions(versions: dict[str, str], policy: str) -> dict[str, str]:
    """Which classifier versions (number -> variant) Triton serves under ``policy``: latest:N, all or specific:a,b."""
    numbers = sorted(versions, key=int)
    kind, _, value = policy.partition(":")
    if kind == "latest":
        chosen = numbers[-int(value or 1):]
    elif kind == "specific":
        chosen = [n for n in numbers if n in {v.strip() for v in value.split(",")}]
    else:
        chosen = numbers
    return {n: versions[n] for n in chosen}
