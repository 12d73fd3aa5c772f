"""Prediction monitoring on the trained export and a live Triton: the reference the export records, the repository
parameters that switch the metrics on, the metrics a live Triton serves, and ``triton-deploy monitor``. The end-to-end
test with a real Prometheus is tests/integration/helm/test_monitoring_e2e.py."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

from triton_deploy.errors import ManifestError
from triton_deploy.monitoring import model_metrics as mm
from triton_deploy.monitoring.monitor import MonitorOptions, Scrape, take_snapshot
from triton_deploy.spec import Manifest


@pytest.mark.slow
def test_manifest_without_reference_still_reads_and_a_wrong_reference_is_named(digits_export, tmp_path):
    import shutil

    data = json.loads((digits_export / "manifest.json").read_text())
    assert Manifest.read(digits_export).reference.samples == data["reference"]["samples"] > 0
    older = tmp_path / "older"
    shutil.copytree(digits_export, older)
    del data["reference"]
    (older / "manifest.json").write_text(json.dumps(data))
    assert Manifest.read(older).reference is None
    data["reference"] = {"samples": 3, "class_ratios": [1.0], "confidence_buckets": [1.0], "confidence_ratios": [1.0]}
    (older / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="1 class ratios for 10 labels"):
        Manifest.read(older)


@pytest.mark.slow
def test_repository_carries_the_reference_and_the_monitoring_parameters(digits_export, tmp_path):
    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.validate import parse_config
    from triton_deploy.repository.writer import generate_repository

    generate_repository([digits_export], RepositoryOptions(output=tmp_path / "on", low_confidence=0.7,
                                                           drift_window=300, drift_min_predictions=50))
    post = tmp_path / "on" / "digits_postprocess"
    assert json.loads((post / "reference.json").read_text()) == Manifest.read(digits_export).reference.to_dict()
    assert (post / "1" / "model_metrics.py").is_file() and (tmp_path / "on" / "digits_preprocess" / "1" /
                                                             "model_metrics.py").is_file()
    parameters = {k: v.string_value for k, v in parse_config((post / "config.pbtxt").read_text(), "p").parameters.items()}
    assert parameters | {"top_k": "", "output_kind": "", "labels_file": ""} == {
        "top_k": "", "output_kind": "", "labels_file": "", "monitoring": "true", "ensemble": "digits",
        "model_version": "1", "low_confidence_threshold": "0.7", "reference_file": "reference.json",
        "drift_window": "300", "drift_min_predictions": "50"}

    generate_repository([digits_export], RepositoryOptions(output=tmp_path / "off", monitoring=False))
    off = parse_config((tmp_path / "off" / "digits_postprocess" / "config.pbtxt").read_text(), "p").parameters
    assert off["monitoring"].string_value == "false" and "reference_file" not in off


def send(server, images: list[bytes]) -> list[int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("IMAGE", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    return client.infer("digits", [tensor]).as_numpy("CLASS_IDS")[:, 0].tolist()


@pytest.mark.slow
@pytest.mark.server
def test_monitor_snapshot_counts_what_the_server_answered(triton_server, heldout_digits):
    from conftest import encode_digit

    images, _ = heldout_digits
    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url
    before = Scrape.read(url)
    answered = send(triton_server, [encode_digit(pixels) for pixels in images[:30]])
    deadline = time.monotonic() + 10  # each model sends its counts every 0.5 s, on its own clock
    while True:
        snapshot = take_snapshot(before, Scrape.read(url), url, model="digits")
        view = snapshot.ensembles["digits"]
        predicted = sum(v["predictions"] for v in view["classes"].values())  # postprocess's counts
        decoded = sum(view["images_by_format"].values())  # preprocess's counts, flushed independently
        if (predicted >= len(answered) and decoded >= len(answered)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {k: v["predictions"] for k, v in view["classes"].items() if v["predictions"]} == {
        str(k): float(answered.count(k)) for k in set(answered)}
    assert sum(v["reference_share"] for v in view["classes"].values()) == pytest.approx(1.0, abs=1e-3)
    assert view["images_by_format"] == {"png": 30.0} and view["images_by_encoding"] == {"binary": 30.0}
    # The confidence histogram counted every prediction; its median (as histogram_quantile computes it) is a
    # probability.
    assert view["confidence_buckets"]["+Inf"] == 30.0
    assert 0.0 < view["median_confidence"] <= 1.0
    assert set(snapshot.models) == {"digits", "digits_preprocess", "digits_classifier", "digits_postprocess"}
    assert snapshot.models["digits"]["images_per_s"] > 0
    assert snapshot.to_dict()["ensembles"]["digits"]["classes"]  # serialisable for --json


@pytest.mark.slow
@pytest.mark.server
def test_monitor_explains_a_repository_without_monitoring_in_one_line(triton_server):
    """The same server's metrics without the custom ones are what a repository without monitoring serves."""
    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url
    with urllib.request.urlopen(url, timeout=5) as response:
        text = "\n".join(line for line in response.read().decode().splitlines() if "triton_classifier_" not in line)
    from triton_deploy.loadtests import server_stats

    scrape = Scrape(0.0, server_stats.parse_metrics(text), server_stats.parse_samples(text))
    snapshot = take_snapshot(scrape, scrape, url)
    assert snapshot.ensembles == {}
    (note,) = snapshot.notes
    assert note.startswith("digits: no prediction metrics") and "without monitoring" in note and "\n" not in note


@pytest.mark.slow
@pytest.mark.server
def test_monitor_once_json_from_the_command_line(triton_server, capsys):
    from triton_deploy.cli import main

    code = main(["monitor", "--once", "--json", "--interval", "0.2",
                 "--metrics-url", f"127.0.0.1:{triton_server.options.metrics_port}"])
    snapshot = json.loads(capsys.readouterr().out)
    assert code == 0 and "digits" in snapshot["ensembles"] and snapshot["seconds"] >= 0.2
    assert set(snapshot["ensembles"]["digits"]["drift"]) == {"class", "confidence"}


def our_series(text: str) -> str:
    """The lines of a /metrics page that belong to the project's metric families (HELP, TYPE and samples)."""
    kept, ours = [], False
    for line in text.splitlines():
        if line.startswith("# "):
            ours = line.split()[2].startswith("triton_classifier_")
        elif line:
            ours = line.startswith("triton_classifier_")
        if ours:
            kept.append(line)
    return "\n".join(kept) + "\n"


@pytest.mark.slow
@pytest.mark.server
def test_every_series_the_project_defines_passes_promtool_check_metrics(triton_server, heldout_digits):
    import shutil
    import subprocess

    from conftest import encode_digit

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run scripts/setup-system.sh (Debian package 'prometheus')")
    send(triton_server, [encode_digit(pixels) for pixels in heldout_digits[0][:5]])
    time.sleep(1.5)  # the models flush their metrics every 0.5 s
    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url
    with urllib.request.urlopen(url, timeout=5) as response:
        text = our_series(response.read().decode())
    families = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}
    assert set(families) == set(mm.METRICS)
    assert {name for name, kind in families.items() if kind == "histogram"} == set(mm.HISTOGRAMS)
    assert f'{mm.CONFIDENCE}_bucket{{model="digits",version="1",le="+Inf"}}' in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.server
def test_monitor_refuses_a_model_the_server_does_not_have_and_names_those_it_has(triton_server, capsys):
    from triton_deploy.cli import main

    code = main(["monitor", "--once", "--model", "digitz", "--interval", "0.1",
                 "--metrics-url", f"127.0.0.1:{triton_server.options.metrics_port}"])
    error = capsys.readouterr().err.strip()
    assert code == 31 and "no model digitz" in error and "digits, digits_classifier" in error and "\n" not in error


@pytest.mark.slow
@pytest.mark.server
def test_monitor_pointed_at_the_grpc_port_says_so_in_one_line(triton_server, capsys):
    from triton_deploy.cli import main

    code = main(["monitor", "--once", "--metrics-url", f"127.0.0.1:{triton_server.options.grpc_port}"])
    error = capsys.readouterr().err.strip()
    assert code == 10 and "not with HTTP" in error and "--metrics-url" in error and "\n" not in error
    assert "Traceback" not in error


@pytest.mark.slow
@pytest.mark.server
def test_evaluate_raises_the_prediction_count_by_exactly_the_images_it_evaluated(triton_server, heldout_digits,
                                                                                  tmp_path):
    """evaluate's label probe (one-hot rows sent to digits_postprocess) is tooling traffic, not predictions."""
    from conftest import encode_digit
    from triton_deploy.clients.evaluate import EvaluateOptions, evaluate

    images, labels = heldout_digits
    for n, (pixels, label) in enumerate(zip(images[:24], labels[:24], strict=True)):
        folder = tmp_path / "data" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n}.png").write_bytes(encode_digit(pixels))
    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url

    def predictions() -> float:
        time.sleep(1.5)  # longer than the metric flush period (0.5 s)
        return Scrape.read(url).total(mm.PREDICTIONS, "digits") or 0.0

    before = predictions()
    evaluate(EvaluateOptions(data_dir=tmp_path / "data", output=tmp_path / "report", url=triton_server.grpc_url,
                             protocol="grpc"))
    assert predictions() - before == 24


@pytest.mark.slow
@pytest.mark.server
def test_a_request_marked_as_tooling_is_answered_but_not_counted_even_through_the_ensemble(triton_server,
                                                                                            heldout_digits):
    """Health checks and probes carry the `tooling` request parameter; Triton passes an ensemble request's
    parameters on to its steps, so neither the preprocess nor the postprocess step counts them."""
    import tritonclient.http as httpclient

    from conftest import encode_digit

    url = MonitorOptions(metrics_url=f"127.0.0.1:{triton_server.options.metrics_port}").url

    def counts() -> tuple[float, float]:
        time.sleep(1.5)  # longer than the metric flush period (0.5 s)
        scrape = Scrape.read(url)
        return scrape.total(mm.PREDICTIONS, "digits") or 0.0, scrape.total(mm.IMAGES, "digits") or 0.0

    client = httpclient.InferenceServerClient(triton_server.http_url)
    tensor = httpclient.InferInput("IMAGE", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[encode_digit(p)] for p in heldout_digits[0][:2]], dtype=np.object_))
    before = counts()
    answer = client.infer("digits", [tensor], parameters={"tooling": "liveness-probe"})
    assert answer.as_numpy("CLASS_IDS").shape == (2, 5)
    assert counts() == before
    client.infer("digits", [tensor])
    assert counts() == (before[0] + 2, before[1] + 2)
