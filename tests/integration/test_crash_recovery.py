"""Triton dies and ``serve`` recovers, with the real server: one request asking the classification extension for the
top-k of the ensemble's BYTES output (``LABELS``) kills Triton 2.51 with SIGFPE, over HTTP and gRPC alike. ``serve``
(foreground and background) reports it in one line, restarts Triton and records the restart; the server classifies
correctly again within 30 s. However a server ends (stop, crash, SIGKILL of Triton, SIGKILL of ``serve`` itself), no
python-backend stub and no /dev/shm region of it is left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from test_reliability_faults import finish, serve, wait_for

from conftest import encode_digit
from triton_deploy.clients import ImageClassifier
from triton_deploy.server import free_ports
from triton_deploy.server.supervisor import group_members, mapped_shm_regions, stub_region

pytestmark = [pytest.mark.slow, pytest.mark.server]

RECOVERY_S = 30.0  # the server answers correctly again within this long after the fatal request


def send_class_count_on_labels(protocol: str, url: str, blob: bytes) -> None:
    """The request that kills Triton 2.51: top-3 classification of the BYTES output LABELS (no key needed)."""
    lib = httpclient if protocol == "http" else grpcclient
    client = lib.InferenceServerClient(url)
    image = lib.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[blob]], dtype=object))
    with pytest.raises(Exception):  # noqa: B017 - the connection breaks: HTTP and gRPC raise different types
        client.infer("digits", [image], outputs=[lib.InferRequestedOutput("LABELS", class_count=3)])
    client.close()


class ServerRemains:
    """Every Triton of one served server (they lead their process groups) and the regions seen, to prove none is
    left: no process in any of those groups, no region on /dev/shm."""

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self.regions: set[str] = set()

    def note(self, triton_pid: int) -> None:
        self.groups.add(triton_pid)
        for pid in group_members(triton_pid):
            self.regions |= mapped_shm_regions(pid)
            if (region := stub_region(pid)) is not None:
                self.regions.add(region)

    def left(self) -> tuple[list[int], list[str]]:
        return ([pid for group in self.groups for pid in group_members(group)],
                sorted(r for r in self.regions if os.path.exists(r)))

    def assert_gone(self, timeout_s: float = 30.0) -> None:
        assert self.regions, "no shared-memory region was seen: the check would prove nothing"
        wait_for(lambda: self.left() == ([], []), timeout_s, f"no process or region left of the server: {self.left()}")


def classifies_correctly(protocol: str, url: str, blobs: list[bytes], labels: np.ndarray) -> float:
    """Seconds until a patient client classifies the digits correctly (its retries ride over the restart)."""
    start = time.monotonic()
    with ImageClassifier(url, protocol=protocol, retries=30, backoff=0.5, ready_timeout=RECOVERY_S) as client:
        predicted = np.array([p.class_id for p in client.classify(blobs)])
    assert np.mean(predicted == labels) >= 0.75, (predicted, labels)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def digits_sample(heldout_digits):
    images, labels = heldout_digits
    return [encode_digit(p) for p in images[:8]], labels[:8]


def _crash_and_recover(endpoints: dict, state_file: Path, lines, digits_sample, remains: ServerRemains,
                       protocols: tuple[str, ...] = ("http", "grpc")) -> None:
    """For each protocol: the fatal request, a correct answer within 30 s, the one-line notice, the state file."""
    blobs, labels = digits_sample
    for count, protocol in enumerate(protocols, start=1):
        send_class_count_on_labels(protocol, endpoints[protocol], blobs[0])
        assert classifies_correctly(protocol, endpoints[protocol], blobs, labels) < RECOVERY_S
        wait_for(lambda n=count: sum("ready again" in line for line in lines()) == n, 60, "the ready-again notice")
        notices = [line for line in lines() if "restarting" in line]
        assert len(notices) == count
        assert re.search(rf"Triton died of SIGFPE after [\d,]+ requests?; restarting \({count}/5\)$", notices[-1])
        state = json.loads(state_file.read_text())
        assert state["restarts"] == count and state["last_restart"]["reason"].startswith("Triton died of SIGFPE")
        remains.note(state["triton_pid"])
    metric = state_file.with_suffix(".prom").read_text()
    assert re.search(rf'^triton_deploy_serve_restarts_total\{{http="[^"]+",metrics="[^"]+"\}} {len(protocols)}$', metric,
                     re.M)


def test_foreground_serve_restarts_triton_killed_by_class_count_on_labels(digits_repository, digits_sample,
                                                                          tmp_path):
    blobs, labels = digits_sample
    state_file = tmp_path / "serve.json"
    process, endpoints, stderr = serve(digits_repository, "--exit-timeout", "5", "--pid-file", str(state_file))
    remains = ServerRemains()
    try:
        remains.note(endpoints["triton_pid"])
        classifies_correctly("grpc", endpoints["grpc"], blobs, labels)  # some requests before the crash
        _crash_and_recover(endpoints, state_file, lambda: list(stderr), digits_sample, remains)
    finally:
        assert finish(process) == 0
    remains.assert_gone()
    assert not state_file.exists() and not state_file.with_suffix(".prom").exists()


def test_background_serve_restarts_triton_killed_by_class_count_on_labels(digits_repository, digits_sample,
                                                                          tmp_path):
    from triton_deploy.cli import main

    state_file = tmp_path / "serve.json"
    http, grpc, metrics = free_ports(3)
    command = [sys.executable, "-m", "triton_deploy.cli", "serve", "--repository", str(digits_repository), "--json",
               "--background", "--pid-file", str(state_file), "--exit-timeout", "5", "--http-port", str(http),
               "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    started = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    endpoints = json.loads(started.stdout)
    assert "admin_key" not in endpoints and endpoints["pid"] != endpoints["triton_pid"]  # the supervisor's pid
    remains = ServerRemains()
    try:
        remains.note(endpoints["triton_pid"])
        log = Path(endpoints["log"])
        # One crash: the foreground test crashes it over each protocol; what is new here is the detached supervisor.
        _crash_and_recover(endpoints, state_file, lambda: log.read_text(errors="replace").splitlines(),
                           digits_sample, remains, protocols=("grpc",))
    finally:
        assert main(["stop", "--pid-file", str(state_file), "-q"]) == 0
    remains.assert_gone()
    assert not state_file.exists() and not state_file.with_suffix(".prom").exists()


def test_sigkill_of_triton_then_of_serve_itself_leaves_no_stub_and_no_region(digits_repository, digits_sample,
                                                                            tmp_path, capsys):
    from triton_deploy.cli import main

    blobs, labels = digits_sample
    state_file = tmp_path / "serve.json"
    process, endpoints, stderr = serve(digits_repository, "--exit-timeout", "5", "--pid-file", str(state_file))
    remains = ServerRemains()
    try:
        first = endpoints["triton_pid"]
        remains.note(first)
        os.kill(first, signal.SIGKILL)  # Triton alone: its stubs are orphaned, serve kills them and restarts
        assert classifies_correctly("http", endpoints["http"], blobs, labels) < RECOVERY_S
        wait_for(lambda: any("ready again" in line for line in stderr), 60, "the ready-again notice")
        assert any("Triton died of SIGKILL (out of memory, or killed)" in line and "restarting (1/5)" in line
                   for line in stderr)
        assert group_members(first) == []  # the first server's stubs are gone already
        remains.note(json.loads(state_file.read_text())["triton_pid"])
        process.kill()  # serve itself: its Triton gets the parent-death signal, drains and stops its stubs
        process.wait(timeout=10)
        remains.assert_gone()
    finally:
        finish(process)
    # The state file of the killed serve is left; stop sees nothing running, says so and removes it.
    assert main(["stop", "--pid-file", str(state_file)]) == 0
    assert "was not running" in capsys.readouterr().err and not state_file.exists()
