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


@pytest.mark.slow
def test_bench_reuses_the_export_make_demo_left_in_build_and_says_so(rescaling_model, tmp_path, capsys):
    """`bench --quick` after `make demo`: build/digits is used as it is, never retrained; an export that cannot
    stand in for the built-in model is named with the reason."""
    from triton_deploy.cli import main
    from triton_deploy.loadtests.bench import _export
    from triton_deploy.progress import Reporter

    model, folder = rescaling_model
    build = tmp_path / "build"
    for name in ("digits", "mobilenet_v2"):  # a stand-in for each: bench reads the manifest, not the weights
        assert main(["export", "--keras-model", str(model), "--labels", str(folder / "labels.txt"), "--samples",
                     str(folder / "samples"), "--scale", "1", "--name", "digits", "--output", str(build / name),
                     "-q"]) == 0
    capsys.readouterr()
    options = BenchOptions(output=tmp_path / "out", quick=True, demo_build=build)
    assert _export("digits", tmp_path / "work", options, Reporter()) == build / "digits"
    assert f"Using the digits export in {build / 'digits'} (made by make demo)" in capsys.readouterr().err
    from triton_deploy.loadtests.bench import _unusable

    assert _unusable(build / "mobilenet_v2", "mobilenet_v2") == "it holds model 'digits', not 'mobilenet_v2'"
    assert "does not exist" in _unusable(tmp_path / "nothing", "digits")


def test_a_long_phase_in_a_log_shows_its_count_while_it_runs(capsys, monkeypatch):
    """Not a terminal: a phase that runs for minutes prints its count every few seconds, not only at its end."""
    from triton_deploy.progress import Reporter, _LogBar

    monkeypatch.setattr(_LogBar, "EVERY_S", 0.0)
    reporter = Reporter()
    with reporter.step("Converting"):
        pass
    with reporter.bar(3, "Validating int8_dynamic") as bar:
        bar.advance(1, status="a")
        bar.advance(1, status="b")
        bar.advance(1)
    lines = [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()]
    assert lines == ["  Converting...", "\u2713 Converting", "  Validating int8_dynamic...",
                     "  Validating int8_dynamic: 1/3", "  Validating int8_dynamic: 2/3",
                     "\u2713 Validating int8_dynamic: 3/3"]
