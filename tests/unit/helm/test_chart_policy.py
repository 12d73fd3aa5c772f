"""Policies a platform team enforces, checked on what the chart renders in every scenario, and the values the chart
must refuse (schema and template checks)."""

from __future__ import annotations

import math
import re

import helm_python
import pytest

from chart_tools import (ADMIN_SECRET, SCENARIOS, SERVER_IMAGE, arg_value, chart, load_values, render,
                         render_scenario, scenario_id, server_container)

SCENARIO_PARAMS = [None, *SCENARIOS]
# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


@pytest.fixture(scope="module", params=SCENARIO_PARAMS, ids=scenario_id)
def scenario(request):
    return render_scenario(request.param)


# --- restricted Pod Security Standard ------------------------------------------------------------------------------

def test_every_container_meets_the_restricted_pod_security_standard(scenario):
    containers = list(scenario.containers())
    assert containers
    for owner, container in containers:
        ctx = container.get("securityContext", {})
        assert ctx.get("allowPrivilegeEscalation") is False, owner
        assert ctx.get("readOnlyRootFilesystem") is True, owner
        assert ctx.get("runAsNonRoot") is True, owner
        assert isinstance(ctx.get("runAsUser"), int) and ctx["runAsUser"] > 0, f"{owner}: numeric non-root UID"
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], owner
        assert not ctx.get("capabilities", {}).get("add"), owner
        assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", owner
        assert not ctx.get("privileged"), owner


def test_every_pod_meets_the_restricted_pod_security_standard(scenario):
    for owner, spec in scenario.pod_specs():
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, owner
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", owner
        assert spec["automountServiceAccountToken"] is False, owner
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{owner}: {key}"
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, f"{owner}: volume {volume['name']} uses {kinds}"
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert not any(p.get("hostPort") for p in container.get("ports", [])), owner


def test_service_account_never_mounts_its_token():
    account = render().one("ServiceAccount")
    assert account["automountServiceAccountToken"] is False


# --- resources, images ---------------------------------------------------------------------------------------------

def test_every_container_requests_and_limits_cpu_and_memory(scenario):
    """Init containers too, which checkov's CPU-limit check (CKV_K8S_11) does not look at."""
    for owner, container in scenario.containers():
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), owner
        assert {"cpu", "memory"} <= set(resources.get("limits", {})), owner


def test_gpu_scenarios_limit_gpus_on_the_server_and_the_plan_builder():
    for name, count in (("gpu", 1), ("tensorrt", 1)):
        rendered = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == name))
        spec = rendered.deployment()["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            if container["name"] in ("tritonserver", "build-tensorrt-plan"):
                assert container["resources"]["limits"]["nvidia.com/gpu"] == count
        assert "--allow-gpu-metrics=true" in server_container(rendered.deployment())["args"]
    assert "--allow-gpu-metrics=false" in server_container(render().deployment())["args"]


def test_every_image_is_pinned_and_never_latest(scenario):
    for owner, container in scenario.containers():
        image = container["image"]
        name, _, tag = image.split("@")[0].rpartition(":")
        assert name and "/" not in tag, f"{owner}: {image} has no tag"
        assert tag != "latest", f"{owner}: {image}"


def test_server_image_is_the_required_repository_at_the_chart_release_tag():
    assert server_container(render().deployment())["image"] == f"{SERVER_IMAGE}:26.11-py3"
    digest = "sha256:" + "a" * 64
    image = server_container(render({"image": {"digest": digest}}).deployment())["image"]
    assert image == f"{SERVER_IMAGE}:26.11-py3@{digest}"


# --- probes and shutdown -------------------------------------------------------------------------------------------

def test_probes_check_readiness_and_liveness_separately(scenario):
    for deployment in scenario.of_kind("Deployment"):
        container = server_container(deployment)
        startup, ready, live = (container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe"))
        assert ready["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert live["exec"]["command"][:3] == ["python3", "-I", "/opt/triton-probe/liveness_inference.py"]
        assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert ready != live and startup != ready
        # Liveness tolerates more than readiness: a busy server leaves the endpoints before it is restarted.
        assert (live["periodSeconds"] * live["failureThreshold"]
                > ready["periodSeconds"] * ready["failureThreshold"])


def test_liveness_is_one_inference_through_the_ensemble_by_the_packaged_script():
    import hashlib

    from chart_tools import CHART

    rendered = render({"model": {"name": "flowers"}, "ports": {"http": 9000},
                       "probes": {"liveness": {"timeoutSeconds": 7}}})
    deployment = rendered.deployment()
    container = server_container(deployment)
    live = container["livenessProbe"]
    assert "httpGet" not in live
    assert live["exec"]["command"] == ["python3", "-I", "/opt/triton-probe/liveness_inference.py", "--port=9000",
                                       "--model=flowers", "--timeout=6"]
    assert (live["periodSeconds"], live["timeoutSeconds"], live["failureThreshold"]) == (15, 7, 4)
    script = (CHART / "files" / "liveness_inference.py").read_text()
    config_map = rendered.one("ConfigMap", "prod-triton-classifier-liveness-probe")
    assert config_map["data"] == {"liveness_inference.py": script}
    assert "helm.sh/hook" not in config_map["metadata"].get("annotations", {}), "a release object, not a test hook"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "liveness-probe"]
    assert mount == {"name": "liveness-probe", "mountPath": "/opt/triton-probe", "readOnly": True}
    assert volumes_by_name(deployment)["liveness-probe"] == {
        "name": "liveness-probe", "configMap": {"name": "prod-triton-classifier-liveness-probe"}}
    # A new script rolls the pods.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/liveness-probe"] == hashlib.sha256(script.encode()).hexdigest()


def test_liveness_probe_only_needs_the_python_standard_library():
    import ast
    import sys

    from chart_tools import CHART

    tree = ast.parse((CHART / "files" / "liveness_inference.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)


def test_liveness_probe_sends_the_admin_key_only_when_inference_is_restricted():
    def command(http_apis):
        values = {"security": {"restrictedApi": {"http": http_apis}}}
        return server_container(render(values).deployment())["livenessProbe"]["exec"]["command"]

    assert not [a for a in command(["model-repository", "model-config"]) if a.startswith("--key-header")]
    restricted = command(["model-repository", "inference"])
    assert restricted[-1] == "--key-header=triton-admin-key"  # the script reads $TRITON_ADMIN_KEY, never an arg
    assert not [a for a in restricted if "TRITON_ADMIN_KEY" in a]


def test_canary_pods_are_probed_by_the_same_inference():
    rendered = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "canary"))
    stable, canary = (server_container(rendered.deployment(t)) for t in ("stable", "canary"))
    assert canary["livenessProbe"] == stable["livenessProbe"] and "exec" in canary["livenessProbe"]
    assert len([c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("liveness-probe")]) == 1


def test_liveness_by_inference_can_be_turned_off_for_the_plain_health_endpoint():
    rendered = render({"probes": {"liveness": {"inference": {"enabled": False}}}})
    deployment = rendered.deployment()
    container = server_container(deployment)
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert "liveness-probe" not in volumes_by_name(deployment)
    assert not [m for m in container["volumeMounts"] if m["name"] == "liveness-probe"]
    assert "checksum/liveness-probe" not in deployment["spec"]["template"]["metadata"]["annotations"]
    assert not [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("liveness-probe")]


@pytest.mark.parametrize("budget,period", [(600, 10), (605, 10), (45, 7)])
def test_startup_probe_covers_the_model_loading_budget(budget, period):
    values = {"probes": {"startup": {"budgetSeconds": budget, "periodSeconds": period}}}
    probe = server_container(render(values).deployment())["startupProbe"]
    assert probe["periodSeconds"] == period
    assert probe["failureThreshold"] == math.ceil(budget / period)


def test_grace_period_outlasts_prestop_sleep_plus_exit_timeout(scenario):
    for deployment in scenario.of_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        container = server_container(deployment)
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        (exit_timeout,) = arg_value(container["args"], "--exit-timeout-secs")
        assert spec["terminationGracePeriodSeconds"] > sleep + int(exit_timeout)


def test_grace_period_too_short_refuses_to_render():
    with pytest.raises(helm_python.HelmRenderError, match="terminationGracePeriodSeconds"):
        render({"terminationGracePeriodSeconds": 40, "server": {"exitTimeoutSecs": 30},
                "lifecycle": {"preStopSleepSeconds": 10}})


# --- server arguments ----------------------------------------------------------------------------------------------

def test_server_args_follow_values():
    args = server_container(render().deployment())["args"]
    assert arg_value(args, "--model-control-mode") == ["none"]
    assert arg_value(args, "--strict-readiness") == ["true"]
    assert arg_value(args, "--exit-timeout-secs") == ["30"]
    assert (arg_value(args, "--http-port"), arg_value(args, "--grpc-port"), arg_value(args, "--metrics-port")) == (
        ["8000"], ["8001"], ["8002"])
    assert arg_value(args, "--backend-config") == ["python,shm-default-byte-size=16777216",
                                                   "python,shm-growth-byte-size=8388608"]
    assert arg_value(args, "--log-format") == ["ISO8601"]
    # HTTP request bodies are capped at the preprocess model's per-image limit (32 MiB).
    assert arg_value(args, "--http-max-input-size") == ["33554432"]
    changed = server_container(render({"server": {
        "exitTimeoutSecs": 12, "log": {"verbose": 1, "format": "default"}, "httpMaxInputSize": 4294967296,
        "pythonBackend": {"shmDefaultByteSize": 67108864, "shmGrowthByteSize": 33554432},
        "extraArgs": ["--model-load-thread-count=2"]}}).deployment())["args"]
    assert arg_value(changed, "--exit-timeout-secs") == ["12"]
    assert arg_value(changed, "--log-verbose") == ["1"]
    assert "--backend-config=python,shm-default-byte-size=67108864" in changed
    assert arg_value(changed, "--http-max-input-size") == ["4294967296"]  # 4 GiB, printed as an integer
    assert changed[-1] == "--model-load-thread-count=2"


def test_admin_apis_need_a_key_read_from_a_secret():
    rendered = render()
    container = server_container(rendered.deployment())
    (http,) = arg_value(container["args"], "--http-restricted-api")
    (grpc,) = arg_value(container["args"], "--grpc-restricted-protocol")
    for setting in (http, grpc):
        apis, _, key = setting.partition(":")
        assert {"model-repository", "shared-memory", "logging", "trace"} == set(apis.split(","))
        assert "model-config" not in apis  # open: standard tools read the configuration without a key
        assert key == "triton-admin-key=$(TRITON_ADMIN_KEY)", "kubelet expands $(VAR) from the container env"
    (env,) = [e for e in container["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": ADMIN_SECRET, "key": "admin-key"}
    custom = render({"security": {"restrictedApi": {"existingSecret": "platform-triton-key", "secretKey": "k"}}})
    (env,) = [e for e in server_container(custom.deployment())["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "platform-triton-key", "key": "k"}


@pytest.mark.parametrize("scenario_path", SCENARIO_PARAMS, ids=scenario_id)
def test_no_rendered_object_holds_a_secret_value(scenario_path):
    """The chart renders no Secret at all (the admin key, certificates and store credentials are the platform
    team's), and every reference to a secret value is by name: an env var from a secretKeyRef, a mounted Secret,
    or $(VAR) in the arguments, expanded by the kubelet inside the container."""
    rendered = render_scenario(scenario_path)
    assert not rendered.of_kind("Secret")
    for owner, container in rendered.containers():
        for entry in container.get("env", []):
            if entry["name"] in {"TRITON_ADMIN_KEY", "AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_KEY"}:
                assert set(entry) == {"name", "valueFrom"}, owner
        for arg in container.get("args", []) + container.get("command", []):
            if "restricted" in arg:
                assert arg.endswith("=$(TRITON_ADMIN_KEY)"), (owner, arg)


def test_restricted_apis_refuse_to_render_without_the_key_secret():
    with pytest.raises(helm_python.HelmRenderError, match="security.restrictedApi.existingSecret is required"):
        render({"security": {"restrictedApi": {"existingSecret": ""}}})
    open_apis = render({"security": {"restrictedApi": {"enabled": False, "existingSecret": ""}}})
    assert "TRITON_ADMIN_KEY" not in str(open_apis.deployment())


def test_explicit_model_control_needs_the_repository_api_restricted():
    with pytest.raises(helm_python.HelmRenderError, match="modelControlMode"):
        render({"server": {"modelControlMode": "explicit"}, "security": {"restrictedApi": {"enabled": False}}})
    args = server_container(render({"server": {"modelControlMode": "explicit",
                                               "loadModels": ["digits"]}}).deployment())["args"]
    assert "--load-model=digits" in args


# --- model repository sources --------------------------------------------------------------------------------------

def volumes_by_name(deployment):
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}


def test_pvc_repository_is_mounted_read_only():
    deployment = render({"modelRepository": {"pvc": {"claimName": "repo", "subPath": "v3"}}}).deployment()
    container = server_container(deployment)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model-repository"]
    assert mount == {"name": "model-repository", "mountPath": "/models", "readOnly": True, "subPath": "v3"}
    assert volumes_by_name(deployment)["model-repository"]["persistentVolumeClaim"] == {
        "claimName": "repo", "readOnly": True}
    assert arg_value(container["args"], "--model-repository") == ["/models"]


def test_object_store_repository_is_passed_to_triton_with_credentials_from_a_secret():
    deployment = render({"modelRepository": {"source": "objectStore", "objectStore": {
        "url": "s3://models/digits", "credentialsSecret": "s3-reader"}}}).deployment()
    container = server_container(deployment)
    assert arg_value(container["args"], "--model-repository") == ["s3://models/digits"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-reader"}}]
    assert "model-repository" not in volumes_by_name(deployment)


def test_object_store_with_a_gcs_key_file_points_google_application_credentials_at_it():
    deployment = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "objectstore")).deployment()
    container = server_container(deployment)
    (env,) = [e for e in container["env"] if e["name"] == "GOOGLE_APPLICATION_CREDENTIALS"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "gcs-key"]
    assert env["value"] == f"{mount['mountPath']}/key.json" and mount["readOnly"]
    assert volumes_by_name(deployment)["gcs-key"]["secret"]["secretName"] == "digits-gcs-reader"


def test_object_store_with_workload_identity_uses_service_account_annotations():
    rendered = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "gpu"))
    account = rendered.one("ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    spec = rendered.deployment()["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert "envFrom" not in server_container(rendered.deployment())


def test_image_repository_is_copied_by_an_init_container():
    deployment = render({"modelRepository": {"source": "image", "image": {
        "repository": "registry.example.com/digits-repo", "tag": "7", "path": "/repo/"}}}).deployment()
    spec = deployment["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["image"] == "registry.example.com/digits-repo:7"
    assert init["command"] == ["cp", "-R", "/repo/.", "/staging/"]
    assert volumes_by_name(deployment)["model-repository"]["emptyDir"]["sizeLimit"] == "4Gi"
    (mount,) = [m for m in server_container(deployment)["volumeMounts"] if m["name"] == "model-repository"]
    assert mount["readOnly"] is True


def tensorrt_build_container(rendered):
    spec = rendered.deployment()["spec"]["template"]["spec"]
    copy, build = spec["initContainers"]
    assert copy["name"] == "copy-model-repository" and build["name"] == "build-tensorrt-plan"
    return build


def test_tensorrt_plan_is_built_at_deploy_time_with_shapes_from_values():
    rendered = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "tensorrt"))
    build = tensorrt_build_container(rendered)
    assert build["image"] == "nvcr.io/nvidia/tensorrt:26.11-py3"
    assert build["args"] == ["--minShapes=image:1x64x64x1", "--optShapes=image:16x64x64x1",
                             "--maxShapes=image:32x64x64x1", "--memPoolSize=workspace:1024M", "--skipInference",
                             "--fp16"]
    env = {e["name"]: e["value"] for e in build["env"]}
    assert env["MODEL"] == "digits_classifier" and env["REPOSITORY"] == "/models"
    assert (env["ONNX_FILE"], env["PLAN_FILE"]) == ("model.onnx", "model.plan")
    mounts = {m["name"]: m for m in build["volumeMounts"]}
    assert mounts["model-repository"]["mountPath"] == "/models" and not mounts["model-repository"].get("readOnly")
    without_fp16 = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "tensorrt"),
                                   {"tensorrt": {"build": {"fp16": False}}})
    assert "--fp16" not in tensorrt_build_container(without_fp16)["args"]


def test_tensorrt_build_script_makes_one_plan_per_version_directory(tmp_path):
    """Run the init container's script with a stand-in trtexec that records its arguments and writes the plan."""
    import os
    import subprocess

    build = tensorrt_build_container(render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "tensorrt")))
    repository = tmp_path / "models"
    for version in ("1", "3"):
        (repository / "digits_classifier" / version).mkdir(parents=True)
        (repository / "digits_classifier" / version / "model.onnx").write_bytes(b"onnx")
    (repository / "digits_classifier" / "warmup").mkdir()
    (repository / "digits_classifier" / "config.pbtxt").write_text('platform: "tensorrt_plan"')
    fake = tmp_path / "trtexec"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --saveEngine=*) echo "$*" > "${a#--saveEngine=}";;'
                    ' esac; done\n')
    fake.chmod(0o755)
    env = {**{e["name"]: e["value"] for e in build["env"]}, "REPOSITORY": str(repository), "TRTEXEC": str(fake),
           "PATH": os.environ["PATH"]}
    result = subprocess.run(build["command"] + build["args"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for version in ("1", "3"):
        recorded = (repository / "digits_classifier" / version / "model.plan").read_text().split()
        assert f"--onnx={repository}/digits_classifier/{version}/model.onnx" in recorded
        assert recorded[2:] == build["args"]
    assert not (repository / "digits_classifier" / "warmup" / "model.plan").exists()
    for onnx in repository.glob("*/*/model.onnx"):
        onnx.unlink()
    result = subprocess.run(build["command"] + build["args"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "no model.onnx in any version directory" in result.stderr


@pytest.mark.parametrize("values,message", [
    ({"tensorrt": {"build": {"enabled": True}}, "gpu": {"count": 1}}, "classifierBackend: tensorrt"),
    ({"model": {"classifierBackend": "tensorrt"}}, "gpu.count"),
    ({"model": {"classifierBackend": "tensorrt"}, "gpu": {"count": 1},
      "tensorrt": {"build": {"enabled": True, "image": {"tag": "24.08-py3"}}}}, "same release"),
    ({"model": {"classifierBackend": "tensorrt"}, "gpu": {"count": 1}, "tensorrt": {"build": {"enabled": True}},
      "modelRepository": {"source": "objectStore", "objectStore": {"url": "s3://b/p"}}}, "pvc or image"),
    ({"model": {"classifierBackend": "tensorrt"}, "gpu": {"count": 1},
      "tensorrt": {"build": {"enabled": True, "optBatchSize": 64}}}, "optBatchSize"),
    ({"modelRepository": {"source": "objectStore"}}, "objectStore.url"),
    ({"modelRepository": {"source": "image"}}, "image.repository"),
    ({"modelRepository": {"pvc": {"claimName": ""}}}, "claimName"),
    ({"canary": {"enabled": True, "modelRepository": {"source": "image"}}}, "canary.modelRepository"),
    ({"route": {"enabled": True}, "capabilities": {"assumeApiVersions": ["gateway.networking.k8s.io/v1"]}},
     "parentRefs"),
    ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
    # The server image must be the one built from the repository's Dockerfile (the stock image lacks Pillow).
    ({"image": {"repository": ""}}, "image.repository is required: build the server image from "
                                     "docker/tritonserver/Dockerfile"),
    ({"image": {"repository": "nvcr.io/nvidia/tritonserver"}}, "is the stock NGC Triton image, which lacks Pillow"),
    ({"image": {"repository": "mirror.example.com/nvidia/tritonserver"}}, "stock NGC Triton image"),
    ({"canary": {"enabled": True, "image": {"repository": "nvcr.io/nvidia/tritonserver"}}},
     "canary.image.repository nvcr.io/nvidia/tritonserver is the stock NGC"),
    ({"model": {"classifierBackend": "python"}}, "imports onnxruntime, which the server image"),
])
def test_inconsistent_values_refuse_to_render(values, message):
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(values)


# --- schema --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [
    {"replicas": 3},                                    # unknown top-level key (replicaCount is meant)
    {"image": {"tags": "26.11-py3"}},                   # unknown nested key
    {"server": {"exitTimeoutSecs": "30"}},              # string for an integer
    {"server": {"modelControlMode": "poll"}},           # not an allowed mode
    {"image": {"tag": "latest"}},
    {"replicaCount": -1},
    {"security": {"restrictedApi": {"http": ["model-repository", "everything"]}}},
    {"security": {"restrictedApi": {"header": "Triton-Admin-Key"}}},  # gRPC metadata keys are lowercase
    {"modelRepository": {"source": "nfs"}},
    {"modelRepository": {"objectStore": {"url": "https://bucket/models"}}},
    {"autoscaling": {"metric": "gpu"}},
    {"canary": {"weight": 150}},
    {"model": {"name": "digits classifier"}},
    {"resources": {"requests": {"cpu": "two"}}},
    {"monitoring": {"prometheusRule": {"errorRatio": 5}}},
    {"tensorrt": {"build": {"inputShape": [64, "x", 1]}}},
    {"probes": {"liveness": {"inference": {"enabled": "yes"}}}},
])
def test_schema_rejects_unknown_keys_and_wrong_types(values):
    with pytest.raises(helm_python.HelmValuesError):
        render(values)


@pytest.mark.parametrize("value,message", [
    (0, "at '/server/httpMaxInputSize': minimum: got 0, want 1"),
    (-1, "at '/server/httpMaxInputSize': minimum: got -1, want 1"),
    ("32Mi", "at '/server/httpMaxInputSize': got string, want integer"),
    (1.5, "at '/server/httpMaxInputSize': got number, want integer"),
])
def test_http_body_cap_must_be_a_positive_byte_count(value, message):
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        render({"server": {"httpMaxInputSize": value}})


def test_schema_types_every_default_value():
    schema = chart().schema

    def walk(value, node, path):
        assert "type" in node or "oneOf" in node, f"{path} has no type"
        if isinstance(value, dict) and node.get("properties"):
            # `global` is shared with a parent chart, which may set globals of its other subcharts.
            assert node.get("additionalProperties") is False or path == "global", f"{path} accepts unknown keys"
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key} is not in the schema"
                walk(child, node["properties"][key], f"{path}.{key}")

    for key, value in load_values(chart_values_file()).items():
        walk(value, schema["properties"][key], key)


def chart_values_file():
    from chart_tools import CHART
    return CHART / "values.yaml"


def test_every_values_key_has_a_comment():
    """Each key has a one-line comment right above it. The inside of a block value (e.g. resources.requests) is
    covered by its key's comment; a section (a key whose children start with a comment) has its children checked."""
    import re

    lines = chart_values_file().read_text().splitlines()
    inside_value_of = None  # indentation of the key whose block value we are inside
    checked = 0
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z0-9_.]+):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        if inside_value_of is not None and indent > inside_value_of:
            continue
        inside_value_of = None
        assert lines[number - 1].strip().startswith("# "), f"values.yaml line {number + 1}: {key!r} has no comment"
        checked += 1
        following = next((l for l in lines[number + 1:] if l.strip()), "")
        if not rest and not following.strip().startswith("#"):
            inside_value_of = indent
    assert checked > 150


# --- services, disruption, network ---------------------------------------------------------------------------------

def test_service_exposes_the_three_triton_ports_of_the_stable_pods_only():
    rendered = render({"canary": {"enabled": True}})
    service = rendered.one("Service", "prod-triton-classifier")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    stable_labels = rendered.deployment("stable")["spec"]["template"]["metadata"]["labels"]
    canary_labels = rendered.deployment("canary")["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= stable_labels.items()
    assert not selector.items() <= canary_labels.items()
    container_ports = {p["name"] for p in server_container(rendered.deployment())["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == container_ports
    canary_service = rendered.one("Service", "prod-triton-classifier-canary")
    assert canary_service["spec"]["selector"].items() <= canary_labels.items()


def test_pod_disruption_budget_covers_the_stable_pods(scenario):
    pdb = scenario.one("PodDisruptionBudget")
    labels = scenario.deployment()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] >= 1


def test_network_policy_opens_inference_to_chosen_namespaces_and_metrics_to_monitoring(scenario):
    policy = scenario.one("NetworkPolicy", "prod-triton-classifier")
    labels = scenario.deployment()["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    inference, metrics = policy["spec"]["ingress"]
    assert {p["port"] for p in inference["ports"]} == {"http", "grpc"}
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    test_pod = scenario.one("Pod")
    assert any(peer.get("podSelector", {}).get("matchLabels", {}).items() <= test_pod["metadata"]["labels"].items()
               and "namespaceSelector" not in peer for peer in inference["from"]), "the helm test pod gets through"


def test_network_policy_for_named_namespaces_only():
    rendered = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "cpu"))
    inference = rendered.one("NetworkPolicy", "prod-triton-classifier")["spec"]["ingress"][0]
    assert {"podSelector": {}} not in inference["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web-frontend"}}} in inference["from"]


def test_shm_and_tmp_are_size_limited_empty_dirs(scenario):
    for deployment in scenario.of_kind("Deployment"):
        volumes = volumes_by_name(deployment)
        mounts = {m["mountPath"]: m["name"] for m in server_container(deployment)["volumeMounts"]}
        shm, tmp = volumes[mounts["/dev/shm"]], volumes[mounts["/tmp"]]
        assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
        assert "medium" not in tmp["emptyDir"] and tmp["emptyDir"]["sizeLimit"]


def test_pods_spread_over_nodes_and_zones_by_default():
    spec = render().deployment()["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = render().deployment()["spec"]["template"]["metadata"]["labels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    hard = render({"podAntiAffinity": "hard"}).deployment()["spec"]["template"]["spec"]["affinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in hard["podAntiAffinity"]
    none = render({"podAntiAffinity": "none", "topologySpreadConstraints": []}).deployment()
    assert "affinity" not in none["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in none["spec"]["template"]["spec"]


# --- autoscaling and canary ----------------------------------------------------------------------------------------

def test_cpu_autoscaling_targets_the_stable_deployment_and_owns_its_replicas():
    rendered = render({"autoscaling": {"enabled": True}})
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": rendered.deployment()["metadata"]["name"]}
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    assert "replicas" not in rendered.deployment()["spec"]
    assert render().deployment()["spec"]["replicas"] == 2


def test_queue_time_autoscaling_uses_a_per_model_pods_metric_served_by_the_adapter_rule():
    import yaml

    rendered = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "autoscaling"))
    (metric,) = rendered.one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["selector"] == {"matchLabels": {"model": "digits_classifier"}}
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "15m"}  # targetSeconds: 0.015
    adapter = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("prometheus-adapter-rule")]
    (rule,) = yaml.safe_load(adapter[0]["data"]["rules.yaml"])["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"] == "triton_queue_time_per_request_seconds"


@pytest.mark.parametrize("seconds,quantity", [(None, "20m"), (0.001, "1m"), (0.0155, "16m"), (1.5, "1500m"),
                                              (2, "2000m")])
def test_queue_time_target_in_seconds_renders_as_a_milli_quantity(seconds, quantity):
    """The adapter serves seconds with milli precision; the HPA's target is the same number of seconds."""
    queue_time = {} if seconds is None else {"targetSeconds": seconds}
    hpa = render({"autoscaling": {"enabled": True, "metric": "queueTime", "queueTime": queue_time}}).one(
        "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["target"]["averageValue"] == quantity


def test_canary_differs_from_stable_only_where_a_candidate_should():
    rendered = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "canary"),
                               {"canary": {"image": {"tag": "26.12-py3"}}})
    stable, canary = rendered.deployment("stable"), rendered.deployment("canary")
    assert canary["spec"]["replicas"] == 1
    stable_container, canary_container = server_container(stable), server_container(canary)
    assert canary_container["image"] == f"{SERVER_IMAGE}:26.12-py3"
    assert stable_container["args"] == canary_container["args"]
    subpaths = [next(m for m in c["volumeMounts"] if m["name"] == "model-repository")["subPath"]
                for c in (stable_container, canary_container)]
    assert subpaths == ["v3", "v4"]
    for key in ("startupProbe", "readinessProbe", "livenessProbe", "securityContext", "resources", "env"):
        assert stable_container[key] == canary_container[key], key
    test_pod = rendered.one("Pod")
    (urls,) = [e["value"] for e in test_pod["spec"]["containers"][0]["env"] if e["name"] == "TRITON_URLS"]
    assert urls == "http://prod-triton-classifier.ml.svc:8000,http://prod-triton-classifier-canary.ml.svc:8000"


def test_canary_weight_zero_routes_everything_to_stable():
    rendered = render_scenario(next(p for p in SCENARIOS if scenario_id(p) == "canary"), {"canary": {"weight": 0}})
    backends = rendered.one("HTTPRoute")["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("prod-triton-classifier", 100),
                                                            ("prod-triton-classifier-canary", 0)]


# --- helm test pod -------------------------------------------------------------------------------------------------

def test_helm_test_pod_runs_the_packaged_script_against_the_ensemble():
    from chart_tools import CHART

    rendered = render()
    pod = rendered.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODEL_NAME"] == "digits"
    assert env["TRITON_URLS"] == "http://prod-triton-classifier.ml.svc:8000"
    assert container["image"] == "docker.io/library/python:3.12-slim"
    script = rendered.one("ConfigMap", "prod-triton-classifier-test-inference")
    assert script["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert script["data"]["helm_test_inference.py"] == (CHART / "files" / "helm_test_inference.py").read_text()
    same_image = render({"tests": {"image": {"repository": ""}}}).one("Pod")["spec"]["containers"][0]["image"]
    assert same_image == f"{SERVER_IMAGE}:26.11-py3"


def test_tooling_requests_never_ask_class_count_of_an_output():
    """Triton 2.51 dies of SIGFPE on `classification` (class_count) of a BYTES output such as LABELS; the helm test
    and the liveness probe ask for plain outputs only (the probe asks for none: Triton then returns them all)."""
    import importlib.util
    import json

    from chart_tools import CHART

    spec = importlib.util.spec_from_file_location("helm_test_inference", CHART / "files" / "helm_test_inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    header = module.request_header([1, 1], 100)
    assert [o["name"] for o in header["outputs"]] == ["CLASS_IDS", "SCORES", "LABELS"]
    assert all(set(o.get("parameters", {})) == {"binary_data"} for o in header["outputs"])
    for script in ("helm_test_inference.py", "liveness_inference.py"):
        text = (CHART / "files" / script).read_text()
        assert '"classification"' not in text, f"{script} builds a classification request parameter"
    assert "classification" not in json.dumps(header)
    assert "classification" not in json.dumps(header)


def test_tooling_requests_carry_the_mark_the_models_leave_out_of_their_metrics():
    """The helm test and the liveness probe send the request parameter the preprocess and postprocess models look
    for (tests/integration/helm/test_chart_runs.py checks against the real repository that nothing is counted)."""
    import importlib.util

    from chart_tools import CHART
    from triton_deploy.monitoring.model_metrics import TOOLING_PARAMETER

    spec = importlib.util.spec_from_file_location("helm_test_inference", CHART / "files" / "helm_test_inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.request_header([1, 1], 100)["parameters"] == {TOOLING_PARAMETER: "helm-test"}
    probe = (CHART / "files" / "liveness_inference.py").read_text()
    assert f'"parameters": {{"{TOOLING_PARAMETER}": "liveness"}}' in probe
