"""Translating what tritonclient, gRPC, gevent or aiohttp raise into the project's client errors.

The error types (one per cause, all ``ClientError`` subclasses, each keeping the server's own message in
``server_message`` where there was one) are defined in ``triton_deploy.errors`` and re-exported here. ``translate``
turns a transport's exception into one of them, so callers never have to know which transport they are on.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket

from triton_deploy.errors import (
    AccuracyGateError,
    ClassificationError,
    ClientError,
    DatasetError,
    ImageError,
    IncompleteRunError,
    InferenceError,
    InvalidInputError,
    ModelMismatchError,
    ModelNotFoundError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServerUnavailableError,
    TlsError,
)

from .tls import TlsOptions, probe

# The error classes live in triton_deploy.errors; re-exported here so older imports keep working.
__all__ = [
    "AccuracyGateError", "ClassificationError", "ClientError", "DatasetError", "ImageError",
    "IncompleteRunError", "InferenceError", "InvalidInputError", "ModelMismatchError", "ModelNotFoundError",
    "RequestTimeoutError", "RequestTooLargeError", "ServerUnavailableError", "TlsError", "is_connection_failure",
    "is_refused", "is_restricted", "is_timeout", "server_message", "status_of", "translate",
]

# ---- translation of transport errors ---------------------------------------------------------------------------

_GRPC_CODE = re.compile(r"StatusCode\.(\w+)")
_BATCH_LIMIT = re.compile(r"batch-size must be <= (\d+)")
_UNSERVED_VERSION = re.compile(r"unknown model: '[^']*' version (\d+)")  # Triton 2.51's words, HTTP and gRPC


def status_of(exc: BaseException) -> str:
    """A transport-neutral status name: 'UNAVAILABLE', 'NOT_FOUND', 'INVALID_ARGUMENT', ... or '' if unknown."""
    # tritonclient (gRPC/aiohttp/gevent underneath): loaded when a server is called, not at start-up
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        match = _GRPC_CODE.search(status)
        if match:
            return match.group(1)
        return {"400": "INVALID_ARGUMENT", "403": "PERMISSION_DENIED", "404": "NOT_FOUND", "413": "TOO_LARGE",
                "500": "INTERNAL", "503": "UNAVAILABLE", "504": "DEADLINE_EXCEEDED"}.get(status, status)
    return ""


def server_message(exc: BaseException) -> str:
    # tritonclient (gRPC/aiohttp/gevent underneath): loaded when a server is called, not at start-up
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        return str(exc.message() or "").strip()
    return str(exc).strip() or type(exc).__name__


def is_restricted(exc: BaseException) -> bool:
    """Triton's answer to an admin API called without the admin key (HTTP 403, gRPC UNAVAILABLE + 'restricted')."""
    return status_of(exc) in ("PERMISSION_DENIED", "UNAVAILABLE") and "restricted" in server_message(exc)


def is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, asyncio.TimeoutError, socket.timeout)) or \
        status_of(exc) == "DEADLINE_EXCEEDED" or type(exc).__name__ in ("ServerTimeoutError", "Timeout")


def is_connection_failure(exc: BaseException) -> bool:
    try:
        import aiohttp
        aiohttp_errors: tuple = (aiohttp.ClientConnectionError,)
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        aiohttp_errors = ()
    try:  # what a sync HTTP client sees when a stopping server closes its connection
        from geventhttpclient.response import HTTPConnectionClosed
        closed: tuple = (HTTPConnectionClosed,)
    except ImportError:  # pragma: no cover - geventhttpclient comes with tritonclient[http]
        closed = ()
    if is_timeout(exc):
        return False
    return isinstance(exc, (ConnectionError, OSError, *aiohttp_errors, *closed)) or \
        (status_of(exc) == "UNAVAILABLE" and not is_restricted(exc))


def is_refused(exc: BaseException) -> bool:
    """Nothing listens at the address: the operating system refused the connection (any transport)."""
    return isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED or \
        "Connection refused" in server_message(exc)


# What each client sees on the other protocol's port. HTTP/1 parsers (geventhttpclient, aiohttp) read gRPC's
# HTTP/2 frames as a bad status line; gRPC cannot set up HTTP/2 with Triton's HTTP server, which closes the socket.
_HTTP_ON_GRPC_PORT = re.compile(r"Expected HTTP/")
_GRPC_ON_HTTP_PORT = re.compile(r"failed to connect to all addresses.*(Socket closed|http1\.x server)")


def _protocol_mismatch(message: str, url: str) -> ServerUnavailableError | None:
    if _HTTP_ON_GRPC_PORT.search(message):
        return ServerUnavailableError(f"{url} answered an HTTP/1.1 request with HTTP/2 frames: it looks like "
                                      "Triton's gRPC port, not its HTTP port",
                                      hint="use --protocol grpc with this port, or the HTTP port: 8000 by default",
                                      no_server=True)
    if _GRPC_ON_HTTP_PORT.search(message):
        return ServerUnavailableError(f"{url} accepts connections but closes them without speaking gRPC: it looks "
                                      "like Triton's HTTP port, not its gRPC port",
                                      hint="use --protocol http with this port, or the gRPC port: 8001 by default",
                                      no_server=True)
    return None


def translate(exc: BaseException, *, url: str, model: str, protocol: str = "", tls: TlsOptions | None = None,
              ) -> ClientError:
    """The typed error for a failed call to ``model`` at ``url`` by a ``protocol`` client with TLS settings ``tls``
    (None: plaintext); keeps ``server_message`` and ``status``."""
    if isinstance(exc, ClientError):
        return exc
    error = _tls_problem(exc, url, protocol, tls) or _typed(exc, url, model)
    error.server_message, error.status = server_message(exc), status_of(exc)
    return error


# What the transports say when TLS verification fails (gRPC's core, then Python's ssl for both HTTP clients).
_HOSTNAME_MISMATCH = re.compile(r"Hostname Verification Check failed|Hostname mismatch|IP address mismatch")
_UNTRUSTED = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed", re.I)
TLS_FLAGS = "--tls-ca/--tls-cert/--tls-key"


def _tls_problem(exc: BaseException, url: str, protocol: str, tls: TlsOptions | None) -> TlsError | None:
    """A ``TlsError`` naming the real problem, or None when TLS is not the cause. Verification failures say what
    they are; a connection closed without a word (gRPC's "Socket closed", a dropped HTTP connection, an EOF in the
    handshake) is explained by a TLS handshake with the port (``tls.probe``)."""
    message = server_message(exc)
    host = url.rpartition(":")[0]
    if _HOSTNAME_MISMATCH.search(message):
        return TlsError(f"the certificate of {url} does not name '{host}' (hostname mismatch)",
                        hint="connect to a name or address the server certificate lists (--url), or reissue the "
                             "certificate with this one")
    if _UNTRUSTED.search(message):
        trusted = f"the CA in --tls-ca {tls.ca}" if tls is not None and tls.ca else "the system's root certificates"
        return TlsError(f"{url} presented a certificate that {trusted} did not sign (untrusted certificate)",
                        hint="pass --tls-ca with the CA certificate that signed the server's certificate")
    if is_timeout(exc) or not is_connection_failure(exc) or is_refused(exc):
        return None
    found = probe(url, tls)
    if found is None:
        return None
    if tls is None and found.tls:
        if found.http2 and protocol == "http":
            return TlsError(f"{url} speaks TLS with HTTP/2 (Triton's gRPC port with TLS) and this client sent plaintext "
                            "HTTP/1.1", hint="the server speaks TLS: pass --tls-ca with the CA that signed its "
                                             "certificate, and use --protocol grpc")
        return TlsError(f"{url} speaks TLS and this client sent plaintext",
                        hint="the server speaks TLS: pass --tls-ca with the CA that signed its certificate")
    if tls is not None and not found.tls:
        return TlsError(f"{url} does not speak TLS (a plaintext port), and this client asked for TLS",
                        hint=f"drop {TLS_FLAGS} for this port, or use the server's TLS port: 'serve --tls-cert' "
                             "serves gRPC with TLS, HTTPS needs a gateway")
    if tls is not None and found.wants_client_cert:
        return TlsError(f"{url} requires a client certificate (mutual TLS) and this client sent none",
                        hint="pass --tls-cert and --tls-key with a certificate signed by the CA the server trusts")
    if tls is not None and found.refused_cert:
        return TlsError(f"{url} refused the client certificate --tls-cert {tls.cert} (mutual TLS): it is not signed "
                        "by a CA the server trusts", hint="use a certificate signed by the server's --tls-ca")
    if tls is not None and found.http2 and protocol == "http":
        return TlsError(f"{url} speaks TLS with HTTP/2: it looks like Triton's gRPC port, not an HTTPS gateway",
                        hint="use --protocol grpc with this port")
    return None


def _typed(exc: BaseException, url: str, model: str) -> ClientError:
    message = server_message(exc)
    status = status_of(exc)
    if is_timeout(exc):
        return RequestTimeoutError(f"no answer from {url} for '{model}' within the timeout ({message})",
                                   hint="raise --timeout / timeout=")
    mismatch = _protocol_mismatch(message, url)
    if mismatch is not None:
        return mismatch
    if is_restricted(exc):
        return ClientError(f"the server at {url} keeps this API for callers with its admin key: {message}",
                           hint="pass --admin-key / admin_key= (a local serve records a random one in the "
                                "\"admin_key\" field of its state file)")
    if is_connection_failure(exc) and is_refused(exc):
        return ServerUnavailableError(f"nothing listens at {url} (connection refused): {message}",
                                      hint="check --url and --protocol, and that the server is running; Triton's "
                                           "default ports are 8000 for HTTP, 8001 for gRPC", no_server=True)
    if is_connection_failure(exc):
        return ServerUnavailableError(f"cannot reach a Triton server at {url}: {message}",
                                      hint="check --url and that the server is running and ready")
    version = _UNSERVED_VERSION.search(message)
    if status == "NOT_FOUND" and version:  # the model exists; its version policy does not serve this version
        return ModelNotFoundError(
            f"the server at {url} does not serve version {version.group(1)} of '{model}': {message}",
            hint="the version policy in the model's config.pbtxt picks the versions served (repo --version-policy, "
                 "e.g. all or specific:1,2); check --model-version, or leave it out for the latest")
    if status == "NOT_FOUND":
        return ModelNotFoundError(f"the server at {url} has no model '{model}': {message}", hint="check --model")
    if _BATCH_LIMIT.search(message) or status == "TOO_LARGE" or "exceeds" in message and "size" in message:
        return RequestTooLargeError(f"'{model}' refused the request as too large: {message}",
                                    hint="lower --batch-size / batch_size=")
    return InferenceError(f"'{model}' at {url} failed: {message}" + (f" [{status}]" if status else ""))
