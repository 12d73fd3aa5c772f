"""The benchmark's two ways of classifying the same images: through Triton (an asyncio load generator with bounded
concurrency over gRPC or HTTP) and in one Python process (decode -> preprocess -> ONNX Runtime -> softmax/top-k).

Both run for a fixed wall-clock time on the same image pool and report images per second and latency percentiles,
so their ratio is the serving efficiency.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triton_deploy.contract import IMAGE, OUTPUTS
from triton_deploy.errors import ClientError
from triton_deploy.loadtests.payloads import ImagePool
from triton_deploy.postprocessing import classify


@dataclass(frozen=True)
class Measurement:
    images: int
    requests: int
    failures: int
    seconds: float
    latencies_ms: tuple[float, ...]
    client_cpu_s: float  # CPU time of this process during the measurement

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    def summary(self) -> dict:
        return {"images": self.images, "requests": self.requests, "failures": self.failures,
                "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
                "p50_ms": round(self.percentile(50), 3), "p99_ms": round(self.percentile(99), 3),
                "mean_ms": round(float(np.mean(self.latencies_ms)), 3) if self.latencies_ms else 0.0,
                "client_cpu_ms_per_request": round(1000 * self.client_cpu_s / self.requests, 4)
                if self.requests else None}


def drive(url: str, model: str, pool: ImagePool, *, protocol: str = "grpc", concurrency: int = 1,
          duration_s: float = 5.0, batch_size: int = 1) -> Measurement:
    """Closed-loop load: ``concurrency`` requests in flight until ``duration_s`` has passed."""
    return asyncio.run(_drive(url, model, pool, protocol, concurrency, duration_s, batch_size))


async def _drive(url, model, pool, protocol, concurrency, duration_s, batch_size) -> Measurement:
    if protocol == "grpc":
        # tritonclient (gRPC/aiohttp/gevent underneath): loaded when a server is called, not at start-up
        import tritonclient.grpc.aio as lib
    else:
        # tritonclient (gRPC/aiohttp/gevent underneath): loaded when a server is called, not at start-up
        import tritonclient.http.aio as lib
    client = lib.InferenceServerClient(url)
    latencies: list[float] = []
    failures = 0
    errors: list[str] = []
    # A fixed set of prepared requests, so the generator spends its CPU on sending, not on building tensors.
    prepared = []
    for _ in range(32):
        tensor = pool.tensor(batch_size)
        infer_input = lib.InferInput(IMAGE, list(tensor.shape), "BYTES")
        infer_input.set_data_from_numpy(tensor)
        prepared.append([infer_input])
    outputs = [lib.InferRequestedOutput(name) for name in OUTPUTS]

    async def worker(index: int, deadline: float) -> None:
        nonlocal failures
        n = index
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                await client.infer(model, prepared[n % len(prepared)], outputs=outputs)
                latencies.append((time.perf_counter() - start) * 1000.0)
            except Exception as exc:  # counted and reported; one bad answer must not end the measurement
                failures += 1
                if len(errors) < 3:
                    errors.append(str(exc))
            n += concurrency

    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        deadline = t0 + duration_s
        await asyncio.gather(*(worker(i, deadline) for i in range(concurrency)))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await client.close()
    if not latencies:
        raise ClientError(f"every request to {model} at {url} ({protocol}) failed: {'; '.join(errors) or 'no answer'}",
                          hint="check the server and --models")
    return Measurement(len(latencies) * batch_size, len(latencies), failures, seconds, tuple(latencies), cpu)


async def _statistics(url: str) -> dict:
    # tritonclient (gRPC/aiohttp/gevent underneath): loaded when a server is called, not at start-up
    import tritonclient.grpc.aio as lib

    client = lib.InferenceServerClient(url)
    try:
        return await client.get_inference_statistics(as_json=True)
    finally:
        await client.close()


def statistics(url: str) -> dict:
    """Triton's statistics API (open to every caller) as JSON, over gRPC."""
    return asyncio.run(_statistics(url))


def in_process(model_path: Path, manifest, pool: ImagePool, *, threads: int, batch_size: int,
               duration_s: float, top_k: int = 5, workers: int = 1) -> Measurement:
    """The same pipeline with no server: ``ImageTransform.preprocess`` -> ONNX Runtime -> ``classify`` (softmax
    when the model gives logits, then top-k), ``batch_size`` images per pass.

    ``workers`` Python threads each run the pipeline with their own session of ``threads // workers`` intra-op
    threads (ONNX Runtime and Pillow release the GIL), the in-process counterpart of several model instances."""
    # ONNX Runtime: loaded when a model is run, not to parse flags
    import onnxruntime as ort

    transform = manifest.preprocessing
    logits = manifest.output_kind == "logits"
    input_name, output_name = manifest.input.name, manifest.output.name
    batches = [pool.batch(batch_size) for _ in range(16)]

    def session():
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads // workers)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        s = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        s.run([output_name], {input_name: transform.preprocess(batches[0])[0]})  # warm-up
        return s

    sessions = [session() for _ in range(workers)]
    latencies: list[float] = []  # list.append is atomic under the GIL
    start_line = threading.Barrier(workers + 1)

    def loop(index: int) -> None:
        run, n = sessions[index].run, index
        start_line.wait()
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            tensor, _, _ = transform.preprocess(batches[n % len(batches)])
            scores = run([output_name], {input_name: tensor})[0]
            classify(scores, top_k, logits=logits)
            latencies.append((time.perf_counter() - start) * 1000.0)
            n += workers

    deadline = time.perf_counter() + 3600.0  # set for real once every worker is at the start line
    pool_threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(workers)]
    for thread in pool_threads:
        thread.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration_s
    start_line.wait()
    for thread in pool_threads:
        thread.join()
    seconds = time.perf_counter() - t0
    return Measurement(len(latencies) * batch_size, len(latencies), 0, seconds, tuple(latencies),
                       time.process_time() - cpu0)
