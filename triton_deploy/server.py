"""Run the real ``tritonserver`` that the nvidia-pytriton wheel ships, on a model repository.

The wheel carries the server binary, its shared libraries and the python backend with one stub per Python version.
``ServerInstallation`` assembles a backend directory from those pieces; ``TritonServer`` starts the binary with
hardened defaults (loopback bind, model-control ``none``, strict readiness, restricted admin APIs), waits for
``/v2/health/ready``, and turns the usual failures (port in use, a model that fails to load, a missing library)
into one clear ``ServerError`` that quotes Triton's own message.
"""

from __future__ import annotations

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
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ServerError

RESTRICTED_APIS = ("model-repository", "model-config", "logging", "trace")
ADMIN_HEADER = "triton-admin-key"


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

    def environment(self) -> dict[str, str]:
        """os.environ plus the library path for the server and this environment's bin/ first on PATH, so the
        python-backend stub imports numpy, Pillow and onnxruntime from here."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.library_dir), env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
        return env


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
        f"--log-verbose={options.log_verbose}",
        "--allow-gpu-metrics=false",
        f"--backend-config=python,shm-default-byte-size={options.shm_default_bytes}",
        f"--backend-config=python,shm-growth-byte-size={options.shm_growth_bytes}",
    ]
    if options.restrict_apis:
        apis = ",".join(RESTRICTED_APIS)
        command += [f"--http-restricted-api={apis}:{ADMIN_HEADER}={admin_key}",
                    f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={admin_key}"]
    return command + list(options.extra_args)


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


@dataclass
class TritonServer:
    """A running tritonserver. ``with TritonServer(options) as server:`` starts it and waits until it is ready."""

    options: ServerOptions
    installation: ServerInstallation | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    admin_key: str = field(default="", init=False)
    log_path: Path | None = field(default=None, init=False)

    @property
    def http_url(self) -> str:
        return f"{self.options.host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.options.metrics_port}/metrics"

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

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
        self.admin_key = options.admin_key or secrets.token_urlsafe(24)
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
        return failures

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float | None = None, on_tick=None) -> None:
        """Block until ``/v2/health/ready`` answers 200; the server exiting first is a ``ServerError``."""
        deadline = time.monotonic() + (timeout_s or self.options.ready_timeout_s)
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(self._failure_message("exited during start-up"))
            if self.is_ready():
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

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float | None = None) -> int | None:
        """Ask Triton to drain and exit (SIGTERM); kill it if it outlives the exit timeout plus a margin."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s or self.options.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()
