"""``serve --tls-cert --tls-key`` (TLS without client certificates) as a user runs it, and every client command and
path over it: gRPC straight to Triton, HTTPS through a TLS-terminating gateway in front of Triton's plaintext HTTP
port (``tls_gateway.TlsGateway``), the Locust users of ``loadtest``, and ``monitor`` through a gateway in front of
the metrics port. Plus the flag checks ``serve`` makes before starting anything.

One ``serve`` process for the module, on a tiny generated repository: no training.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
from tls_gateway import TlsGateway

from conftest import encode_digit
from triton_deploy.cli import main
from triton_deploy.clients import AsyncImageClassifier, ImageClassifier, TlsError, TlsOptions
from triton_deploy.clients.shm import leftover_regions
from triton_deploy.errors import EXIT_CODES
from triton_deploy.server import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.server]

MODEL = "tiny"
ADMIN_KEY = "tls-test-admin-key"


# `pki` (throwaway CA, server and client certificates) and `tls_repository` (a tiny model served over TLS) are
# shared fixtures in tests/conftest.py.


@pytest.fixture(scope="module")
def served(pki, tls_repository, tmp_path_factory):
    """``triton-deploy serve --tls-cert --tls-key`` in a subprocess: the endpoints it printed, and its TLS notice."""
    folder = tmp_path_factory.mktemp("serve")
    http, grpc, metrics = free_ports(3)
    command = [sys.executable, "-m", "triton_deploy.cli", "serve", "--repository", str(tls_repository),
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--json",
               "--exit-timeout", "5", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
               "--admin-key", ADMIN_KEY]  # shared-memory registration needs it
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder)
    try:
        line = process.stdout.readline()  # printed once the server is ready
        if not line:
            pytest.fail(f"serve --tls-cert did not start: {process.communicate(timeout=30)[1]}")
        # serve's notices follow readiness on stderr; the TLS one says what stays plaintext.
        notice = next((text for text in process.stderr if " TLS" in text), "")
        yield json.loads(line) | {"notice": notice.strip()}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # serve stops its Triton (a SIGKILL would orphan it)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def https_gateway(served, pki):
    with TlsGateway(int(served["http"].rsplit(":", 1)[1]), pki.server_cert, pki.server_key) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def image(heldout_digits) -> bytes:
    return encode_digit(heldout_digits[0][0], size=8)


def classify(url: str, images: list, **arguments) -> list:
    with ImageClassifier(url, model=MODEL, ready_timeout=10, retries=1, **arguments) as client:
        return client.classify(images)


def test_serve_with_tls_says_the_http_port_stays_plaintext(served):
    assert served["notice"].startswith(f"triton-deploy serve: gRPC {served['grpc']} uses TLS; ")
    assert f"HTTP {served['http']} stays plaintext (Triton has no HTTP TLS)" in served["notice"]
    assert "docs/tls.md" in served["notice"]


@pytest.mark.parametrize("shared_memory", [False, True], ids=["socket", "shm"])
def test_grpc_client_trusting_the_ca_classifies(served, pki, image, shared_memory):
    plain = classify(served["http"], [image])
    secure = classify(served["grpc"], [image], protocol="grpc", tls=TlsOptions(ca=pki.ca),
                      shared_memory=shared_memory, admin_key=ADMIN_KEY)
    assert [p.label for p in secure] == [p.label for p in plain]
    assert leftover_regions() == []


@pytest.mark.parametrize("shared_memory", [False, True], ids=["socket", "shm"])
def test_https_through_a_gateway_classifies_with_the_sync_client(served, https_gateway, pki, image, shared_memory):
    plain = classify(served["http"], [image, image])
    secure = classify(https_gateway.url, [image, image], tls=TlsOptions(ca=pki.ca), shared_memory=shared_memory,
                      admin_key=ADMIN_KEY)
    assert [p.label for p in secure] == [p.label for p in plain]
    assert secure[0].ranks[0].score == pytest.approx(plain[0].ranks[0].score, abs=1e-6)
    assert leftover_regions() == []


def test_https_through_a_gateway_classifies_with_the_asyncio_client(https_gateway, pki, image):
    async def go():
        async with AsyncImageClassifier(https_gateway.url, model=MODEL, tls=TlsOptions(ca=pki.ca)) as client:
            return await client.classify([image])

    assert asyncio.run(go())[0].label.startswith("label ")


def test_https_with_the_wrong_ca_is_an_untrusted_certificate(https_gateway, pki, image):
    with pytest.raises(TlsError, match=r"did not sign \(untrusted certificate\)") as caught:
        classify(https_gateway.url, [image], tls=TlsOptions(ca=pki.other_ca))
    assert "--tls-ca" in caught.value.hint


def test_plaintext_http_to_the_gateway_is_told_it_speaks_tls(https_gateway, image):
    with pytest.raises(TlsError, match="speaks TLS") as caught:
        classify(https_gateway.url, [image])
    assert "pass --tls-ca" in str(caught.value)


def test_evaluate_command_over_grpc_tls(served, pki, image, tmp_path, capsys):
    for label in ("label 0", "label 1"):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "a.png").write_bytes(image)
    code = main(["evaluate", str(tmp_path / "data"), "--output", str(tmp_path / "report"), "--url", served["grpc"],
                 "--model", MODEL, "--tls-ca", str(pki.ca), "--json", "--quiet"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2


@pytest.mark.parametrize("tls", [True, False], ids=["with-ca", "plaintext"])
def test_loadtest_locust_users_over_grpc_tls(served, pki, tmp_path, capsys, tls):
    flags = ["--tls-ca", str(pki.ca)] if tls else []
    code = main(["loadtest", "--url", served["grpc"], "--protocol", "grpc", "--model", MODEL, "--metrics-url",
                 served["metrics"], "--users", "2", "--duration", "3s", "--image-sizes", "8", "--pool-size", "4",
                 "--output", str(tmp_path), "--quiet", *flags])
    if tls:
        run = json.loads(next(tmp_path.glob("loadtest-*/summary.json")).read_text())["runs"][0]
        assert code == 0 and run["requests"] > 0 and run["failures"] == 0, run
    else:  # the preflight (classify's checks) refuses at once, says why, and no run is started
        err = capsys.readouterr().err
        assert code == EXIT_CODES["TlsError"][0], err
        assert "speaks TLS" in err and "--tls-ca" in err and len(err.strip().splitlines()) == 1
        assert not list(tmp_path.glob("loadtest-*"))


def test_monitor_reads_metrics_through_an_https_gateway(served, pki, capsys):
    metrics_port = int(served["metrics"].split("://")[-1].split("/")[0].rsplit(":", 1)[1])
    with TlsGateway(metrics_port, pki.server_cert, pki.server_key) as gateway:
        code = main(["monitor", "--metrics-url", gateway.url, "--tls-ca", str(pki.ca), "--once",
                     "--json", "--interval", "0.2"])
        assert code == 0
        assert MODEL in json.loads(capsys.readouterr().out)["models"]
        assert main(["monitor", "--metrics-url", f"https://{gateway.url}", "--once", "--interval", "0.2"]) != 0
        assert "--tls-ca" in capsys.readouterr().err
