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
)

# The error classes live in triton_deploy.errors; re-exported here so older imports keep working.
__all__ = [
    "AccuracyGateError", "ClassificationError", "ClientError", "DatasetError", "ImageError",
    "IncompleteRunError", "InferenceError", "InvalidInputError", "ModelMismatchError", "ModelNotFoundError",
    "RequestTimeoutError", "RequestTooLargeError", "ServerUnavailableError", "is_connection_failure",
    "is_refused", "is_restricted", "is_timeout", "server_message", "status_of", "translate",
]

# ---- translation of transport errors ---------------------------------------------------------------------------

_GRPC_CODE = re.compile(r"StatusCode\.(\w+)")
_BATCH_LIMIT = re.compile(r"batch-size must be <= (\d+)")


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


def translate(exc: BaseException, *, url: str, model: str) -> ClientError:
    """The typed error for a failed call to ``model`` at ``url``; keeps ``server_message`` and ``status``."""
    if isinstance(exc, ClientError):
        return exc
    error = _typed(exc, url, model)
    error.server_message, error.status = server_message(exc), status_of(exc)
    return error


def _typed(exc: BaseException, url: str, model: str) -> ClientError:
    message = server_message(exc)
    status = status_of(exc)
    if is_timeout(exc):
        return RequestTimeoutError(f"no answer from {url} for '{model}' within the timeout ({message})",
                                   hint="raise --timeout / timeout=")
    mismatch = _protocol_mismatch(message, url)
    if mismatch is not None:
        return mismatch
    if is_connection_failure(exc) and is_refused(exc):
        return ServerUnavailableError(f"nothing listens at {url} (connection refused): {message}",
                                      hint="check --url and --protocol, and that the server is running; Triton's "
                                           "default ports are 8000 for HTTP, 8001 for gRPC", no_server=True)
    if is_connection_failure(exc):
        return ServerUnavailableError(f"cannot reach a Triton server at {url}: {message}",
                                      hint="check --url and that the server is running and ready")
    if status == "NOT_FOUND":
        return ModelNotFoundError(f"the server at {url} has no model '{model}': {message}", hint="check --model")
    if _BATCH_LIMIT.search(message) or status == "TOO_LARGE" or "exceeds" in message and "size" in message:
        return RequestTooLargeError(f"'{model}' refused the request as too large: {message}",
                                    hint="lower --batch-size / batch_size=")
    return InferenceError(f"'{model}' at {url} failed: {message}" + (f" [{status}]" if status else ""))
