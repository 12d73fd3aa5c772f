"""The process of a running ``tritonserver``: start, health, stop.

``TritonServer`` starts the binary of a ``ServerInstallation`` with ``ServerOptions``, waits for
``/v2/health/ready``, and turns the usual failures (port in use, a model that fails to load, a missing library)
into one clear ``ServerError`` that quotes Triton's own message.

Two things Triton 2.51 does not do by itself are done here. With ``keep_healthy_models`` a model that fails to load
no longer stops the server: the healthy ones serve, readiness stays false (strict readiness) and the failures are
read from the repository index. And a python-backend stub that dies leaves Triton answering "Stub process ... is
not healthy" forever while it still reports ready; ``dead_stubs()`` finds such stubs so a supervisor
(``supervisor.supervise``) can restart the server, and ``stop()`` unlinks the shared-memory regions a dead stub
leaves in ``/dev/shm``.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from triton_deploy.contract import ADMIN_HEADER
from triton_deploy.errors import ServerError

from . import supervisor
from .install import ServerInstallation
from .options import KEY_PLACEHOLDER, KEY_VARIABLE, ServerOptions, effective_http_max_input_size, server_command


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS says are free right now (for tests and scripts)."""
    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((host, 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version (\d+): (.*)")
# A config.pbtxt Triton cannot parse never reaches "failed to load": it is reported while polling the repository.
_POLL_FAILURE = re.compile(r"Poll failed for model directory '([^']+)': (.*)")
_ENSEMBLE_STEP = re.compile(r'^\s*model_name:\s*"([^"]+)"', re.M)
# A stub that dies at start-up (e.g. on a repository path with a space: "std::invalid_argument ... what(): stol")
# leaves Triton waiting for it without a word of its own; its C++ runtime writes these two lines to the shared log.
_STUB_ABORT = re.compile(r"terminate called after throwing an instance of '([^']+)'")
_STUB_ABORT_WHAT = re.compile(r"^\s*what\(\):\s*(.*)")
# Error lines every healthy CPU-only start logs: never the reason a start failed.
_HARMLESS = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML", "DCGM")
_REQUESTS = re.compile(r'^nv_inference_request_(?:success|failure)\{model="([^"]+)"[^}]*\}\s+(\S+)', re.M)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int):
    """A preexec function: the kernel sends Triton SIGTERM when the thread that started it ends, so a ``serve`` that
    is SIGKILLed still has its Triton drain and stop its stubs (which then unlink their regions)."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls into it

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


@dataclass
class TritonServer:
    """A running tritonserver. ``with TritonServer(options) as server:`` starts it and waits until it is ready."""

    options: ServerOptions
    installation: ServerInstallation | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    admin_key: str = field(default="", init=False)
    log_path: Path | None = field(default=None, init=False)
    failed_models: dict[str, str] = field(default_factory=dict, init=False)  # keep_healthy_models: name -> reason
    stubs: dict[int, str] = field(default_factory=dict, init=False)  # python-backend stub pid -> model instance
    shm_regions: set[str] = field(default_factory=set, init=False)  # /dev/shm files the server has mapped
    key_on_command_line: bool = field(default=False, init=False)  # readable by every local user (no C compiler)
    log_offset: int = field(default=0, init=False)  # where this start's lines begin in a log shared by restarts

    @property
    def http_url(self) -> str:
        return f"{self.options.host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.options.metrics_port}/metrics"

    @property
    def http_max_input_size(self) -> int | None:
        """The HTTP request-body cap in force (bytes), or None when this binary has no such cap."""
        installation = self.installation or ServerInstallation.discover()
        self.installation = installation
        return effective_http_max_input_size(self.options, installation)

    def version(self) -> str | None:
        """The server's own version from its metadata endpoint (e.g. "2.51.0"), or None if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2", timeout=2) as response:
                return json.loads(response.read()).get("version")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def __enter__(self) -> TritonServer:
        self._start_until_ready()
        return self

    def _start_until_ready(self) -> None:
        """Start and wait for readiness; a server that never gets ready is stopped, not left behind."""
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        options = self.options
        installation = self.installation or ServerInstallation.discover()
        self.installation = installation
        options.check(installation)  # the exposure policy, before anything else
        repository = Path(options.repository)
        if not repository.is_dir():
            raise ServerError(f"model repository {repository} does not exist", hint="check --repository")
        if not any(repository.glob("*/config.pbtxt")):
            raise ServerError(f"{repository} holds no models (no */config.pbtxt)", hint="run 'triton-deploy repo'")
        for flag, port in options.ports.items():
            if not port_is_free(options.host, port):
                raise ServerError(f"port {port} on {options.host} is already in use", hint=f"choose another {flag}")
        self.admin_key = options.admin_key or self.admin_key or secrets.token_urlsafe(24)  # kept over restarts
        self.failed_models, self.stubs = {}, {}
        environment = installation.environment()
        shim = installation.key_shim if options.restrict_apis else None
        if shim is not None:  # the key travels in the environment (owner-only in /proc), not on the command line
            command = server_command(options, installation, KEY_PLACEHOLDER)
            environment |= {KEY_VARIABLE: self.admin_key,
                            "LD_PRELOAD": " ".join(filter(None, [str(shim), environment.get("LD_PRELOAD")]))}
        else:
            command = server_command(options, installation, self.admin_key)
        self.key_on_command_line = options.restrict_apis and shim is None
        # Triton writes to a log file rather than a pipe, so a server started with --background outlives us and
        # start-up failures can still be read back and quoted.
        self.log_path = Path(options.log_file) if options.log_file else Path(tempfile.gettempdir()) / (
            f"triton-deploy-{os.getpid()}-{options.http_port}.log")
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServerError(f"cannot create {self.log_path.parent}: {exc.strerror}", hint="check --log-file") from None
        # The parent-death signal is per thread (it fires when the starting thread ends), so only a server started
        # from the main thread gets it; a worker thread that starts one may end while the server is still in use.
        preexec = _die_with_parent(os.getpid()) if threading.current_thread() is threading.main_thread() else None
        try:
            log = open(self.log_path, "ab")  # noqa: SIM115 - closed below, once Triton holds its own descriptor
        except OSError as exc:
            raise ServerError(f"cannot write Triton's log {self.log_path}: {exc.strerror}",
                              hint="check --log-file") from None
        with log:
            self.log_offset = log.seek(0, os.SEEK_END)
            try:
                # A session of its own: Triton and its stubs share a process group, found again after a crash.
                self.process = subprocess.Popen(command, env=environment, stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, preexec_fn=preexec)
            except OSError as exc:
                raise ServerError(f"cannot start {installation.binary}: {exc.strerror}") from None

    def log_tail(self, lines: int = 40) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]

    def load_failures(self) -> list[str]:
        """Triton's own 'failed to load' messages from the log, one per model version."""
        failures = []
        for line in self.log_tail(2000):
            match = _LOAD_FAILURE.search(line)
            if match:
                failures.append(f"model '{match.group(1)}' version {match.group(2)}: {match.group(3).strip()}")
                continue
            match = _POLL_FAILURE.search(line)
            if match:
                failures.append(f"model '{match.group(1)}': {match.group(2).strip().rstrip(chr(34))}")
        return failures

    def is_ready(self) -> bool:
        return self._health("ready")

    def is_live(self) -> bool:
        return self._health("live")

    def _health(self, which: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/{which}", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def model_states(self) -> list[dict]:
        """Triton's repository index: one entry per model version with ``state`` and, when it failed, ``reason``.
        (A model whose config could not be parsed has a name only.) Uses the admin key: the API is restricted."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST",
                                         headers={ADMIN_HEADER: self.admin_key, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def _healthy_models_ready(self) -> bool:
        """keep_healthy_models: true once loading is over (the HTTP endpoint only opens after the initial load)
        and at least one model serves; failures are recorded in ``failed_models``, all failing is an error."""
        if not self.is_live():
            return False
        try:
            states = self.model_states()
        except (urllib.error.URLError, OSError, ValueError):
            return False
        if any(entry.get("state") in ("LOADING", "UNLOADING") for entry in states):
            return False
        polled = {m.group(1): m.group(2).strip().rstrip('"') for m in map(_POLL_FAILURE.search, self.log_tail(2000))
                  if m}
        not_ready = {entry["name"] for entry in states if entry.get("state") != "READY"}
        self.failed_models = {entry["name"]: entry.get("reason") or polled.get(entry["name"]) or
                              self._failed_steps(entry["name"], not_ready) or
                              "configuration could not be read (see the log)"
                              for entry in states if entry["name"] in not_ready}
        if not any(entry.get("state") == "READY" for entry in states):
            raise ServerError(self._failure_message("has no model that loaded"), hint="fix the models named above")
        return True

    def _failed_steps(self, name: str, not_ready: set[str]) -> str | None:
        """For an ensemble Triton gives no reason of its own: name the steps that did not load."""
        try:
            config = (Path(self.options.repository) / name / "config.pbtxt").read_text()
        except OSError:
            return None
        steps = [step for step in dict.fromkeys(_ENSEMBLE_STEP.findall(config)) if step in not_ready]
        if not steps:
            return None
        return f"ensemble step{'s' if len(steps) > 1 else ''} {', '.join(repr(s) for s in steps)} failed to load"

    def wait_ready(self, timeout_s: float | None = None, on_tick=None) -> None:
        """Block until ``/v2/health/ready`` answers 200 (with ``keep_healthy_models``: until loading is over and a
        model serves); the server exiting first is a ``ServerError``."""
        deadline = time.monotonic() + (timeout_s or self.options.ready_timeout_s)
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(self._failure_message("exited during start-up"))
            if (abort := self.stub_abort()) is not None:
                self.stop()
                raise ServerError(f"a python-backend stub died while Triton started: {abort} (log: {self.log_path})",
                                  hint="see the log")
            if self.is_ready() or (self.options.keep_healthy_models and self._healthy_models_ready()):
                self.stubs = supervisor.stub_processes(self.process.pid)
                self._note_shm_regions()
                return
            if on_tick is not None:
                on_tick()
            time.sleep(0.25)
        raise ServerError(self._failure_message(f"was not ready after {timeout_s or self.options.ready_timeout_s:.0f} s"),
                          hint="raise --ready-timeout or check the log")

    def _failure_message(self, what: str) -> str:
        code = self.process.poll() if self.process else None
        status = f" with status {code}" if code is not None else ""
        failures = self.load_failures()
        if failures:
            return f"tritonserver {what}{status}: failed to load " + "; ".join(failures)
        tail = [line for line in self.log_tail(200) if not any(h in line for h in _HARMLESS)]
        errors = [line for line in tail if line.startswith("E") or "error" in line.lower()]
        detail = errors[-1] if errors else (tail[-1] if tail else "no output")
        if "error while loading shared libraries" in detail:
            detail += " (the python-backend stub needs the system package libpython3.11: run 'make setup')"
        return f"tritonserver {what}{status}: {detail} (log: {self.log_path})"

    def stub_abort(self) -> str | None:
        """The error of a stub that aborted, quoted from the log ("std::invalid_argument: stol"), or None."""
        if self.log_path is None or not self.log_path.exists():
            return None
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            tail = log.read().decode(errors="replace").splitlines()[-400:]
        for i, line in enumerate(tail):
            if (match := _STUB_ABORT.search(line)) is not None:
                what = next((m.group(1) for m in map(_STUB_ABORT_WHAT.match, tail[i + 1:i + 3]) if m), "")
                return f"{match.group(1)}: {what}" if what else match.group(1)
        return None

    def requests_served(self, default: int = 0) -> int:
        """Inference requests this server has answered or failed so far, from its metrics (an ensemble's steps are
        not counted again); ``default`` when the metrics do not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=1) as response:
                text = response.read().decode(errors="replace")
        except (urllib.error.URLError, OSError, ValueError):
            return default
        steps = set()
        for config in Path(self.options.repository).glob("*/config.pbtxt"):
            steps |= set(_ENSEMBLE_STEP.findall(config.read_text(errors="replace")))
        return int(sum(float(value) for model, value in _REQUESTS.findall(text) if model not in steps))

    def started(self) -> subprocess.Popen:
        """The server's process; a ``ServerError`` before ``start()``."""
        if self.process is None:
            raise ServerError("the Triton server has not been started")
        return self.process

    # ---- python-backend stubs and their shared memory (see supervisor.py) ------------------------------------

    def dead_stubs(self) -> dict[int, str]:
        """Stubs seen at start-up that have since exited (Triton 2.51 neither restarts them nor turns unready)."""
        return supervisor.dead_stubs(self.stubs)

    def _note_shm_regions(self) -> None:
        """Remember the python backend's /dev/shm regions this server has mapped (they grow with large inputs)."""
        if self.process is not None:
            self.shm_regions |= supervisor.mapped_shm_regions(self.process.pid)

    def resource_usage(self) -> dict[str, int]:
        """Resident memory (bytes) of the server and each of its stubs, and the size of its /dev/shm regions."""
        usage = supervisor.process_memory(self.started().pid)
        if not usage:
            return {}
        self._note_shm_regions()
        usage["shm"] = sum(os.path.getsize(p) for p in self.shm_regions if os.path.exists(p))
        return usage

    def poll(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for the server to exit; its status, or None while it runs."""
        try:
            return self.started().wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._note_shm_regions()
            return None

    def restart(self) -> None:
        """Stop (draining) and start again on the same ports with the same admin key; wait until ready."""
        self.stop()
        self._start_until_ready()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float | None = None) -> int | None:
        """Ask Triton to drain and exit (SIGTERM); kill it if it outlives the exit timeout plus a margin. Then
        unlink any python-backend shared-memory region it left behind."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._note_shm_regions()
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s or self.options.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Stubs outlive a Triton that crashed or was killed (and ignore SIGTERM): kill them, collect their regions.
        self.shm_regions |= supervisor.reap_group(self.process.pid)
        supervisor.unlink_regions(self.shm_regions)  # after the exit: a dead stub's regions nobody unlinked
        self.shm_regions = set()
        supervisor.remove_stub_bytecode(Path(self.options.repository))
        return self.process.returncode

    def wait(self) -> int:
        return self.started().wait()
