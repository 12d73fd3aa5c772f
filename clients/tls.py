"""TLS settings in one place: ``TlsOptions`` (the ``--tls-ca``/``--tls-cert``/``--tls-key`` files) and what each
tritonclient flavour and ``urllib`` take to use them, the up-front checks of the files (shared with ``serve``), and
the probe that tells what a server speaks when a connection fails without saying why.

Triton serves TLS on its gRPC port only (``serve --tls-cert``); HTTPS reaches it through a TLS-terminating gateway,
and the same options serve both (``ssl_options`` for ``tritonclient.http``, an ``SSLContext`` for its asyncio client
and for ``urllib``, file paths for ``tritonclient.grpc``).
"""

from __future__ import annotations

import argparse
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triton_deploy.errors import Problem, raise_problems
from triton_deploy.pem import pem_problems


@dataclass(frozen=True)
class TlsOptions:
    """TLS for a client: PEM file paths. ``ca`` replaces the system's root certificates (a private CA); ``cert`` and
    ``key`` are the client certificate a server with mutual TLS asks for. All three are optional: ``TlsOptions()``
    is TLS trusting the system's roots. The files are checked by ``check()``: ``from_flags`` calls it, and so does
    every options object holding one (``ClassifierOptions``, ``MonitorOptions``, ...), before it connects."""

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None

    def problems(self) -> list[Problem]:
        return pem_problems(self.ca, self.cert, self.key)

    def check(self) -> None:
        raise_problems(self.problems())  # one UsageError naming every flag to fix

    @classmethod
    def from_flags(cls, ca: str | Path | None, cert: str | Path | None, key: str | Path | None,
                   on: bool = False) -> TlsOptions | None:
        """None (plaintext) unless ``on`` (``--tls``) or one of the files was given; checked, so a command's TLS
        flags are refused while its arguments are read, before anything else."""
        if not on and ca is None and cert is None and key is None:
            return None
        options = cls(ca, cert, key)
        options.check()
        return options

    def grpc_args(self) -> dict[str, Any]:
        """For ``tritonclient.grpc[.aio].InferenceServerClient`` (it reads the files itself)."""
        return {"ssl": True, "root_certificates": _str(self.ca), "private_key": _str(self.key),
                "certificate_chain": _str(self.cert)}

    def http_args(self) -> dict[str, Any]:
        """For ``tritonclient.http.InferenceServerClient`` (geventhttpclient builds gevent's own context)."""
        options: dict[str, Any] = {}
        if self.ca is not None:
            options["ca_certs"] = str(self.ca)
        if self.cert is not None:
            options |= {"certfile": str(self.cert), "keyfile": str(self.key)}
        return {"ssl": True, "ssl_options": options}

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context (for ``tritonclient.http.aio`` and ``urllib``)."""
        context = ssl.create_default_context(cafile=_str(self.ca))
        if self.cert is not None:
            context.load_cert_chain(str(self.cert), str(self.key))
        return context


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def add_tls_flags(parser: argparse.ArgumentParser, *, what: str = "the server") -> None:
    """The three client flags every command that talks to a server takes."""
    group = parser.add_argument_group("TLS (gRPC to 'serve --tls-cert', or HTTPS through a gateway; docs/tls.md)")
    group.add_argument("--tls", action="store_true", help="TLS trusting the system's root certificates (default: "
                                                          "plaintext; any --tls-* file turns TLS on too)")
    group.add_argument("--tls-ca", metavar="PEM", help=f"CA certificate(s) {what}'s certificate is signed by, "
                                                       "trusted instead of the system's")
    group.add_argument("--tls-cert", metavar="PEM", help="client certificate, for a server with mutual TLS "
                                                         "(needs --tls-key)")
    group.add_argument("--tls-key", metavar="PEM", help="the client certificate's private key (unencrypted PEM)")


def tls_from_args(args: argparse.Namespace) -> TlsOptions | None:
    return TlsOptions.from_flags(args.tls_ca, args.tls_cert, args.tls_key, on=args.tls)


# ---- what a server at a port speaks, for errors that do not say -------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What a TLS handshake with ``host:port`` showed. ``tls``: the server completed a handshake (certificate not
    verified); ``http2``: it chose HTTP/2 by ALPN (gRPC); ``wants_client_cert``: it refused a client without a
    certificate; ``refused_cert``: it refused the client certificate we sent."""

    tls: bool
    http2: bool = False
    wants_client_cert: bool = False
    refused_cert: bool = False


PROBE_TIMEOUT_S = 2.0
_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE", "BAD_CERTIFICATE", "UNKNOWN_CA",
                "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR", "ACCESS_DENIED")


def probe(url: str, tls: TlsOptions | None = None) -> Probe | None:
    """Handshake with ``url`` (HOST:PORT) without verifying its certificate, offering ``tls``'s client certificate
    if any, and read briefly: a server that wants a (different) client certificate says so with an alert, with TLS
    1.3 only after the handshake. None when the port does not answer at all."""
    host, _, port = url.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    if tls is not None and tls.cert is not None:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    try:
        raw = socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S)
    except (OSError, ValueError):
        return None
    with raw:
        try:
            with context.wrap_socket(raw, server_hostname=host.strip("[]")) as conn:
                http2 = conn.selected_alpn_protocol() == "h2"
                try:
                    conn.settimeout(0.5)
                    # gRPC sends its SETTINGS frame at once to a client it accepts. One it refuses (no client
                    # certificate, or one from another CA) sees the socket closed after a TLS 1.3 handshake, or
                    # an alert from other servers.
                    if conn.recv(1) == b"":
                        return _refusal(tls, http2)
                except ssl.SSLError:
                    return _refusal(tls, http2)
                except (TimeoutError, OSError):
                    pass  # an HTTP/1.1 gateway waits for the request
                return Probe(tls=True, http2=http2)
        except ssl.SSLError as exc:
            if any(alert in str(exc).upper() for alert in _CERT_ALERTS):  # TLS 1.2 refuses in the handshake
                return _refusal(tls, False)
            return Probe(tls=False)  # EOF, a reset or a non-TLS answer: a plaintext port
        except OSError:
            return Probe(tls=False)


def _refusal(tls: TlsOptions | None, http2: bool) -> Probe:
    sent_cert = tls is not None and tls.cert is not None
    return Probe(tls=True, http2=http2, wants_client_cert=not sent_cert, refused_cert=sent_cert)
