"""``triton-deploy repo``: write a Triton model repository from export directories.

Layout for a model exported as ``digits`` (the prefix)::

    digits/                 ensemble: config.pbtxt, labels.txt, 1/ (empty; ensembles still need a version directory)
    digits_preprocess/      config.pbtxt, warmup/sample_image, 1/model.py + preprocessing.py, model_metrics.py
    digits_classifier/      config.pbtxt, labels.txt, warmup/sample_input, N/model.onnx (+ model.py for the python
                            backend)
    digits_postprocess/     config.pbtxt, labels.txt, reference.json (if the export has one),
                            1/model.py + postprocessing.py, model_metrics.py

A new export of the same model becomes the next classifier version; an export identical to the latest version (same
sha256) replaces it in place. The whole repository is staged in a temporary directory, every config is parsed with
Triton's protobuf and every ensemble cross-checked, and only then is it moved into place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from triton_deploy.contract import LABELS_FILE
from triton_deploy.errors import RepositoryError, UsageError
from triton_deploy.fsutil import check_writable, replace_directory
from triton_deploy.spec import Manifest

from . import render, validate

PACKAGE = Path(__file__).parent
PYTHON_MODELS = PACKAGE / "python_models"
MODEL_METRICS = PACKAGE.parent / "monitoring" / "model_metrics.py"
# The package modules each python step imports, copied beside its model.py (the stub has no triton_deploy).
SHARED_MODULES = {"preprocess": (PACKAGE.parent / "preprocessing.py", MODEL_METRICS),
                  "postprocess": (PACKAGE.parent / "postprocessing.py", MODEL_METRICS)}


@dataclass(frozen=True)
class RepositoryResult:
    output: Path
    ensembles: dict[str, int]  # ensemble name -> classifier version written
    models: tuple[str, ...]
    notes: tuple[str, ...] = ()  # what was done differently from what was asked, and why

    def summary(self) -> dict:
        return {"output": str(self.output), "ensembles": self.ensembles, "models": list(self.models),
                "notes": list(self.notes)}


def generate_repository(exports: list[Path], options: render.RepositoryOptions) -> RepositoryResult:
    """Read every export, render and validate all configs, then write the repository atomically."""
    options.check()
    check_writable(Path(options.output), flag="--output")  # one line, not an OSError traceback
    if not exports:
        raise UsageError("no export directory given", hint="pass one or more EXPORT_DIR arguments")
    manifests = [(Path(e), Manifest.read(Path(e))) for e in exports]
    prefixes = {options.prefix or m.name for _, m in manifests}
    if options.prefix and len({m.name for _, m in manifests}) > 1:
        raise UsageError("--prefix names one model, but the exports hold several models "
                         f"({', '.join(sorted({m.name for _, m in manifests}))})", hint="drop --prefix")
    for prefix in prefixes:
        if not render.NAME_PATTERN.match(prefix):
            raise UsageError(f"model name {prefix!r} cannot name Triton models", hint="set --prefix")
    for directory, manifest in manifests:
        if not (directory / manifest.model_file).is_file():
            raise RepositoryError(f"{directory / manifest.model_file} is missing: the export is incomplete",
                                  hint="re-run 'triton-deploy export'")

    output = Path(options.output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.tmp-{hashlib.sha1(str(output).encode()).hexdigest()[:8]}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if output.exists():
            shutil.copytree(output, staging, symlinks=True)
        else:
            staging.mkdir()
        written: dict[str, int] = {}
        for directory, manifest in manifests:
            names = render.ModelNames.for_prefix(options.prefix or manifest.name)
            written[names.ensemble] = _write_classifier_group(staging, directory, manifest, names, options)
        configs = _read_all_configs(staging)
        validate.check_models(configs)
        replace_directory(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    notes = tuple(f"--top-k {options.top_k} is more than the {m.num_classes} classes of '{m.name}': its ensemble "
                  f"returns all {m.num_classes}" for _, m in manifests if options.top_k > m.num_classes)
    return RepositoryResult(output, written, tuple(sorted(configs)), notes)


def _write_classifier_group(repo: Path, export_dir: Path, manifest: Manifest, names: render.ModelNames,
                            options: render.RepositoryOptions) -> int:
    version = _next_version(repo / names.classifier, manifest)
    configs = {name: render.tidy(text)
               for name, text in render.render_configs(manifest, options, names, version).items()}
    parsed = {name: validate.parse_config(text, f"{name}/config.pbtxt") for name, text in configs.items()}
    _check_existing_versions(repo / names.classifier, parsed[names.classifier])
    sample = (export_dir / (manifest.sample_image or "sample.png")).read_bytes()

    # preprocess and postprocess follow the newest export; they are rewritten whole.
    for kind, name in (("preprocess", names.preprocess), ("postprocess", names.postprocess)):
        model_dir = repo / name
        shutil.rmtree(model_dir, ignore_errors=True)
        (model_dir / "1").mkdir(parents=True)
        shutil.copyfile(PYTHON_MODELS / f"{kind}.py", model_dir / "1" / "model.py")
        for module in SHARED_MODULES[kind]:
            shutil.copyfile(module, model_dir / "1" / module.name)
        (model_dir / "config.pbtxt").write_text(configs[name], encoding="utf-8")
    _write_warmup(repo / names.preprocess, render.PREPROCESS_WARMUP, struct.pack("<I", len(sample)) + sample)
    # The labels file beside every config whose outputs carry label_filename (Triton reads it at model load).
    for name in (names.postprocess, names.classifier, names.ensemble):
        (repo / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(export_dir / manifest.labels_file, repo / name / LABELS_FILE)
    if manifest.reference is not None:
        (repo / names.postprocess / render.REFERENCE_FILE).write_text(
            json.dumps(manifest.reference.to_dict(), indent=2) + "\n", encoding="utf-8")

    classifier = repo / names.classifier
    version_dir = classifier / str(version)
    shutil.rmtree(version_dir, ignore_errors=True)
    version_dir.mkdir(parents=True)
    shutil.copyfile(export_dir / manifest.model_file, version_dir / "model.onnx")
    if options.classifier_backend == "python":
        shutil.copyfile(PYTHON_MODELS / "classifier.py", version_dir / "model.py")
    (classifier / "config.pbtxt").write_text(configs[names.classifier], encoding="utf-8")
    tensor, _, errors = manifest.preprocessing.preprocess([sample])
    if errors[0]:
        raise RepositoryError(f"the export's sample image cannot be preprocessed: {errors[0]}")
    _write_warmup(classifier, render.CLASSIFIER_WARMUP, tensor.astype("<f4").tobytes())
    if options.keep_versions:
        for old in _versions(classifier)[:-options.keep_versions]:
            shutil.rmtree(classifier / str(old))

    ensemble = repo / names.ensemble
    shutil.rmtree(ensemble / "1", ignore_errors=True)
    (ensemble / "1").mkdir(parents=True)
    (ensemble / "1" / ".gitkeep").write_text("")  # an ensemble's version directory is empty but must exist
    (ensemble / "config.pbtxt").write_text(configs[names.ensemble], encoding="utf-8")
    return version


def _write_warmup(model_dir: Path, name: str, data: bytes) -> None:
    (model_dir / "warmup").mkdir(exist_ok=True)
    (model_dir / "warmup" / name).write_bytes(data)


def _versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _next_version(classifier: Path, manifest: Manifest) -> int:
    """Reuse the latest version for the same model (or a version dir without its model file); else add one."""
    versions = _versions(classifier)
    if not versions:
        return 1
    latest = classifier / str(versions[-1]) / "model.onnx"
    if not latest.exists() or hashlib.sha256(latest.read_bytes()).hexdigest() == manifest.model_sha256:
        return versions[-1]
    return versions[-1] + 1


def _check_existing_versions(classifier: Path, new_config) -> None:
    """Older versions stay served under the new config, so their inputs and outputs must not change."""
    config_path = classifier / "config.pbtxt"
    if not config_path.exists() or not _versions(classifier):
        return
    old = validate.parse_config(config_path.read_text(encoding="utf-8"), str(config_path))

    def io(config):
        return [(t.name, t.data_type, tuple(t.dims)) for t in (*config.input, *config.output)]

    if io(old) != io(new_config):
        raise RepositoryError(
            f"{classifier.name} already has versions {_versions(classifier)} with inputs/outputs {io(old)}; the new "
            f"export has {io(new_config)} and cannot be served beside them",
            hint="use another --prefix or a new --output")


def _read_all_configs(repo: Path) -> dict:
    configs = {}
    for config_path in sorted(repo.glob("*/config.pbtxt")):
        configs[config_path.parent.name] = validate.parse_config(config_path.read_text(encoding="utf-8"),
                                                                 str(config_path.relative_to(repo)))
    return configs

