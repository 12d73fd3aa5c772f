"""Supervision of a running Triton: its python-backend stubs, their shared memory, and restarts after a failure.

Two failures Triton 2.51 does not recover from by itself. A python-backend stub that dies (killed, out of memory)
leaves it answering "Stub process ... is not healthy" for that model forever while it still reports ready. And
Triton itself can die: one request asking the classification extension for the top-k of a BYTES output kills 2.51
with SIGFPE; its stubs then outlive it (parent PID 1, SIGTERM ignored) and keep their ``/dev/shm`` regions.

The functions here find a server's stubs (they share Triton's process group: Triton is started as a session leader)
and regions, and ``reap_group`` kills what is left of a server and returns its regions to unlink, however it ended.
``supervise`` is the loop ``triton-deploy serve`` runs: it forwards SIGINT/SIGTERM so Triton drains, and restarts
Triton when it exits unasked or a stub dies, with a bounded number of restarts and a growing pause between them.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


def stub_region(pid: int) -> str | None:
    """The /dev/shm region named on a stub's command line (its argv[2]), None for any other process."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if len(argv) > 2 and argv[0].endswith(STUB_BINARY.encode()):
        return "/dev/shm/" + argv[2].decode(errors="replace")
    return None


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # after ") ": state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


def reap_group(pgid: int, timeout_s: float = 5.0) -> set[str]:
    """Kill what is left of the server whose process group is ``pgid`` (stubs orphaned by a Triton that died ignore
    SIGTERM: SIGKILL) and return the /dev/shm regions they held, for the caller to unlink once they are gone."""
    regions: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        for pid in members:
            regions |= mapped_shm_regions(pid)
            if (region := stub_region(pid)) is not None:
                regions.add(region)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return regions


def describe_exit(status: int) -> str:
    """"died of SIGFPE" for a signal (Popen's negative status), "exited with status 1" otherwise."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"died of {name}" + (" (out of memory, or killed)" if status == -signal.SIGKILL else "")
    return f"exited with status {status}"


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
    """What to do when Triton exits unasked or a python-backend stub dies: restart Triton, at most ``max_restarts``
    times in a row, pausing ``backoff_s`` before the first restart and twice as long before each next one (up to
    ``max_backoff_s``). A server that then stays up for ``stable_s`` starts the count again. ``stub_failure="exit"``
    stops instead of restarting for a dead stub."""

    stub_failure: str = "restart"
    max_restarts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    stable_s: float = 600.0

    def problems(self) -> list[Problem]:
        checks: list[tuple[bool, Problem]] = [
            (self.stub_failure not in STUB_FAILURE_MODES,
             unknown_choice("--stub-failure", self.stub_failure, "--stub-failure", STUB_FAILURE_MODES)),
            (self.max_restarts < 0, (f"--max-restarts {self.max_restarts} is negative", "check --max-restarts")),
            (self.backoff_s < 0 or self.max_backoff_s < self.backoff_s,
             (f"restart backoff {self.backoff_s:g}-{self.max_backoff_s:g} s is not a range", "check the policy")),
        ]
        return [problem for failed, problem in checks if failed]

    def check(self) -> None:
        raise_problems(self.problems())

    def pause_s(self, consecutive: int) -> float:
        """The pause before restart number ``consecutive`` of a run of failures (1, 2, ...)."""
        return min(self.backoff_s * 2 ** (consecutive - 1), self.max_backoff_s)


@dataclass
class Restarts:
    """What the supervisor has done: restarts since ``serve`` started, those in the current run of failures, and the
    last one's reason and time (seconds since the epoch)."""

    total: int = 0
    consecutive: int = 0
    last_reason: str | None = None
    last_at: float | None = None
    history: list[str] = field(default_factory=list)

    def record(self, reason: str) -> None:
        self.total += 1
        self.consecutive += 1
        self.last_reason, self.last_at = reason, time.time()
        self.history.append(reason)

    def to_dict(self) -> dict:
        return {"restarts": self.total, "last_restart": None if self.last_reason is None else
                {"reason": self.last_reason, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_at))}}


def supervise(server: TritonServer, policy: SupervisionPolicy, notify: Callable[[str], None],
              *, poll_s: float = 1.0, handle_signals: bool = True,
              on_restart: Callable[[Restarts], None] | None = None) -> int:
    """Run until the (ready) server is asked to stop; its exit status.

    SIGINT/SIGTERM are forwarded so Triton drains in-flight requests and exits. Triton exiting unasked (a crash, a
    signal, the OOM killer) or a stub that dies is reported through ``notify`` in one line and Triton is restarted on
    the same ports with the same admin key; ``on_restart`` is told once it is ready again. With ``exit``, or once
    ``max_restarts`` restarts in a row are used up, Triton is stopped and a ``ServerError`` gives the reason.
    Whatever ends a server, its stubs and shared-memory regions go with it (``TritonServer.stop``).
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
    restarts = Restarts()
    up_since, requests = time.monotonic(), 0
    while True:
        status = server.poll(poll_s)
        if stopping:
            if status is None:
                continue
            break
        if status is None:
            requests = server.requests_served(default=requests)  # the last count read before a crash
            dead = server.dead_stubs()
            if not dead:
                continue
            what = ", ".join(f"'{name}' (pid {pid})" for pid, name in dead.items())
            # Triton 2.51 would answer "Stub process ... is not healthy" for that model forever while still ready.
            reason, give_up = f"python-backend stub {what} died", policy.stub_failure == "exit"
        else:
            reason = f"Triton {describe_exit(status)} after {requests:,} request{'' if requests == 1 else 's'}"
            give_up = False
        if time.monotonic() - up_since >= policy.stable_s:
            restarts.consecutive = 0
        if give_up or restarts.consecutive >= policy.max_restarts:
            server.stop()
            raise ServerError(f"{reason}; Triton stopped after {restarts.total} restart(s)",
                              hint="see the log; --stub-failure restart and --max-restarts N restart it")
        restarts.record(reason)
        what_restarts = "restarting" if reason.startswith("Triton") else "restarting Triton"
        notify(f"{reason}; {what_restarts} ({restarts.consecutive}/{policy.max_restarts})")
        server.stop()  # a crashed Triton's orphaned stubs are killed and its regions unlinked here
        if not _pause(policy.pause_s(restarts.consecutive), lambda: stopping):
            break
        try:
            server.restart()
        except ServerError:
            if stopping:  # the signal arrived during start-up: not a failure
                break
            raise
        up_since, requests = time.monotonic(), 0
        notify(f"Triton is ready again (pid {server.started().pid})")
        if on_restart is not None:
            on_restart(restarts)
    server.stop()  # already exited: reaps what a dead stub or a crash left behind
    return server.started().returncode


def _pause(seconds: float, interrupted: Callable[[], bool]) -> bool:
    """Sleep ``seconds`` unless interrupted first; whether the pause ran to its end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if interrupted():
            return False
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
    return not interrupted()
