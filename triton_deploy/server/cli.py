"""The ``serve`` and ``stop`` subcommands: flags -> ``ServerOptions`` -> a ``TritonServer``, supervised or left in
the background."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from triton_deploy.cliargs import PROG, add_common_flags

from .background import DEFAULT_STATE_FILE, stop_background
from .install import HTTP_MAX_INPUT_SIZE_FLAG
from .options import ADMIN_HEADER, ServerOptions
from .serve import ServeOptions, serve
from .supervisor import SupervisionPolicy


def add_serve(sub) -> None:
    d = ServerOptions(repository=Path("model_repository"))
    p = sub.add_parser("serve", help="run the real Triton server on a model repository",
                       description="Start tritonserver (from the nvidia-pytriton wheel), wait until every model is "
                                   "ready, and forward SIGINT/SIGTERM so Triton drains in-flight requests.")
    p.add_argument("--repository", type=Path, default=d.repository, help="model repository (default model_repository)")
    p.add_argument("--host", default=d.host, help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--http-port", type=int, default=d.http_port)
    p.add_argument("--grpc-port", type=int, default=d.grpc_port)
    p.add_argument("--metrics-port", type=int, default=d.metrics_port)
    p.add_argument("--exit-timeout", type=int, default=d.exit_timeout_s, metavar="SECONDS",
                   help="how long Triton drains in-flight requests on shutdown (default 30)")
    p.add_argument("--ready-timeout", type=float, default=d.ready_timeout_s, metavar="SECONDS")
    p.add_argument("--model-control-mode", choices=["none", "explicit", "poll"], default=d.model_control_mode,
                   help="none (default) never lets a caller load models")
    p.add_argument("--log-verbose", type=int, default=d.log_verbose)
    p.add_argument("--log-file", type=Path, help="write Triton's log here (default: a file in the temp dir)")
    p.add_argument("--shm-default-bytes", type=int, default=d.shm_default_bytes,
                   help="python-backend shared memory per model instance")
    p.add_argument("--shm-growth-bytes", type=int, default=d.shm_growth_bytes)
    p.add_argument("--http-max-input-size", type=_positive_int, default=d.http_max_input_size, metavar="BYTES",
                   help="largest HTTP request body Triton accepts (default 33554432 = 32 MiB, the per-image limit); "
                        "only Triton releases with this flag enforce it, the wheel's 2.51 does not")
    p.add_argument("--allow-uncapped-http", action="store_true",
                   help="serve on a non-loopback --host even though this Triton cannot cap HTTP request bodies "
                        "(a proxy in front caps them)")
    p.add_argument("--admin-key", default=os.environ.get("TRITON_ADMIN_KEY"),
                   help="header value that unlocks the model-repository/config/logging/trace APIs "
                        "(default: $TRITON_ADMIN_KEY or a random key)")
    p.add_argument("--unrestricted-apis", dest="restrict_apis", action="store_false",
                   help="leave the admin APIs open (not recommended)")
    p.add_argument("--keep-healthy-models", action="store_true",
                   help="serve the models that load even if others fail (readiness stays false and the failures "
                        "are listed); default: fail fast with the model's own error")
    p.add_argument("--stub-failure", choices=["restart", "exit"], default="restart",
                   help="when a python-backend stub dies: restart Triton (default) or exit with an error")
    p.add_argument("--max-restarts", type=int, default=5, metavar="N",
                   help="restarts in a row after Triton exits unasked (crash, signal, out of memory) or a stub dies, "
                        "with a pause doubling from 1 s, before serve gives up (default 5)")
    tls = p.add_argument_group("TLS (gRPC only: Triton's HTTP endpoint has none; see docs/tls.md for HTTPS)")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="the server's certificate: turns on gRPC TLS")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="the server certificate's private key")
    tls.add_argument("--tls-ca", type=Path, metavar="PEM",
                     help="CA that signs client certificates: turns on mutual TLS (every gRPC client needs one)")
    p.add_argument("--background", action="store_true", help="return once ready; stop with 'triton-deploy stop'")
    p.add_argument("--pid-file", type=Path, default=None,
                   help=f"state file: endpoints, pids, admin key, restarts (default {DEFAULT_STATE_FILE} with "
                        f"--background, else {DEFAULT_STATE_FILE.parent}/serve-<http port>.json); a restart count "
                        "for Prometheus' textfile collector is written beside it (.prom)")
    add_common_flags(p)
    p.set_defaults(handler=run_serve)

    s = sub.add_parser("stop", help="stop a server started with 'serve --background'")
    s.add_argument("--pid-file", type=Path, default=DEFAULT_STATE_FILE,
                   help=f"the state file of the server to stop (default {DEFAULT_STATE_FILE})")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for Triton to drain and exit")
    add_common_flags(s)
    s.set_defaults(handler=run_stop)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of bytes, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes, got {text}")
    return value


def _warn(message: str) -> None:
    print(f"{PROG} serve: {message}", file=sys.stderr, flush=True)


def run_serve(args: argparse.Namespace, reporter) -> int:
    server = ServerOptions(
        repository=args.repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, exit_timeout_s=args.exit_timeout, model_control_mode=args.model_control_mode,
        log_verbose=args.log_verbose, shm_default_bytes=args.shm_default_bytes, shm_growth_bytes=args.shm_growth_bytes,
        restrict_apis=args.restrict_apis, admin_key=args.admin_key, ready_timeout_s=args.ready_timeout,
        log_file=args.log_file, keep_healthy_models=args.keep_healthy_models,
        http_max_input_size=args.http_max_input_size, allow_uncapped_http=args.allow_uncapped_http,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
    )
    options = ServeOptions(server, SupervisionPolicy(stub_failure=args.stub_failure, max_restarts=args.max_restarts),
                           background=args.background, state_file=args.pid_file)
    return serve(options, _CliUI(reporter, args.json))


class _CliUI:
    """How ``serve`` speaks on a terminal: progress and the ready lines on stderr (or --json on stdout), warnings as
    one ``triton-deploy serve:`` line each."""

    def __init__(self, reporter, as_json: bool) -> None:
        self.reporter, self.as_json = reporter, as_json

    def step(self, description: str):
        return self.reporter.step(description)

    def info(self, message: str) -> None:
        self.reporter.info(message)

    def warn(self, message: str) -> None:
        _warn(message)

    def ready(self, state: dict, options) -> None:
        public = {k: v for k, v in state.items() if k != "admin_key"}
        if self.as_json:
            print(json.dumps(public), flush=True)
        else:
            where = f"HTTP {state['http']}  gRPC {state['grpc']}  metrics {state['metrics']}"
            if state["failed_models"]:  # --keep-healthy-models: serving, but /v2/health/ready stays false
                self.info(f"Triton is serving the models that loaded, not ready ({len(state['failed_models'])} "
                          f"failed, listed below): {where}")
            else:
                self.info(f"Triton is ready: {where}")
        if state["http_max_input_size"] is None:
            _warn(f"warning: this Triton ({state.get('triton_version') or 'version unknown'}) cannot cap HTTP request "
                  f"bodies (no {HTTP_MAX_INPUT_SIZE_FLAG}); the Helm chart's image does. If you expose this server, "
                  f"put a proxy that caps request bodies in front of it")
        if options.server.tls:
            mutual = "mutual TLS: clients need a certificate signed by --tls-ca" if options.server.tls_ca else "TLS"
            _warn(f"gRPC {state['grpc']} uses {mutual}; HTTP {state['http']} stays plaintext (Triton has no HTTP "
                  f"TLS): keep it on loopback, or put an HTTPS gateway in front (docs/tls.md)")
        for name, reason in state["failed_models"].items():
            _warn(f"model '{name}' failed to load and is not served (readiness stays false): "
                  f"{reason.splitlines()[0] if reason else 'unknown reason'}")
        if state.get("admin_key_on_command_line"):
            _warn("warning: no C compiler built the key shim, so the admin key is on Triton's command line, where "
                  "every local user can read it (ps); install gcc ('make setup') to keep it off")
        state_file = options.state_path
        if options.random_key:  # kept in a file only its owner reads, never printed
            removed = "" if options.background else " (removed on exit)"
            self.info(f"Admin key (header {ADMIN_HEADER}): random, in the \"admin_key\" field of {state_file}{removed}, "
                      f"readable by you only")
        elif options.server.restrict_apis:
            self.info(f"Admin key (header {ADMIN_HEADER}): the one given by --admin-key / $TRITON_ADMIN_KEY")
        if options.background:
            self.info(f"Running in the background (supervisor pid {state['pid']}, Triton pid {state['triton_pid']}); "
                      f"stop it with '{PROG} stop --pid-file {state_file}'")


def run_stop(args: argparse.Namespace, reporter) -> int:
    pid, was_running = stop_background(args.pid_file, args.timeout)
    if pid is None:
        reporter.info(f"Nothing to stop: no server is recorded in {args.pid_file} (already stopped, or started with "
                      f"another --pid-file)")
    else:
        reporter.info(f"Stopped the server {pid}" if was_running else f"Server {pid} was not running")
    return 0
