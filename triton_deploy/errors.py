"""Every error a user can cause, in one hierarchy.

Each exception renders as one line that names the problem and, where there is one, the flag or file to fix. The
CLI prints ``str(error)`` on stderr and exits with ``error.exit_code``; a traceback only appears with ``--debug``.
"""

from __future__ import annotations


class TritonDeployError(Exception):
    """Base class. ``hint`` names what to change (a flag, a file), ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(TritonDeployError):
    """A flag value that cannot work, e.g. an unknown architecture name."""

    exit_code = 2


class OutputExistsError(TritonDeployError):
    """The output directory exists and ``--force`` was not given."""

    exit_code = 3


class ModelSourceError(TritonDeployError):
    """The model to export is missing, unreadable, or not a single-input image classifier."""

    exit_code = 4


class ConversionError(TritonDeployError):
    """tf2onnx failed, or the ONNX graph it produced fails the checker or shape inference."""

    exit_code = 5


class ParityError(TritonDeployError):
    """ONNX Runtime disagrees with TensorFlow beyond the tolerance; the message carries the numbers."""

    exit_code = 6


class ManifestError(TritonDeployError):
    """An export directory whose ``manifest.json`` is missing, malformed, or of an unsupported version."""

    exit_code = 7


class RepositoryError(TritonDeployError):
    """A model repository that would be inconsistent (configs Triton would reject, ensemble wiring mismatches)."""

    exit_code = 8


class ServerError(TritonDeployError):
    """The Triton server could not be started, did not become ready, or a model failed to load."""

    exit_code = 9


class ClientError(TritonDeployError):
    """A request to a Triton server failed; subclasses in ``triton_deploy.clients`` say how."""

    exit_code = 10


class GateError(TritonDeployError):
    """No variant could be published (e.g. ``--publish`` while every variant failed the accuracy gate)."""

    exit_code = 22
