"""What can go wrong between an application and a Triton server, one exception type per cause.

Every type derives from ``triton_deploy.errors.ClientError``, renders as one line and keeps the server's own message
(``server_message``) where there was one. ``translate`` turns whatever tritonclient, gRPC, gevent or aiohttp raised
into one of these, so callers never have to know which transport they are on.
"""

from __future__ import annotations

import asyncio
import re
import socket

from triton_deploy.errors import ClientError


class ServerUnavailableError(ClientError):
    """Nothing answers at the URL, the connection broke, or the server said 503/UNAVAILABLE (after retries)."""


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
