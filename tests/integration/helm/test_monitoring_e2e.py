"""Prediction monitoring end to end: a real Prometheus server (Debian's `prometheus` package) scrapes a real local
Triton serving the digits ensemble, with the chart's rendered PrometheusRule loaded, and is asked through its HTTP API.

One scenario, in order: held-out digits (per-class counts equal the answers, the median confidence from
histogram_quantile() over the confidence histogram agrees with the answers' scores, no drift alert), then one class only
(the drift score rises and its alert fires), then undecodable images (decode-failure series by reason, and their alert
fires). Intervals are short (1 s scrape and evaluation, a 200-prediction drift window, 30 s rate windows) so the whole
test takes about a minute; every wait is bounded, and on failure the Prometheus and Triton logs are printed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from chart_tools import ALL_APIS, PREDICTION_METRICS, render
from conftest import encode_digit
from triton_deploy.monitoring import model_metrics as mm

pytestmark = [pytest.mark.slow, pytest.mark.server]

# Labels a ServiceMonitor scrape gives the series, so the chart's rules (rendered for release "prod" in "ml") match.
TARGET_LABELS = {"namespace": "ml", "service": "prod-triton-classifier", "pod": "prod-triton-classifier-6f9c8d7b5-x2v4k"}
DRIFT_THRESHOLD = 0.3
ALERT_VALUES = {"monitoring": {"prometheusRule": {"enabled": True}, "predictionAlerts": {
    "drift": {"threshold": DRIFT_THRESHOLD, "for": "2s"},
    "lowConfidence": {"ratio": 0.5, "window": "30s", "for": "2s"},
    "decodeFailures": {"ratio": 0.02, "window": "30s", "for": "2s"},
    "missingClass": {"window": "10m", "minExpected": 20, "for": "0s"}}},
    "capabilities": {"assumeApiVersions": ALL_APIS}}
WAIT_S = 60


@pytest.fixture(scope="module")
def monitored_server(digits_export, tmp_path_factory):
    """Its own Triton (fresh counters) on a repository with a short drift window."""
    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.writer import generate_repository
    from triton_deploy.server import ServerOptions, TritonServer, free_ports

    root = tmp_path_factory.mktemp("monitored")
    generate_repository([digits_export], RepositoryOptions(output=root / "repo", drift_window=200,
                                                           drift_min_predictions=100))
    http_port, grpc_port, metrics_port = free_ports(3)
    options = ServerOptions(repository=root / "repo", http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, log_file=root / "triton.log", exit_timeout_s=5)
    with TritonServer(options) as server:
        yield server


class Prometheus:
    """A Prometheus server on a free loopback port, scraping one target every second."""

    def __init__(self, directory: Path, target: str, rules: dict) -> None:
        from triton_deploy.server import free_ports

        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("the prometheus server is not installed: run scripts/setup-system.sh (Debian package "
                        "'prometheus')")
        (self.port,) = free_ports(1)
        self.directory = directory
        (directory / "rules.yaml").write_text(yaml.safe_dump(rules))
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": ["rules.yaml"],
                  "scrape_configs": [{"job_name": "triton", "static_configs": [
                      {"targets": [target], "labels": TARGET_LABELS}]}]}
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = directory / "prometheus.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory)

    def get(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def query(self, promql: str) -> list[dict]:
        return self.get("/api/v1/query", query=promql)["data"]["result"]

    def alerts(self, name: str, state: str = "firing") -> list[dict]:
        return [a for a in self.get("/api/v1/alerts")["data"]["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == state]

    def wait_for(self, what: str, condition, timeout_s: float = WAIT_S):
        """Poll ``condition()`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last_error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode} while waiting for {what}")
            try:
                result = condition()
                if result:
                    return result
            except OSError as exc:  # not listening yet
                last_error = exc
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f" ({last_error})" if last_error else ""))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(monitored_server, tmp_path_factory, request):
    rules = render(ALERT_VALUES).one("PrometheusRule")["spec"]
    target = f"127.0.0.1:{monitored_server.options.metrics_port}"
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), target, rules)
    try:
        server.wait_for("Prometheus to be ready and scrape Triton",
                        lambda: [t for t in server.get("/api/v1/targets")["data"]["activeTargets"]
                                 if t["health"] == "up"])
        yield server
    finally:
        server.stop()
        if request.session.testsfailed:  # logs kept and shown on failure
            print(f"--- prometheus log ({server.log_path}) ---\n{server.log_path.read_text()[-4000:]}")
            print(f"--- triton log ({monitored_server.log_path}) ---\n{monitored_server.log_path.read_text()[-4000:]}")


def classify(server, images: list[bytes], scores: list[float] | None = None) -> tuple[list[int], list[str]]:
    """Send each image as its own request; (top-1 class ids of the answers, error messages of the failures). The
    top-1 scores are appended to ``scores`` when given."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_url)
    ids, errors = [], []
    for image in images:
        tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        try:
            result = client.infer("digits", [tensor])
            ids.append(int(result.as_numpy("CLASS_IDS")[0, 0]))
            if scores is not None:
                scores.append(float(result.as_numpy("SCORES")[0, 0]))
        except InferenceServerException as exc:
            errors.append(str(exc))
    return ids, errors


def by_label(result: list[dict], label: str) -> dict[str, float]:
    return {series["metric"][label]: float(series["value"][1]) for series in result}


def test_prometheus_sees_classes_drift_and_decode_failures(monitored_server, prometheus, heldout_digits):
    images, labels = heldout_digits
    started = time.monotonic()

    # 1. Held-out traffic: Prometheus counts exactly the classes the server answered; no drift alert.
    normal = [encode_digit(pixels) for pixels in images]
    top1: list[float] = []
    answered, errors = classify(monitored_server, normal, top1)
    assert not errors and len(answered) == len(normal)
    assert np.mean(np.asarray(answered) == labels) > 0.9  # the model works, so the counts below mean something
    expected = {str(k): float(v) for k, v in Counter(answered).items()}
    counts = prometheus.wait_for(
        f"{len(normal)} predictions in Prometheus",
        lambda: (c := by_label(prometheus.query("triton_classifier_predictions_total"), "class"))
        and sum(c.values()) == len(normal) and c)
    assert {k: v for k, v in counts.items() if v} == expected
    assert set(counts) == {str(k) for k in range(10)}  # every class has a series, at 0 when never predicted
    # The confidence histogram: every prediction observed once, its sum the answers' top-1 scores, and
    # histogram_quantile() puts the median inside the bucket that holds the answers' median.
    confidence = mm.CONFIDENCE
    count = prometheus.wait_for(f"{len(normal)} observations in {confidence}_count", lambda: [
        s for s in prometheus.query(f"{confidence}_count") if float(s["value"][1]) == len(normal)])
    assert len(count) == 1
    (total,) = prometheus.query(f"{confidence}_sum")
    assert float(total["value"][1]) == pytest.approx(sum(top1), rel=1e-4)
    (median,) = prometheus.query(f"histogram_quantile(0.5, sum by (le) ({confidence}_bucket))")
    bounds = (0.0, *mm.CONFIDENCE_BUCKETS)
    true_median = float(np.median(top1))
    bucket = next(i for i in range(1, len(bounds)) if true_median <= bounds[i])
    assert bounds[bucket - 1] <= float(median["value"][1]) <= bounds[bucket], (median, true_median)
    drift = by_label(prometheus.query("triton_classifier_drift_score"), "distribution")
    assert set(drift) == {"class", "confidence"} and max(drift.values()) < DRIFT_THRESHOLD, drift
    time.sleep(3)  # longer than the alert's `for`: had the score crossed the threshold, the alert would fire now
    assert not prometheus.alerts("TritonPredictionDrift", "firing") + prometheus.alerts("TritonPredictionDrift",
                                                                                        "pending")
    names = {series["metric"]["__name__"] for series in prometheus.query('{__name__=~"triton_classifier_.+"}')}
    assert names == set(PREDICTION_METRICS)

    # 2. Skewed traffic, the digit 1 only: the class distribution drifts and the alert fires.
    ones = [image for image, label in zip(normal, labels) if label == 1]
    skewed, errors = classify(monitored_server, (ones * 10)[:250])
    assert not errors
    # A window of 200 predictions of one class against ten balanced classes scores about 0.9 (the threshold is 0.3);
    # scrapes taken while the window was still filling show values in between.
    prometheus.wait_for(
        "the class drift score of a one-class window (> 0.8)",
        lambda: [s for s in prometheus.query('triton_classifier_drift_score{distribution="class"}')
                 if float(s["value"][1]) > 0.8])
    firing = prometheus.wait_for("TritonPredictionDrift to fire", lambda: prometheus.alerts("TritonPredictionDrift"))
    assert {a["labels"]["distribution"] for a in firing} >= {"class"}
    assert all(a["labels"]["model"] == "digits" and a["labels"]["service"] == TARGET_LABELS["service"] for a in firing)
    assert "drifted" in firing[0]["annotations"]["summary"]

    # 3. Undecodable images: failures counted by reason, and the decode-failure alert fires for each reason.
    png = normal[0]
    # 10 per reason: above the test's 2 % even if all 250 skewed images are still inside the 30 s rate window.
    bad = [b"this is not an image"] * 10 + [png[: len(png) // 2]] * 10 + [b""] * 10
    _, errors = classify(monitored_server, bad)
    assert len(errors) == len(bad)
    failures = prometheus.wait_for(
        "the decode failures in Prometheus",
        lambda: (f := {k: v for k, v in by_label(prometheus.query("triton_classifier_decode_failures_total"),
                                                   "reason").items() if v})
        and sum(f.values()) == len(bad) and f)
    assert failures == {"not_an_image": 10.0, "truncated": 10.0, "empty": 10.0}
    firing = prometheus.wait_for(
        "TritonImageDecodeFailures to fire for every reason",
        lambda: (a := prometheus.alerts("TritonImageDecodeFailures"))
        and {x["labels"]["reason"] for x in a} == set(failures) and a)
    assert all("fail to decode" in a["annotations"]["summary"] for a in firing)
    assert time.monotonic() - started < 3 * WAIT_S
