"""What the chart's inference liveness probe costs, measured against the real local tritonserver.

Serves a repository generated from a digits export, then runs the chart's probe script (files/liveness_inference.py)
the way the kubelet does, as a fresh `python3 -I` process, and reports per probe: the probe process's CPU time and
peak memory, and the server's CPU time for answering it (the whole process tree, stubs included, less its idle
rate). For scale it measures one ordinary classification of the export's sample image the same way.

    .venv/bin/python scripts/measure_liveness_probe.py [--export build/exports/digits] [--probes 30]

Prints a Markdown table. Timings on a shared machine are noisy; compare the rows with each other.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
PROBE_SCRIPT = ROOT / "helm" / "triton-classifier" / "files" / "liveness_inference.py"


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its live descendants (Triton and its python-backend stubs)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a running process: the peak resident memory of its current program (ru_maxrss of a child would also
    count this measuring process's memory, which a forked child starts from)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return 0


def run_python(args: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS KiB) of one `python3 -I ...` process, run as the kubelet runs an exec probe."""
    started = time.perf_counter()
    process = subprocess.Popen(["python3", "-I", *args], env={"PATH": os.environ["PATH"]},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while True:  # VmHWM only grows: the last reading before the exit is the peak, give or take 2 ms
        reaped, status, usage = os.wait4(process.pid, os.WNOHANG)
        if reaped:
            break
        peak = max(peak, peak_rss_kib(process.pid))
        time.sleep(0.002)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"measure_liveness_probe: python3 {args} failed: {process.stderr.read().decode().strip()}")
    process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, peak


def run_probe(port: int, model: str) -> tuple[float, float, int]:
    return run_python([str(PROBE_SCRIPT), f"--port={port}", f"--model={model}", "--timeout=9"])


def server_cpu_per_call(pid: int, calls: int, call, idle_rate: float) -> float:
    """Server CPU seconds per call of `call`, less what the server burns idle over the same time."""
    before, started = tree_cpu_seconds(pid), time.perf_counter()
    for _ in range(calls):
        call()
    elapsed = time.perf_counter() - started
    return (tree_cpu_seconds(pid) - before - idle_rate * elapsed) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=ROOT / "build" / "exports" / "digits",
                        help="a `triton-deploy export` directory (default: build/exports/digits)")
    parser.add_argument("--probes", type=int, default=30, help="probes (and classifications) to average over")
    args = parser.parse_args(argv)
    if not (args.export / "manifest.json").is_file():
        sys.exit(f"measure_liveness_probe: no export at {args.export}; run "
                 f"`triton-deploy export --output {args.export}` first (--export)")

    from triton_deploy.clients import ImageClassifier
    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.writer import generate_repository
    from triton_deploy.server import ServerOptions, TritonServer, free_ports

    sample = (args.export / "sample.png").read_bytes()
    with tempfile.TemporaryDirectory() as work:
        repository = Path(work) / "repository"
        generate_repository([args.export], RepositoryOptions(output=repository))
        http, grpc, metrics = free_ports(3)
        options = ServerOptions(repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                log_file=Path(work) / "triton.log")
        with TritonServer(options) as server, ImageClassifier(f"127.0.0.1:{http}") as client:
            pid = server.process.pid
            for _ in range(3):  # warm both paths up: first requests pay one-off allocations
                run_probe(http, "digits")
                client.classify(sample)
            idle_started, idle_before = time.perf_counter(), tree_cpu_seconds(pid)
            time.sleep(5)
            idle_rate = (tree_cpu_seconds(pid) - idle_before) / (time.perf_counter() - idle_started)
            rss_before = psutil.Process(pid).memory_info().rss

            probes: list[tuple[float, float, int]] = []
            server_per_probe = server_cpu_per_call(pid, args.probes, lambda: probes.append(run_probe(http, "digits")),
                                                   idle_rate)
            rss_after = psutil.Process(pid).memory_info().rss
            classify_walls: list[float] = []

            def classify() -> None:
                started = time.perf_counter()
                client.classify(sample)
                classify_walls.append(time.perf_counter() - started)

            server_per_classify = server_cpu_per_call(pid, args.probes, classify, idle_rate)
    interpreter = [run_python(["-c", "pass"]) for _ in range(args.probes)]

    probe_wall = statistics.median(p[0] for p in probes)
    probe_cpu = statistics.median(p[1] for p in probes)
    probe_rss = max(p[2] for p in probes) / 1024
    period = 15.0  # probes.liveness.periodSeconds
    print(f"{args.probes} probes and {args.probes} classifications, server idle rate {idle_rate * 1000:.1f} ms CPU/s "
          f"(subtracted); server RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB over the probes\n")
    print("| per call | wall (median) | CPU in the caller | server CPU | peak RSS of the caller |")
    print("|---|---|---|---|---|")
    print(f"| liveness probe (`python3 -I liveness_inference.py`) | {probe_wall * 1000:.0f} ms | "
          f"{probe_cpu * 1000:.0f} ms | {server_per_probe * 1000:.1f} ms | {probe_rss:.0f} MiB |")
    print(f"| `python3 -I -c pass` (interpreter start alone) | {statistics.median(i[0] for i in interpreter) * 1000:.0f} ms"
          f" | {statistics.median(i[1] for i in interpreter) * 1000:.0f} ms | - | "
          f"{max(i[2] for i in interpreter) / 1024:.0f} MiB |")
    print(f"| one classification of sample.png (project client, persistent connection) | "
          f"{statistics.median(classify_walls) * 1000:.1f} ms | - | {server_per_classify * 1000:.1f} ms | - |")
    share = (probe_cpu + server_per_probe) / period
    print(f"\nEvery {period:.0f} s the probe costs {(probe_cpu + server_per_probe) * 1000:.0f} ms of CPU in all: "
          f"{share * 100:.2f} % of one core, {share / 2 * 100:.2f} % of the chart's default 2-CPU request.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
