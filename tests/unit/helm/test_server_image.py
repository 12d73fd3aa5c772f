"""The server image's Dockerfile (docker/tritonserver/Dockerfile) stays in step with the chart and the project: its
base is the Triton release the chart is written for, what it installs is pinned as in constraints.txt, and every
module the repository's python-backend models import is in the image. No container engine runs here, so the image
itself is never built by the tests; this checks what decides whether it can run the repository.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import shlex
import sys
from pathlib import Path

import helm_python
import pytest
import yaml

from chart_tools import CHART, render

ROOT = CHART.parents[1]
DOCKERFILE = ROOT / "docker" / "tritonserver" / "Dockerfile"
NGC_IMAGE = "nvcr.io/nvidia/tritonserver"
# What the NGC image gives python-backend models beyond the standard library: the backend's own module, and numpy,
# which Triton's image build installs for the python backend.
NGC_PYTHON_MODULES = {"triton_python_backend_utils", "numpy"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            found.append((keyword.upper(), arguments.strip()))
    return found


def pip_requirements() -> list[str]:
    """The requirement arguments of every `pip install` in a RUN instruction."""
    requirements = []
    for keyword, arguments in instructions():
        if keyword != "RUN":
            continue
        words = shlex.split(arguments)
        for index in [i for i, w in enumerate(words) if w == "install" and i and words[i - 1] == "pip"]:
            for word in words[index + 1:]:
                if word in ("&&", ";"):
                    break
                if not word.startswith("-"):
                    requirements.append(word)
    return requirements


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    return pins


@functools.cache  # packages_distributions() reads every installed distribution's metadata: seconds per call
def installed_modules() -> set[str]:
    """Top-level modules of the distributions the Dockerfile installs (pillow -> PIL), as the local install has them."""
    installed = {normalise(r.split("==")[0]) for r in pip_requirements()}
    return {module for module, distributions in importlib.metadata.packages_distributions().items()
            if installed & {normalise(d) for d in distributions}}


def imported_modules(path: Path) -> set[str]:
    """Top-level modules a Python file imports anywhere in it (relative imports excluded)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def python_models() -> dict[Path, set[str]]:
    """Every python-backend model file of the repository, with the modules copied beside it: the templates that
    `triton-deploy repo` writes (and the shared modules it copies next to them) and the checked-in example repository."""
    from triton_deploy.repository.writer import PYTHON_MODELS, SHARED_MODULES

    models = {}
    for path in PYTHON_MODELS.glob("*.py"):
        if path.name != "__init__.py":
            models[path] = {module.stem for module in SHARED_MODULES.get(path.stem, ())}
    for modules in SHARED_MODULES.values():
        models.update({module: {other.stem for other in modules} for module in modules})
    for path in (ROOT / "model_repository").glob("*/[0-9]*/*.py"):
        models[path] = {sibling.stem for sibling in path.parent.glob("*.py")}
    return models


def missing_modules(path: Path, beside: set[str]) -> set[str]:
    provided = set(sys.stdlib_module_names) | NGC_PYTHON_MODULES | installed_modules() | beside
    return imported_modules(path) - provided


def is_classifier(path: Path) -> bool:
    return path.stem == "classifier" or path.parent.parent.name.endswith("_classifier")


def test_dockerfile_builds_from_the_triton_release_the_chart_runs():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    found = instructions()
    assert [k for k, _ in found if k == "FROM"] == ["FROM"], "one stage, one base image"
    (base,) = [a for k, a in found if k == "FROM"]
    assert base == f"{NGC_IMAGE}:{values['image']['tag']}", "FROM tag and the chart's image.tag differ"
    assert values["image"]["tag"] == f"{meta['appVersion']}-py3", "image.tag and Chart.yaml appVersion differ"
    assert {k for k, _ in found} <= {"FROM", "RUN"}, "the image adds Python modules and nothing else"


def test_dockerfile_installs_only_pinned_versions_from_constraints():
    pins = constraints()
    requirements = pip_requirements()
    assert requirements, "the Dockerfile installs nothing with pip"
    for requirement in requirements:
        name, separator, version = requirement.partition("==")
        assert separator, f"{requirement} is not pinned with =="
        assert pins.get(normalise(name)) == version, (
            f"Dockerfile pins {requirement}, constraints.txt has {pins.get(normalise(name))}")


def test_every_python_model_finds_its_imports_in_the_server_image():
    models = python_models()
    assert any(is_classifier(p) for p in models) and len(models) >= 6, sorted(models)
    missing = {str(path.relative_to(ROOT)): sorted(modules) for path, beside in models.items()
               if not is_classifier(path) and (modules := missing_modules(path, beside))}
    assert not missing, f"modules the server image does not provide (add them to {DOCKERFILE.name}): {missing}"
    # And the check is real: the preprocess model needs Pillow, which only the Dockerfile brings.
    assert "PIL" in installed_modules() and "PIL" in imported_modules(ROOT / "triton_deploy" / "preprocessing.py")


def test_python_classifier_needs_modules_the_image_lacks_so_the_chart_refuses_it():
    """The python classifier (local server only) imports onnxruntime; instead of a pod whose classifier fails to
    load, the chart refuses model.classifierBackend python and names the module."""
    lacking = set().union(*(missing_modules(path, beside) for path, beside in python_models().items()
                            if is_classifier(path)))
    assert lacking == {"onnxruntime"}
    for module in lacking:
        with pytest.raises(helm_python.HelmRenderError, match=f"imports {module}, which the server image"):
            render({"model": {"classifierBackend": "python"}})
