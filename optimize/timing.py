"""ONNX Runtime latency and throughput of every variant, measured in interleaved rounds.

Each figure is the best round: on a shared machine that is the least-disturbed one, and interleaving the variants
spreads any disturbance over all of them rather than over one."""

from __future__ import annotations

import os
import time

import numpy as np

from triton_deploy.progress import Reporter

from . import evaluate
from .report import VariantResult


def benchmark(results: list[VariantResult], inputs: np.ndarray, batch_sizes: tuple[int, ...], *, seconds: float,
              rounds: int, threads: int, reporter: Reporter, layout: str = "NHWC") -> None:
    """Fill ``latency_ms`` (p50/p95 at batch 1) and ``throughput`` (images/s per batch size) of every result, each
    in its own runtime (ONNX Runtime, or LiteRT for ``.tflite`` variants) with the same number of threads."""
    runners = {r.name: evaluate.runner(r.path, r.runtime, threads, layout) for r in results}
    batches = {b: np.ascontiguousarray(np.resize(inputs, (b, *inputs.shape[1:])), dtype=np.float32)
               for b in (1, *batch_sizes)}
    for run in runners.values():  # first runs allocate and pick kernels
        for batch in batches.values():
            run(batch)
    steps = rounds * len(results) * (1 + len(batch_sizes))
    with reporter.bar(steps, "Timing every variant (interleaved rounds)") as bar:
        for _ in range(rounds):
            for r in results:
                run = runners[r.name]
                times = []
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline or len(times) < 5:
                    start = time.perf_counter()
                    run(batches[1])
                    times.append(time.perf_counter() - start)
                p50, p95 = (float(np.percentile(times, q) * 1e3) for q in (50, 95))
                if not r.latency_ms or p50 < r.latency_ms["p50"]:
                    r.latency_ms = {"p50": p50, "p95": p95}
                bar.advance(1, status=r.name)
                for b in batch_sizes:
                    count, start = 0, time.perf_counter()
                    while time.perf_counter() - start < seconds or count < 3 * b:
                        run(batches[b])
                        count += b
                    rate = count / (time.perf_counter() - start)
                    r.throughput[b] = max(rate, r.throughput.get(b, 0.0))
                    bar.advance(1, status=r.name)


def machine(threads: int, *, seconds: float, rounds: int, batch_sizes: tuple[int, ...]) -> dict:
    """Where and how the timings were taken (printed under the report's table)."""
    import onnxruntime

    return {"cpu_count": os.cpu_count(), "threads": threads, "onnxruntime": onnxruntime.__version__,
            "rounds": rounds, "seconds": seconds, "batch_sizes": list(batch_sizes), "shared_machine": True}
