"""What a Triton server is started with: ``ServerOptions``, the policy they must satisfy, and the command line.

Defaults are hardened: loopback bind, model-control ``none``, strict readiness, the admin APIs behind a key. The one
policy that depends on the binary (an exposed server must be able to cap HTTP request bodies) is checked against
the installation, so every caller that starts a server (``serve``, the load-test runner, the bench) gets it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from triton_deploy.contract import ADMIN_HEADER
from triton_deploy.errors import Problem, UsageError, raise_problems
from triton_deploy.fsutil import check_writable
from triton_deploy.pem import pem_problems

from .install import HTTP_MAX_INPUT_SIZE_FLAG, ServerInstallation

# Behind the admin key: what changes the server or makes it map memory. Model metadata and configuration stay open:
# standard tools read them (perf_analyzer, Model Analyzer, Triton's example clients), and they hold no secret.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
# Stands in for the admin key on Triton's command line; the preload library keyshim.c swaps the key in (see there).
KEY_PLACEHOLDER = "@TRITON_DEPLOY_ADMIN_KEY@"
KEY_VARIABLE = "TRITON_DEPLOY_ADMIN_KEY"


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
    # A non-loopback host is refused when the binary cannot cap HTTP bodies, unless a proxy in front caps them.
    allow_uncapped_http: bool = False
    # gRPC TLS (Triton's HTTP endpoint has none): the server's PEM certificate and key; with ``tls_ca`` as well,
    # mutual TLS, every client presenting a certificate signed by that CA.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def ports(self) -> dict[str, int]:
        return {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}

    def check(self, installation: ServerInstallation) -> None:
        """Raise one ``UsageError`` listing every problem with these options on this installation."""
        problems: list[Problem] = []
        if not is_loopback(self.host) and not installation.caps_http_body and not self.allow_uncapped_http:
            # Fail closed: an exposed Triton 2.51 reads any HTTP body whole (400 MB measured), growing shared memory.
            problems.append((f"--host {self.host} exposes the server, but this Triton cannot cap HTTP request bodies "
                             f"(no {HTTP_MAX_INPUT_SIZE_FLAG})",
                             "bind to 127.0.0.1, or put a proxy that caps request bodies in front and add "
                             "--allow-uncapped-http"))
        if any(ch.isspace() for ch in str(Path(self.repository).absolute())):
            # Triton 2.51 passes the model path to each python stub unquoted: every stub dies parsing its arguments
            # ("std::invalid_argument ... stol") and the server never gets ready.
            problems.append((f"--repository {self.repository} has a space in its path, which Triton's python-backend "
                             "stubs cannot start from", "move or link the repository to a path without spaces"))
        for flag, port in self.ports.items():
            if not 0 <= port <= 65535:
                problems.append((f"{flag} {port} is not a port number (0-65535)", f"check {flag}"))
        if self.log_file is not None:
            try:
                check_writable(Path(self.log_file), flag="--log-file", kind="file")
            except UsageError as exc:
                problems.append((exc.message, exc.hint or "check --log-file"))
        if self.tls_ca is not None and self.tls_cert is None:
            problems.append(("--tls-ca turns on mutual TLS for a TLS server, and --tls-cert/--tls-key are missing",
                             "add --tls-cert and --tls-key (the server's certificate and key)"))
        problems += pem_problems(self.tls_ca, self.tls_cert, self.tls_key)
        raise_problems(problems)


def is_loopback(host: str) -> bool:
    """Whether ``host`` certainly stays on this machine (a hostname may resolve to anything: not loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def effective_http_max_input_size(options: ServerOptions, installation: ServerInstallation) -> int | None:
    """The HTTP body cap the server will enforce: ``options.http_max_input_size``, or None when the binary cannot
    cap request bodies."""
    return options.http_max_input_size if installation.caps_http_body else None


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
    return command + tls_args(options) + list(options.extra_args)


def tls_args(options: ServerOptions) -> list[str]:
    """Triton's gRPC TLS flags: TLS with the server's certificate, mutual TLS when a CA for clients is given."""
    if not options.tls:
        return []
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(str(options.tls_cert)).absolute()}",
            f"--grpc-server-key={Path(str(options.tls_key)).absolute()}"]
    if options.tls_ca is not None:
        args += [f"--grpc-root-cert={Path(options.tls_ca).absolute()}", "--grpc-use-ssl-mutual=true"]
    return args
