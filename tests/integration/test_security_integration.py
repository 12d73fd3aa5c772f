"""What lets no one change what the live server serves: loopback bind, the admin APIs behind a key on both protocols,
model-control none. (Validated names and the source scan are in tests/unit/test_security.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from triton_deploy.server import RESTRICTED_APIS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.server
def test_the_live_server_listens_on_loopback_only(triton_server):
    triton = psutil.Process(triton_server.process.pid)
    listening = [c.laddr for c in triton.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert {a.port for a in listening} >= {triton_server.options.http_port, triton_server.options.grpc_port,
                                           triton_server.options.metrics_port}
    assert {a.ip.removeprefix("::ffff:") for a in listening} == {"127.0.0.1"}  # gRPC: an IPv4-mapped socket


def _http(server, method: str, path: str, key: str | None = None, body: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"} | ({"triton-admin-key": key} if key is not None else {})
    data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


RESTRICTED_HTTP = {
    "model-repository": ("POST", "/v2/repository/index", None),
    "shared-memory": ("GET", "/v2/systemsharedmemory/status", None),
    "logging": ("GET", "/v2/logging", None),
    "trace": ("GET", "/v2/trace/setting", None),
}


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("api", RESTRICTED_APIS)
def test_each_admin_api_over_http_needs_the_right_key(triton_server, api):
    method, path, body = RESTRICTED_HTTP[api]
    for key in (None, "wrong-key"):
        status, text = _http(triton_server, method, path, key, body)
        assert status == 403 and "This API is restricted" in text, (key, status, text)
    status, _text = _http(triton_server, method, path, triton_server.admin_key, body)
    assert status == 200
    # The open APIs stay open: health, metadata, configuration (standard tools read them).
    assert _http(triton_server, "GET", "/v2/health/ready")[0] == 200
    assert _http(triton_server, "GET", "/v2/models/digits")[0] == 200
    assert _http(triton_server, "GET", "/v2/models/digits_classifier/config")[0] == 200


@pytest.mark.slow
@pytest.mark.server
def test_each_admin_api_over_grpc_needs_the_key_in_metadata(triton_server):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    admin = {"triton-grpc-protocol-triton-admin-key": triton_server.admin_key}
    calls = {"model-repository": lambda h: client.get_model_repository_index(headers=h),
             "shared-memory": lambda h: client.get_system_shared_memory_status(headers=h),
             "logging": lambda h: client.get_log_settings(headers=h),
             "trace": lambda h: client.get_trace_settings(headers=h)}
    for _api, call in calls.items():
        for headers in (None, {"triton-grpc-protocol-triton-admin-key": "wrong-key"}):
            with pytest.raises(InferenceServerException, match="restricted"):
                call(headers)
        call(admin)  # answered with the key
    assert client.get_model_metadata("digits").name == "digits"
    assert client.get_model_config("digits_classifier").config.name == "digits_classifier"  # open without a key


@pytest.mark.slow
@pytest.mark.server
def test_model_control_none_refuses_loading_and_unloading_even_with_the_key(triton_server):
    http = httpclient.InferenceServerClient(triton_server.http_url)
    key = {"triton-admin-key": triton_server.admin_key}
    for action in (http.load_model, http.unload_model):
        with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
            action("digits", headers=key)
    # A caller cannot send its own config or files either.
    with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
        http.load_model("digits", headers=key, config=json.dumps({"backend": "python"}),
                        files={"file:1/model.py": b"import os"})
    assert http.is_model_ready("digits")


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_metadata_and_config_are_readable_without_the_key_as_tritons_image_client_reads_them(triton_server,
                                                                                                  protocol):
    """Triton's example image_client.py (triton-inference-server/client, src/python/examples) calls
    get_model_metadata and get_model_config without headers before its first request; both answer."""
    if protocol == "http":
        client = httpclient.InferenceServerClient(triton_server.http_url)
        metadata = client.get_model_metadata("digits_classifier")
        config = client.get_model_config("digits_classifier")
        assert metadata["name"] == config["name"] == "digits_classifier" and config["max_batch_size"] >= 1
    else:
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        metadata = client.get_model_metadata("digits_classifier")
        config = client.get_model_config("digits_classifier").config
        assert metadata.name == config.name == "digits_classifier" and config.max_batch_size >= 1
    client.close()


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shared_memory_registration_needs_the_key(triton_server, heldout_digits, protocol):
    from conftest import encode_digit
    from triton_deploy.clients import ImageClassifier
    from triton_deploy.errors import ClientError

    sample_png = encode_digit(heldout_digits[0][0])
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    lib = httpclient if protocol == "http" else grpcclient
    with pytest.raises(InferenceServerException, match="restricted"):
        lib.InferenceServerClient(url).register_system_shared_memory("probe", "/triton_deploy_probe", 64)
    with ImageClassifier(url, protocol=protocol, shared_memory=True) as client, \
            pytest.raises(ClientError, match="keeps this API for callers with its admin key") as refused:
        client.classify([sample_png])
    assert "--admin-key" in str(refused.value)
    with ImageClassifier(url, protocol=protocol, shared_memory=True, admin_key=triton_server.admin_key) as client:
        assert len(client.classify([sample_png])) == 1  # the project's own shm client sends the key


def _as_nobody(*command: str) -> str:
    result = subprocess.run(["runuser", "-u", "nobody", "--", *command], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="runs commands as nobody: needs root")
def test_another_local_user_cannot_read_the_admin_key(triton_server):
    key, pid = triton_server.admin_key, triton_server.process.pid
    assert not triton_server.key_on_command_line  # the key shim was built and loaded
    processes = _as_nobody("ps", "-ww", "-eo", "args")  # full lines: no terminal cuts them to 80 columns
    assert "tritonserver" in processes and "@TRITON_DEPLOY_ADMIN_KEY@" in processes  # ps sees Triton, not its key
    group = [pid, *triton_server.stubs]
    for member in group:
        cmdline = _as_nobody("cat", f"/proc/{member}/cmdline")
        assert cmdline and key not in cmdline
        assert "Permission denied" in _as_nobody("cat", f"/proc/{member}/environ")
    # Not even the owner finds it in the environment: the shim overwrote it and Triton's stubs never had it.
    assert not [m for m in group if key.encode() in Path(f"/proc/{m}/environ").read_bytes()]
    assert key not in Path(triton_server.log_path).read_text(errors="replace")
    # And the key still works: main() got it, not the placeholder.
    assert _http(triton_server, "POST", "/v2/repository/index", key)[0] == 200
    assert _http(triton_server, "POST", "/v2/repository/index", "@TRITON_DEPLOY_ADMIN_KEY@")[0] == 403
