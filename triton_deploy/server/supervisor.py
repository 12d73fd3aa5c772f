"""Supervision of a running Triton: its python-backend stubs, their shared memory, and restarting on a dead stub.

A python-backend stub that dies (killed, out of memory) leaves Triton 2.51 answering "Stub process ... is not
healthy" for that model forever while it still reports ready. The functions here find the stubs of a server and
the ``/dev/shm`` regions it has mapped, so a dead stub can be noticed and its regions unlinked after the server
exits. ``supervise`` is the loop ``triton-deploy serve`` runs in the foreground: it forwards SIGINT/SIGTERM so
Triton drains, and restarts the server when a stub dies (up to a limit), or stops with an error.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from triton_deploy.errors import Problem, ServerError, raise_problems, unknown_choice

if TYPE_CHECKING:
    from .process import TritonServer

STUB_BINARY = "triton_python_backend_stub"
SHM_REGION_PREFIX = "/dev/shm/triton_python_backend_shm_region_"
STUB_FAILURE_MODES = ("restart", "exit")


def stub_processes(server_pid: int) -> dict[int, str]:
    """pid -> model instance name (e.g. ``digits_preprocess_0_0``) of every python-backend stub of a server."""
    stubs = {}
    try:
        children = psutil.Process(server_pid).children(recursive=True)
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


def dead_stubs(stubs: dict[int, str]) -> dict[int, str]:
    """The stubs of ``stubs`` that have since exited (Triton 2.51 neither restarts them nor turns unready)."""
    dead = {}
    for pid, name in stubs.items():
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            pass
        dead[pid] = name
    return dead


def mapped_shm_regions(server_pid: int) -> set[str]:
    """The python backend's /dev/shm regions a server process has mapped now (they grow with large inputs)."""
    try:
        maps = Path(f"/proc/{server_pid}/maps").read_text()
    except OSError:
        return set()
    return {line.split(None, 5)[5].removesuffix(" (deleted)") for line in maps.splitlines()
            if SHM_REGION_PREFIX in line}


def remove_stub_bytecode(repository: Path) -> None:
    """Delete the ``__pycache__`` folders python-backend stubs wrote beside the models' modules.

    A stub imports ``model.py`` from the repository and caches its bytecode there; the stub's embedded Python is
    initialised in isolated mode, so ``PYTHONDONTWRITEBYTECODE`` cannot prevent it. The repository must stay what the
    generator wrote (the committed one is compared with a fresh one in the tests), and a bytecode cache is always
    safe to delete, so a stopped server leaves none behind."""
    for cache in Path(repository).glob("*/*/__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def unlink_regions(paths: set[str]) -> list[str]:
    """Unlink the regions nobody else unlinked (a dead stub's, a killed server's); those removed, in order."""
    removed = []
    for path in sorted(paths):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
        except OSError:
            continue
    return removed


def process_memory(server_pid: int) -> dict[str, int]:
    """Resident memory (bytes) of the server and each of its child processes, keyed by pid."""
    usage = {}
    try:
        root = psutil.Process(server_pid)
        for process in (root, *root.children(recursive=True)):
            try:
                usage[f"{process.pid}"] = process.memory_info().rss
            except psutil.Error:
                continue
    except psutil.Error:
        return {}
    return usage


@dataclass(frozen=True)
class SupervisionPolicy:
    """What to do when a python-backend stub dies: ``restart`` Triton up to ``max_restarts`` times, or ``exit``."""

    stub_failure: str = "restart"
    max_restarts: int = 3

    def check(self) -> None:
        checks: list[tuple[bool, Problem]] = [
            (self.stub_failure not in STUB_FAILURE_MODES,
             unknown_choice("--stub-failure", self.stub_failure, "--stub-failure", STUB_FAILURE_MODES)),
            (self.max_restarts < 0, (f"--max-restarts {self.max_restarts} is negative", "check --max-restarts")),
        ]
        raise_problems([problem for failed, problem in checks if failed])


def supervise(server: TritonServer, policy: SupervisionPolicy, notify: Callable[[str], None],
              *, poll_s: float = 1.0, handle_signals: bool = True) -> int:
    """Run until the (ready) server exits; its exit status.

    SIGINT/SIGTERM are forwarded so Triton drains in-flight requests and exits. A stub that dies is reported
    through ``notify`` and Triton is restarted on the same ports, or, with ``exit`` or once the restarts are used
    up, stopped with a ``ServerError``.
    """
    policy.check()
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True  # stubs exit while Triton unloads: not a failure to restart for
        process = server.started()
        if process.poll() is None:
            process.send_signal(signum)  # Triton drains in-flight requests, then exits

    if handle_signals:
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
    restarts = 0
    while (status := server.poll(poll_s)) is None:
        dead = {} if stopping else server.dead_stubs()
        if not dead or stopping:
            continue
        what = ", ".join(f"'{name}' (pid {pid})" for pid, name in dead.items())
        # Triton 2.51 would answer "Stub process ... is not healthy" for that model forever while still ready.
        if policy.stub_failure == "exit" or restarts >= policy.max_restarts:
            server.stop()
            raise ServerError(f"python-backend stub {what} died; Triton stopped after {restarts} restart(s)",
                              hint="see the log; --stub-failure restart and --max-restarts N restart it")
        restarts += 1
        notify(f"python-backend stub {what} died; restarting Triton ({restarts}/{policy.max_restarts})")
        server.restart()
        if stopping:  # a signal arrived during the restart
            server.stop()
        else:
            notify(f"Triton is ready again (pid {server.started().pid})")
    server.stop()  # already exited: unlinks shared memory a dead stub left behind
    return status
