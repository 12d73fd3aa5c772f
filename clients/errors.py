"""What can go wrong between an application and a Triton server, one exception type per cause.

Every type derives from ``triton_deploy.errors.ClientError``, renders as one line and keeps the server's own message
(``server_message``) where there was one. ``translate`` turns whatever tritonclient, gRPC, gevent or aiohttp raised
into one of these, so callers never have to know which transport they are on.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket

from triton_deploy.errors import ClientError


class ServerUnavailableError(ClientError):
    """Nothing answers at the URL, the connection broke, or the server said 503/UNAVAILABLE (after retries).

    ``no_server`` is set when no server of the client's protocol is at the URL at all (connection refused, or the
    other protocol answers: an HTTP client on Triton's gRPC port or the reverse): waiting for readiness cannot help
    there, so ``wait_ready`` gives up after the retries instead of the whole ready timeout."""

    def __init__(self, message: str, *, hint: str | None = None, no_server: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.no_server = no_server


class ModelNotFoundError(ClientError):
    """The server does not know the model, or it never became ready."""


class ModelMismatchError(ClientError):
    """The model exists but is not an image classifier this client can drive (tensor names, kinds, shapes)."""


class InvalidInputError(ClientError):
    """An argument the client cannot use: an input of an unsupported kind, a top-k above what the model returns."""


class RequestTooLargeError(ClientError):
    """The server refused a request for its size (batch above the model's max batch size, body above the cap)."""


class RequestTimeoutError(ClientError):
    """No answer within the client's timeout."""


class InferenceError(ClientError):
    """Any other error the server reported for an inference request."""


class ImageError(ClientError):
    """One input image could not be classified (unreadable file, not an image, rejected by the server).
    Carries ``source`` (a path, or ``#i`` for in-memory inputs) and ``index`` in the caller's list."""

    def __init__(self, source: str, message: str, *, index: int = -1) -> None:
        super().__init__(f"{source}: {message}")
        self.source, self.reason, self.index = source, message, index


class ClassificationError(ClientError):
    """Raised by ``classify`` when some images failed; ``outcomes`` holds every image's result or error, in order."""

    def __init__(self, outcomes: list) -> None:
        failures = [o for o in outcomes if o.error is not None]
        first = failures[0].error
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(f"{len(failures)} of {len(outcomes)} images could not be classified: {first}{more}",
                         hint="use classify_many() to get the good results with per-image errors")
        self.outcomes = outcomes
        self.failures = failures


# ---- translation of transport errors ---------------------------------------------------------------------------

_GRPC_CODE = re.compile(r"StatusCode\.(\w+)")
_BATCH_LIMIT = re.compile(r"batch-size must be <= (\d+)")


def status_of(exc: BaseException) -> str:
    """A transport-neutral status name: 'UNAVAILABLE', 'NOT_FOUND', 'INVALID_ARGUMENT', ... or '' if unknown."""
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
    if status == "NOT_FOUND":
        return ModelNotFoundError(f"the server at {url} has no model '{model}': {message}", hint="check --model")
    if _BATCH_LIMIT.search(message) or status == "TOO_LARGE" or "exceeds" in message and "size" in message:
        return RequestTooLargeError(f"'{model}' refused the request as too large: {message}",
                                    hint="lower --batch-size / batch_size=")
    return InferenceError(f"'{model}' at {url} failed: {message}" + (f" [{status}]" if status else ""))


class IncompleteRunError(ClientError):
    """The ``classify`` command classified some images but not all (each failure was reported by name)."""


class DatasetError(ClientError):
    """Labelled images for ``evaluate`` that cannot be used: a missing or empty DATA_DIR, a folder matching no label."""


class AccuracyGateError(ClientError):
    """``evaluate --min-accuracy``: the model scored below the gate (the report is written all the same and
    ``evaluation`` holds it)."""

    def __init__(self, message: str, *, evaluation=None) -> None:
        super().__init__(message, hint="see report.md")
        self.evaluation = evaluation
