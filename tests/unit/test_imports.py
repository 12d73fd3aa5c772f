"""Import structure, read from the sources (AST, nothing imported): no cycle between the project's modules, whether
at import time or hidden in a function-level import; function-level ("late") imports only where they keep a heavy
library off a command's start-up, each with a comment saying why; and ``triton-deploy --help`` (and each
subcommand's) loading none of the heavy libraries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Source folder -> the package it installs as (pyproject.toml's package-dir).
PACKAGES = {"triton_deploy": "triton_deploy", "export": "triton_deploy.export", "optimize": "triton_deploy.optimize",
            "clients": "triton_deploy.clients", "loadtests": "triton_deploy.loadtests"}
# Copied into Triton's model repositories and run by the python backend's stub, which has no triton_deploy package.
STANDALONE = ROOT / "triton_deploy" / "repository" / "python_models"
# Third-party libraries that take a noticeable part of a second or more to import (TensorFlow about 5 s on 2 cores).
HEAVY = frozenset({"absl", "tensorflow", "keras", "tf_keras", "tf2onnx", "locust", "gevent", "geventhttpclient", "matplotlib",
                   "onnxruntime", "onnx", "onnxslim", "onnxconverter_common", "tritonclient", "grpc", "aiohttp",
                   "sklearn", "scipy", "ai_edge_litert"})
# What no command may load just to parse its flags or print its help (onnx is allowed: the optimiser's variant list).
NOT_AT_START = ("tensorflow", "keras", "tf2onnx", "locust", "matplotlib", "onnxruntime", "sklearn", "tritonclient",
                "gevent", "scipy")
SUBCOMMANDS = ("export", "repo", "serve", "classify", "evaluate", "loadtest", "bench", "optimize", "tensorrt-check",
               "monitor")

# Cycles still present, each with who is removing it (empty when there are none). The test fails on any other cycle,
# and on a listed one that is gone, so the list only shrinks.
KNOWN_CYCLES: list[frozenset[str]] = []
# Modules whose late imports are left to the branch rewriting them (same rule: the entry must go once it passes).
KNOWN_LATE: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # a project module, or a third-party module as written
    line: int
    late: bool  # inside a function
    commented: bool  # a comment on the line, or above its block of imports
    probe: bool = False  # in a ``try`` that catches ImportError: an optional dependency, checked where it is needed


@cache
def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            if STANDALONE in path.parents or (folder == "triton_deploy" and parts and parts[0] in PACKAGES):
                continue
            found[".".join([package, *parts])] = path
    return found


def _base(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if modules()[module].name == "__init__.py" else module.split(".")[:-1]
    package = package[:len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def _commented(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import's lines, or on the line above the run of import lines it belongs to."""
    if any("#" in lines[n - 1] for n in range(node.lineno, node.end_lineno + 1)):
        return True
    n = node.lineno - 1
    while n >= 1 and lines[n - 1].strip().startswith(("import ", "from ", ")")) or (
            n >= 1 and lines[n - 1].startswith(" ") and lines[n - 1].strip().endswith((",", "("))):
        if "#" in lines[n - 1]:
            return True
        n -= 1
    return n >= 1 and lines[n - 1].strip().startswith("#")


def _catches_import_error(node: ast.AST) -> bool:
    return isinstance(node, ast.Try) and any(
        "ImportError" in ast.unparse(handler.type) for handler in node.handlers if handler.type is not None)


def _visit(module: str, lines: list[str], node: ast.AST, late: bool, found: list[Import]) -> None:
    probe = _catches_import_error(node)
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue  # only read by type checkers
        if isinstance(child, ast.Import):
            targets = [alias.name for alias in child.names]
        elif isinstance(child, ast.ImportFrom):
            base = _base(module, child)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in child.names]
        else:
            inner = late or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            _visit(module, lines, child, inner, found)
            continue
        found += [Import(module, target, child.lineno, late, _commented(lines, child), probe) for target in targets]


@cache
def imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for module, path in modules().items():
        text = path.read_text()
        _visit(module, text.splitlines(), ast.parse(text, filename=str(path)), False, found)
    return tuple(found)


def _graph(late_too: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in modules()}
    for imp in imports():
        if imp.target in modules() and (late_too or not imp.late):
            graph[imp.module].add(imp.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(frozenset(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


@cache
def heavy_libraries(target: str) -> frozenset[str]:
    """The heavy libraries importing ``target`` loads: its own root, or what a project module imports at module level
    (transitively)."""
    seen: set[str] = set()
    todo, heavy = [target], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.split(".")[0] in HEAVY:
            heavy.add(name.split(".")[0])
        elif name in modules():
            todo += [imp.target for imp in imports() if imp.module == name and not imp.late]
    return frozenset(heavy)


def _known_late(module: str) -> bool:
    return any(module == known or module.startswith(known + ".") for known in KNOWN_LATE)


def test_the_scan_sees_every_package_and_resolves_relative_imports():
    assert {"triton_deploy.cli", "triton_deploy.export.pipeline", "triton_deploy.optimize.run",
            "triton_deploy.clients.classifier", "triton_deploy.loadtests.runner", "triton_deploy.server"} <= set(modules())
    cli = {imp.target for imp in imports() if imp.module == "triton_deploy.cli"}
    assert {"triton_deploy.errors", "triton_deploy.export.cli", "triton_deploy.server.cli"} <= cli
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert heavy_libraries("triton_deploy.export.digits") == frozenset()  # Keras and scikit-learn only inside functions
    assert "tensorflow" in heavy_libraries("tensorflow.python.framework")


def test_no_import_cycle_at_import_time_or_hidden_in_a_function():
    found = set(cycles(_graph(late_too=True)))
    assert {c for c in found if c not in KNOWN_CYCLES} == set(), "import cycles between project modules"
    assert set(KNOWN_CYCLES) <= found, "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_late_imports_only_keep_a_heavy_library_off_start_up_and_say_so():
    light = sorted(f"{modules()[imp.module].relative_to(ROOT)}:{imp.line} imports {imp.target} late: it loads no heavy "
                   "library, import it at the top" for imp in imports()
                   if imp.late and not imp.probe and not _known_late(imp.module) and not heavy_libraries(imp.target))
    silent = sorted(f"{modules()[imp.module].relative_to(ROOT)}:{imp.line} imports {imp.target} late without a comment"
                    for imp in imports() if imp.late and not imp.probe and not _known_late(imp.module)
                    and not imp.commented and heavy_libraries(imp.target))
    assert light + silent == []
    still_known = [known for known in KNOWN_LATE if any(
        imp.late and _known_late(imp.module) and imp.module.startswith(known) and
        (not heavy_libraries(imp.target) or not imp.commented) for imp in imports())]
    assert sorted(still_known) == sorted(KNOWN_LATE), "a KNOWN_LATE module passes now: remove it from the list"


def test_help_loads_no_heavy_library():
    """Each --help in a fresh interpreter (as the console script runs), then the heavy modules it loaded."""
    script = (f"import json, sys\nfrom triton_deploy.cli import main\nloaded = {{}}\n"
              f"for argv in [['--help']] + [[c, '--help'] for c in {list(SUBCOMMANDS)!r}]:\n"
              f"    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              f"    loaded[' '.join(argv)] = sorted(m for m in {list(NOT_AT_START)!r} if m in sys.modules)\n"
              f"print(json.dumps(loaded), file=sys.stderr)\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    loaded = json.loads(completed.stderr.strip().splitlines()[-1])
    assert set(loaded) == {"--help", *(f"{c} --help" for c in SUBCOMMANDS)}
    assert {argv: heavy for argv, heavy in loaded.items() if heavy} == {}
