"""What lets no one change what the live server serves: loopback bind, the admin APIs behind a key on both protocols,
model-control none. (Validated names and the source scan are in tests/unit/test_security.py.)"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from triton_deploy.server import RESTRICTED_APIS


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


# One call per restricted API: (method, path, body)
RESTRICTED_HTTP = {
    "model-repository": ("POST", "/v2/repository/index", None),
    "model-config": ("GET", "/v2/models/digits/config", None),
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
    # The open APIs stay open: health, metadata, statistics.
    assert _http(triton_server, "GET", "/v2/health/ready")[0] == 200
    assert _http(triton_server, "GET", "/v2/models/digits")[0] == 200


@pytest.mark.slow
@pytest.mark.server
def test_each_admin_api_over_grpc_needs_the_key_in_metadata(triton_server):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    admin = {"triton-grpc-protocol-triton-admin-key": triton_server.admin_key}
    calls = {"model-repository": lambda h: client.get_model_repository_index(headers=h),
             "model-config": lambda h: client.get_model_config("digits", headers=h),
             "logging": lambda h: client.get_log_settings(headers=h),
             "trace": lambda h: client.get_trace_settings(headers=h)}
    for _api, call in calls.items():
        for headers in (None, {"triton-grpc-protocol-triton-admin-key": "wrong-key"}):
            with pytest.raises(InferenceServerException, match="restricted"):
                call(headers)
        call(admin)  # answered with the key
    assert client.get_model_metadata("digits").name == "digits"


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
