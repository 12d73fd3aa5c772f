"""A served Triton's state file (``serve.json``) and stopping the server it records.

``serve`` writes the server's endpoints, its own pid and Triton's, the admin key and the restarts to a state file
readable only by its owner; ``stop_background`` sends the recorded serve process SIGTERM so it has Triton drain,
waits for both to exit, and removes the file.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from triton_deploy.errors import ServerError

from .supervisor import reap_group, remove_stub_bytecode, unlink_regions

if TYPE_CHECKING:
    from .process import TritonServer

DEFAULT_STATE_FILE = Path(".triton-deploy/serve.json")


def endpoints(server: TritonServer) -> dict:
    """What a client needs to reach a running server, and what went wrong while it loaded."""
    return {"pid": server.started().pid, "http": server.http_url, "grpc": server.grpc_url,
            "metrics": server.metrics_url, "log": str(server.log_path), "repository": str(server.options.repository),
            "failed_models": server.failed_models, "http_max_input_size": server.http_max_input_size,
            "triton_version": server.version(), "admin_key_on_command_line": server.key_on_command_line}


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, created that way (no moment readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)


def refuse_if_running(state_file: Path) -> None:
    """A second ``serve --background`` on the same state file would overwrite it and orphan the first server (``stop``
    could no longer find it): refuse, naming the running server. A file left by a server that is gone is replaced."""
    try:
        state = json.loads(state_file.read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):  # none, or unreadable: check_writable says why
        return
    if _running(pid) and "triton" in _command_line(pid):  # serve's supervisor, or Triton in an older state file
        raise ServerError(f"a background server is already running (pid {pid}, HTTP {state.get('http')}, repository "
                          f"{state.get('repository')}; recorded in {state_file})",
                          hint=f"stop it with 'triton-deploy stop --pid-file {state_file}', or give this one another "
                               f"--pid-file")


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_background(state_file: Path, timeout_s: float = 60.0) -> tuple[int | None, bool]:
    """Stop the server recorded in ``state_file``: (the pid signalled, whether it was still running); (None, False)
    when no state file records a server. A server that does not exit within ``timeout_s`` is killed and reported as
    a ``ServerError``."""
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        return None, False
    except (OSError, ValueError) as exc:
        raise ServerError(f"cannot read the state file {state_file}: {exc}", hint="check --pid-file") from None
    # serve's supervisor first: it has Triton drain and reaps its stubs. Triton too, in case the supervisor is gone.
    pids = [int(state[key]) for key in ("pid", "triton_pid") if key in state]
    signalled = next((pid for pid in pids if _running(pid)), None)
    if signalled is None:
        _reap(state)
        state_file.unlink(missing_ok=True)
        state_file.with_suffix(".prom").unlink(missing_ok=True)
        return pids[0], False
    os.kill(signalled, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.2)
    if left := [pid for pid in pids if _running(pid)]:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        raise ServerError(f"server {signalled} did not exit within {timeout_s:.0f} s and was killed",
                          hint="raise --timeout")
    _reap(state)
    state_file.unlink(missing_ok=True)
    state_file.with_suffix(".prom").unlink(missing_ok=True)
    remove_stub_bytecode(Path(state.get("repository", "")))
    return signalled, True


def _reap(state: dict) -> None:
    """Stubs left by a server whose serve and Triton were both killed have nobody else to end them."""
    if "triton_pid" in state:
        unlink_regions(reap_group(int(state["triton_pid"]), timeout_s=2.0))


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return False
