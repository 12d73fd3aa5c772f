"""Run the real ``tritonserver`` that the nvidia-pytriton wheel ships, on a model repository.

The wheel carries the server binary, its shared libraries and the python backend with one stub per Python version.
``ServerInstallation`` assembles a backend directory from those pieces; ``TritonServer`` starts the binary with
hardened defaults (loopback bind, model-control ``none``, strict readiness, restricted admin APIs), waits for
``/v2/health/ready``, and turns the usual failures (port in use, a model that fails to load, a missing library)
into one clear ``ServerError`` that quotes Triton's own message.

Two things Triton 2.51 does not do by itself are done here. With ``keep_healthy_models`` a model that fails to load
no longer stops the server: the healthy ones serve, readiness stays false (strict readiness) and the failures are
read from the repository index. And a python-backend stub that dies (killed, out of memory) leaves Triton answering
"Stub process ... is not healthy" forever while it still reports ready; ``dead_stubs()`` finds such stubs so a
supervisor (``triton-deploy serve``) can restart the server, and ``stop()`` unlinks the shared-memory regions a dead
stub leaves in ``/dev/shm``.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ServerError

RESTRICTED_APIS = ("model-repository", "model-config", "logging", "trace")
ADMIN_HEADER = "triton-admin-key"
# Caps the bytes of one HTTP request body. Triton gained it in 2025 (server PR #8174, 64 MiB default); the 2.51
# binary in the nvidia-pytriton wheel does not have it, so it is passed only to a binary whose --help lists it.
HTTP_MAX_INPUT_SIZE_FLAG = "--http-max-input-size"


@dataclass(frozen=True)
class ServerInstallation:
    """Where the server binary, its libraries and the prepared backend directory are."""

    binary: Path
    library_dir: Path
    backend_dir: Path

    @classmethod
    def discover(cls, cache_dir: Path | None = None) -> ServerInstallation:
        try:
            import pytriton
        except ImportError:
            raise ServerError("the nvidia-pytriton package is not installed; it provides the tritonserver binary",
                              hint="run 'make setup'") from None
        root = Path(pytriton.__file__).parent / "tritonserver"
        binary = root / "bin" / "tritonserver"
        library_dir = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
        python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / python_version / "triton_python_backend_stub"
        for required in (binary, stub, root / "backends" / "python" / "libtriton_python.so"):
            if not required.exists():
                raise ServerError(f"{required} is missing from the nvidia-pytriton installation")
        cache = cache_dir or Path(sys.prefix) / "var" / "triton-deploy" / f"backends-py{python_version}"
        backend_dir = cache
        python_dir = backend_dir / "python"
        if not (python_dir / "triton_python_backend_stub").exists():
            staging = backend_dir.with_name(backend_dir.name + f".tmp-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(root / "backends" / "python", staging / "python")
            shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
            shutil.rmtree(backend_dir, ignore_errors=True)
            staging.rename(backend_dir)
        return cls(binary, library_dir, backend_dir)

    @functools.cached_property
    def flags(self) -> frozenset[str]:
        """Every option this binary's ``--help`` lists (read once per installation; empty if it cannot run)."""
        try:
            result = subprocess.run([str(self.binary), "--help"], env=self.environment(), capture_output=True,
                                    text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return frozenset()
        return frozenset(re.findall(r"^\s+(--[a-z0-9][a-z0-9-]*)", result.stdout + result.stderr, flags=re.M))

    def supports(self, flag: str) -> bool:
        return flag in self.flags

    def environment(self) -> dict[str, str]:
        """os.environ plus the library path for the server and this environment's bin/ first on PATH, so the
        python-backend stub imports numpy, Pillow and onnxruntime from here."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.library_dir), env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
        return env


def remove_stub_bytecode(repository: Path) -> None:
    """Delete the ``__pycache__`` folders python-backend stubs wrote beside the models' modules.

    A stub imports ``model.py`` from the repository and caches its bytecode there; the stub's embedded Python is
    initialised in isolated mode, so ``PYTHONDONTWRITEBYTECODE`` cannot prevent it. The repository must stay what the
    generator wrote (the committed one is compared with a fresh one in the tests), and a bytecode cache is always
    safe to delete, so a stopped server leaves none behind."""
    for cache in Path(repository).glob("*/*/__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


@dataclass(frozen=True)
class ServerOptions:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    exit_timeout_s: int = 30
    strict_readiness: bool = True
    model_control_mode: str = "none"
    log_verbose: int = 0
    shm_default_bytes: int = 4 * 1024 * 1024
    shm_growth_bytes: int = 4 * 1024 * 1024
    restrict_apis: bool = True
    admin_key: str | None = None  # default: a random key per start
    ready_timeout_s: float = 120.0
    log_file: Path | None = None
    keep_healthy_models: bool = False  # serve what loads; readiness stays false while a model failed
    # Largest HTTP request body Triton accepts, in bytes: the preprocess model's per-image max_bytes (32 MiB).
    # Applied only where the binary has --http-max-input-size (not the 2.51 one in the wheel).
    http_max_input_size: int = 32 * 1024 * 1024
    extra_args: tuple[str, ...] = ()

    @property
    def ports(self) -> dict[str, int]:
        return {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}


def server_command(options: ServerOptions, installation: ServerInstallation, admin_key: str) -> list[str]:
    """The full tritonserver command line for ``options``."""
    host = options.host
    command = [
        str(installation.binary),
        f"--model-repository={Path(options.repository).absolute()}",
        f"--backend-directory={installation.backend_dir}",
        f"--http-address={host}", f"--http-port={options.http_port}",
        f"--grpc-address={host}", f"--grpc-port={options.grpc_port}",
        f"--metrics-address={host}", f"--metrics-port={options.metrics_port}",
        f"--model-control-mode={options.model_control_mode}",
        f"--strict-readiness={str(options.strict_readiness).lower()}",
        f"--exit-timeout-secs={options.exit_timeout_s}",
        f"--exit-on-error={str(not options.keep_healthy_models).lower()}",
        f"--log-verbose={options.log_verbose}",
        "--allow-gpu-metrics=false",
        f"--backend-config=python,shm-default-byte-size={options.shm_default_bytes}",
        f"--backend-config=python,shm-growth-byte-size={options.shm_growth_bytes}",
    ]
    if effective_http_max_input_size(options, installation) is not None:
        command.append(f"{HTTP_MAX_INPUT_SIZE_FLAG}={options.http_max_input_size}")
    if options.restrict_apis:
        apis = ",".join(RESTRICTED_APIS)
        command += [f"--http-restricted-api={apis}:{ADMIN_HEADER}={admin_key}",
                    f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={admin_key}"]
    return command + list(options.extra_args)


def effective_http_max_input_size(options: ServerOptions, installation: ServerInstallation) -> int | None:
    """The HTTP body cap the server will enforce: ``options.http_max_input_size``, or None when the binary cannot
    cap request bodies."""
    return options.http_max_input_size if installation.supports(HTTP_MAX_INPUT_SIZE_FLAG) else None


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
STUB_BINARY = "triton_python_backend_stub"
SHM_REGION_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


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
        repository = Path(options.repository)
        if not repository.is_dir():
            raise ServerError(f"model repository {repository} does not exist", hint="check --repository")
        if not any(repository.glob("*/config.pbtxt")):
            raise ServerError(f"{repository} holds no models (no */config.pbtxt)", hint="run 'triton-deploy repo'")
        for flag, port in options.ports.items():
            if not port_is_free(options.host, port):
                raise ServerError(f"port {port} on {options.host} is already in use", hint=f"choose another {flag}")
        installation = self.installation or ServerInstallation.discover()
        self.installation = installation
        self.admin_key = options.admin_key or self.admin_key or secrets.token_urlsafe(24)  # kept over restarts
        self.failed_models, self.stubs = {}, {}
        command = server_command(options, installation, self.admin_key)
        # Triton writes to a log file rather than a pipe, so a server started with --background outlives us and
        # start-up failures can still be read back and quoted.
        self.log_path = Path(options.log_file) if options.log_file else Path(tempfile.gettempdir()) / (
            f"triton-deploy-{os.getpid()}-{options.http_port}.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(command, env=installation.environment(), stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
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
        self.failed_models = {entry["name"]: entry.get("reason") or polled.get(entry["name"]) or
                              "configuration could not be read (see the log)"
                              for entry in states if entry.get("state") != "READY"}
        if not any(entry.get("state") == "READY" for entry in states):
            raise ServerError(self._failure_message("has no model that loaded"), hint="fix the models named above")
        return True

    def wait_ready(self, timeout_s: float | None = None, on_tick=None) -> None:
        """Block until ``/v2/health/ready`` answers 200 (with ``keep_healthy_models``: until loading is over and a
        model serves); the server exiting first is a ``ServerError``."""
        deadline = time.monotonic() + (timeout_s or self.options.ready_timeout_s)
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(self._failure_message("exited during start-up"))
            if self.is_ready() or (self.options.keep_healthy_models and self._healthy_models_ready()):
                self.stubs = self._stub_processes()
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
        tail = self.log_tail(200)
        errors = [line for line in tail if line.startswith("E") or "error" in line.lower()]
        detail = errors[-1] if errors else (tail[-1] if tail else "no output")
        if "error while loading shared libraries" in detail:
            detail += " (the python-backend stub needs the system package libpython3.11: run 'make setup')"
        return f"tritonserver {what}{status}: {detail} (log: {self.log_path})"

    # ---- python-backend stubs and their shared memory -------------------------------------------------------

    def _stub_processes(self) -> dict[int, str]:
        """pid -> model instance name (e.g. ``digits_preprocess_0_0``) of every python-backend stub."""
        import psutil

        stubs = {}
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return {}
        for child in children:
            try:
                command = child.cmdline()
            except psutil.Error:
                continue
            if command and command[0].endswith(STUB_BINARY):
                # argv: stub, model.py path, shm region name, sizes..., instance name, ...
                model_dir = Path(command[1]).parent.parent.name if len(command) > 1 else "?"
                stubs[child.pid] = next((a for a in command[2:] if a.startswith(model_dir + "_")), model_dir)
        return stubs

    def dead_stubs(self) -> dict[int, str]:
        """Stubs seen at start-up that have since exited (Triton 2.51 neither restarts them nor turns unready)."""
        import psutil

        dead = {}
        for pid, name in self.stubs.items():
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    continue
            except psutil.NoSuchProcess:
                pass
            dead[pid] = name
        return dead

    def _note_shm_regions(self) -> None:
        """Remember the python backend's /dev/shm regions this server has mapped (they grow with large inputs)."""
        if self.process is None:
            return
        try:
            maps = Path(f"/proc/{self.process.pid}/maps").read_text()
        except OSError:
            return
        self.shm_regions |= {line.split(None, 5)[5].removesuffix(" (deleted)") for line in maps.splitlines()
                             if SHM_REGION_PREFIX in line}

    def _unlink_leftover_regions(self) -> list[str]:
        """After the server exited: regions it had mapped that nobody unlinked (a dead stub's, a killed server's)."""
        removed = []
        for path in sorted(self.shm_regions):
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
            except OSError:
                continue
        self.shm_regions = set()
        return removed

    def resource_usage(self) -> dict[str, int]:
        """Resident memory (bytes) of the server and each of its stubs, and the size of its /dev/shm regions."""
        import psutil

        usage = {}
        try:
            root = psutil.Process(self.process.pid)
            for process in (root, *root.children(recursive=True)):
                try:
                    usage[f"{process.pid}"] = process.memory_info().rss
                except psutil.Error:
                    continue
        except psutil.Error:
            return {}
        self._note_shm_regions()
        usage["shm"] = sum(os.path.getsize(p) for p in self.shm_regions if os.path.exists(p))
        return usage

    def poll(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for the server to exit; its status, or None while it runs."""
        try:
            return self.process.wait(timeout=timeout_s)
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
        self._unlink_leftover_regions()
        remove_stub_bytecode(Path(self.options.repository))
        return self.process.returncode

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()
