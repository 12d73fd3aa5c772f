"""Rendering the triton-classifier chart offline and walking what it produced (shared by tests/unit/helm and tests/integration/helm)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml

from triton_deploy.monitoring import model_metrics as mm

CHART = Path(__file__).resolve().parents[1] / "helm" / "triton-classifier"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "prod"
NAMESPACE = "ml"
# Kinds served by CRDs: kubernetes-validate has no schema for them, so tests check them structurally.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "HTTPRoute", "GRPCRoute", "Certificate"}
# Every API the chart gates on, so a render can include all optional objects.
ALL_APIS = ["monitoring.coreos.com/v1", "gateway.networking.k8s.io/v1", "cert-manager.io/v1"]
# What the chart requires beyond its defaults (it refuses to render without): the server image built from
# docker/tritonserver/Dockerfile, and the existing Secret holding the admin key (the chart never renders the key).
# Renders of the defaults get them; the ci/ scenarios must set them themselves.
SERVER_IMAGE = "registry.example.com/ml/triton-classifier-server"
ADMIN_SECRET = "triton-admin-key"
REQUIRED_VALUES = {"image": {"repository": SERVER_IMAGE},
                   "security": {"restrictedApi": {"existingSecret": ADMIN_SECRET}}}


@dataclass(frozen=True)
class Manifest:
    """One rendered object and the template that produced it."""

    template: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def is_test_hook(self) -> bool:
        return self.obj["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"


@dataclass(frozen=True)
class Rendered:
    manifests: tuple[Manifest, ...]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m.obj for m in self.manifests if m.kind == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def deployment(self, track: str = "stable") -> dict[str, Any]:
        found = [d for d in self.of_kind("Deployment") if d["metadata"]["labels"].get("track") == track]
        assert len(found) == 1, f"expected one {track} Deployment"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(object name, pod spec) of every Deployment and Pod, the helm test pod included."""
        for manifest in self.manifests:
            if manifest.kind == "Deployment":
                yield manifest.name, manifest.obj["spec"]["template"]["spec"]
            elif manifest.kind == "Pod":
                yield manifest.name, manifest.obj["spec"]

    def containers(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """("<object>/<container>", container) of every container and init container."""
        for owner, spec in self.pod_specs():
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield f"{owner}/{container['name']}", container


@functools.lru_cache(maxsize=1)
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def load_values(*files: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in files:
        merged = deep_merge(merged, yaml.safe_load(path.read_text()) or {})
    return merged


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE,
           required: bool = True) -> Rendered:
    """Render like `helm template RELEASE -n NAMESPACE` (tests included) and parse every document. `required` puts
    REQUIRED_VALUES under `values`, so a test states only what it is about."""
    if required:
        values = deep_merge(REQUIRED_VALUES, values or {})
    output = chart().render(values or {}, name=release, namespace=namespace)
    manifests, notes = [], ""
    for template, text in sorted(output.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document:
                manifests.append(Manifest(template, document))
    return Rendered(tuple(manifests), notes)


def render_scenario(path: Path | None, extra: dict[str, Any] | None = None, **kwargs: Any) -> Rendered:
    """The defaults (with REQUIRED_VALUES) or a ci/ scenario as it stands: a scenario must set what it needs."""
    values = load_values(path) if path else {}
    return render(deep_merge(values, extra or {}), required=path is None, **kwargs)


def scenario_id(path: Path | None) -> str:
    return "defaults" if path is None else path.name.removesuffix("-values.yaml")


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tritonserver"]
    return container


def arg_value(args: list[str], flag: str) -> list[str]:
    """Values of every `--flag=value` in args."""
    return [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]


# Metric names Triton 2.51 exports. Those in CPU_SERVER_METRICS are checked against the live local server in
# test_chart_runs.py; the GPU ones appear only when a GPU is present (names from Triton's metrics documentation).
CPU_SERVER_METRICS = frozenset({
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count", "nv_cpu_utilization", "nv_cpu_memory_used_bytes",
})
GPU_ONLY_METRICS = frozenset({"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes",
                              "nv_gpu_power_usage", "nv_energy_consumption"})
# The series of the custom metrics of the ensemble's python steps (triton_deploy.monitoring.model_metrics; a histogram
# as its _bucket, _sum and _count series); checked against the live local server in test_monitoring_e2e.py.
PREDICTION_METRICS = frozenset(mm.SERIES)
# Series the alerts read from other exporters: Prometheus itself (up) and kube-state-metrics.
NON_TRITON_METRICS = frozenset({"up", "kube_pod_status_ready"})


def metric_names(promql: str) -> set[str]:
    """Metric names a PromQL expression selects (identifiers directly followed by a label matcher)."""
    import re

    return set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", promql))


def liveness_probe_command(rendered: Rendered, deployment: dict[str, Any], script_dir: Path, http_port: int,
                           ) -> list[str]:
    """The server container's exec liveness probe as a local command: the script path inside the ConfigMap mount
    becomes a local copy of the rendered ConfigMap's script, and the container's HTTP port a local port. The
    interpreter stays the system `python3` (the probe must need nothing but Python's standard library)."""
    container = server_container(deployment)
    command = list(container["livenessProbe"]["exec"]["command"])
    spec = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "liveness-probe"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "liveness-probe"]
    config_map = rendered.one("ConfigMap", volume["configMap"]["name"])
    script_dir.mkdir(parents=True, exist_ok=True)
    for file_name, text in config_map["data"].items():
        (script_dir / file_name).write_text(text)
    (container_port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    local = []
    for arg in command:
        if arg.startswith(mount["mountPath"] + "/"):
            arg = str(script_dir / arg.removeprefix(mount["mountPath"] + "/"))
        elif arg.startswith("--port="):
            assert int(arg.partition("=")[2]) == container_port, "the probe calls the container's own HTTP port"
            arg = f"--port={http_port}"
        local.append(arg)
    return local
