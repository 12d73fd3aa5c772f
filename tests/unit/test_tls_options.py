"""TLS settings without a server: the files ``serve`` and the clients check before anything starts (one line naming
the flag), ``serve``'s flags as Triton's, and one ``TlsOptions`` turned into what each library and Locust take."""

from __future__ import annotations

import ssl

import pytest
from tls_certs import make_pki

from triton_deploy.cli import main
from triton_deploy.clients import TlsOptions
from triton_deploy.errors import EXIT_CODES, UsageError


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "{client_cert}"], "--tls-cert needs --tls-key"),
    (["--tls-ca", "{missing}"], "--tls-ca {missing}: no such file"),
    (["--tls-ca", "{client_key}"], "--tls-ca {client_key} holds no PEM certificate"),
    (["--tls-cert", "{client_cert}", "--tls-key", "{other_client_key}"],
     "--tls-key {other_client_key} is not the private key of --tls-cert {client_cert}"),
])
def test_client_commands_check_tls_files_before_connecting(pki, tmp_path, capsys, flags, message):
    names = {"client_cert": pki.client_cert, "client_key": pki.client_key, "other_client_key": pki.other_client_key,
             "missing": tmp_path / "missing.pem"}
    argv = ["classify", str(tmp_path), "--quiet"] + [f.format(**names) for f in flags]
    (tmp_path / "a.png").write_bytes(b"not used")
    assert main(argv) == EXIT_CODES["UsageError"][0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(**names) in err[0]


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "{server_cert}"], "--tls-cert needs --tls-key"),
    (["--tls-ca", "{ca}"], "--tls-ca turns on mutual TLS for a TLS server, and --tls-cert/--tls-key are missing"),
    (["--tls-cert", "{missing}", "--tls-key", "{server_key}"], "--tls-cert {missing}: no such file"),
    (["--tls-cert", "{server_cert}", "--tls-key", "{client_key}"],
     "--tls-key {client_key} is not the private key of --tls-cert {server_cert}"),
    (["--tls-cert", "{server_key}", "--tls-key", "{server_key}"], "--tls-cert {server_key} is not a PEM certificate"),
])
def test_serve_checks_tls_files_before_starting(pki, tmp_path, capsys, flags, message):
    names = {"server_cert": pki.server_cert, "server_key": pki.server_key, "client_key": pki.client_key,
             "ca": pki.ca, "missing": tmp_path / "missing.pem"}
    argv = ["serve", "--repository", str(tmp_path), "--quiet", *(f.format(**names) for f in flags)]
    assert main(argv) == EXIT_CODES["UsageError"][0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(**names) in err[0]


def test_serve_flags_become_tritons_grpc_tls_flags(pki, tmp_path):
    from triton_deploy.server.options import ServerOptions, tls_args

    assert tls_args(ServerOptions(repository=tmp_path)) == []
    assert tls_args(ServerOptions(repository=tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key)) == [
        "--grpc-use-ssl=true", f"--grpc-server-cert={pki.server_cert}", f"--grpc-server-key={pki.server_key}"]
    mutual = tls_args(ServerOptions(repository=tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key,
                                    tls_ca=pki.ca))
    assert mutual[-2:] == [f"--grpc-root-cert={pki.ca}", "--grpc-use-ssl-mutual=true"]


def test_one_tls_options_gives_every_library_its_arguments(pki):
    tls = TlsOptions(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    assert tls.grpc_args() == {"ssl": True, "root_certificates": str(pki.ca), "private_key": str(pki.client_key),
                               "certificate_chain": str(pki.client_cert)}
    assert tls.http_args() == {"ssl": True, "ssl_options": {"ca_certs": str(pki.ca), "certfile": str(pki.client_cert),
                                                            "keyfile": str(pki.client_key)}}
    context = tls.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert TlsOptions().grpc_args()["root_certificates"] is None  # the system's roots
    assert TlsOptions.from_flags(None, None, None) is None and TlsOptions.from_flags(None, None, None, on=True)


def test_loadtest_passes_tls_to_locust_and_refuses_it_for_its_own_server(pki, tmp_path):
    from triton_deploy.loadtests.runner import LoadTestOptions, locust_command

    options = LoadTestOptions(url="127.0.0.1:8001", protocol="grpc", tls=TlsOptions(ca=pki.ca))
    command = locust_command(options, "127.0.0.1:8001", 2, tmp_path)
    assert "--triton-tls" in command and command[command.index("--triton-tls-ca") + 1] == str(pki.ca)
    assert "--tls-ca" not in command  # Locust's own --tls-cert/--tls-key are its web UI's
    with pytest.raises(UsageError, match="--tls-\\* apply to a running server"):
        LoadTestOptions(repository=tmp_path, tls=TlsOptions(ca=pki.ca)).check()


def test_monitor_with_tls_reads_host_port_as_an_https_gateway(pki):
    from triton_deploy.monitoring.monitor import MonitorOptions

    assert MonitorOptions("gateway:9443", tls=TlsOptions(ca=pki.ca)).url == "https://gateway:9443/metrics"
    assert MonitorOptions("127.0.0.1:8002").url == "http://127.0.0.1:8002/metrics"
