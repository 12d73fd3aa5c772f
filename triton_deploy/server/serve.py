"""``serve``: start Triton, record it in a state file, and supervise it until asked to stop, in the foreground or in
the background. The one function ``serve`` owns the whole life of a served Triton; the CLI only builds
``ServeOptions`` and says what happens through a ``ServeUI``.

Every serve writes a state file (``serve.json``: endpoints, pids, the admin key, restarts) readable by its owner
only, and beside it a Prometheus text file (``serve.prom``) with the restart count, for node_exporter's textfile
collector. Both are checked writable before Triton starts and removed when serve ends.

``--background`` runs the same supervision in a detached process (``python -m triton_deploy.server.serve``): it
reports on a pipe once Triton is ready, or why it could not start, and the command returns. Its state file names
the supervisor's pid, which ``stop`` signals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from triton_deploy import errors
from triton_deploy.errors import ServerError, TritonDeployError

from .background import DEFAULT_STATE_FILE, endpoints, refuse_if_running, write_secret
from .options import ServerOptions
from .process import TritonServer
from .supervisor import Restarts, SupervisionPolicy, supervise


@dataclass(frozen=True)
class ServeOptions:
    server: ServerOptions
    policy: SupervisionPolicy = field(default_factory=SupervisionPolicy)
    background: bool = False
    state_file: Path | None = None  # default: .triton-deploy/serve.json in the background, else serve-<http port>.json

    @property
    def state_path(self) -> Path:
        if self.state_file is not None:
            return Path(self.state_file)
        if self.background:
            return DEFAULT_STATE_FILE
        return DEFAULT_STATE_FILE.with_name(f"serve-{self.server.http_port}.json")

    @property
    def random_key(self) -> bool:
        return self.server.restrict_apis and not self.server.admin_key

    def check(self) -> None:
        """The supervision policy's problems; ``server`` is checked against the Triton installation it starts
        (``ServerOptions.check``), which ``TritonServer.start`` finds."""
        errors.raise_problems(self.policy.problems())


class ServeUI(Protocol):
    """What ``serve`` tells its user: progress, the ready announcement (the state it recorded), one-line warnings."""

    def step(self, description: str) -> contextlib.AbstractContextManager: ...

    def ready(self, state: dict, options: ServeOptions) -> None: ...

    def warn(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...


def serve(options: ServeOptions, ui: ServeUI) -> int:
    """Serve until asked to stop (foreground: Triton's exit status) or until Triton is ready (background: 0)."""
    options.check()
    state = options.state_path
    refuse_if_running(state)
    check_writable(state)  # before Triton starts: a failure after it would leave a server nobody can find
    if options.background:
        return _start_background(options, ui)
    return run_supervised(options, ui)


def check_writable(state: Path) -> None:
    """The state file's folder exists (or can be made) and a file can be created in it; one ``ServerError`` if not."""
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        if state.is_dir():
            raise ServerError(f"--pid-file {state} is a directory", hint="give a file path to --pid-file")
        with tempfile.NamedTemporaryFile(dir=state.parent, prefix=f".{state.name}."):
            pass
    except OSError as exc:
        raise ServerError(f"cannot write the state file {state}: {exc.strerror or exc}",
                          hint="choose a writable --pid-file") from None


def run_supervised(options: ServeOptions, ui: ServeUI) -> int:
    """Start Triton, record it, announce it, supervise it; Triton is stopped on every way out."""
    state = options.state_path
    server = TritonServer(options.server)
    try:
        server.start()
        with ui.step(f"Starting Triton on {options.server.repository} (log: {server.log_path})"):
            server.wait_ready()
        restarts = Restarts()
        write_state(state, server, restarts)  # the key is on disk before readiness is announced
        ui.ready(read_state(state), options)

        def record(now: Restarts) -> None:
            write_state(state, server, now)

        status = supervise(server, options.policy, ui.warn, on_restart=record)
    except BaseException:
        server.stop()
        raise
    finally:
        remove_state(state)
    ui.info(f"Triton exited with status {status}")
    return status


# ---- the state file and the restart metric ----------------------------------------------------------------------


def write_state(state: Path, server: TritonServer, restarts: Restarts) -> None:
    """Record the server (with its admin key: readable by the owner only) and its restarts, atomically."""
    record = endpoints(server) | {"pid": os.getpid(), "triton_pid": server.started().pid,
                                  "admin_key": server.admin_key} | restarts.to_dict()
    _replace(state, json.dumps(record) + "\n")
    _replace(metrics_path(state), _restart_metrics(server, restarts))


def read_state(state: Path) -> dict:
    return json.loads(state.read_text())


def remove_state(state: Path) -> None:
    state.unlink(missing_ok=True)
    metrics_path(state).unlink(missing_ok=True)


def metrics_path(state: Path) -> Path:
    return state.with_suffix(".prom")


def _restart_metrics(server: TritonServer, restarts: Restarts) -> str:
    labels = f'http="{server.http_url}",metrics="{server.metrics_url}"'
    lines = ["# HELP triton_deploy_serve_restarts_total Triton restarts by triton-deploy serve after a crash or a "
             "dead python-backend stub.", "# TYPE triton_deploy_serve_restarts_total counter",
             f"triton_deploy_serve_restarts_total{{{labels}}} {restarts.total}"]
    if restarts.last_at is not None:
        lines += ["# HELP triton_deploy_serve_last_restart_timestamp_seconds When serve last restarted Triton.",
                  "# TYPE triton_deploy_serve_last_restart_timestamp_seconds gauge",
                  f"triton_deploy_serve_last_restart_timestamp_seconds{{{labels}}} {restarts.last_at:.3f}"]
    return "\n".join(lines) + "\n"


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, replacing any old file in one step."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_secret(temporary, text)
    os.replace(temporary, path)


# ---- the background supervisor -----------------------------------------------------------------------------------


def _start_background(options: ServeOptions, ui: ServeUI) -> int:
    """Run the supervision in a detached process; return once it reports Triton ready, or raise its error."""
    options = dataclasses.replace(options, state_file=options.state_path)
    server = options.server
    if server.log_file is None:  # the supervisor's own lines and any traceback go to Triton's log
        default_log = Path(tempfile.gettempdir()) / f"triton-deploy-{os.getpid()}-{server.http_port}.log"
        options = dataclasses.replace(options, server=dataclasses.replace(server, log_file=default_log))
    log_path = Path(options.server.log_file or "")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=log, start_new_session=True, text=True)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(_to_json(options)))
    process.stdin.close()
    with ui.step(f"Starting Triton on {server.repository} in the background (log: {log_path})"):
        line = process.stdout.readline()
    process.stdout.close()
    if not line:
        status = process.wait()
        raise ServerError(f"the background supervisor exited with status {status} before Triton was ready",
                          hint=f"see {log_path}")
    message = json.loads(line)
    if "error" in message:
        process.wait()
        error_class = getattr(errors, message["class"], TritonDeployError)
        raise error_class(message["error"], hint=message.get("hint"))
    ui.ready(message["state"], options)
    return 0


class _DetachedUI:
    """The background supervisor's side: one JSON line on its pipe once ready, later lines into Triton's log."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def step(self, description: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def ready(self, state: dict, options: ServeOptions) -> None:
        _report({"state": state})

    def warn(self, message: str) -> None:
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"triton-deploy serve: {message}\n")

    info = warn


def _report(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
    sys.stdout.close()  # the waiting command returns now
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the supervisor's life


def _to_json(options: ServeOptions) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(options), default=str))


def _from_json(data: dict) -> ServeOptions:
    def build(cls, values: dict):
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            if value is not None and "Path" in str(f.type):
                value = Path(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    return ServeOptions(server=build(ServerOptions, data["server"]), policy=build(SupervisionPolicy, data["policy"]),
                        background=True, state_file=Path(data["state_file"]))


def _detached_main() -> int:
    options = _from_json(json.loads(sys.stdin.read()))
    ui = _DetachedUI(Path(options.server.log_file or os.devnull))
    try:
        return run_supervised(options, ui)
    except TritonDeployError as exc:
        if not sys.stdout.closed and sys.stdout is sys.__stdout__:
            _report({"error": exc.message, "hint": exc.hint, "class": type(exc).__name__})
        else:
            ui.warn(str(exc))
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(_detached_main())
