"""``triton-deploy bench`` on a tiny budget: the digits export, 1 s measurements. Checks the report's shape, never
its figures as timings."""

from __future__ import annotations

import json
import os

import pytest

from triton_deploy.loadtests.bench import DEFAULT_CONFIG, BenchOptions, baseline_key, run_bench


@pytest.mark.slow
@pytest.mark.server
def test_tiny_bench_run_writes_a_well_formed_table_and_json(digits_export, tmp_path):
    result = run_bench(BenchOptions(output=tmp_path, exports=(digits_export,), quick=True, concurrencies=(1, 4)))
    report = json.loads((tmp_path / "report.json").read_text())
    markdown = (tmp_path / "report.md").read_text()
    assert result.markdown == markdown
    digits = report["models"]["digits"]
    cores = os.cpu_count()
    # One session with every thread, and (on a multi-core machine) one single-thread session per worker thread.
    arrangements = {(1, cores)} | ({(cores, 1)} if cores > 1 else set())
    assert set(digits["baseline"]) == {baseline_key(w, t, b) for w, t in arrangements for b in (1, 8)}
    assert all(m["images"] > 0 and m["failures"] == 0 for m in digits["baseline"].values())
    assert digits["efficiency"]["in_process_arrangement"] in digits["baseline"] and digits["target"] == 0.6
    assert digits["efficiency"]["ratio"] > 0
    assert set(digits["configs"]) == {DEFAULT_CONFIG, "batching off, 2 instances"}
    for config in digits["configs"].values():
        assert set(config["levels"]) == {"1", "4"}
        for level in config["levels"].values():
            assert level["failures"] == 0 and level["requests"] > 0
            assert set(level["server"]) == {"digits", "digits_preprocess", "digits_classifier", "digits_postprocess"}
    assert set(digits["configs"][DEFAULT_CONFIG]["protocols"]) == {"http", "grpc"}
    batched = digits["configs"][DEFAULT_CONFIG]["batched_requests"]["8"]  # like the baseline's batch-8 passes
    assert batched["failures"] == 0 and batched["images"] == 8 * batched["requests"]
    cpu = batched["cpu_ms_per_image"]  # every process of the pipeline, measured while it served
    assert set(cpu) == {"triton core", "digits_preprocess", "digits_classifier", "digits_postprocess", "load generator"}
    assert cpu["digits_classifier"] > 0 and cpu["triton core"] > 0 and cpu["load generator"] > 0
    single = digits["configs"][DEFAULT_CONFIG]["levels"]["4"]["cpu_ms_per_image"]  # single-image requests too
    assert set(single) == set(cpu) and all(v > 0 for v in single.values())
    assert digits["efficiency"]["triton_images_per_request"] in (1, 8) and digits["efficiency"]["single_image_ratio"] > 0
    assert set(digits["configs"][DEFAULT_CONFIG]["levels"]["1"]["breakdown_ms"]) == {
        "client", "queue", "preprocess", "classifier", "postprocess", "server other", "total"}
    for heading in ("## 1. Serving efficiency", "## 2. Dynamic batching", "## 3. HTTP vs gRPC", "## 4. Where",
                    "## 5. CPU per image"):
        assert heading in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| digits |")]
    # efficiency, configs x levels, protocols, breakdown levels, CPU at 1 and 8 images per request
    assert len(rows) == 1 + 2 * 2 + 2 + 2 + 2
    header = next(line for line in markdown.splitlines() if line.startswith("| model | configuration"))
    assert {line.count("|") for line in rows[1:5]} == {header.count("|")}
    plot = tmp_path / "bench.png"  # the picture of section 1-2, linked from the markdown
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert "](bench.png)" in markdown
