"""The values platform teams set around a release (registry mirror, labels, annotations, extra volumes and containers,
security-context additions, Service exposure, Ingress, GRPCRoute, PodMonitor, monitor relabelings and TLS) and gRPC
TLS: each renders what it says, and whatever could weaken the pod's restricted security is refused."""

from __future__ import annotations

import helm_python
import pytest
import yaml

from chart_tools import (ALL_APIS, CHART, SCENARIOS, arg_value, load_values, render, render_scenario, scenario_id,
                         server_container)

SIDECAR = {"name": "log-shipper", "image": "fluent/fluent-bit:3.2.2",
           "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}}
MIRROR = "mirror.example.com:5000"


def pod_spec(rendered, track="stable"):
    return rendered.deployment(track)["spec"]["template"]["spec"]


def containers_by_name(spec):
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


# --- every new value is exercised by a ci/ scenario ----------------------------------------------------------------

NEW_VALUES = [
    "global.imageRegistry", "commonLabels", "deploymentAnnotations", "updateStrategy", "extraVolumes",
    "extraVolumeMounts", "extraEnvFrom", "initContainers", "sidecars", "containerSecurityContext", "service.labels",
    "service.loadBalancerIP", "service.loadBalancerSourceRanges", "monitoring.serviceMonitor.scheme",
    "monitoring.serviceMonitor.tlsConfig", "monitoring.serviceMonitor.relabelings",
    "monitoring.serviceMonitor.metricRelabelings", "monitoring.podMonitor.enabled", "monitoring.podMonitor.interval",
    "monitoring.podMonitor.scrapeTimeout", "monitoring.podMonitor.labels", "monitoring.podMonitor.scheme",
    "monitoring.podMonitor.tlsConfig", "monitoring.podMonitor.relabelings", "monitoring.podMonitor.metricRelabelings",
    "ingress.enabled", "ingress.className", "ingress.annotations", "ingress.hosts", "ingress.pathPrefixes",
    "ingress.tls", "grpcRoute.enabled", "grpcRoute.parentRefs", "grpcRoute.hostnames", "grpcRoute.methods",
    "security.grpcTls.enabled", "security.grpcTls.existingSecret", "security.grpcTls.mutual",
    "security.grpcTls.certManager.enabled", "security.grpcTls.certManager.issuerRef",
    "security.grpcTls.certManager.extraDnsNames", "security.grpcTls.certManager.duration",
    "security.grpcTls.certManager.renewBefore",
]


def lookup(values, path):
    for key in path.split("."):
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


@pytest.mark.parametrize("path", NEW_VALUES)
def test_every_new_value_is_set_in_a_ci_scenario(path):
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert lookup(defaults, path) is not None or path.startswith("global."), f"{path} is not in values.yaml"
    assert any(lookup(load_values(p), path) not in (None, {}, [], "") for p in SCENARIOS), \
        f"no ci/ scenario sets {path}"


# --- images --------------------------------------------------------------------------------------------------------

def test_global_image_registry_replaces_the_registry_of_every_image_the_chart_names():
    rendered = render({"global": {"imageRegistry": MIRROR}, "tests": {"image": {"repository": "python"}},
                       "modelRepository": {"source": "image", "image": {"repository": "ghcr.io/acme/digits-repo",
                                                                         "tag": "v3"}}})
    images = {name: c["image"] for name, c in rendered.containers()}
    assert images == {
        "prod-triton-classifier/copy-model-repository": f"{MIRROR}/acme/digits-repo:v3",
        "prod-triton-classifier/tritonserver": f"{MIRROR}/ml/triton-classifier-server:26.11-py3",
        "prod-triton-classifier-test-inference/inference": f"{MIRROR}/python:3.12-slim",
    }
    tensorrt = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "tensorrt"),
                               {"global": {"imageRegistry": MIRROR}})
    assert containers_by_name(pod_spec(tensorrt))["build-tensorrt-plan"]["image"] == \
        f"{MIRROR}/nvidia/tensorrt:26.11-py3"
    # Without it, the repositories are used as written; a digest stays attached.
    pinned = render({"image": {"digest": "sha256:" + "0" * 64}})
    assert server_container(pinned.deployment())["image"].startswith("registry.example.com/ml/")


def test_a_malformed_image_registry_is_refused_but_other_globals_of_a_parent_chart_pass():
    with pytest.raises(helm_python.HelmValuesError):
        render({"global": {"imageRegistry": "https://mirror.example.com"}})
    render({"global": {"imageRegistry": "", "storageClass": "fast", "imagePullSecrets": []}})


# --- labels, annotations, strategy ---------------------------------------------------------------------------------

def test_common_labels_go_on_every_object_and_pod_but_never_on_selectors():
    values = {"commonLabels": {"team": "vision"}, "canary": {"enabled": True},
              "route": {"enabled": True, "parentRefs": [{"name": "gw"}]},
              "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
              "capabilities": {"assumeApiVersions": ALL_APIS}}
    rendered = render(values)
    for manifest in rendered.manifests:
        assert manifest.obj["metadata"]["labels"]["team"] == "vision", f"{manifest.kind}/{manifest.name}"
    for track in ("stable", "canary"):
        deployment = rendered.deployment(track)
        assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "vision"
        assert "team" not in deployment["spec"]["selector"]["matchLabels"]
    for service in rendered.of_kind("Service"):
        assert "team" not in service["spec"]["selector"]
    assert "team" not in str(rendered.one("ServiceMonitor")["spec"]["selector"])
    # The chart's own labels (selectors among them) cannot be overridden through commonLabels.
    for key in ("app.kubernetes.io/instance", "helm.sh/chart", "track"):
        with pytest.raises(helm_python.HelmValuesError):
            render({"commonLabels": {key: "x"}})


def test_deployment_annotations_sit_beside_the_checkov_skips():
    deployment = render({"deploymentAnnotations": {"reloader.stakater.com/auto": "true"}}).deployment()
    annotations = deployment["metadata"]["annotations"]
    assert annotations["reloader.stakater.com/auto"] == "true"
    assert any(key.startswith("checkov.io/skip") for key in annotations)
    assert "reloader.stakater.com/auto" not in deployment["spec"]["template"]["metadata"]["annotations"]


def test_update_strategy_defaults_to_surge_without_unavailability_and_can_be_replaced():
    assert render().deployment()["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    recreate = render({"updateStrategy": {"type": "Recreate", "rollingUpdate": None}}).deployment()
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}
    with pytest.raises(helm_python.HelmRenderError, match="updateStrategy.rollingUpdate must be left out"):
        render({"updateStrategy": {"type": "Recreate"}})
    with pytest.raises(helm_python.HelmValuesError):
        render({"updateStrategy": {"type": "OnDelete"}})


# --- extra volumes, env and containers -----------------------------------------------------------------------------

def test_extra_volumes_mounts_and_env_from_reach_the_server_container():
    rendered = render({"extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
                       "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
                       "extraEnvFrom": [{"configMapRef": {"name": "proxy-env"}}]})
    spec = pod_spec(rendered)
    assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in spec["volumes"]
    container = server_container(rendered.deployment())
    assert {"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True} in container["volumeMounts"]
    assert container["envFrom"] == [{"configMapRef": {"name": "proxy-env"}}]
    # Object-store credentials and extra sources are both kept.
    store = render({"modelRepository": {"source": "objectStore", "objectStore": {
        "url": "s3://b/p", "credentialsSecret": "s3-creds"}}, "extraEnvFrom": [{"configMapRef": {"name": "proxy"}}]})
    assert server_container(store.deployment())["envFrom"] == [{"secretRef": {"name": "s3-creds"}},
                                                               {"configMapRef": {"name": "proxy"}}]


@pytest.mark.parametrize("values,error", [
    ({"extraVolumes": [{"name": "host", "hostPath": {"path": "/var/run"}}]}, helm_python.HelmValuesError),
    ({"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}, helm_python.HelmRenderError),
    ({"extraVolumeMounts": [{"name": "nowhere", "mountPath": "/x"}]}, helm_python.HelmRenderError),
    ({"sidecars": [{**SIDECAR, "name": "tritonserver"}]}, helm_python.HelmRenderError),
    ({"sidecars": [SIDECAR], "initContainers": [SIDECAR]}, helm_python.HelmRenderError),
    ({"sidecars": [{**SIDECAR, "image": "fluent/fluent-bit:latest"}]}, helm_python.HelmValuesError),
    ({"sidecars": [{**SIDECAR, "image": "fluent/fluent-bit"}]}, helm_python.HelmValuesError),
    ({"sidecars": [{k: v for k, v in SIDECAR.items() if k != "resources"}]}, helm_python.HelmValuesError),
    ({"initContainers": [{**SIDECAR, "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                                  "limits": {"memory": "1Gi"}}}]}, helm_python.HelmValuesError),
])
def test_extras_that_break_the_pod_or_its_policies_are_refused(values, error):
    with pytest.raises(error):
        render(values)


def test_init_containers_and_sidecars_get_the_restricted_security_context_imposed():
    weakened = {**SIDECAR, "securityContext": {"privileged": True, "runAsUser": 0, "allowPrivilegeEscalation": True,
                                               "capabilities": {"add": ["SYS_ADMIN"]},
                                               "appArmorProfile": {"type": "Unconfined"},
                                               "seLinuxOptions": {"level": "s0:c1"}}}
    rendered = render({"sidecars": [weakened], "initContainers": [{**SIDECAR, "name": "prepare"}]})
    spec = pod_spec(rendered)
    assert [c["name"] for c in spec["initContainers"]] == ["prepare"]
    assert [c["name"] for c in spec["containers"]] == ["tritonserver", "log-shipper"]
    restricted = server_container(rendered.deployment())["securityContext"]
    sidecar = containers_by_name(spec)["log-shipper"]["securityContext"]
    assert sidecar == {**restricted, "seLinuxOptions": {"level": "s0:c1"}}, "only the harmless addition survives"
    assert containers_by_name(spec)["prepare"]["securityContext"] == restricted
    # Their images carry the same checkov trade-offs, named by where to lift them.
    annotations = " ".join(rendered.deployment()["metadata"]["annotations"].values())
    assert "sidecars[0].image (name@sha256:...)" in annotations and "initContainers[0].imagePullPolicy" in annotations


def test_container_security_context_adds_fields_but_cannot_weaken_the_standard():
    added = {"seLinuxOptions": {"type": "spc_t"}, "seccompProfile": {"type": "Localhost",
                                                                    "localhostProfile": "profiles/triton.json"}}
    ctx = server_container(render({"containerSecurityContext": added}).deployment())["securityContext"]
    assert ctx["seLinuxOptions"] == {"type": "spc_t"}
    assert ctx["seccompProfile"] == {"type": "Localhost", "localhostProfile": "profiles/triton.json"}
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    for weakening in ({"allowPrivilegeEscalation": True}, {"privileged": True}, {"readOnlyRootFilesystem": False},
                      {"runAsNonRoot": False}, {"capabilities": {"add": ["NET_ADMIN"]}}, {"runAsUser": 0},
                      {"seccompProfile": {"type": "Unconfined"}}, {"seccompProfile": {"type": "Localhost"}}):
        with pytest.raises(helm_python.HelmValuesError):
            render({"containerSecurityContext": weakening})


# --- Service, Ingress, GRPCRoute -----------------------------------------------------------------------------------

def test_service_labels_and_load_balancer_settings():
    rendered = render({"service": {"type": "LoadBalancer", "labels": {"exposure": "internal"},
                                   "loadBalancerIP": "10.1.2.3", "loadBalancerSourceRanges": ["10.0.0.0/8"]},
                       "canary": {"enabled": True}})
    for service in rendered.of_kind("Service"):
        assert service["metadata"]["labels"]["exposure"] == "internal"
        assert service["spec"]["loadBalancerIP"] == "10.1.2.3"
        assert service["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert "loadBalancerIP" not in render().one("Service")["spec"]
    with pytest.raises(helm_python.HelmRenderError, match="need service.type LoadBalancer"):
        render({"service": {"loadBalancerIP": "10.1.2.3"}})
    with pytest.raises(helm_python.HelmValuesError):
        render({"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["everyone"]}})


def test_ingress_routes_only_the_inference_paths_of_the_stable_service():
    rendered = render({"ingress": {"enabled": True, "className": "nginx", "hosts": ["a.example.com", "b.example.com"],
                                   "tls": [{"secretName": "digits-tls", "hosts": ["a.example.com"]}]},
                       "canary": {"enabled": True}})
    ingress = rendered.one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "digits-tls", "hosts": ["a.example.com"]}]
    assert [r["host"] for r in ingress["spec"]["rules"]] == ["a.example.com", "b.example.com"]
    for rule in ingress["spec"]["rules"]:
        paths = rule["http"]["paths"]
        assert [(p["path"], p["pathType"]) for p in paths] == [("/v2/models", "Prefix"), ("/v2/health", "Prefix")]
        assert {p["backend"]["service"]["name"] for p in paths} == {"prod-triton-classifier"}
        assert {p["backend"]["service"]["port"]["name"] for p in paths} == {"http"}
    assert not render().of_kind("Ingress")
    with pytest.raises(helm_python.HelmRenderError, match="ingress.hosts needs at least one"):
        render({"ingress": {"enabled": True}})


def test_grpc_route_sends_only_inference_methods_weighted_like_the_http_route():
    rendered = render({"grpcRoute": {"enabled": True, "parentRefs": [{"name": "gw", "sectionName": "grpc"}],
                                     "hostnames": ["grpc.example.com"]},
                       "canary": {"enabled": True, "weight": 25},
                       "capabilities": {"assumeApiVersions": ["gateway.networking.k8s.io/v1"]}})
    route = rendered.one("GRPCRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "gw", "sectionName": "grpc"}]
    (rule,) = route["spec"]["rules"]
    methods = {m["method"]["method"] for m in rule["matches"]}
    assert {m["method"]["service"] for m in rule["matches"]} == {"inference.GRPCInferenceService"}
    assert {"ModelInfer", "ServerReady", "ModelMetadata"} <= methods
    assert not methods & {"RepositoryIndex", "RepositoryModelLoad", "LogSettings", "TraceSetting",
                          "SystemSharedMemoryRegister", "CudaSharedMemoryRegister"}
    assert [(b["name"], b["port"], b["weight"]) for b in rule["backendRefs"]] == [
        ("prod-triton-classifier", 8001, 75), ("prod-triton-classifier-canary", 8001, 25)]
    with pytest.raises(helm_python.HelmValuesError):
        render({"grpcRoute": {"methods": ["RepositoryModelLoad"]}})
    missing_api = render({"grpcRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}})
    assert not missing_api.of_kind("GRPCRoute") and "no GRPCRoute was" in missing_api.notes


# --- monitors ------------------------------------------------------------------------------------------------------

MONITORING_API = {"capabilities": {"assumeApiVersions": ["monitoring.coreos.com/v1"]}}


def test_pod_monitor_scrapes_the_pods_and_names_the_service_the_alerts_select():
    relabel = [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    drop = [{"sourceLabels": ["__name__"], "regex": "nv_cpu_.*", "action": "drop"}]
    rendered = render({**MONITORING_API, "canary": {"enabled": True}, "monitoring": {
        "podMonitor": {"enabled": True, "relabelings": relabel, "metricRelabelings": drop},
        "prometheusRule": {"enabled": True}}})
    assert not rendered.of_kind("ServiceMonitor")
    monitor = rendered.one("PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["scheme"] == "http"
    for track in ("stable", "canary"):
        labels = rendered.deployment(track)["spec"]["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The chart's own relabelings come first and give each series the `service` label the alerts select on.
    service_for_track = {r["regex"]: r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "service"}
    assert service_for_track == {"stable": "prod-triton-classifier", "canary": "prod-triton-classifier-canary"}
    assert endpoint["relabelings"][-1] == relabel[0] and endpoint["metricRelabelings"] == drop
    rules = rendered.one("PrometheusRule")["spec"]["groups"][0]["rules"]
    assert 'service=~"prod-triton-classifier|prod-triton-classifier-canary"' in rules[0]["expr"]
    with pytest.raises(helm_python.HelmRenderError, match="enable one"):
        render({**MONITORING_API, "monitoring": {"podMonitor": {"enabled": True},
                                                 "serviceMonitor": {"enabled": True}}})


def test_service_monitor_takes_relabelings_and_tls_for_an_https_scrape():
    tls = {"caFile": "/etc/prom-certs/root-cert.pem", "insecureSkipVerify": True}
    relabel = [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    monitor = render({**MONITORING_API, "monitoring": {"serviceMonitor": {
        "enabled": True, "scheme": "https", "tlsConfig": tls, "relabelings": relabel,
        "metricRelabelings": relabel}}}).one("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["scheme"], endpoint["tlsConfig"]) == ("https", tls)
    assert endpoint["relabelings"] == relabel and endpoint["metricRelabelings"] == relabel
    plain = render({**MONITORING_API, "monitoring": {"serviceMonitor": {"enabled": True}}}).one("ServiceMonitor")
    assert not {"tlsConfig", "relabelings", "metricRelabelings"} & set(plain["spec"]["endpoints"][0])
    with pytest.raises(helm_python.HelmRenderError, match="set scheme https"):
        render({"monitoring": {"serviceMonitor": {"enabled": True, "tlsConfig": tls}}})


# --- gRPC TLS ------------------------------------------------------------------------------------------------------

TLS_DIR = "/var/run/secrets/triton/grpc-tls"


def test_grpc_tls_from_an_existing_secret_is_mounted_read_only_and_passed_to_triton():
    rendered = render({"security": {"grpcTls": {"enabled": True, "existingSecret": "digits-grpc-tls"}}})
    container = server_container(rendered.deployment())
    args = container["args"]
    assert arg_value(args, "--grpc-use-ssl") == ["true"]
    assert arg_value(args, "--grpc-server-cert") == [f"{TLS_DIR}/tls.crt"]
    assert arg_value(args, "--grpc-server-key") == [f"{TLS_DIR}/tls.key"]
    assert not arg_value(args, "--grpc-use-ssl-mutual") and not arg_value(args, "--grpc-root-cert")
    assert {"name": "grpc-tls", "mountPath": TLS_DIR, "readOnly": True} in container["volumeMounts"]
    (volume,) = [v for v in pod_spec(rendered)["volumes"] if v["name"] == "grpc-tls"]
    assert volume["secret"] == {"secretName": "digits-grpc-tls", "defaultMode": 0o440}
    assert not rendered.of_kind("Certificate") and not rendered.of_kind("Secret")
    mutual = server_container(render({"security": {"grpcTls": {
        "enabled": True, "existingSecret": "digits-grpc-tls", "mutual": True}}}).deployment())["args"]
    assert arg_value(mutual, "--grpc-use-ssl-mutual") == ["true"]
    assert arg_value(mutual, "--grpc-root-cert") == [f"{TLS_DIR}/ca.crt"]


def test_grpc_service_port_declares_tls_only_when_tls_is_on():
    def grpc_protocol(values):
        (port,) = [p for p in render(values).one("Service")["spec"]["ports"] if p["name"] == "grpc"]
        return port["appProtocol"]

    assert grpc_protocol({}) == "kubernetes.io/h2c"
    assert grpc_protocol({"security": {"grpcTls": {"enabled": True, "existingSecret": "t"}}}) == "https"


def test_grpc_tls_from_cert_manager_covers_the_service_names():
    rendered = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "certmanager"))
    (certificate,) = rendered.of_kind("Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    secret = certificate["spec"]["secretName"]
    for track in ("stable", "canary"):
        (volume,) = [v for v in pod_spec(rendered, track)["volumes"] if v["name"] == "grpc-tls"]
        assert volume["secret"]["secretName"] == secret
    assert certificate["spec"]["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer",
                                                "group": "cert-manager.io"}
    names = set(certificate["spec"]["dnsNames"])
    for service in rendered.of_kind("Service"):
        assert f"{service['metadata']['name']}.ml.svc" in names
        assert f"{service['metadata']['name']}.ml.svc.cluster.local" in names
    assert "digits-grpc.ml.example.com" in names
    assert set(certificate["spec"]["usages"]) == {"server auth", "client auth"}


@pytest.mark.parametrize("tls,message", [
    ({"enabled": True}, "needs a certificate"),
    ({"enabled": True, "existingSecret": "t", "certManager": {"enabled": True, "issuerRef": {"name": "ca"}}},
     "not both"),
    ({"enabled": True, "certManager": {"enabled": True}}, "issuerRef.name is required"),
    ({"enabled": True, "certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}, "needs the cert-manager.io/v1"),
    ({"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}, "needs security.grpcTls.enabled"),
])
def test_grpc_tls_without_one_certificate_source_refuses_to_render(tls, message):
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render({"security": {"grpcTls": tls}})


def test_helm_test_checks_the_grpc_tls_port_of_every_service():
    rendered = render({"security": {"grpcTls": {"enabled": True, "existingSecret": "digits-grpc-tls",
                                                "mutual": True}}, "canary": {"enabled": True}})
    pod = rendered.one("Pod")
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GRPC_TLS_TARGETS"] == "prod-triton-classifier.ml.svc:8001,prod-triton-classifier-canary.ml.svc:8001"
    assert (env["GRPC_TLS_DIR"], env["GRPC_TLS_MUTUAL"]) == (TLS_DIR, "1")
    assert {"name": "grpc-tls", "mountPath": TLS_DIR, "readOnly": True} in container["volumeMounts"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "grpc-tls"]
    assert volume["secret"]["secretName"] == "digits-grpc-tls"
    plain = render().one("Pod")["spec"]["containers"][0]
    assert "GRPC_TLS_TARGETS" not in {e["name"] for e in plain["env"]}
