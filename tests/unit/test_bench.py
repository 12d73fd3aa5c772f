"""``triton-deploy bench`` without running it: the latency breakdown and option errors. The tiny real run is in
tests/integration/test_bench_integration.py."""

from __future__ import annotations

import pytest

from triton_deploy.errors import UsageError
from triton_deploy.loadtests.bench import BenchOptions, breakdown, run_bench
from triton_deploy.metrics import ModelTimes


def test_breakdown_splits_the_client_latency_into_client_queue_and_steps():
    per_model = {
        "m": ModelTimes("m", requests=10, request_us=30_000),
        "m_preprocess": ModelTimes("m_preprocess", requests=10, queue_us=5_000, compute_infer_us=4_000),
        "m_classifier": ModelTimes("m_classifier", requests=10, queue_us=1_000, compute_input_us=1_000,
                                   compute_infer_us=10_000, compute_output_us=1_000),
        "m_postprocess": ModelTimes("m_postprocess", requests=10, compute_infer_us=2_000),
    }
    parts = breakdown("m", 4.0, per_model)
    assert parts == {"client": 1.0, "queue": 0.6, "preprocess": 0.4, "classifier": 1.2, "postprocess": 0.2,
                     "server other": 0.6, "total": 4.0}


def test_bench_rejects_an_unknown_model():
    with pytest.raises(UsageError, match="--models"):
        run_bench(BenchOptions(models=("resnet9000",)))
