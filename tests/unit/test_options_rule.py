"""The one way options validate, read from the sources (AST, nothing imported): every options class has a ``check()``
that collects its problems and raises them together through ``errors.raise_problems``; its ``problems()`` (where it
has one) returns them without raising; and nothing validates in ``__post_init__`` (an options object can be built,
printed and compared; the command's core function checks it before any work).

Options classes are the dataclasses named ``*Options``, and the settings objects named in ``SETTINGS`` that are parts
of them. The checker is tested on sources that break each rule, so it cannot pass by finding nothing."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("triton_deploy", "export", "clients", "loadtests", "optimize")
# Settings objects not named *Options that hold user-supplied values (flags) and validate them.
SETTINGS = frozenset({"SLO", "Calibration", "SupervisionPolicy", "TensorRTAccelerator", "Publisher", "Connection"})
# What ``__post_init__`` may call: filling in a field of a frozen dataclass, converting a value. Nothing that checks.
POST_INIT_CALLS = frozenset({"object.__setattr__", "tuple", "dict", "float", "int", "str", "Path"})


def _name(node: ast.AST) -> str:
    """``raise_problems`` / ``errors.raise_problems`` / ``self.tls.check`` for a call's function, as written."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any(_name(d.func if isinstance(d, ast.Call) else d).split(".")[-1] == "dataclass"
               for d in node.decorator_list)


def _calls(function: ast.FunctionDef) -> list[str]:
    return [_name(n.func) for n in ast.walk(function) if isinstance(n, ast.Call)]


def _raises(function: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Raise) for n in ast.walk(function))


def violations(source: str, where: str) -> tuple[list[str], list[str]]:
    """(the options classes found, what breaks the rule) in one module's source."""
    found: list[str] = []
    broken: list[str] = []
    for cls in ast.walk(ast.parse(source)):
        if not (isinstance(cls, ast.ClassDef) and _is_dataclass(cls)
                and (cls.name.endswith("Options") or cls.name in SETTINGS)):
            continue
        found.append(cls.name)
        methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
        here = f"{where}:{cls.name}"
        check, problems, post_init = methods.get("check"), methods.get("problems"), methods.get("__post_init__")
        if check is None and (cls.name.endswith("Options") or problems is None):
            broken.append(f"{here} has no check() collecting its problems")
        if check is not None:
            if _raises(check):
                broken.append(f"{here}.check raises by itself (on the first problem): append to a list instead")
            if not any(c.split(".")[-1] == "raise_problems" for c in _calls(check)):
                broken.append(f"{here}.check does not raise its problems through errors.raise_problems")
        if problems is not None and (_raises(problems) or any(c.split(".")[-1] in ("raise_problems", "check")
                                                              for c in _calls(problems))):
            broken.append(f"{here}.problems raises: it returns the problems, check() raises them")
        if post_init is not None:
            checking = [c for c in _calls(post_init) if c not in POST_INIT_CALLS]
            if _raises(post_init) or checking:
                broken.append(f"{here}.__post_init__ validates ({', '.join(checking) or 'raise'}): move it to "
                              "problems()/check()")
    return found, broken


def project_violations() -> tuple[list[str], list[str]]:
    found: list[str] = []
    broken: list[str] = []
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            names, problems = violations(path.read_text(), str(path.relative_to(ROOT)))
            found += names
            broken += problems
    return found, broken


def test_every_options_class_collects_its_problems_and_checks_outside_post_init():
    found, broken = project_violations()
    assert broken == []
    # The scan sees the classes it is about (a wrong folder would find nothing and pass).
    assert {"ExportOptions", "RepositoryOptions", "ServerOptions", "ServeOptions", "LoadTestOptions", "BenchOptions",
            "PoolOptions", "MonitorOptions", "PruneOptions", "OptimizeOptions", "DistillOptions", "PlanOptions",
            "EvaluateOptions", "ClassifyOptions", "ClassifierOptions", "TlsOptions", "TuneOptions",
            *SETTINGS} <= set(found)


VIOLATORS = '''
from dataclasses import dataclass

@dataclass(frozen=True)
class FirstProblemOptions:
    n: int = 0
    def check(self) -> None:
        if self.n < 1:
            raise UsageError("n must be at least 1", hint="check --n")

@dataclass(frozen=True)
class PostInitOptions:
    n: int = 0
    def __post_init__(self) -> None:
        if self.n < 1:
            raise InvalidInputError("n must be at least 1", hint="--n")

@dataclass(frozen=True)
class HelperPostInitOptions:
    n: int = 0
    def __post_init__(self) -> None:
        raise_problems(self.problems())
    def problems(self) -> list:
        return []
    def check(self) -> None:
        raise_problems(self.problems())

@dataclass
class UncheckedOptions:
    n: int = 0

@dataclass(frozen=True)
class SLO:
    p99_ms: float = 1.0
    def problems(self) -> list:
        if self.p99_ms <= 0:
            raise UsageError("--slo-p99-ms must be positive")
        return []

class NotADataclassOptions:
    def __post_init__(self) -> None:
        raise ValueError("not an options dataclass: not this rule's business")
'''


def test_the_rule_catches_each_way_of_breaking_it():
    found, broken = violations(VIOLATORS, "example.py")
    assert "NotADataclassOptions" not in found
    assert sorted(b.split(" ")[0] for b in broken) == [
        "example.py:FirstProblemOptions.check", "example.py:FirstProblemOptions.check",
        "example.py:HelperPostInitOptions.__post_init__",
        "example.py:PostInitOptions", "example.py:PostInitOptions.__post_init__",
        "example.py:SLO.problems", "example.py:UncheckedOptions",
    ]
