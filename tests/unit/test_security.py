"""What lets no one change what the server serves: loopback bind, the admin APIs behind a key on both protocols,
model-control none, validated names, and no user string reaching a shell or generated code."""

from __future__ import annotations

import ast
import filecmp
import json
import shutil
from pathlib import Path

import pytest

from conftest import make_export
from triton_deploy.cli import build_parser
from triton_deploy.errors import TritonDeployError
from triton_deploy.server import ServerInstallation, ServerOptions, server_command

ROOT = Path(__file__).resolve().parents[2]


SOURCES = [ROOT / "triton_deploy", ROOT / "export", ROOT / "clients", ROOT / "loadtests"]


def test_serve_defaults_bind_loopback_keep_model_control_none_and_restrict_the_admin_apis():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.model_control_mode, args.restrict_apis, args.keep_healthy_models) == \
        ("127.0.0.1", "none", True, False)
    installation = ServerInstallation(Path("/bin/tritonserver"), Path("/lib"), Path("/backends"))
    command = server_command(ServerOptions(repository=Path("repo")), installation, admin_key="KEY")
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
                 "--http-restricted-api=model-repository,shared-memory,logging,trace:triton-admin-key=KEY",
                 "--grpc-restricted-protocol=model-repository,shared-memory,logging,trace:triton-admin-key=KEY"):
        assert flag in command


@pytest.mark.parametrize("name", ['a"b', "../escape", "x y", "1digits", "a;rm -rf", "a\nb", "é", "a" * 65])
def test_model_names_that_could_escape_a_path_or_a_config_are_refused(name, tmp_path):
    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.writer import generate_repository

    digits_export = make_export(tmp_path / "digits", name="digits", classes=10)
    with pytest.raises(TritonDeployError, match="must start with a letter"):
        generate_repository([digits_export], RepositoryOptions(output=tmp_path / "repo", prefix=name))
    # The same name arriving through the export's manifest instead of --prefix.
    export = tmp_path / "export"
    shutil.copytree(digits_export, export)
    manifest = json.loads((export / "manifest.json").read_text())
    (export / "manifest.json").write_text(json.dumps(manifest | {"name": name}))
    with pytest.raises(TritonDeployError, match="cannot name Triton models"):
        generate_repository([export], RepositoryOptions(output=tmp_path / "repo2"))
    assert not (tmp_path / "repo").exists() and not (tmp_path / "repo2").exists()
    assert not (tmp_path / "escape").exists()


def test_labels_with_quotes_and_braces_stay_data_in_labels_txt(tmp_path):
    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.writer import generate_repository

    digits_export = make_export(tmp_path / "digits", name="digits", classes=10)  # a hand-built ONNX export
    export = tmp_path / "export"
    shutil.copytree(digits_export, export)
    labels = ['say "hi"', "}{", "import os; os.system('x')", "\\n", "{{ 7 * 7 }}", "ü", "' OR 1=1", "a b", "#", "9"]
    (export / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    generate_repository([export], RepositoryOptions(output=tmp_path / "repo"))
    repo = tmp_path / "repo"
    assert (repo / "digits_postprocess" / "labels.txt").read_text(encoding="utf-8").splitlines() == labels
    configs = "".join(p.read_text() for p in repo.glob("*/config.pbtxt"))
    assert "os.system" not in configs and "{{" not in configs and "49" not in configs
    # The python models are copies of the package's modules, byte for byte: nothing is generated into code.
    package = ROOT / "triton_deploy"
    for model, module in (("digits_preprocess", "preprocess"), ("digits_classifier", "classifier"),
                          ("digits_postprocess", "postprocess")):
        assert filecmp.cmp(repo / model / "1" / "model.py", package / "repository" / "python_models" / f"{module}.py",
                           shallow=False)
    assert filecmp.cmp(repo / "digits_preprocess" / "1" / "preprocessing.py", package / "preprocessing.py",
                       shallow=False)


def test_no_source_runs_a_shell_or_evaluates_strings():
    """Subprocesses get argument lists, never a shell; nothing evals, execs or renders Python from templates."""
    problems = []
    for path in (p for folder in SOURCES for p in folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in ("system", "popen", "eval", "exec", "getoutput", "getstatusoutput"):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {name}")
                for keyword in node.keywords:
                    if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and
                                                       keyword.value.value is False):
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno} passes shell=")
    assert problems == []
    templates = ROOT / "triton_deploy" / "repository" / "templates"
    assert {p.suffix for p in templates.iterdir()} <= {".j2"}
    assert not [p for p in templates.iterdir() if p.name.endswith(".py.j2")]


def test_no_request_the_project_builds_asks_class_count():
    """Triton 2.51 dies with SIGFPE on class_count for a BYTES output (docs/security.md): the clients, the Locust users,
    the bench and the chart's helm-test and probe scripts never use the classification extension at all."""
    helm_files = ROOT / "helm" / "triton-classifier" / "files"
    sources = [p for folder in (*SOURCES, helm_files) for p in folder.rglob("*.py")]
    assert any(p.parent == helm_files for p in sources) and any("locustfile" in p.name for p in sources)
    uses = [f"{p.relative_to(ROOT)}:{node.lineno}" for p in sources for node in ast.walk(ast.parse(p.read_text()))
            if (isinstance(node, ast.keyword) and node.arg == "class_count")
            or (isinstance(node, ast.Constant) and node.value in ("classification", "class_count"))
            or (isinstance(node, ast.Name) and node.id == "class_count")
            or (isinstance(node, ast.Attribute) and node.attr == "class_count")]
    assert uses == []  # comments and docstrings may explain the bug; no code may build such a request
