"""The examples of README.md and docs/ run as written by the installed CLI, in a scratch folder laid out as
`make demo` leaves the project (build/digits, build/demo-images).

- the README's command sequence (export -> repo -> serve -> classify -> stop) and its Python example;
- every docs example of ``repo``, ``classify``, ``evaluate`` and ``monitor`` (the commands that need no training and
  start no server of their own), against the session's server.

Two liberties, both so the tests can run beside other servers and without a second training: an ``export`` is parsed
but its output is the session's trained export (copied where the example writes it), and servers use free ports
instead of 8000-8002 (the examples' addresses are pointed at them).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from triton_deploy.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from doc_examples import fenced_blocks, shell_commands  # noqa: E402

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Commands cheap enough to run for every example; the others (training, Locust, optimisation) are parsed by test_docs.
RUN_AGAINST_THE_SESSION_SERVER = {"repo", "classify", "evaluate", "monitor"}

pytestmark = pytest.mark.slow


def readme_flow() -> tuple[list[list[str]], str]:
    """The shell commands of the block after ``<!-- readme-flow -->``, and the README's Python example."""
    readme = (ROOT / "README.md").read_text()
    flow = readme.split("<!-- readme-flow -->", 1)[1]
    body = re.search(r"```bash\n(.*?)```", flow, flags=re.S)[1]
    python = [b for language, b, _ in fenced_blocks(ROOT / "README.md") if language == "python"]
    return shell_commands(body), python[0]


def _cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "triton_deploy.cli", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def test_readme_flow_runs_as_written(digits_export, tmp_path, monkeypatch):
    from triton_deploy.demo import write_demo_images
    from triton_deploy.server import free_ports

    commands, python_example = readme_flow()
    assert [c[1] for c in commands if c[0] == "triton-deploy"] == ["export", "repo", "serve", "classify", "stop"]
    write_demo_images(tmp_path / "build" / "demo-images")  # what make demo leaves behind
    http_port, grpc_port, metrics_port = free_ports(3)
    started = False
    try:
        for command in commands:
            if command[0] == "source":
                assert command[1] == ".venv/bin/activate"
                continue
            assert command[0] == "triton-deploy", command
            argv = command[1:]
            if argv[0] == "export":  # the session's export stands in for a second training run
                with contextlib.redirect_stderr(io.StringIO()):
                    options = build_parser().parse_args(argv)
                shutil.copytree(digits_export, tmp_path / options.output)
                continue
            if argv[0] == "serve":
                argv += ["--http-port", str(http_port), "--grpc-port", str(grpc_port),
                         "--metrics-port", str(metrics_port)]
            if argv[0] == "classify":
                argv = [a.replace("127.0.0.1:8001", f"127.0.0.1:{grpc_port}") for a in argv]
            completed = _cli(argv, tmp_path)
            assert completed.returncode == 0, (argv, completed.stderr)
            if argv[0] == "serve":
                started = True
            if argv[0] == "stop":
                started = False
            if argv[0] == "classify":
                images = sorted((tmp_path / "build" / "demo-images" / "7").iterdir())
                lines = [line for line in completed.stdout.splitlines() if line.strip()]
                assert len(lines) == len(images) > 0
                # the built-in model reads its held-out digits: most of the 7s come back as 7
                top_labels = [line.split("\t")[1].split()[0] for line in lines]  # "PATH<TAB>7 (0.9990)  1 (...)"
                assert top_labels.count("7") >= 0.9 * len(lines), lines
            if argv[0] == "serve":
                monkeypatch.chdir(tmp_path)
                output = io.StringIO()
                with contextlib.redirect_stdout(output):
                    exec(python_example.replace("127.0.0.1:8001", f"127.0.0.1:{grpc_port}"), {})  # noqa: S102
                printed = output.getvalue().split()
                assert printed[:2] == ["build/demo-images/7/digit_015_80px.jpg", "7"], output.getvalue()
    finally:
        if started:
            _cli(["stop"], tmp_path)


def _docs_examples_to_run() -> list:
    found = []
    for path in DOCS[1:]:  # the README's own sequence is the test above
        for language, body, line in fenced_blocks(path):
            if language != "bash":
                continue
            for command in shell_commands(body):
                # A/B needs the INT8 sibling an optimize run publishes; TLS examples need certificates and a gateway
                # (tests/integration/test_tls*.py run them against a TLS server; test_docs.py parses them)
                if command[0] == "triton-deploy" and command[1] in RUN_AGAINST_THE_SESSION_SERVER \
                        and "--compare" not in command and not any(a.startswith("--tls") for a in command):
                    found.append(pytest.param(command[1:], id=f"{path.relative_to(ROOT)}:{line}:{command[1]}"))
    return found


@pytest.fixture(scope="module")
def demo_layout(digits_export, tmp_path_factory) -> Path:
    """A project folder as `make demo` leaves it: the export and the labelled demo images."""
    from triton_deploy.demo import write_demo_images

    folder = tmp_path_factory.mktemp("project")
    shutil.copytree(digits_export, folder / "build" / "digits")
    write_demo_images(folder / "build" / "demo-images")
    return folder


@pytest.mark.parametrize("argv", _docs_examples_to_run())
def test_docs_example_runs_as_written(argv, demo_layout, triton_server):
    ports = {"8000": triton_server.options.http_port, "8001": triton_server.options.grpc_port,
             "8002": triton_server.options.metrics_port}
    argv = [re.sub(r"\b127\.0\.0\.1:(800[012])\b", lambda m: f"127.0.0.1:{ports[m[1]]}", a) for a in argv]
    completed = _cli(argv, demo_layout)
    assert completed.returncode == 0, (argv, completed.stderr)
