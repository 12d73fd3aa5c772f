"""One module of errors: every error class is defined in ``triton_deploy.errors`` with its own exit code as a class
attribute, no code is used twice, the old import paths still give the same classes, and the README lists exactly the
table derived from the classes."""

from __future__ import annotations

import ast
import gc
import importlib
import re
from pathlib import Path

import pytest

from triton_deploy import errors
from triton_deploy.errors import EXIT_CODES, TritonDeployError

ROOT = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("triton_deploy", "export", "optimize", "clients", "loadtests")
# Where each class was defined before they moved into triton_deploy.errors: these imports must keep working.
OLD_HOMES = {
    "triton_deploy.clients.errors": ["ServerUnavailableError", "ModelNotFoundError", "ModelMismatchError",
                                     "InvalidInputError", "RequestTooLargeError", "RequestTimeoutError",
                                     "InferenceError", "ImageError", "ClassificationError", "IncompleteRunError",
                                     "DatasetError", "AccuracyGateError"],
    "triton_deploy.loadtests.runner": ["LoadTestError"], "triton_deploy.loadtests.slo": ["SLOViolation"],
    "triton_deploy.optimize.quantize": ["QuantizationError"], "triton_deploy.optimize.prune": ["PruneError"],
    "triton_deploy.optimize.tensorrt": ["TensorRTCompatibilityError"], "triton_deploy.export.tflite": ["TFLiteError"],
    "triton_deploy.demo": ["DemoError"],
}


def test_every_code_is_used_once():
    codes = [code for code, _ in EXIT_CODES.values()]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    assert all(1 <= code <= 125 for code in codes)  # 126+ mean "not executable", signals, interrupts to shells


def test_every_error_class_is_defined_in_the_errors_module_with_its_own_code():
    for module in OLD_HOMES:
        importlib.import_module(module)  # a class defined in any of them would now join the walk below
    classes = errors.error_classes()
    assert {cls.__module__ for cls in classes} == {"triton_deploy.errors"}
    assert EXIT_CODES == {cls.__name__: (cls.exit_code, cls.means) for cls in classes}
    assert all("exit_code" in vars(cls) and vars(cls)["means"] for cls in classes)


def test_no_other_module_defines_an_error_class():
    """A source scan, so a class in a module no test imports is caught too."""
    found = []
    for path in (p for folder in SOURCE_FOLDERS for p in (ROOT / folder).rglob("*.py")):
        if path == ROOT / "triton_deploy" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(base, "id", getattr(base, "attr", "")) in EXIT_CODES for base in node.bases):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert found == []


def test_the_old_import_paths_give_the_same_classes():
    for module, names in OLD_HOMES.items():
        imported = importlib.import_module(module)
        for name in names:
            assert getattr(imported, name) is getattr(errors, name), f"{module}.{name}"


def test_an_error_class_without_a_code_is_refused():
    with pytest.raises(TypeError, match="has no exit code of its own"):
        type("UnlistedError", (TritonDeployError,), {})
    with pytest.raises(TypeError, match="has no exit code of its own"):  # a code without saying what it means
        type("HalfListedError", (TritonDeployError,), {"exit_code": 99})
    gc.collect()  # the half-made classes must not linger in TritonDeployError.__subclasses__()


def test_no_module_sets_its_own_exit_code():
    sources = [p for folder in SOURCE_FOLDERS for p in (ROOT / folder).rglob("*.py")
               if p != ROOT / "triton_deploy" / "errors.py"]
    assert [str(p) for p in sources if re.search(r"^\s+exit_code(, means)? = \d", p.read_text(), flags=re.M)] == []


def test_readme_lists_every_code_as_the_table_says():
    readme = (ROOT / "README.md").read_text()
    listed = {name: int(code) for code, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", readme, flags=re.M)}
    assert listed == {name: code for name, (code, _) in EXIT_CODES.items()}
