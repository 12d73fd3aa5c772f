"""Faults with the real server: killed mid-load, SIGTERM under load, models that fail to load, and a python-backend
stub that dies. Every request is accounted for: answered, or refused with a clear error; none may vanish."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import encode_digit
from triton_deploy.clients import ImageClassifier, ServerUnavailableError
from triton_deploy.errors import ServerError
from triton_deploy.server import (
    SHM_REGION_PREFIX,
    ServerOptions,
    SupervisionPolicy,
    TritonServer,
    free_ports,
    supervise,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]


def serve(repository: Path, *flags: str) -> tuple[subprocess.Popen, dict, list[str]]:
    """``triton-deploy serve --json`` as a subprocess; returns it, its endpoints, and a list its stderr lines are
    appended to by a reader thread."""
    http, grpc, metrics = free_ports(3)
    command = [sys.executable, "-m", "triton_deploy.cli", "serve", "--repository", str(repository), "--json",
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True).start()
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=30)
        raise AssertionError(f"serve exited with {process.returncode}: {''.join(stderr)}")
    return process, json.loads(line), stderr


def finish(process: subprocess.Popen, timeout: float = 60) -> int:
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()


def mapped_regions(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line.split(None, 5)[5].removesuffix(" (deleted)") for line in maps.splitlines() if SHM_REGION_PREFIX in line}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# ---- the server is killed during a load test ----------------------------------------------------------------


def test_clients_report_a_killed_server_retry_and_recover_once_it_is_back(digits_repository, heldout_digits, tmp_path):
    images, labels = heldout_digits
    blobs = [encode_digit(p) for p in images[:8]]
    http, grpc, metrics = free_ports(3)
    options = ServerOptions(digits_repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            log_file=tmp_path / "triton.log", exit_timeout_s=5)
    first = TritonServer(options)
    restarted = None
    with first:
        regions = mapped_regions(first.process.pid)
        clients = {"http": ImageClassifier(first.http_url, protocol="http", retries=1, backoff=0.05),
                   "grpc": ImageClassifier(first.grpc_url, protocol="grpc", retries=1, backoff=0.05)}
        # Retries with exponential backoff (0.5 s doubling, capped at 5 s): enough to wait out a restart.
        patient = ImageClassifier(first.grpc_url, protocol="grpc", retries=8, backoff=0.5)
        for client in clients.values():
            assert [p.label for p in client.classify(blobs)] == [p.label for p in clients["http"].classify(blobs)]
        os.killpg(first.process.pid, signal.SIGKILL)  # the whole server: Triton and its stubs, no drain
        first.process.wait()
        # A request while nothing listens: a typed error naming the address, after the client's retries.
        for name, client in clients.items():
            with pytest.raises(ServerUnavailableError) as raised:
                client.classify(blobs[:2])
            assert (first.http_url if name == "http" else first.grpc_url) in str(raised.value)
        # A patient client's request sent while the server is down completes once it is back.
        outcome: dict = {}

        def ride_through():
            try:
                outcome["labels"] = [p.class_id for p in patient.classify(blobs)]
            except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                outcome["error"] = exc

        rider = threading.Thread(target=ride_through)
        rider.start()
        time.sleep(0.3)
        restarted = TritonServer(options)
        with restarted:
            rider.join(timeout=60)
            assert "error" not in outcome, outcome.get("error")
            assert np.mean(np.array(outcome["labels"]) == labels[:8]) >= 0.75
            # The client that failed during the outage works again without being rebuilt.
            assert len(clients["http"].classify(blobs)) == 8
        for client in (*clients.values(), patient):
            client.close()
    # The killed server's python-backend regions were unlinked by stop(), not left in /dev/shm.
    assert regions and not [r for r in regions if os.path.exists(r)]


def _wait_for_answered_requests(folder: Path, timeout_s: float = 60.0) -> None:
    """Until the history of the Locust run under ``folder`` counts answered requests (it is written every second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in folder.glob("loadtest-*/locust_stats_history.csv"):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
            if rows and int(rows[-1]["Total Request Count"]) > int(rows[-1]["Total Failure Count"]):
                return
        time.sleep(0.5)
    raise AssertionError(f"no answered request in the Locust history under {folder} within {timeout_s:g} s")


def test_locust_runs_over_both_protocols_count_a_killed_server_as_failures_and_recover_once_it_is_back(
        digits_repository, tmp_path):
    """gRPC and HTTP users at once, each run against its own server, both servers killed and restarted together (one
    outage's wait for both protocols): each run counts the outage's failures, names them, answers again once its
    server is back on the same ports, and says its server restarted (Triton's counters are the run's own only when it
    is the server's one client, hence a server each)."""
    from triton_deploy.loadtests.runner import LoadTestOptions, run_loadtest
    from triton_deploy.loadtests.slo import SLO

    protocols = ("grpc", "http")
    servers = {}
    for protocol in protocols:
        http, grpc, metrics = free_ports(3)
        options = ServerOptions(digits_repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                log_file=tmp_path / f"triton-{protocol}.log", exit_timeout_s=5)
        servers[protocol] = (TritonServer(options), TritonServer(options))
    outcomes: dict = {protocol: {} for protocol in protocols}

    def load(protocol: str) -> None:
        first = servers[protocol][0]
        try:
            outcomes[protocol]["result"] = run_loadtest(LoadTestOptions(
                output=tmp_path / protocol, url=first.grpc_url if protocol == "grpc" else first.http_url,
                metrics_url=first.metrics_url, protocol=protocol, users=2, duration_s=26, pool_size=16,
                slo=SLO(error_rate=None)))  # the outage's failures are expected: counted, not gated
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcomes[protocol]["error"] = exc

    with contextlib.ExitStack() as first_servers:
        for first, _ in servers.values():
            first_servers.enter_context(first)
        runners = [threading.Thread(target=load, args=(protocol,)) for protocol in protocols]
        for runner in runners:
            runner.start()
        for protocol in protocols:
            _wait_for_answered_requests(tmp_path / protocol)  # Locust's start takes 5-15 s on a busy machine
        time.sleep(2)  # and loads for a few seconds
        for first, _ in servers.values():
            os.killpg(first.process.pid, signal.SIGKILL)
        for first, _ in servers.values():
            first.process.wait()
        killed_at = time.time()
        time.sleep(2)
    with contextlib.ExitStack() as restarted_servers:  # same ports, while Locust keeps sending
        for _, restarted in servers.values():
            restarted_servers.enter_context(restarted)
        back_at = time.time()
        for runner in runners:
            runner.join(timeout=120)
    for protocol in protocols:
        _assert_counted_and_recovered(protocol, outcomes[protocol], killed_at, back_at)


def _assert_counted_and_recovered(protocol: str, outcome: dict, killed_at: float, back_at: float) -> None:
    assert "error" not in outcome, f"{protocol}: {outcome.get('error')}"
    result = outcome["result"]
    run = result.summary["runs"][0]
    assert 0 < run["failures"] < run["requests"], (protocol, run)
    # Each failure says what happened, in Locust's failure report.
    with open(result.directory / "locust_failures.csv", newline="") as f:
        errors = [row["Error"] for row in csv.DictReader(f)]
    assert errors and all(REFUSALS.search(error) for error in errors), (protocol, errors)
    # Locust's per-second history: requests succeed again after the restart, and the last seconds have no failures.
    with open(result.directory / "locust_stats_history.csv", newline="") as f:
        rows = [(int(r["Timestamp"]), int(r["Total Request Count"]), int(r["Total Failure Count"]))
                for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    succeeded = {t: total - failed for t, total, failed in rows}
    # The first second in which a request failed no more: how long after the restart the users recovered.
    recovered = next((t for (t, _n, failed), (_t, _n2, later) in zip(rows, rows[1:]) if t >= back_at and failed == later),
                     None)
    print(f"{protocol} Locust run with the server killed for 2 s:", json.dumps(
        {k: run[k] for k in ("requests", "failures")} | {"errors": sorted(set(errors)),
                                                           "recovered_s_after_ready": recovered and recovered - back_at}))
    before_kill = max(n for t, n in succeeded.items() if t <= killed_at)
    at_restart = max(n for t, n in succeeded.items() if t <= back_at)
    assert before_kill > 0 and succeeded[rows[-1][0]] > at_restart, (protocol, rows)
    assert rows[-1][2] == rows[-3][2] and rows[-1][1] > rows[-3][1], (protocol, rows)  # recovered: no new failures
    # Triton's counters restarted with the server: the report says so instead of showing negative figures.
    assert run.get("server_note", "").startswith("the server restarted"), protocol
    assert all(t["requests"] >= 0 for t in run["server"].values()), protocol


# ---- SIGTERM during load ------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every request a load thread sent, and how it ended."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    answered: list[tuple[float, float]] = field(default_factory=list)  # (sent at, answered at)
    refused: list[tuple[float, str]] = field(default_factory=list)  # (sent at, error)
    vanished: list[tuple[float, str]] = field(default_factory=list)  # timeouts and anything unexplained


# How Triton 2.51 turns new requests away after SIGTERM: gRPC answers UNAVAILABLE "Server is stopping"; the HTTP
# endpoint closes new connections without an answer; once the process is gone, connections are refused.
REFUSALS = re.compile(r"Server is stopping|connection closed|Connection refused|failed to connect|"
                      r"Socket closed|reset by peer|Broken pipe|UNAVAILABLE", re.I)
# A request sent within this long before the signal may reach the server on either side of it.
SIGNAL_SLACK_S = 0.02


def _load_thread(protocol: str, url: str, batch: np.ndarray, ledger: Ledger, stop: threading.Event) -> None:
    module = httpclient if protocol == "http" else grpcclient
    refusals_in_a_row = 0
    while not stop.is_set() and refusals_in_a_row < 3:
        client = module.InferenceServerClient(url, network_timeout=30.0) if protocol == "http" else \
            module.InferenceServerClient(url)
        image = module.InferInput("IMAGE", list(batch.shape), "BYTES")
        image.set_data_from_numpy(batch)
        with ledger.lock:
            ledger.sent += 1
        started = time.monotonic()
        try:
            kwargs = {"client_timeout": 30.0} if protocol == "grpc" else {}
            result = client.infer("digits", [image], **kwargs)
            assert result.as_numpy("CLASS_IDS").shape == (len(batch), 5)
            with ledger.lock:
                ledger.answered.append((started, time.monotonic()))
            refusals_in_a_row = 0
        except Exception as exc:  # noqa: BLE001 - every outcome is sorted into the ledger
            text = f"{type(exc).__name__}: {exc}"
            with ledger.lock:
                if REFUSALS.search(text):
                    ledger.refused.append((started, text))
                else:
                    ledger.vanished.append((started, f"{protocol}: {text}"))
            refusals_in_a_row += 1
            time.sleep(0.05)
        finally:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass


def test_sigterm_under_load_drains_accepted_requests_refuses_new_ones_and_exits_zero(digits_repository,
                                                                                       heldout_digits):
    images, _ = heldout_digits
    batch = np.array([encode_digit(p, size=160) for p in images[:16]], dtype=np.object_).reshape(-1, 1)
    process, endpoints, stderr = serve(digits_repository, "--exit-timeout", "20")
    ledger, stop = Ledger(), threading.Event()
    threads = [threading.Thread(target=_load_thread, args=(protocol, endpoints[protocol], batch, ledger, stop))
               for protocol in ("http", "grpc") * 3]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(ledger.answered) >= 20, 60, "20 answered requests before SIGTERM")
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
        exited = time.monotonic()
        time.sleep(0.5)  # new requests after the exit are refused too
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        finish(process)
    in_flight = [(s, a) for s, a in ledger.answered if s < signalled < a]
    refused_in_flight = [(s, e) for s, e in ledger.refused if s < signalled - SIGNAL_SLACK_S]
    figures = {"sent": ledger.sent, "answered": len(ledger.answered), "refused": len(ledger.refused),
               "vanished": len(ledger.vanished), "in_flight_at_sigterm_answered": len(in_flight),
               "drain_s": round(exited - signalled, 2)}
    print("SIGTERM under load:", json.dumps(figures))
    assert status == 0, "".join(stderr)
    assert ledger.vanished == [], ledger.vanished[:3]
    assert ledger.sent == len(ledger.answered) + len(ledger.refused)  # none vanished
    assert len(ledger.refused) >= 1  # requests after SIGTERM were refused, with a reason...
    assert all(REFUSALS.search(text) for _s, text in ledger.refused)
    assert refused_in_flight == []  # ...but none that had been sent before it
    assert all(a <= exited for _s, a in ledger.answered)


# ---- models that fail to load -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository_with_broken_models(digits_repository, tmp_path_factory) -> Path:
    """The digits repository plus a classifier whose ONNX file is corrupt and a model whose config is malformed."""
    repository = tmp_path_factory.mktemp("broken") / "repository"
    shutil.copytree(digits_repository, repository)
    spare = repository / "spare_classifier"
    shutil.copytree(repository / "digits_classifier", spare)
    config = spare / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "digits_classifier"', 'name: "spare_classifier"'))
    (spare / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    ensemble = repository / "spare"  # an ensemble whose classifier step is the broken one
    shutil.copytree(repository / "digits", ensemble)
    config = ensemble / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "digits"', 'name: "spare"')
                      .replace('model_name: "digits_classifier"', 'model_name: "spare_classifier"'))
    (repository / "bad_config").mkdir()
    (repository / "bad_config" / "config.pbtxt").write_text('name: "bad_config"\nbackend: "python"\nmax_batch_sise: 4\n')
    return repository


def test_by_default_serve_fails_fast_naming_each_broken_model(repository_with_broken_models, capsys):
    from triton_deploy.cli import main

    http, grpc, metrics = free_ports(3)
    code = main(["serve", "--repository", str(repository_with_broken_models), "--http-port", str(http),
                 "--grpc-port", str(grpc), "--metrics-port", str(metrics), "-q"])
    error = capsys.readouterr().err
    assert code == ServerError.exit_code
    assert "exited during start-up with status 1" in error
    assert "model 'spare_classifier' version 1" in error and "INVALID_PROTOBUF" in error
    assert "model 'bad_config': failed to read text proto" in error


def test_keep_healthy_models_serves_the_rest_while_readiness_reports_the_failure(repository_with_broken_models,
                                                                                   heldout_digits):
    images, labels = heldout_digits
    process, endpoints, stderr = serve(repository_with_broken_models, "--keep-healthy-models")
    try:
        assert set(endpoints["failed_models"]) == {"spare_classifier", "bad_config", "spare"}
        assert "INVALID_PROTOBUF" in endpoints["failed_models"]["spare_classifier"]
        client = httpclient.InferenceServerClient(endpoints["http"])
        assert client.is_server_live() and not client.is_server_ready()  # strict readiness: a model is missing
        assert client.is_model_ready("digits") and not client.is_model_ready("spare_classifier")
        client.close()  # an idle keep-alive HTTP connection would hold Triton's shutdown for the whole exit timeout
        with ImageClassifier(endpoints["grpc"], protocol="grpc") as classifier:
            found = classifier.classify([encode_digit(p) for p in images[:16]])
        assert np.mean([p.class_id == label for p, label in zip(found, labels[:16])]) >= 0.9
        wait_for(lambda: any("spare_classifier" in line for line in stderr), 10, "the failure on stderr")
    finally:
        assert finish(process) == 0
    assert any(re.search(r"model 'spare_classifier' failed to load and is not served .*INVALID_PROTOBUF", line)
               for line in stderr)


def test_keep_healthy_models_says_not_ready_names_the_failed_ensemble_step_and_how_to_stop(
        repository_with_broken_models, tmp_path, capsys):
    from triton_deploy.cli import main

    http, grpc, metrics = free_ports(3)
    state = tmp_path / "serve.json"
    assert main(["serve", "--repository", str(repository_with_broken_models), "--keep-healthy-models", "--background",
                 "--pid-file", str(state), "--http-port", str(http), "--grpc-port", str(grpc),
                 "--metrics-port", str(metrics)]) == 0
    try:
        err = " ".join(capsys.readouterr().err.split())
        assert "Triton is ready" not in err
        assert f"Triton is serving the models that loaded, not ready (3 failed, listed below): HTTP 127.0.0.1:{http}" \
               in err
        assert "model 'spare' failed to load and is not served (readiness stays false): ensemble step " \
               "'spare_classifier' failed to load" in err
        assert f"stop it with 'triton-deploy stop --pid-file {state}'" in err
    finally:
        assert main(["stop", "--pid-file", str(state), "-q"]) == 0


# ---- a python-backend stub dies -----------------------------------------------------------------------------


def test_a_dead_python_backend_stub_is_reported_and_serve_restarts_triton(digits_repository, heldout_digits):
    import psutil

    images, labels = heldout_digits
    blobs = [encode_digit(p) for p in images[:8]]
    process, endpoints, stderr = serve(digits_repository, "--exit-timeout", "5")
    try:
        triton = psutil.Process(endpoints["triton_pid"])
        stubs = {c.pid: c.cmdline()[1] for c in triton.children()}
        victim = next(pid for pid, path in stubs.items() if "_preprocess" in path)
        regions = mapped_regions(triton.pid)
        with ImageClassifier(endpoints["http"], retries=10, backoff=0.5) as client:
            before = [p.class_id for p in client.classify(blobs)]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: any("died; restarting Triton" in line for line in stderr), 30, "the restart notice")
            wait_for(lambda: any("ready again" in line for line in stderr), 90, "Triton ready again")
            # The same client is served again (its retries ride over the restart's short outage).
            assert [p.class_id for p in client.classify(blobs)] == before
        notice = next(line for line in stderr if "died" in line)
        assert f"stub 'digits_preprocess_0_0' (pid {victim}) died; restarting Triton (1/5)" in notice
        assert not psutil.pid_exists(triton.pid) or psutil.Process(triton.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        assert finish(process) == 0
    assert np.mean(np.array(before) == labels[:8]) >= 0.75
    assert not [r for r in regions if os.path.exists(r)]  # the dead stub's shared memory was unlinked


def test_stub_failure_exit_mode_stops_with_a_clear_error(digits_repository):
    import psutil

    process, endpoints, stderr = serve(digits_repository, "--stub-failure", "exit", "--exit-timeout", "5")
    try:
        victim = next(c.pid for c in psutil.Process(endpoints["triton_pid"]).children()
                      if "_postprocess" in c.cmdline()[1])
        os.kill(victim, signal.SIGKILL)
        assert process.wait(timeout=60) == ServerError.exit_code
    finally:
        finish(process)
    assert any(f"stub 'digits_postprocess_0_0' (pid {victim}) died; Triton stopped after 0 restart(s)" in line
               for line in stderr)


def test_the_supervisor_restarts_triton_for_a_dead_stub_and_stops_it_past_the_restart_limit(digits_repository,
                                                                                           heldout_digits, tmp_path):
    """``supervise`` driven directly, without the CLI: a killed stub is reported, Triton restarts and the model
    serves again; the next dead stub, past ``max_restarts``, stops Triton with a ServerError; no region is left."""
    images, _ = heldout_digits
    blobs = [encode_digit(p) for p in images[:8]]
    http, grpc, metrics = free_ports(3)
    server = TritonServer(ServerOptions(digits_repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                        log_file=tmp_path / "triton.log", exit_timeout_s=5))
    notices: list[str] = []
    outcome: dict = {}

    def run_supervisor():
        try:
            outcome["status"] = supervise(server, SupervisionPolicy("restart", max_restarts=1), notices.append,
                                          poll_s=0.2, handle_signals=False)  # signal handlers: main thread only
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcome["error"] = exc

    def kill_stub(model: str) -> tuple[int, str]:
        victim, name = next((pid, name) for pid, name in server.stubs.items() if name.startswith(model + "_"))
        os.kill(victim, signal.SIGKILL)
        return victim, name

    with server:
        first = server.started().pid
        regions = mapped_regions(first)
        supervisor = threading.Thread(target=run_supervisor)
        supervisor.start()
        try:
            with ImageClassifier(server.grpc_url, protocol="grpc", retries=10, backoff=0.5) as client:
                before = [p.class_id for p in client.classify(blobs)]
                victim, name = kill_stub("digits_preprocess")
                wait_for(lambda: len(notices) >= 2, 90, "the restart and ready-again notices")
                assert notices[0] == f"python-backend stub '{name}' (pid {victim}) died; restarting Triton (1/1)"
                second = server.started().pid
                assert second != first and notices[1] == f"Triton is ready again (pid {second})"
                now = mapped_regions(second)
                assert not [r for r in regions - now if os.path.exists(r)]  # the first server's were unlinked
                regions |= now
                assert [p.class_id for p in client.classify(blobs)] == before  # the same client, served again
            victim, name = kill_stub("digits_postprocess")
            supervisor.join(timeout=60)
        finally:
            if supervisor.is_alive():
                server.stop()
                supervisor.join(timeout=60)
    assert "status" not in outcome and isinstance(outcome.get("error"), ServerError), outcome
    assert f"stub '{name}' (pid {victim}) died; Triton stopped after 1 restart(s)" in str(outcome["error"])
    assert server.started().poll() is not None and len(notices) == 2
    assert regions and not [r for r in regions if os.path.exists(r)]  # both servers' regions were unlinked
