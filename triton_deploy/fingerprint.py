"""What an export of the built-in model depends on, as one digest: the project's sources and the versions of the
libraries that train and convert it. ``make demo`` records it beside its export, and the test suite reuses that export
instead of training the same model a second time when the digest still matches (CI runs the demo first)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path

PACKAGES = ("triton_deploy", "triton_deploy.export", "triton_deploy.optimize", "triton_deploy.clients",
            "triton_deploy.loadtests")
LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "scikit-learn")


def _package_dirs() -> list[Path]:
    """The folders the packages load from (export/, optimize/... are mapped into the namespace by setuptools)."""
    dirs = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None:
            dirs += [Path(location) for location in spec.submodule_search_locations or ()]
    return dirs


def source_fingerprint() -> str:
    """sha256 over every source and template file of the package and the installed library versions."""
    digest = hashlib.sha256()
    for folder in _package_dirs():
        for path in sorted(p for p in folder.rglob("*") if p.suffix in (".py", ".j2") and "__pycache__" not in p.parts):
            digest.update(f"{folder.name}/{path.relative_to(folder)}\0".encode())
            digest.update(path.read_bytes())
    for library in LIBRARIES:
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}\0".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} absent\0".encode())
    return digest.hexdigest()


def fingerprint_file(export_dir: Path) -> Path:
    """Where the digest of ``export_dir`` is kept: beside it, so the export directory holds only what it always did."""
    return export_dir.with_name(export_dir.name + ".fingerprint")


def record(export_dir: Path) -> None:
    """Note what ``export_dir`` was made from: the sources' digest and the sha256 of the model it holds (an export
    written there later by hand, with other options, then no longer matches)."""
    model = hashlib.sha256((export_dir / "model.onnx").read_bytes()).hexdigest()
    fingerprint_file(export_dir).write_text(json.dumps({"sources": source_fingerprint(), "model_sha256": model}) + "\n")


def matches(export_dir: Path) -> bool:
    """Whether ``export_dir`` is still what ``record`` noted, from the sources and libraries installed now."""
    try:
        noted = json.loads(fingerprint_file(export_dir).read_text())
        model = hashlib.sha256((export_dir / "model.onnx").read_bytes()).hexdigest()
    except (OSError, ValueError):
        return False
    return noted == {"sources": source_fingerprint(), "model_sha256": model}
