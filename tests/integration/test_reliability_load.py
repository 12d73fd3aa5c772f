"""Sustained load: 60 s of Locust at saturation through the ensemble on its own server, with the server's memory
(Triton and every python-backend stub, plus its /dev/shm regions) sampled throughout."""

from __future__ import annotations

import json
import threading

import pytest

from triton_deploy.loadtests.runner import LoadTestOptions, run_loadtest
from triton_deploy.loadtests.slo import SLO
from triton_deploy.server import ServerOptions, TritonServer, free_ports

pytestmark = [pytest.mark.slow, pytest.mark.server]

DURATION_S = 60
USERS = 16  # past the knee on 2 cores: the server is the bottleneck, requests queue
P99_BOUND_MS = 1000.0  # stated bound for 2 shared cores; the run itself reports the measured p99
MEMORY_GROWTH_BOUND = 64 * 1024 * 1024  # resident + shm growth after warm-up, all server processes together


def test_sixty_seconds_at_saturation_has_no_failures_bounded_p99_and_bounded_memory(digits_repository, tmp_path):
    http, grpc, metrics = free_ports(3)
    options = ServerOptions(digits_repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            log_file=tmp_path / "triton.log", exit_timeout_s=10)
    samples: list[int] = []
    stop = threading.Event()
    with TritonServer(options) as server:
        def sample():
            while not stop.wait(1.0):
                samples.append(sum(server.resource_usage().values()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = run_loadtest(LoadTestOptions(
                output=tmp_path, url=server.grpc_url, metrics_url=server.metrics_url, protocol="grpc",
                users=USERS, duration_s=DURATION_S, batch_size=4, image_sizes=(64, 128),
                image_formats=("PNG", "JPEG"), slo=SLO(p99_ms=P99_BOUND_MS, error_rate=0.0)))
        finally:
            stop.set()
            sampler.join()
    run = result.summary["runs"][0]
    warm = samples[len(samples) // 6:]  # the first ~10 s fill caches, pools and the shm regions
    growth = warm[-1] - warm[0]
    figures = {"requests": run["requests"], "failures": run["failures"], "images_per_s": run["images_per_s"],
               "p50_ms": run["p50_ms"], "p99_ms": run["p99_ms"], "memory_start_mb": round(samples[0] / 2**20, 1),
               "memory_after_warmup_mb": round(warm[0] / 2**20, 1), "memory_end_mb": round(warm[-1] / 2**20, 1),
               "memory_peak_mb": round(max(samples) / 2**20, 1), "growth_after_warmup_mb": round(growth / 2**20, 1),
               "average_batch": run["server"]["digits_classifier"]["average_batch"] if run["server"] else None}
    (tmp_path / "sustained.json").write_text(json.dumps(figures, indent=2))
    print("sustained load:", json.dumps(figures))
    assert run["requests"] > 0 and run["failures"] == 0
    assert result.summary["passed"]  # p99 within P99_BOUND_MS and no errors (the SLO gate)
    assert len(samples) >= DURATION_S // 2
    assert growth <= MEMORY_GROWTH_BOUND, figures
