"""gRPC with mutual TLS on the real Triton: the right client classifies (sync, asyncio, shared memory, the CLI), and
every wrong one fails with a message naming its own problem.

One server for the module (``serve``'s TLS flags as ``ServerOptions``), on a tiny generated repository: no training.
Certificates are made at test time (``tls_certs.make_pki``); the server certificate names 127.0.0.1 only, so
``localhost`` is a hostname mismatch on the same server.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import encode_digit
from triton_deploy.cli import main
from triton_deploy.clients import AsyncImageClassifier, ImageClassifier, TlsError, TlsOptions
from triton_deploy.clients.shm import leftover_regions
from triton_deploy.errors import EXIT_CODES

pytestmark = [pytest.mark.slow, pytest.mark.server]

MODEL = "tiny"


# `pki` (throwaway CA, server and client certificates) and `tls_repository` (a tiny model served over TLS) are
# shared fixtures in tests/conftest.py.


@pytest.fixture(scope="module")
def mutual_server(pki, tls_repository, tmp_path_factory):
    from triton_deploy.server import ServerOptions, TritonServer, free_ports

    http_port, grpc_port, metrics_port = free_ports(3)
    options = ServerOptions(repository=tls_repository, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, exit_timeout_s=5,
                            log_file=tmp_path_factory.mktemp("tls-log") / "triton.log",
                            tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca)
    with TritonServer(options) as server:
        yield server


@pytest.fixture(scope="module")
def image(heldout_digits) -> bytes:
    return encode_digit(heldout_digits[0][0], size=8)


def right_client(pki) -> TlsOptions:
    return TlsOptions(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)


def classify(url: str, image: bytes, **arguments) -> list:
    with ImageClassifier(url, model=MODEL, ready_timeout=10, retries=1, **arguments) as client:
        return client.classify([image, image])


def failure(url: str, image: bytes, **arguments) -> TlsError:
    with pytest.raises(TlsError) as caught:
        classify(url, image, **arguments)
    return caught.value


def test_the_server_command_line_turns_on_mutual_tls(mutual_server, pki):
    command = mutual_server.process.args
    assert "--grpc-use-ssl=true" in command and "--grpc-use-ssl-mutual=true" in command
    assert f"--grpc-server-cert={pki.server_cert}" in command and f"--grpc-root-cert={pki.ca}" in command


@pytest.mark.parametrize("shared_memory", [False, True], ids=["socket", "shm"])
def test_the_right_client_classifies_over_mutual_tls(mutual_server, pki, image, shared_memory):
    plain = classify(mutual_server.http_url, image)  # the HTTP port stays plaintext: the reference answer
    secure = classify(mutual_server.grpc_url, image, protocol="grpc", tls=right_client(pki),
                      shared_memory=shared_memory, admin_key=mutual_server.admin_key)  # shm registration needs it
    assert [p.label for p in secure] == [p.label for p in plain]
    assert [r.score for r in secure[0].ranks] == pytest.approx([r.score for r in plain[0].ranks], abs=1e-5)
    assert leftover_regions() == []


def test_the_asyncio_client_classifies_over_mutual_tls(mutual_server, pki, image):
    async def go():
        async with AsyncImageClassifier(mutual_server.grpc_url, protocol="grpc", model=MODEL,
                                        tls=right_client(pki)) as client:
            return await client.classify([image])

    assert asyncio.run(go())[0].label.startswith("label ")


def test_a_plaintext_client_is_told_the_server_speaks_tls(mutual_server, image):
    error = failure(mutual_server.grpc_url, image, protocol="grpc")
    assert "speaks TLS" in str(error) and "pass --tls-ca" in str(error)
    assert "HTTP port" not in str(error)  # what the client said before it knew about TLS
    assert error.exit_code == EXIT_CODES["TlsError"][0]


def test_a_client_trusting_another_ca_is_told_the_certificate_is_untrusted(mutual_server, pki, image):
    error = failure(mutual_server.grpc_url, image, protocol="grpc",
                    tls=TlsOptions(ca=pki.other_ca, cert=pki.client_cert, key=pki.client_key))
    assert "untrusted certificate" in str(error) and str(pki.other_ca) in str(error)
    assert "--tls-ca" in error.hint


def test_a_client_without_a_certificate_is_told_mutual_tls_needs_one(mutual_server, pki, image):
    error = failure(mutual_server.grpc_url, image, protocol="grpc", tls=TlsOptions(ca=pki.ca))
    assert "requires a client certificate" in str(error) and "--tls-cert and --tls-key" in str(error)


def test_a_client_certificate_from_another_ca_is_refused_by_name(mutual_server, pki, image):
    error = failure(mutual_server.grpc_url, image, protocol="grpc",
                    tls=TlsOptions(ca=pki.ca, cert=pki.other_client_cert, key=pki.other_client_key))
    assert f"refused the client certificate --tls-cert {pki.other_client_cert}" in str(error)


def test_a_name_the_certificate_does_not_list_is_a_hostname_mismatch(mutual_server, pki, image):
    url = mutual_server.grpc_url.replace("127.0.0.1", "localhost")
    error = failure(url, image, protocol="grpc", tls=right_client(pki))
    assert "does not name 'localhost' (hostname mismatch)" in str(error)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_tls_client_on_a_plaintext_port_is_told_it_is_plaintext(mutual_server, pki, image, protocol):
    # Triton's HTTP port has no TLS: HTTPS or gRPC-over-TLS to it both meet plaintext.
    error = failure(mutual_server.http_url, image, protocol=protocol, tls=right_client(pki))
    assert "does not speak TLS (a plaintext port)" in str(error)


def test_a_tls_client_on_a_plaintext_grpc_port_is_told_it_is_plaintext(triton_server, pki, image):
    # The session's plaintext server (its gRPC port speaks HTTP/2 without TLS).
    error = failure(triton_server.grpc_url, image, protocol="grpc", tls=right_client(pki))
    assert "does not speak TLS (a plaintext port)" in str(error) and "drop --tls-ca" in str(error)


def test_a_plaintext_http_client_on_the_tls_grpc_port_is_pointed_at_grpc(mutual_server, image):
    error = failure(mutual_server.grpc_url, image, protocol="http")
    assert "speaks TLS" in str(error) and "--protocol grpc" in str(error)


def test_classify_command_over_mutual_tls(mutual_server, pki, image, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(image)
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    base = ["classify", str(tmp_path / "a.png"), "--url", mutual_server.grpc_url, "--protocol", "grpc",
            "--model", MODEL, "--quiet", "--retries", "0"]
    assert main(base + tls) == 0
    assert "label " in capsys.readouterr().out
    assert main(base) == EXIT_CODES["TlsError"][0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the server speaks TLS: pass --tls-ca" in err[0]


def test_a_failed_handshake_is_one_line_on_stderr_of_the_command(mutual_server, pki, image, tmp_path):
    # gRPC's core logs the failed handshake itself unless told not to: the user must see only the explanation.
    import subprocess
    import sys

    (tmp_path / "a.png").write_bytes(image)
    result = subprocess.run([sys.executable, "-m", "triton_deploy.cli", "classify", str(tmp_path / "a.png"), "--url",
                             mutual_server.grpc_url, "--protocol", "grpc", "--model", MODEL, "--quiet",
                             "--tls-ca", str(pki.other_ca), "--tls-cert", str(pki.client_cert),
                             "--tls-key", str(pki.client_key)], capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_CODES["TlsError"][0]
    assert len(result.stderr.splitlines()) == 1 and "(untrusted certificate)" in result.stderr
