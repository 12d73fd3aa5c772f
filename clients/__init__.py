"""Python clients for applications: classify images with a Triton-served classifier over HTTP or gRPC.

    from triton_deploy.clients import ImageClassifier

    with ImageClassifier("127.0.0.1:8000", model="digits") as client:
        print(client.classify("digit.png")[0].label)

``AsyncImageClassifier`` offers the same API as coroutines. Errors are ``triton_deploy.errors.ClientError``
subclasses from ``triton_deploy.clients.errors``.
"""

from .aio import AsyncImageClassifier
from .classifier import ImageClassifier
from .errors import (ClassificationError, ImageError, InferenceError, InvalidInputError, ModelMismatchError,
                     ModelNotFoundError, RequestTimeoutError, RequestTooLargeError, ServerUnavailableError)
from .results import Outcome, Prediction, Rank
from .transport import TlsOptions

__all__ = ["AsyncImageClassifier", "ClassificationError", "ImageClassifier", "ImageError", "InferenceError",
           "InvalidInputError", "ModelMismatchError", "ModelNotFoundError", "Outcome", "Prediction", "Rank",
           "RequestTimeoutError", "RequestTooLargeError", "ServerUnavailableError", "TlsOptions"]
