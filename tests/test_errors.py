"""One table of exit codes: every error class has its own code from ``EXIT_CODES``, no code is used twice, and the
README lists exactly the table."""

from __future__ import annotations

import gc
import importlib
import re
from pathlib import Path

import pytest

from triton_deploy.errors import EXIT_CODES, TritonDeployError

ROOT = Path(__file__).parent.parent
# Every module that defines a TritonDeployError subclass (a class outside them would be missed by the walk below,
# but not by the source scan in test_no_module_sets_its_own_exit_code).
ERROR_MODULES = ["triton_deploy.errors", "triton_deploy.clients.errors", "triton_deploy.loadtests.runner",
                 "triton_deploy.loadtests.slo", "triton_deploy.optimize.quantize", "triton_deploy.optimize.tensorrt",
                 "triton_deploy.optimize.cli",
                 "triton_deploy.demo"]


def _error_classes() -> dict[str, type]:
    for module in ERROR_MODULES:
        importlib.import_module(module)
    found, todo = {}, [TritonDeployError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo += cls.__subclasses__()
    return found


def test_every_code_is_used_once():
    codes = [code for code, _ in EXIT_CODES.values()]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    assert all(1 <= code <= 125 for code in codes)  # 126+ mean "not executable", signals, interrupts to shells


def test_every_error_class_takes_its_code_from_the_table():
    classes = _error_classes()
    assert set(classes) == set(EXIT_CODES)
    for name, cls in classes.items():
        assert cls.exit_code == EXIT_CODES[name][0], name


def test_an_error_class_without_a_code_is_refused():
    with pytest.raises(TypeError, match="add it to EXIT_CODES"):
        type("UnlistedError", (TritonDeployError,), {})
    gc.collect()  # the half-made class must not linger in TritonDeployError.__subclasses__()


def test_no_module_sets_its_own_exit_code():
    sources = [p for folder in ("triton_deploy", "export", "optimize", "clients", "loadtests")
               for p in (ROOT / folder).rglob("*.py")]
    assert [str(p) for p in sources if re.search(r"^\s+exit_code = \d", p.read_text(), flags=re.M)] == []


def test_readme_lists_every_code_as_the_table_says():
    readme = (ROOT / "README.md").read_text()
    listed = {name: int(code) for code, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", readme, flags=re.M)}
    assert listed == {name: code for name, (code, _) in EXIT_CODES.items()}
