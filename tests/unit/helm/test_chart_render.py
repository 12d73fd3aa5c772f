"""The chart lints, renders in every documented scenario, and everything it renders is a valid Kubernetes object."""

from __future__ import annotations

import re

import helm_python
import kubernetes_validate
import pytest
import yaml

from chart_tools import (ALL_APIS, CHART, CRD_KINDS, NAMESPACE, REQUIRED_VALUES, SCENARIOS, load_values, render,
                         render_scenario, scenario_id)

SCENARIO_PARAMS = [None, *SCENARIOS]
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion allows 1.27, whose schemas lack nothing the chart
# uses; 1.30 is the oldest release still widely supported) and the newest the installed validator knows.
KUBE_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "helm.sh/chart")


def test_chart_metadata_pins_the_triton_release():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert re.fullmatch(r"\d{2}\.\d{2}", meta["appVersion"]), "appVersion is the Triton release, e.g. 26.11"
    assert values["image"]["repository"] == "", "required: the image built from docker/tritonserver/Dockerfile"
    assert values["image"]["tag"] == f"{meta['appVersion']}-py3"
    assert values["tensorrt"]["build"]["image"]["tag"] == f"{meta['appVersion']}-py3"
    # The images the chart announces for mirroring are the ones its defaults pull.
    images = {i["name"]: i["image"] for i in yaml.safe_load(meta["annotations"]["images"])}
    assert images == {"tritonserver": f"nvcr.io/nvidia/tritonserver:{values['image']['tag']}",
                      "tensorrt": f"nvcr.io/nvidia/tensorrt:{values['tensorrt']['build']['image']['tag']}"}


def test_the_default_release_is_one_with_the_http_body_cap():
    """--http-max-input-size arrived in 2025 (server PR #8174): the default image must be 25.08 or newer, and the
    README must name that image and no other."""
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    year, month = (int(part) for part in meta["appVersion"].split("."))
    assert (year, month) >= (25, 8)
    readme = (CHART / "README.md").read_text()
    assert f"nvcr.io/nvidia/tritonserver:{meta['appVersion']}-py3" in readme
    stale = sorted(set(re.findall(r"\b2[0-9]\.[01][0-9]-py3", readme)) - {f"{meta['appVersion']}-py3"})
    assert not stale, f"README names other releases as the image: {stale}"


def test_ci_scenarios_cover_the_documented_set():
    names = {scenario_id(path) for path in SCENARIOS}
    assert {"cpu", "gpu", "tensorrt", "autoscaling", "canary", "monitoring"} <= names


@pytest.mark.parametrize("scenario", SCENARIO_PARAMS, ids=scenario_id)
def test_chart_lints_clean(scenario):
    # Helm's lint only logs a template's `fail`, so the defaults are linted with the values the chart requires.
    values = load_values(scenario) if scenario else REQUIRED_VALUES
    report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("scenario", SCENARIO_PARAMS, ids=scenario_id)
def test_every_rendered_object_is_valid_kubernetes(scenario):
    rendered = render_scenario(scenario)
    checked = 0
    for manifest in rendered.manifests:
        if manifest.kind in CRD_KINDS:
            continue  # no schema in kubernetes-validate; see test_crd_objects_are_well_formed
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(manifest.obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{manifest.template}: {manifest.kind}/{manifest.name} invalid for Kubernetes "
                            f"{version}: {error.message} at {list(error.path)}")
        checked += 1
    assert checked >= 7  # ServiceAccount, Secret, Service, Deployment, PDB, NetworkPolicy, test ConfigMap + Pod


def test_default_release_renders_the_expected_objects():
    kinds = sorted(m.kind for m in render().manifests)
    # No Secret: the admin key's Secret is the platform team's (the chart never renders the key).
    assert kinds == sorted(["ServiceAccount", "Service", "Deployment", "PodDisruptionBudget",
                            "NetworkPolicy", "ConfigMap", "ConfigMap", "Pod",  # liveness probe script, helm test
                            "NetworkPolicy"])  # the helm test pod's (no ingress)


@pytest.mark.parametrize("scenario", SCENARIO_PARAMS, ids=scenario_id)
def test_every_object_carries_the_standard_labels(scenario):
    for manifest in render_scenario(scenario).manifests:
        labels = manifest.obj["metadata"].get("labels", {})
        missing = [key for key in STANDARD_LABELS if key not in labels]
        assert not missing, f"{manifest.kind}/{manifest.name} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == "prod"
        assert manifest.obj["metadata"]["namespace"] == NAMESPACE


def test_two_releases_in_one_namespace_do_not_collide():
    values = {"canary": {"enabled": True}, "route": {"enabled": True, "parentRefs": [{"name": "gw"}]},
              "autoscaling": {"enabled": True, "prometheusAdapterRule": {"enabled": True}},
              "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                             "grafanaDashboard": {"enabled": True}},
              "capabilities": {"assumeApiVersions": ALL_APIS}}
    first = {(m.kind, m.name) for m in render(values, release="blue").manifests}
    second = {(m.kind, m.name) for m in render(values, release="green").manifests}
    assert not first & second
    for rendered in (render(values, release="blue"), render(values, release="green")):
        stable, canary = rendered.deployment("stable"), rendered.deployment("canary")
        release = stable["metadata"]["labels"]["app.kubernetes.io/instance"]
        for deployment in (stable, canary):
            assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == release


def test_long_release_names_are_cut_to_dns_label_length():
    release = "a-very-long-release-name-for-the-vision-team-prod-eu1"  # 53 characters, Helm's maximum
    values = {"canary": {"enabled": True}, "autoscaling": {"prometheusAdapterRule": {"enabled": True}},
              "monitoring": {"grafanaDashboard": {"enabled": True}}}
    rendered = render(values, release=release)
    keys = [(m.kind, m.name) for m in rendered.manifests]
    assert len(keys) == len(set(keys)), "cutting names must not make two objects of one kind collide"
    for manifest in rendered.manifests:
        assert len(manifest.name) <= 63, manifest.name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest.name), manifest.name
        for value in manifest.obj["metadata"]["labels"].values():
            assert len(value) <= 63
    assert rendered.deployment("canary")["metadata"]["name"].endswith("-canary")


def test_crd_objects_are_well_formed():
    rendered = render_scenario(None, {
        "canary": {"enabled": True},
        "route": {"enabled": True, "parentRefs": [{"name": "inference-gateway", "namespace": "gateway-system"}]},
        "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "capabilities": {"assumeApiVersions": ALL_APIS}})
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}

    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [name for name, svc in services.items()
                if monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()]
    assert sorted(selected) == sorted(services), "the ServiceMonitor scrapes the stable and the canary Service"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert all(endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]} for svc in services.values())
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    rule = rendered.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"TritonInferenceLatencyHigh", "TritonInferenceErrorRateHigh", "TritonQueueTimeHigh",
            "TritonPodNotReady"} <= set(alerts)
    for alert in alerts.values():
        assert alert["expr"] and alert["for"] and alert["labels"]["severity"] and alert["annotations"]["summary"]

    route = rendered.one("HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "inference-gateway", "namespace": "gateway-system"}]
    (rule,) = route["spec"]["rules"]
    assert {m["path"]["value"] for m in rule["matches"]} == {"/v2/models", "/v2/health"}
    backends = {b["name"]: b for b in rule["backendRefs"]}
    assert set(backends) == set(services)
    for name, backend in backends.items():
        assert backend["port"] in [p["port"] for p in services[name]["spec"]["ports"] if p["name"] == "http"]
    assert sum(b["weight"] for b in backends.values()) == 100
    assert backends["prod-triton-classifier-canary"]["weight"] == 10


def test_crd_objects_are_left_out_when_their_api_is_missing():
    enabled = {"canary": {"enabled": True}, "route": {"enabled": True, "parentRefs": [{"name": "gw"}]},
               "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
    rendered = render(enabled)
    assert not {m.kind for m in rendered.manifests} & CRD_KINDS
    assert "monitoring.coreos.com/v1 API is not installed" in rendered.notes
    assert "gateway.networking.k8s.io/v1 API is not installed" in rendered.notes


def test_notes_tell_how_to_reach_and_test_the_service():
    notes = render().notes
    assert "helm test prod -n ml" in notes
    assert "port-forward service/prod-triton-classifier 8000:http 8001:grpc 8002:metrics" in notes
    assert "/v2/health/ready" in notes and "/v2/models/digits" in notes
    assert "get secret triton-admin-key" in notes


def test_values_are_documented_once_in_values_yaml():
    """values.yaml's comments are the one reference (test_every_values_key_has_a_comment keeps them complete): the
    README points there instead of repeating a table, and the schema types and constrains without a second copy of
    the descriptions."""
    readme = (CHART / "README.md").read_text()
    assert not re.findall(r"^\| `[A-Za-z0-9_.]+` \| `", readme, flags=re.M), "a hand-kept values table is back"
    assert "helm show values" in readme and "[values.yaml](values.yaml)" in readme

    def descriptions(node, path="$"):
        if isinstance(node, dict):
            if isinstance(node.get("description"), str):
                yield path
            for key, child in node.items():
                yield from descriptions(child, f"{path}.{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                yield from descriptions(child, f"{path}[{index}]")

    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert not list(descriptions(schema)), "descriptions belong in values.yaml comments"
    for section in ("helm test", "Promote", "Roll back", "prometheus-adapter", "triton-deploy repo"):
        assert section in readme, section


def test_make_chart_lint_renders_every_scenario_and_fails_on_bad_values(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad-values.yaml"
    bad.write_text('replicaCount: "many"\n')
    script = CHART.parents[1] / "scripts" / "chart_lint.py"
    result = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True, timeout=300)
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert [line.split()[0] for line in lines if line.endswith("lint ok")] == \
        ["defaults", *(scenario_id(p) for p in SCENARIOS)]
    assert "got string, want integer" in result.stdout and "bad-values did not lint clean" in result.stderr
    assert (CHART.parents[1] / "build" / "chart" / "defaults.yaml").read_text().count("\nkind: ") >= 5


def test_make_chart_lint_names_a_missing_values_file_in_one_line(tmp_path):
    import subprocess
    import sys

    script = CHART.parents[1] / "scripts" / "chart_lint.py"
    missing = tmp_path / "missing.yaml"
    result = subprocess.run([sys.executable, str(script), str(missing)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "", "nothing is linted before the values files are known to be readable"
    assert result.stderr.splitlines() == [f"chart-lint: cannot read values file {missing}: no such file"]
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("image: [unclosed\n")
    result = subprocess.run([sys.executable, str(script), str(not_yaml)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"chart-lint: {not_yaml} is not valid YAML (line ")
