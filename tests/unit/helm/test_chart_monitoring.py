"""Monitoring the chart ships, checked with real tools: promtool checks and unit-tests the alerting rules and the
prometheus-adapter rule; the Grafana dashboard parses and queries only metrics Triton exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from triton_deploy.monitoring import model_metrics as mm
from chart_tools import (ALL_APIS, CHART, CPU_SERVER_METRICS, GPU_ONLY_METRICS, NON_TRITON_METRICS,
                         PREDICTION_METRICS, SCENARIOS, metric_names, render, render_scenario, scenario_id)

HERE = Path(__file__).resolve().parent
MONITORING = {"monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                             "grafanaDashboard": {"enabled": True}},
              "autoscaling": {"prometheusAdapterRule": {"enabled": True}},
              "capabilities": {"assumeApiVersions": ALL_APIS}}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/setup-system.sh (Debian package 'prometheus')")
    return path


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def rendered_rules(values=None) -> dict:
    return render({**MONITORING, **(values or {})}).one("PrometheusRule")["spec"]


def adapter_rule(values=None) -> dict:
    rendered = render({**MONITORING, **(values or {})})
    (config,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("prometheus-adapter-rule")]
    (rule,) = yaml.safe_load(config["data"]["rules.yaml"])["rules"]
    return rule


# --- alerting rules ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", [p for p in SCENARIOS if scenario_id(p) == "monitoring"], ids=scenario_id)
def test_promtool_accepts_the_rendered_rules(promtool, tmp_path, scenario):
    spec = render_scenario(scenario).one("PrometheusRule")["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    assert "SUCCESS: 9 rules found" in run([promtool, "check", "rules", "rules.yaml"], tmp_path)


@pytest.mark.parametrize("tests", ["prometheus_rules_test.yaml", "prediction_rules_test.yaml"])
def test_alerts_fire_on_the_right_series(promtool, tmp_path, tests):
    """The promtool test files feed series and state which alerts fire (and which do not), with labels and
    annotations: server alerts in prometheus_rules_test.yaml, prediction alerts in prediction_rules_test.yaml."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules()))
    shutil.copy(HERE / tests, tmp_path)
    assert "SUCCESS" in run([promtool, "test", "rules", tests], tmp_path)


def test_every_prediction_alert_has_a_promtool_test():
    alerts = {r["alert"] for r in rendered_rules()["groups"][1]["rules"]}
    tested = set(re.findall(r"alertname: (\w+)", (HERE / "prediction_rules_test.yaml").read_text()))
    assert alerts == tested == {"TritonPredictionDrift", "TritonLowConfidencePredictions",
                                "TritonImageDecodeFailures", "TritonClassNoLongerPredicted"}


def test_prediction_alerts_follow_values_and_can_be_turned_off():
    values = {"enabled": True, "severity": "page", "drift": {"threshold": 0.4, "for": "2m"},
              "lowConfidence": {"ratio": 0.1, "window": "3m", "for": "4m"},
              "decodeFailures": {"ratio": 0.02, "window": "5m", "for": "6m"},
              "missingClass": {"window": "2h", "minExpected": 50, "for": "7m"}}
    monitoring = {**MONITORING["monitoring"], "prometheusRule": {"enabled": True, "alertLabels": {"team": "vision"}}}
    spec = rendered_rules({"monitoring": {**monitoring, "predictionAlerts": values}})
    alerts = {r["alert"]: r for r in spec["groups"][1]["rules"]}
    assert alerts["TritonPredictionDrift"]["expr"].rstrip().endswith("> 0.4")
    assert alerts["TritonLowConfidencePredictions"]["expr"].rstrip().endswith("> 0.1")
    assert "[3m]" in alerts["TritonLowConfidencePredictions"]["expr"]
    assert alerts["TritonImageDecodeFailures"]["expr"].rstrip().endswith("> 0.02")
    assert "[2h]" in alerts["TritonClassNoLongerPredicted"]["expr"] and ">= 50" in alerts[
        "TritonClassNoLongerPredicted"]["expr"]
    assert [a["for"] for a in alerts.values()] == ["2m", "4m", "6m", "7m"]
    assert all(a["labels"] == {"severity": "page", "team": "vision"} for a in alerts.values())
    assert all(a["annotations"]["summary"] and len(a["annotations"]["description"]) > 200 for a in alerts.values())
    off = rendered_rules({"monitoring": {**monitoring, "predictionAlerts": {"enabled": False}}})
    assert [g["name"] for g in off["groups"]] == ["prod-triton-classifier.triton"]


def test_alert_thresholds_and_labels_come_from_values():
    spec = rendered_rules({"monitoring": {**MONITORING["monitoring"], "prometheusRule": {
        "enabled": True, "latencyMs": 80, "queueTimeMs": 15, "errorRatio": 0.01, "for": "3m",
        "alertLabels": {"team": "vision"}}}})
    alerts = {r["alert"]: r for r in spec["groups"][0]["rules"]}
    assert alerts["TritonInferenceLatencyHigh"]["expr"].rstrip().endswith("/ 1000 > 80")
    assert alerts["TritonQueueTimeHigh"]["expr"].rstrip().endswith("/ 1000 > 15")
    assert alerts["TritonInferenceErrorRateHigh"]["expr"].rstrip().endswith("> 0.01")
    assert all(a["for"] == "3m" and a["labels"]["team"] == "vision" for a in alerts.values())


def test_alerts_only_read_triton_and_kubernetes_metrics():
    for group in rendered_rules()["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names and names <= CPU_SERVER_METRICS | NON_TRITON_METRICS | PREDICTION_METRICS, (rule["alert"],
                                                                                                    names)


# --- prometheus-adapter rule ---------------------------------------------------------------------------------------

def test_adapter_rule_is_namespace_agnostic_per_model_and_per_request():
    rule = adapter_rule()
    query = rule["metricsQuery"]
    assert rule["name"]["as"] == "triton_queue_time_per_request_seconds"
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert 'model!=""' in rule["seriesQuery"]
    assert query.count("<<.LabelMatchers>>") == 2 and query.count("<<.GroupBy>>") == 2
    assert "rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[2m])" in query
    assert "rate(nv_inference_request_success{<<.LabelMatchers>>}[2m])" in query
    # Nothing release- or namespace-specific: one adapter rule serves every release in every namespace.
    for specific in ("prod", "triton-classifier", "namespace=", "ml"):
        assert specific not in re.sub(r"<<\.\w+>>", "", query + rule["seriesQuery"]).replace(
            "namespace!=", ""), specific


def test_adapter_rule_computes_queue_time_per_request_per_pod_in_seconds(promtool, tmp_path):
    """Fill the rule like prometheus-adapter does for an HPA request and evaluate it with promtool."""
    query = adapter_rule()["metricsQuery"]
    assert query.endswith("/ 1e6")  # Triton counts microseconds; the metric is served in seconds

    def for_hpa(namespace: str, pods: str) -> str:
        matchers = f'namespace="{namespace}",pod=~"{pods}",model="digits_classifier"'
        return query.replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")

    rules = {"groups": [{"name": "adapter", "rules": [
        {"record": "hpa:ml", "expr": for_hpa("ml", "pod-a|pod-b|pod-c")},
        {"record": "hpa:team_b", "expr": for_hpa("team-b", "pod-a")},
    ]}]}
    (tmp_path / "adapter_rules.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(HERE / "prometheus_adapter_rule_test.yaml", tmp_path)
    assert "SUCCESS" in run([promtool, "test", "rules", "prometheus_adapter_rule_test.yaml"], tmp_path)


def check_metrics(promtool: str, name: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`promtool check metrics` on the series prometheus-adapter serves under ``name`` (one gauge per pod)."""
    text = (f"# HELP {name} Mean time one request waited in Triton's queue.\n# TYPE {name} gauge\n"
            f'{name}{{namespace="ml",pod="pod-a",model="digits_classifier"}} 0.002\n')
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


def test_default_adapter_metric_passes_promtool_check_metrics(promtool, tmp_path):
    result = check_metrics(promtool, adapter_rule()["name"]["as"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: the old microsecond name is an abbreviated unit, which promtool reports.
    old = check_metrics(promtool, "triton_queue_time_per_request_us", tmp_path)
    assert "abbreviated" in old.stdout + old.stderr, old.stdout + old.stderr


@pytest.mark.parametrize("queue_time,where", [
    ({"metricName": "triton_queue_time_per_request_us"}, "/autoscaling/queueTime/metricName"),
    ({"metricName": "triton_queue_time_per_request"}, "/autoscaling/queueTime/metricName"),
    ({"targetMicroseconds": 20000}, "/autoscaling/queueTime"),  # the key before targetSeconds
    ({"targetSeconds": 0}, "/autoscaling/queueTime/targetSeconds"),
    ({"targetSeconds": "20ms"}, "/autoscaling/queueTime/targetSeconds"),
])
def test_schema_keeps_the_queue_time_metric_and_its_target_in_seconds(queue_time, where):
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match=f"at '{where}'"):
        render({"autoscaling": {"queueTime": queue_time}})


def test_readme_documents_the_rendered_adapter_rule():
    """The README's rule block is the one the chart renders (default values), so copying it works."""
    readme = (CHART / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(# prometheus-adapter rule.*?)```", readme, flags=re.S)
    assert len(blocks) == 1, "README needs exactly one yaml block starting with '# prometheus-adapter rule'"
    (documented,) = yaml.safe_load(blocks[0])["rules"]
    assert documented == adapter_rule()


# --- Grafana dashboard ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard() -> dict:
    rendered = render(MONITORING)
    (config,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config["data"].values()
    return json.loads(text)


def dashboard_queries(dashboard: dict) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_dashboard_is_unique_per_release(dashboard):
    other = render(MONITORING, release="canary-test", namespace="team-b")
    (config,) = [c for c in other.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    other_dashboard = json.loads(next(iter(config["data"].values())))
    assert dashboard["uid"] != other_dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert "ml" in dashboard["title"] and "team-b" in other_dashboard["title"]


def test_dashboard_variables_default_to_the_release(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "service", "model"}
    assert variables["namespace"]["current"]["value"] == "ml"
    assert variables["service"]["current"]["value"] == "prod-triton-classifier|prod-triton-classifier-canary"
    assert variables["model"]["current"]["value"] == "digits"
    for query in dashboard_queries(dashboard):
        used = set(re.findall(r"\$(\w+)", query))
        assert used <= set(variables) | {"__rate_interval"}, query


def test_dashboard_panels_are_laid_out_without_duplicates(dashboard):
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(dashboard_queries(dashboard)) >= 12
    for panel in dashboard["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_dashboard_queries_only_metrics_triton_exports(dashboard):
    used = set()
    for query in dashboard_queries(dashboard):
        names = metric_names(query)
        assert names, f"no metric in {query}"
        used |= names
    known = CPU_SERVER_METRICS | GPU_ONLY_METRICS | PREDICTION_METRICS
    assert used <= known, used - known
    # Every metric named in the issues is on the dashboard (the drift window is only context for the score).
    assert CPU_SERVER_METRICS | PREDICTION_METRICS - {mm.DRIFT_WINDOW} <= used, (
        CPU_SERVER_METRICS | PREDICTION_METRICS - used)


def test_dashboard_reads_the_distributions_as_histograms(dashboard):
    """Confidence, margin and input size are Prometheus histograms: quantiles over their buckets summed by le, means
    from _sum over _count, never a `bucket` label."""
    queries = dashboard_queries(dashboard)
    for histogram in mm.HISTOGRAMS:
        assert any(q.startswith("histogram_quantile(0.5, sum by (le) (rate(" + histogram + "_bucket{") for q in queries)
        assert any(f"{histogram}_sum{{" in q and f"{histogram}_count{{" in q for q in queries)
    assert not any("bucket)" in q or "{{bucket}}" in q for q in queries)
