"""Every error a user can cause, in one hierarchy, and the one table of the exit codes they map to.

Each exception renders as one line that names the problem and, where there is one, the flag or file to fix. The
CLI prints ``str(error)`` on stderr and exits with ``error.exit_code``; a traceback only appears with ``--debug``.

The classes live beside the code that raises them (``clients/errors.py``, ``loadtests/slo.py``, ...); their codes
live only in ``EXIT_CODES`` below, one code per class. Defining a ``TritonDeployError`` subclass that is not in the
table fails at import, so a new error cannot ship without its own code (and the README's table, which a test checks).
"""

from __future__ import annotations

# class name -> (exit code, what it means). Codes 1-19 core, 20-29 optimisation, 30-39 clients, 40-49 evaluation,
# 50-59 transport security.
EXIT_CODES: dict[str, tuple[int, str]] = {
    "TritonDeployError": (1, "any other failure"),
    "UsageError": (2, "a flag value that cannot work"),
    "OutputExistsError": (3, "the output directory exists and --force was not given"),
    "ModelSourceError": (4, "the model to export is missing, unreadable or not an image classifier"),
    "ConversionError": (5, "tf2onnx failed, or its graph fails the ONNX checker or shape inference"),
    "ParityError": (6, "ONNX Runtime disagrees with TensorFlow beyond the tolerance"),
    "ManifestError": (7, "an export directory's manifest.json is missing, malformed or of another version"),
    "RepositoryError": (8, "a model repository would be inconsistent"),
    "ServerError": (9, "Triton could not start, did not get ready, or a stub died"),
    "ClientError": (10, "a request to Triton failed (a cause not listed below)"),
    "SLOViolation": (11, "a load test broke a service-level objective"),
    "LoadTestError": (12, "Locust could not run, or the run produced no statistics"),
    "DemoError": (13, "a step of the demo failed"),
    "ChanceAccuracyError": (14, "export: accuracy no better than guessing (usually the wrong --scale)"),
    "TFLiteError": (15, "TFLite conversion failed, or a TFLite file cannot be loaded or fails validation"),
    "QuantizationError": (20, "a rewrite (onnxslim, float16, ONNX Runtime quantisation) failed"),
    "TensorRTCompatibilityError": (21, "the ONNX graph cannot be built into a TensorRT plan as it is"),
    "GateError": (22, "no optimised variant passed the accuracy gate, nothing to publish"),
    "PruneError": (23, "the model cannot be pruned (nothing prunable, or not a Keras functional model)"),
    "ServerUnavailableError": (30, "nothing answers at the URL, or the server is unavailable (after retries)"),
    "ModelNotFoundError": (31, "the server does not know the model, or it never became ready"),
    "ModelMismatchError": (32, "the model is not an image classifier this client can drive"),
    "InvalidInputError": (33, "an argument the client cannot use"),
    "RequestTooLargeError": (34, "the server refused a request for its size"),
    "RequestTimeoutError": (35, "no answer within the client's timeout"),
    "InferenceError": (36, "any other error the server reported for an inference request"),
    "IncompleteRunError": (37, "classify: some images could not be classified (each is named on stderr)"),
    "ImageError": (38, "one input image could not be classified"),
    "ClassificationError": (39, "classify() in Python: some images failed"),
    "AccuracyGateError": (40, "evaluate: the model's accuracy is below --min-accuracy (the report is written)"),
    "DatasetError": (41, "evaluate: DATA_DIR is missing, holds no images, or has a folder that matches no label"),
    "TlsError": (50, "TLS failed: untrusted or misnamed certificate, TLS on one side only, client certificate "
                     "missing or refused"),
}


class TritonDeployError(Exception):
    """Base class. ``hint`` names what to change (a flag, a file), ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_CODES["TritonDeployError"][0]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__ not in EXIT_CODES:
            raise TypeError(f"{cls.__module__}.{cls.__name__} has no exit code: add it to EXIT_CODES in "
                            "triton_deploy/errors.py (and to the README's table)")
        cls.exit_code = EXIT_CODES[cls.__name__][0]

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(TritonDeployError):
    """A flag value that cannot work, e.g. an unknown architecture name."""


Problem = tuple[str, str]  # (what is wrong, the flag or file to fix)


def unknown_choice(what: str, value: object, flag: str, choices: tuple[str, ...]) -> Problem:
    """The problem of a value outside a fixed set, naming the flag and what it takes."""
    return f"unknown {what} {value!r}", f"{flag} takes {'|'.join(choices)}"


def raise_problems(problems: list[Problem]) -> None:
    """How every options object validates: collect every problem, then raise one ``UsageError`` (the first problem
    with its hint, the others after "also:"), so a user fixes all their flags in one go."""
    if problems:
        message, hint = problems[0]
        if len(problems) > 1:
            message += "; also: " + "; ".join(m for m, _ in problems[1:])
        raise UsageError(message, hint=hint)


class OutputExistsError(TritonDeployError):
    """The output directory exists and ``--force`` was not given."""


class ModelSourceError(TritonDeployError):
    """The model to export is missing, unreadable, or not a single-input image classifier."""


class ConversionError(TritonDeployError):
    """tf2onnx failed, or the ONNX graph it produced fails the checker or shape inference."""


class ParityError(TritonDeployError):
    """ONNX Runtime disagrees with TensorFlow beyond the tolerance; the message carries the numbers."""


class ChanceAccuracyError(TritonDeployError):
    """A model whose measured accuracy is no better than guessing: usually the wrong preprocessing."""


class ManifestError(TritonDeployError):
    """An export directory whose ``manifest.json`` is missing, malformed, or of an unsupported version."""


class RepositoryError(TritonDeployError):
    """A model repository that would be inconsistent (configs Triton would reject, ensemble wiring mismatches)."""


class ServerError(TritonDeployError):
    """The Triton server could not be started, did not become ready, or a model failed to load."""


class ClientError(TritonDeployError):
    """A request to a Triton server failed; subclasses in ``triton_deploy.clients`` say how."""

    # Set by ``clients.errors.translate`` on errors it makes from a transport's exception (absent otherwise).
    server_message: str
    status: str


class GateError(TritonDeployError):
    """No variant could be published (e.g. ``--publish`` while every variant failed the accuracy gate)."""
