"""ONNX Runtime latency and throughput of every variant, measured in interleaved rounds.

Each figure is the best round: on a shared machine that is the least-disturbed one, and interleaving the variants
spreads any disturbance over all of them rather than over one. Throughput is the batch size over the *median* time
of one call, not the images finished over wall time: a call during which the process was descheduled measures the
other jobs on the machine, not the model (load average 12 on 2 cores: the FP32 digits model's batch-8 wall-time rate
was 141 and 224 images/s in two runs, 60 % apart, while its median single-image call took 0.96 ms in both)."""

from __future__ import annotations

import os
import time

import numpy as np
import onnxruntime

from triton_deploy.progress import Reporter

from . import evaluate
from .base import VariantResult


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
                times: list[float] = []
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
                    calls: list[float] = []
                    deadline = time.perf_counter() + seconds
                    while time.perf_counter() < deadline or len(calls) < 3:
                        start = time.perf_counter()
                        run(batches[b])
                        calls.append(time.perf_counter() - start)
                    rate = b / float(np.median(calls))
                    r.throughput[b] = max(rate, r.throughput.get(b, 0.0))
                    bar.advance(1, status=r.name)


def machine(threads: int, *, seconds: float, rounds: int, batch_sizes: tuple[int, ...]) -> dict:
    """Where and how the timings were taken (printed under the report's table)."""
    return {"cpu_count": os.cpu_count(), "threads": threads, "onnxruntime": onnxruntime.__version__,
            "rounds": rounds, "seconds": seconds, "batch_sizes": list(batch_sizes), "shared_machine": True}
