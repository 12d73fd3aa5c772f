"""Python clients for applications: classify images with a Triton-served classifier over HTTP or gRPC.

    from triton_deploy.clients import ImageClassifier

    with ImageClassifier("127.0.0.1:8000", model="digits") as client:
        print(client.classify("digit.png")[0].label)

``AsyncImageClassifier`` offers the same API as coroutines. Errors are ``triton_deploy.errors.ClientError``
subclasses from ``triton_deploy.clients.errors``. Names are imported on first use, so ``triton-deploy --help`` does
not pay for tritonclient.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AsyncImageClassifier": "aio", "ImageClassifier": "classifier", "TlsOptions": "tls",
    "Outcome": "results", "Prediction": "results", "Rank": "results",
    **{name: "errors" for name in ("ClassificationError", "ImageError", "InferenceError", "InvalidInputError",
                                   "ModelMismatchError", "ModelNotFoundError", "RequestTimeoutError",
                                   "RequestTooLargeError", "ServerUnavailableError", "TlsError")},
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
