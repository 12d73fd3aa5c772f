"""The chart's server container really runs: its rendered command and arguments start the real tritonserver (2.51,
from the nvidia-pytriton wheel), and the probes, the Service ports, the restricted admin APIs, the metrics the
monitoring reads and the `helm test` script all work against it.

Only what cannot exist outside a pod is mapped: the in-cluster repository path becomes a tiny local repository,
ports become free local ports bound to 127.0.0.1, the backend directory (inside the NGC image) is added, the
admin key's Secret (which the platform team creates) gets a random key, the gRPC certificate Secret's mount becomes
a folder of throwaway certificates made with `cryptography`, and $(VAR) references are expanded from the
container's env the way the kubelet does. The chart's image is a newer
Triton than the local 2.51 binary: the few flags it has that 2.51 lacks are listed in NEWER_THAN_LOCAL_BINARY and
dropped. Every other argument is kept.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from chart_tools import (
    CPU_SERVER_METRICS,
    SCENARIOS,
    arg_value,
    liveness_probe_command,
    metric_names,
    render,
    render_scenario,
    server_container,
)

pytestmark = pytest.mark.slow

ADMIN_HEADER = "triton-admin-key"
# Flags the chart renders for its image's Triton (Chart.appVersion) that the local 2.51 binary does not have. Each
# is dropped when the rendered arguments run locally; nothing else may be. An entry must still be rendered and still
# be unknown to the local binary (both checked below), so the list cannot go stale or hide a misspelt flag.
NEWER_THAN_LOCAL_BINARY = {
    # Caps HTTP request bodies; Triton 25.x+ (server PR #8174, merged 2025). The chart's 26.11 image has it.
    "--http-max-input-size",
}
ECHO_MODEL = textwrap.dedent('''
    """Stands in for preprocess -> classifier -> postprocess: answers the ensemble's output contract with facts
    about the bytes it received, so the caller can tell they arrived intact."""
    import struct

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
                ids, scores, labels = [], [], []
                for data in images:
                    is_png = data[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
                    width, height = struct.unpack(">II", data[16:24]) if is_png else (0, 0)
                    ids.append([len(data), width, height])
                    scores.append([0.7, 0.2, 0.1])
                    labels.append([b"png" if is_png else b"not-png", b"width", b"height"])
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("CLASS_IDS", np.array(ids, dtype=np.int64)),
                    pb_utils.Tensor("SCORES", np.array(scores, dtype=np.float32)),
                    pb_utils.Tensor("LABELS", np.array(labels, dtype=np.object_)),
                ]))
            return responses
''')
IO = '''
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [
  { name: "CLASS_IDS" data_type: TYPE_INT64 dims: [ 3 ] },
  { name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "LABELS" data_type: TYPE_STRING dims: [ 3 ] }
]
'''
ECHO_CONFIG = f'name: "digits_echo"\nbackend: "python"\nmax_batch_size: 8\n{IO}\ninstance_group [ {{ kind: KIND_CPU count: 1 }} ]\n'
ENSEMBLE_CONFIG = f'''name: "digits"
platform: "ensemble"
max_batch_size: 8
{IO}
ensemble_scheduling {{
  step [ {{
    model_name: "digits_echo"
    model_version: -1
    input_map {{ key: "IMAGE" value: "IMAGE" }}
    output_map {{ key: "CLASS_IDS" value: "CLASS_IDS" }}
    output_map {{ key: "SCORES" value: "SCORES" }}
    output_map {{ key: "LABELS" value: "LABELS" }}
  }} ]
}}
'''


def write_repository(root: Path) -> Path:
    (root / "digits_echo" / "1").mkdir(parents=True)
    (root / "digits_echo" / "1" / "model.py").write_text(ECHO_MODEL)
    (root / "digits_echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (root / "digits" / "1").mkdir(parents=True)
    (root / "digits" / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    return root


def expand_kubelet_vars(text: str, env: dict[str, str]) -> str:
    """$(VAR) -> value for defined VARs, as the kubelet expands command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def write_certificates(folder: Path, common_name: str, hosts: list[str]) -> dict[str, Path]:
    """A throwaway CA and, signed by it, a certificate for `hosts` usable by a server and a client (as the chart's
    cert-manager Certificate is), written as a kubernetes.io/tls Secret mounts them: ca.crt, tls.crt, tls.key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, key, issuer: str, issuer_key, ca: bool):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            names = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
            builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build(f"{common_name} CA", ca_key, f"{common_name} CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(common_name, key, f"{common_name} CA", ca_key, ca=False)
    folder.mkdir(parents=True)
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM),
             "tls.crt": cert.public_bytes(serialization.Encoding.PEM),
             "tls.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o440 if name == "tls.key" else 0o444)
    return {name: folder / name for name in files}


class LocalPod:
    """The rendered server container, started locally."""

    def __init__(self, rendered, workdir: Path, tls_dir: Path | None = None):
        from triton_deploy.server import ServerInstallation, free_ports

        self.rendered = rendered
        self.container = server_container(rendered.deployment())
        self.repository = write_repository(workdir / "repository")
        self.tmp = workdir / "tmp"
        self.tmp.mkdir()
        # The platform team's Secret: the chart renders only its name.
        self.admin_key = secrets.token_hex(20)
        self.ports = dict(zip(("http", "grpc", "metrics"), free_ports(3)))
        container_ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.installation = ServerInstallation.discover()

        # The container's env as the kubelet builds it: literal values, then the admin key's secretKeyRef.
        pod_env = {}
        for entry in self.container["env"]:
            if "value" in entry:
                pod_env[entry["name"]] = entry["value"].replace("/tmp", str(self.tmp))
            else:
                assert entry["name"] == "TRITON_ADMIN_KEY", entry
                pod_env[entry["name"]] = self.admin_key
        mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        mount = mounts["model-repository"]
        tls_mount = mounts.get("grpc-tls")
        assert (tls_mount is None) == (tls_dir is None), "certificates are given exactly when the chart mounts them"
        flag_for_port = {"--http-port": "http", "--grpc-port": "grpc", "--metrics-port": "metrics"}
        args, self.dropped = [], []
        for arg in self.container["args"]:
            flag, _, value = arg.partition("=")
            if flag in NEWER_THAN_LOCAL_BINARY:
                self.dropped.append(arg)
                continue
            if flag == "--model-repository":
                assert value == mount
                arg = f"{flag}={self.repository}"
            elif tls_mount and value.startswith(tls_mount + "/"):
                arg = f"{flag}={tls_dir}/{value.removeprefix(tls_mount + '/')}"
            elif flag in flag_for_port:
                assert int(value) == container_ports[flag_for_port[flag]]
                arg = f"{flag}={self.ports[flag_for_port[flag]]}"
            args.append(expand_kubelet_vars(arg, pod_env))
        assert self.container["command"] == ["tritonserver"]
        self.args = args
        self.command = [str(self.installation.binary), *args,
                        f"--backend-directory={self.installation.backend_dir}",
                        "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]
        self.env = {**self.installation.environment(), **pod_env}
        self.log = workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    def url(self, port_name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[port_name]}{path}"

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.tmp, start_new_session=True)

    def wait_until_started(self, budget: float) -> float:
        """Poll the startup probe like the kubelet: the budget is the chart's, capped for a test machine."""
        start = time.monotonic()
        while time.monotonic() - start < budget:
            if self.process.poll() is not None:
                pytest.fail(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            if http_status(self.url("http", "/v2/health/ready")) == 200:
                return time.monotonic() - start
            time.sleep(0.25)
        pytest.fail(f"not ready within {budget} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def http_status(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None):
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def started(local):
    """Start ``local`` and wait as the startup probe would; stop it afterwards (a fixture's body)."""
    local.start()
    try:
        startup = local.container["startupProbe"]
        local.wait_until_started(budget=min(120, startup["periodSeconds"] * startup["failureThreshold"]))
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    rendered = render_scenario(next(p for p in SCENARIOS if p.name == "cpu-values.yaml"))
    local = LocalPod(rendered, tmp_path_factory.mktemp("chart-pod"))
    yield from started(local)


def test_every_rendered_server_flag_is_one_tritonserver_accepts():
    """All scenarios, not only the one started below: flags are compared with the binary's own --help. Only the
    listed newer flags may be unknown to the local 2.51 binary, and each of them must really be unknown to it."""
    from triton_deploy.server import ServerInstallation

    installation = ServerInstallation.discover()
    result = subprocess.run([str(installation.binary), "--help"], env=installation.environment(),
                            capture_output=True, text=True, timeout=30)
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", result.stdout + result.stderr, flags=re.M))
    assert len(known) > 50, "could not read tritonserver --help"
    assert not NEWER_THAN_LOCAL_BINARY & known, "the local binary has it now: take it off NEWER_THAN_LOCAL_BINARY"
    rendered_newer = set()
    for scenario in [None, *SCENARIOS]:
        rendered = render_scenario(scenario)
        for deployment in rendered.of_kind("Deployment"):
            flags = {arg.partition("=")[0] for arg in server_container(deployment)["args"]}
            assert flags - known <= NEWER_THAN_LOCAL_BINARY, (scenario, flags - known - NEWER_THAN_LOCAL_BINARY)
            rendered_newer |= flags & NEWER_THAN_LOCAL_BINARY
    assert rendered_newer == NEWER_THAN_LOCAL_BINARY, "an entry the chart no longer renders"


def test_server_starts_from_the_rendered_arguments(pod):
    assert pod.process.poll() is None
    # Everything the chart renders reached the binary unchanged apart from the mapped values.
    assert arg_value(pod.args, "--model-control-mode") == ["none"]
    assert any(a.startswith("--http-restricted-api=") and a.endswith(f"={pod.admin_key}") for a in pod.args)
    # Only the flags the local binary is too old for were left out.
    assert pod.dropped == ["--http-max-input-size=33554432"]
    assert len(pod.args) + len(pod.dropped) == len(pod.container["args"])


def test_probe_paths_answer_on_the_http_port(pod):
    for probe in ("startupProbe", "readinessProbe"):
        get = pod.container[probe]["httpGet"]
        assert get["port"] == "http"
        assert http_status(pod.url("http", get["path"])) == 200, probe
    assert http_status(pod.url("http", "/v2/health/live")) == 200  # what liveness checks with inference disabled


def test_liveness_probe_classifies_through_the_ensemble_of_the_started_pod(pod):
    """The exec liveness probe as rendered for this scenario (its ConfigMap script, its model and port), run with
    the system python3 against the started server; the stand-in model answers the output contract."""
    command = liveness_probe_command(pod.rendered, pod.rendered.deployment(), pod.tmp / "probe", pod.ports["http"])
    result = subprocess.run(command, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("liveness: OK, digits classified a 2x2 image in ")


def test_service_ports_reach_http_grpc_and_metrics(pod):
    import tritonclient.grpc as grpcclient

    service = pod.rendered.one("Service", "prod-triton-classifier")
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == {"http": "http", "grpc": "grpc", "metrics": "metrics"}
    assert http_status(pod.url("http", "/v2/models/digits/ready")) == 200
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{pod.ports['grpc']}")
    try:
        assert client.is_server_ready() and client.is_model_ready("digits")
    finally:
        client.close()
    assert http_status(pod.url("metrics", "/metrics")) == 200


def test_admin_apis_refuse_callers_without_the_key_from_the_secret(pod):
    index = pod.url("http", "/v2/repository/index")
    assert http_status(index, "POST", body=b"{}") == 403
    assert http_status(index, "POST", {ADMIN_HEADER: "wrong"}, b"{}") == 403
    assert http_status(index, "POST", {ADMIN_HEADER: pod.admin_key}, b"{}") == 200
    assert http_status(pod.url("http", "/v2/logging")) == 403
    assert http_status(pod.url("http", "/v2/systemsharedmemory/status")) == 403
    # Inference, health, metadata and the configuration stay open (Triton's own clients read the configuration).
    assert http_status(pod.url("http", "/v2/models/digits")) == 200
    assert http_status(pod.url("http", "/v2/models/digits/config")) == 200


def test_grpc_admin_protocols_need_the_key_too(pod):
    """Triton 2.51 looks for the gRPC key in metadata named "triton-grpc-protocol-<header>" (found by this test)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{pod.ports['grpc']}")
    try:
        with pytest.raises(InferenceServerException):
            client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match=f"triton-grpc-protocol-{ADMIN_HEADER}"):
            client.get_model_repository_index(headers={ADMIN_HEADER: pod.admin_key})
        index = client.get_model_repository_index(headers={f"triton-grpc-protocol-{ADMIN_HEADER}": pod.admin_key})
        assert {model.name for model in index.models} == {"digits", "digits_echo"}
    finally:
        client.close()


def test_helm_test_script_classifies_a_png_through_the_ensemble(pod):
    """The script from the rendered test ConfigMap, with the pod's environment, against the running server."""
    rendered_pod = pod.rendered.one("Pod")
    (container,) = rendered_pod["spec"]["containers"]
    script = pod.rendered.one("ConfigMap", "prod-triton-classifier-test-inference")["data"]["helm_test_inference.py"]
    path = pod.tmp / "helm_test_inference.py"
    path.write_text(script)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TRITON_URLS"] == "http://prod-triton-classifier.ml.svc:8000"
    env["TRITON_URLS"] = f"http://127.0.0.1:{pod.ports['http']}"
    env["TOP_K"] = "3"  # the stand-in model returns three classes; cpu-values.yaml expects the real repository's 5
    result = subprocess.run([sys.executable, str(path)], env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # The stand-in model saw a real PNG of 28x28 pixels: the raw bytes arrived intact through the ensemble.
    assert re.search(r"OK .*: digits classified a (\d+)-byte PNG: png \((\d+)\) 0\.700, width \(28\) 0\.200, "
                     r"height \(28\) 0\.100", result.stdout), result.stdout
    size, echoed = re.search(r"a (\d+)-byte PNG: png \((\d+)\)", result.stdout).groups()
    assert size == echoed


def test_helm_test_script_fails_when_the_output_contract_is_broken(pod):
    script = pod.rendered.one("ConfigMap", "prod-triton-classifier-test-inference")["data"]["helm_test_inference.py"]
    path = pod.tmp / "helm_test_inference.py"
    path.write_text(script)
    env = {**os.environ, "TRITON_URLS": f"http://127.0.0.1:{pod.ports['http']}", "MODEL_NAME": "digits",
           "TOP_K": "5", "READY_TIMEOUT_SECONDS": "5"}
    result = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "expected top-5, got 3" in result.stderr
    env.update(MODEL_NAME="no_such_model")
    result = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "not ready after 5 s" in result.stderr


def prediction_series(metrics_port: int) -> dict[str, float]:
    """Every counter and histogram series the prediction metrics export (gauges such as the drift score left out),
    read after the models' metric flush period (0.5 s) has passed."""
    from triton_deploy.monitoring import model_metrics as mm

    time.sleep(1.5)
    names = {mm.PREDICTIONS, mm.LOW_CONFIDENCE, mm.IMAGES, mm.DECODE_FAILURES}
    names |= {f"{h}_{part}" for h in mm.HISTOGRAMS for part in ("bucket", "sum", "count")}
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    series = {}
    for line in lines:
        name = re.match(r"[a-z_]+", line)
        if name and name[0] in names:
            key, _, value = line.rpartition(" ")
            series[key] = float(value)
    assert any(key.startswith(mm.PREDICTIONS) for key in series), "the repository exports no prediction metrics"
    return series


@pytest.mark.server
def test_liveness_probe_and_helm_test_are_not_counted_as_predictions(triton_server, tmp_path):
    """Against the real digits repository, whose preprocess and postprocess models count images and predictions:
    the rendered liveness probe and `helm test` script classify through the ensemble, marked as tooling, and no
    counter or histogram moves. The same PNG sent without the mark moves them by one, so they are live."""
    import importlib.util

    import numpy as np
    import tritonclient.http as httpclient

    from triton_deploy.monitoring import model_metrics as mm

    rendered = render()
    ports = triton_server.options
    before = prediction_series(ports.metrics_port)

    probe = liveness_probe_command(rendered, rendered.deployment(), tmp_path / "probe", ports.http_port)
    for _ in range(3):
        result = subprocess.run(probe, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("liveness: OK"), result.stdout + result.stderr
    (container,) = rendered.one("Pod")["spec"]["containers"]
    script = tmp_path / "helm_test_inference.py"
    script.write_text(rendered.one("ConfigMap", "prod-triton-classifier-test-inference")["data"][script.name])
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]},
           "TRITON_URLS": f"http://127.0.0.1:{ports.http_port}"}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK " in result.stdout, result.stdout + result.stderr
    assert prediction_series(ports.metrics_port) == before

    spec = importlib.util.spec_from_file_location("helm_test_inference", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{ports.http_port}")
    try:
        image = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[module.png_of_a_one()]], dtype=np.object_))
        client.infer("digits", [image])
    finally:
        client.close()
    after = prediction_series(ports.metrics_port)

    def total(series: dict[str, float], name: str) -> float:
        return sum(value for key, value in series.items() if key.startswith(name + "{") or key == name)

    assert total(after, mm.PREDICTIONS) == total(before, mm.PREDICTIONS) + 1
    assert total(after, mm.IMAGES) == total(before, mm.IMAGES) + 1
    assert total(after, f"{mm.CONFIDENCE}_count") == total(before, f"{mm.CONFIDENCE}_count") + 1


def test_metrics_the_monitoring_reads_are_exported(pod):
    """After real traffic, every CPU-side metric the alerts, dashboard and adapter rule use is on /metrics."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{pod.ports['http']}")
    image = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[b"\x89PNG\r\n\x1a\n" + bytes(24)]], dtype=np.object_))
    client.infer("digits", [image])
    client.close()
    with urllib.request.urlopen(pod.url("metrics", "/metrics"), timeout=10) as response:
        exposition = response.read().decode()
    exported = set(re.findall(r"^(nv_[a-z_]+)[{ ]", exposition, flags=re.M))
    assert CPU_SERVER_METRICS <= exported, CPU_SERVER_METRICS - exported
    monitoring = render({"monitoring": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
                         "autoscaling": {"prometheusAdapterRule": {"enabled": True}},
                         "capabilities": {"assumeApiVersions": ["monitoring.coreos.com/v1"]}})
    used = set()
    for rule in monitoring.one("PrometheusRule")["spec"]["groups"][0]["rules"]:
        used |= metric_names(rule["expr"])
    for config in monitoring.of_kind("ConfigMap"):
        for text in config["data"].values():
            used |= set(re.findall(r"\bnv_[a-z_]+", text))
    assert {m for m in used if m.startswith("nv_") and not m.startswith("nv_gpu") and m != "nv_energy_consumption"} \
        <= exported
    # The labels the alerts group by and the HPA selects on.
    assert re.search(r'^nv_inference_request_success\{model="digits",version="1"\} [1-9]', exposition, flags=re.M)


def test_sigterm_drains_within_the_grace_period(pod):
    """Last in this module: stops the server. Triton must exit well inside terminationGracePeriodSeconds."""
    spec = pod.rendered.deployment()["spec"]["template"]["spec"]
    started = time.monotonic()
    returncode = pod.stop()
    elapsed = time.monotonic() - started
    assert returncode == 0, pod.log_tail()
    budget = spec["terminationGracePeriodSeconds"] - int(pod.container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert elapsed < budget, f"took {elapsed:.1f} s"


# --- gRPC over mutual TLS: the platform scenario's rendered arguments ----------------------------------------------

@pytest.fixture(scope="module")
def tls_pod(tmp_path_factory):
    """ci/platform-values.yaml (mutual gRPC TLS from an existing Secret) started locally, with a throwaway CA and a
    certificate for localhost in place of the Secret, plus a second CA whose client certificate must be refused."""
    workdir = tmp_path_factory.mktemp("chart-tls-pod")
    certs = write_certificates(workdir / "grpc-tls", "triton", ["localhost"])
    stranger = write_certificates(workdir / "stranger", "stranger", ["localhost"])
    rendered = render_scenario(next(p for p in SCENARIOS if p.name == "platform-values.yaml"))
    local = LocalPod(rendered, workdir, tls_dir=certs["ca.crt"].parent)
    local.certs, local.stranger = certs, stranger
    yield from started(local)


def grpc_client(pod, *, ca=None, cert=None, key=None, ssl=True):
    import tritonclient.grpc as grpcclient

    path = lambda file: str(file) if file else None  # noqa: E731  (tritonclient takes file names)
    return grpcclient.InferenceServerClient(f"localhost:{pod.ports['grpc']}", ssl=ssl, root_certificates=path(ca),
                                            private_key=path(key), certificate_chain=path(cert))


def run_helm_test_script(pod, **env_overrides) -> subprocess.CompletedProcess:
    rendered_pod = pod.rendered.one("Pod")
    (container,) = rendered_pod["spec"]["containers"]
    script = pod.rendered.one("ConfigMap", "prod-triton-classifier-test-inference")["data"]["helm_test_inference.py"]
    path = pod.tmp / "helm_test_inference.py"
    path.write_text(script)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GRPC_TLS_TARGETS"] == "prod-triton-classifier.ml.svc:8001"
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "grpc-tls"]
    assert env["GRPC_TLS_DIR"] == mount and env["GRPC_TLS_MUTUAL"] == "1"
    env.update(TRITON_URLS=f"http://127.0.0.1:{pod.ports['http']}", TOP_K="3",
               GRPC_TLS_TARGETS=f"localhost:{pod.ports['grpc']}", GRPC_TLS_DIR=str(pod.certs["ca.crt"].parent))
    env.update(env_overrides)
    return subprocess.run([sys.executable, str(path)], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def test_tls_pod_starts_with_the_rendered_tls_arguments_and_its_probes_answer(tls_pod):
    assert arg_value(tls_pod.args, "--grpc-use-ssl") == ["true"]
    assert arg_value(tls_pod.args, "--grpc-use-ssl-mutual") == ["true"]
    assert arg_value(tls_pod.args, "--grpc-root-cert") == [str(tls_pod.certs["ca.crt"])]
    for probe in ("startupProbe", "readinessProbe"):
        assert http_status(tls_pod.url("http", tls_pod.container[probe]["httpGet"]["path"])) == 200, probe
    command = liveness_probe_command(tls_pod.rendered, tls_pod.rendered.deployment(), tls_pod.tmp / "probe",
                                     tls_pod.ports["http"])
    result = subprocess.run(command, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grpc_client_with_a_certificate_of_the_ca_classifies_over_mutual_tls(tls_pod):
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpc_client(tls_pod, ca=tls_pod.certs["ca.crt"], cert=tls_pod.certs["tls.crt"],
                         key=tls_pod.certs["tls.key"])
    try:
        assert client.is_server_ready() and client.is_model_ready("digits")
        image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[b"not an image"]], dtype=np.object_))
        result = client.infer("digits", [image])
        assert result.as_numpy("LABELS")[0][0] == b"not-png"
    finally:
        client.close()


@pytest.mark.parametrize("who", ["no client certificate", "client certificate of another CA", "plaintext"])
def test_grpc_clients_the_tls_pod_must_refuse(tls_pod, who):
    from tritonclient.utils import InferenceServerException

    if who == "no client certificate":
        client = grpc_client(tls_pod, ca=tls_pod.certs["ca.crt"])
    elif who == "client certificate of another CA":
        client = grpc_client(tls_pod, ca=tls_pod.certs["ca.crt"], cert=tls_pod.stranger["tls.crt"],
                             key=tls_pod.stranger["tls.key"])
    else:
        client = grpc_client(tls_pod, ssl=False)
    try:
        with pytest.raises(InferenceServerException):
            client.is_server_ready(client_timeout=10)
    finally:
        client.close()


def test_helm_test_script_checks_the_grpc_tls_port(tls_pod):
    """The rendered helm test's environment, mapped to the local pod: HTTP inference, then the TLS handshake with
    the Secret's ca.crt, ALPN h2 and an HTTP/2 SETTINGS answer, presenting the Secret's certificate."""
    result = run_helm_test_script(tls_pod)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^OK grpcs://localhost:{tls_pod.ports['grpc']}: TLSv1\.[23], certificate for localhost "
                     r"trusted, client certificate accepted$", result.stdout, flags=re.M), result.stdout


@pytest.mark.parametrize("case,env,expected", [
    ("without the client certificate", {"GRPC_TLS_MUTUAL": "0"}, "it may require a client certificate"),
    ("against the wrong CA", {"GRPC_TLS_DIR": "stranger"}, "CERTIFICATE_VERIFY_FAILED"),
    ("under a name the certificate lacks", {"GRPC_TLS_TARGETS": "127.0.0.1:{port}"}, "IP address mismatch"),
])
def test_helm_test_script_fails_on_a_bad_tls_setup(tls_pod, case, env, expected):
    env = {k: v.format(port=tls_pod.ports["grpc"]) for k, v in env.items()}
    if env.get("GRPC_TLS_DIR") == "stranger":
        env["GRPC_TLS_DIR"] = str(tls_pod.stranger["ca.crt"].parent)
    result = run_helm_test_script(tls_pod, **env)
    assert result.returncode != 0, case
    assert expected in result.stderr, (case, result.stdout, result.stderr)


def test_model_config_name_value_serves_the_named_configs_tune_writes(tmp_path):
    """`server.modelConfigName` as `tune` prints it (`--set server.modelConfigName=tuned`): the rendered
    --model-config-name makes the started server load each model's configs/tuned.pbtxt where one exists (here the
    step's with two instances) and config.pbtxt elsewhere (the ensemble)."""
    from triton_deploy.tuning import cluster

    scenario = next(p for p in SCENARIOS if p.name == "cpu-values.yaml")
    values = yaml.safe_load(cluster.values_text("tuned", ["digits_echo.instances=2"]))
    local = LocalPod(render_scenario(scenario, values), tmp_path)
    assert "--model-config-name=tuned" in local.args
    cluster.write_named(local.repository, {"digits_echo": ECHO_CONFIG.replace("count: 1", "count: 2")}, "tuned")
    def config(model: str) -> dict:
        with urllib.request.urlopen(local.url("http", f"/v2/models/{model}/config"), timeout=10) as response:
            return json.loads(response.read())

    for _ in started(local):
        assert config("digits_echo")["instance_group"][0]["count"] == 2
        assert config("digits")["platform"] == "ensemble"  # no named file: its config.pbtxt
