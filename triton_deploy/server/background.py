"""A server left running in the background: its state file (``serve.json``) and stopping it.

``serve --background`` writes the server's endpoints, pid and admin key to a state file readable only by its
owner; ``stop_background`` sends the server SIGTERM so Triton drains, waits for it to exit, and removes the file.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from triton_deploy.errors import ServerError

if TYPE_CHECKING:
    from .process import TritonServer

DEFAULT_STATE_FILE = Path(".triton-deploy/serve.json")


def endpoints(server: TritonServer) -> dict:
    """What a client needs to reach a running server, and what went wrong while it loaded."""
    return {"pid": server.started().pid, "http": server.http_url, "grpc": server.grpc_url,
            "metrics": server.metrics_url, "log": str(server.log_path), "repository": str(server.options.repository),
            "failed_models": server.failed_models, "http_max_input_size": server.http_max_input_size}


def write_state(state_file: Path, server: TritonServer) -> None:
    """Record a background server; the file holds the admin key, so only its owner may read it."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(endpoints(server) | {"admin_key": server.admin_key}) + "\n")
    state_file.chmod(0o600)


def stop_background(state_file: Path, timeout_s: float = 60.0) -> tuple[int, bool]:
    """Stop the server recorded in ``state_file``: (its pid, whether it was still running). A server that does
    not exit within ``timeout_s`` is killed and reported as a ``ServerError``."""
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise ServerError(f"{state_file} not found: no background server to stop", hint="check --pid-file") from None
    pid = int(state["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state_file.unlink(missing_ok=True)
        return pid, False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.2)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)
        raise ServerError(f"server {pid} did not exit within {timeout_s:.0f} s and was killed", hint="raise --timeout")
    state_file.unlink(missing_ok=True)
    return pid, True


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return False
