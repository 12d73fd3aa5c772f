"""The chart's inference liveness probe, run the way the kubelet runs it: the rendered exec command, with the script
from the rendered ConfigMap, under the system `python3` (standard library only), against the real tritonserver
serving the real digits repository (python-backend preprocess, classifier and postprocess).

It passes on a healthy server, and fails with the reason once a python-backend stub is dead, which is exactly when
Triton's own /v2/health/live keeps answering 200.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from chart_tools import liveness_probe_command, render

pytestmark = [pytest.mark.slow, pytest.mark.server]


def run_probe(command: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    # Only PATH: nothing from this test environment (virtualenv, PYTHONPATH) may help the probe.
    return subprocess.run(command, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                          timeout=timeout)


def probe_for(tmp_path, http_port: int, values: dict | None = None) -> list[str]:
    rendered = render(values)
    return liveness_probe_command(rendered, rendered.deployment(), tmp_path / "probe", http_port)


def test_probe_classifies_a_tiny_image_through_the_served_ensemble(triton_server, tmp_path):
    command = probe_for(tmp_path, triton_server.options.http_port)
    assert command[0] == "python3"
    started = time.monotonic()
    result = run_probe(command)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"liveness: OK, digits classified a 2x2 image in \d+ ms \(CLASS_IDS, LABELS, PROBABILITIES, SCORES\)\n",
                        result.stdout), result.stdout
    print(f"liveness probe on a healthy server: {elapsed * 1000:.0f} ms including python3 start-up;", result.stdout)


def test_probe_fails_with_the_reason_once_a_python_backend_stub_is_dead(digits_repository, tmp_path):
    """A separate server (the session one must stay healthy): kill the preprocess stub, as an OOM kill would."""
    import psutil

    from triton_deploy.server import ServerOptions, TritonServer, free_ports

    http, grpc, metrics = free_ports(3)
    options = ServerOptions(digits_repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            log_file=tmp_path / "triton.log", exit_timeout_s=5)
    command = probe_for(tmp_path, http)
    with TritonServer(options) as server:
        assert run_probe(command).returncode == 0
        (victim,) = [pid for pid, name in server.stubs.items() if name.startswith("digits_preprocess_")]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while victim not in server.dead_stubs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert victim in server.dead_stubs()
        # What the default HTTP liveness probe would see: Triton still reports itself live (and ready).
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/live", timeout=5) as response:
            assert response.status == 200
        assert server.is_ready()
        failures = [run_probe(command) for _ in range(2)]  # it keeps failing: nothing recovers by itself
        assert psutil.Process(server.process.pid).is_running()
    for result in failures:
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert re.fullmatch(r"liveness: digits answered HTTP 500: .*Stub process 'digits_preprocess_0_0' is not "
                            r"healthy\.?", line), line
    print("liveness probe with a dead stub:", failures[0].stderr.strip())


def test_probe_fails_when_nothing_listens(tmp_path):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # bound, not listening: connections are refused
        result = run_probe(probe_for(tmp_path, port))
    assert result.returncode == 1
    assert result.stderr == f"liveness: cannot reach digits on 127.0.0.1:{port}: ConnectionRefusedError: " \
                            "[Errno 111] Connection refused\n"


def test_probe_gives_up_with_its_own_message_before_the_kubelet_does(tmp_path):
    """A server that accepts the connection but never answers (a wedged HTTP frontend)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        command = probe_for(tmp_path, port, {"probes": {"liveness": {"timeoutSeconds": 3}}})
        assert "--timeout=2" in command  # one second inside the kubelet's timeoutSeconds
        started = time.monotonic()
        result = run_probe(command)
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr == f"liveness: digits on 127.0.0.1:{port} did not answer within 2 s\n"
    assert elapsed < 3
