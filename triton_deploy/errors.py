"""Every error a user can cause, in one hierarchy in this one module, each class with its own exit code.

Each exception renders as one line that names the problem and, where there is one, the flag or file to fix. The
CLI prints ``str(error)`` on stderr and exits with ``error.exit_code``; a traceback only appears with ``--debug``.

Every ``TritonDeployError`` subclass is defined here and states its ``exit_code`` and what the code ``means`` as class
attributes; one that does not fails at import. ``EXIT_CODES`` is derived from the classes (the exit-code table in
docs/cli.md is generated from it by scripts/gen_docs.py and checked by a test). The packages' own modules keep only what turns a third-party exception into
one of these (``clients/errors.py``'s ``translate``) and re-export the classes they used to define, so older imports
such as ``from triton_deploy.clients.errors import ModelNotFoundError`` keep working.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TritonDeployError(Exception):
    """Base class. ``hint`` names what to change (a flag, a file), ``exit_code`` is what the CLI returns."""

    exit_code: ClassVar[int] = 1
    means: ClassVar[str] = "any other failure"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "exit_code" not in cls.__dict__ or "means" not in cls.__dict__:
            raise TypeError(f"{cls.__module__}.{cls.__name__} has no exit code of its own: define it in "
                            "triton_deploy/errors.py with `exit_code` and `means` class attributes")

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


Problem = tuple[str, str]  # (what is wrong, the flag or file to fix)


def unknown_choice(what: str, value: object, flag: str, choices: tuple[str, ...]) -> Problem:
    """The problem of a value outside a fixed set, naming the flag and what it takes."""
    return f"unknown {what} {value!r}", f"{flag} takes {'|'.join(choices)}"


def raise_problems(problems: list[Problem], error: type[TritonDeployError] | None = None) -> None:
    """How every options object validates: collect every problem, then raise one error (the first problem with its
    hint, the others after "also:"), so a user fixes all their flags in one go. ``error`` is the class to raise,
    ``UsageError`` by default (the client library's options raise ``InvalidInputError``, exit code 33).

    The pattern every options class follows (``tests/unit/test_options_rule.py`` checks it): ``check()`` collects
    the problems (from ``problems()``, which returns them without raising, where a class has one) and passes them
    here; the command's core function calls ``check()`` before any work; nothing validates in ``__post_init__``."""
    if problems:
        message, hint = problems[0]
        if len(problems) > 1:
            message += "; also: " + "; ".join(m for m, _ in problems[1:])
        raise (error or UsageError)(message, hint=hint)


# ---- core: codes 1-19 -------------------------------------------------------------------------------------------


class UsageError(TritonDeployError):
    """A flag value that cannot work, e.g. an unknown architecture name."""

    exit_code, means = 2, "a flag value that cannot work"


class OutputExistsError(TritonDeployError):
    """The output directory exists and ``--force`` was not given."""

    exit_code, means = 3, "the output directory exists and --force was not given"


class ModelSourceError(TritonDeployError):
    """The model to export is missing, unreadable, or not a single-input image classifier."""

    exit_code, means = 4, "the model to export is missing, unreadable or not an image classifier"


class ConversionError(TritonDeployError):
    """tf2onnx failed, or the ONNX graph it produced fails the checker or shape inference."""

    exit_code, means = 5, "tf2onnx failed, or its graph fails the ONNX checker or shape inference"


class ParityError(TritonDeployError):
    """ONNX Runtime disagrees with TensorFlow beyond the tolerance; the message carries the numbers."""

    exit_code, means = 6, "ONNX Runtime disagrees with TensorFlow beyond the tolerance"


class ManifestError(TritonDeployError):
    """An export directory whose ``manifest.json`` is missing, malformed, or of an unsupported version."""

    exit_code, means = 7, "an export directory's manifest.json is missing, malformed or of another version"


class RepositoryError(TritonDeployError):
    """A model repository that would be inconsistent (configs Triton would reject, ensemble wiring mismatches)."""

    exit_code, means = 8, "a model repository would be inconsistent"


class ServerError(TritonDeployError):
    """The Triton server could not be started, did not become ready, or a model failed to load."""

    exit_code, means = 9, "Triton could not start, did not get ready, or a stub died"


class ClientError(TritonDeployError):
    """A request to a Triton server failed; the subclasses below say how."""

    exit_code, means = 10, "a request to Triton failed (a cause not listed below)"
    # Set by ``clients.errors.translate`` on errors it makes from a transport's exception (absent otherwise).
    server_message: str
    status: str


class SLOViolation(TritonDeployError):
    """A load test finished but broke one or more service-level objectives. ``result`` (a ``LoadTestResult``) is
    set by the runner, so the CLI still prints the table and the folder."""

    exit_code, means = 11, "a load test broke a service-level objective"
    result: Any = None


class LoadTestError(TritonDeployError):
    """Locust could not run, or the run produced no statistics."""

    exit_code, means = 12, "Locust could not run, or the run produced no statistics"


class DemoError(TritonDeployError):
    """A demo step that should not fail did."""

    exit_code, means = 13, "a step of the demo failed"


class ChanceAccuracyError(TritonDeployError):
    """A model whose measured accuracy is no better than guessing: usually the wrong preprocessing."""

    exit_code, means = 14, "export: accuracy no better than guessing (usually the wrong --scale)"


class TFLiteError(TritonDeployError):
    """Conversion to TFLite failed, or a TFLite file cannot be loaded or run."""

    exit_code, means = 15, "TFLite conversion failed, or a TFLite file cannot be loaded or fails validation"


class LatencyBudgetError(TritonDeployError):
    """tune: no configuration kept p99 within the budget at every concurrency."""

    exit_code, means = 16, "tune: no configuration met the --p99-ms budget (the best p99 reached is named)"


# ---- optimisation: codes 20-29 -----------------------------------------------------------------------------------


class QuantizationError(TritonDeployError):
    """A rewrite (onnxslim, float16, ONNX Runtime quantisation) failed on this model."""

    exit_code, means = 20, "a rewrite (onnxslim, float16, ONNX Runtime quantisation) failed"


class TensorRTCompatibilityError(TritonDeployError):
    """The ONNX graph cannot be built into a TensorRT plan as it is; the message lists every problem."""

    exit_code, means = 21, "the ONNX graph cannot be built into a TensorRT plan as it is"


class GateError(TritonDeployError):
    """No variant could be published (e.g. ``--publish`` while every variant failed the accuracy gate)."""

    exit_code, means = 22, "no optimised variant passed the accuracy gate, nothing to publish"


class PruneError(TritonDeployError):
    """The model cannot be pruned (nothing prunable, or not a Keras functional / Sequential model)."""

    exit_code, means = 23, "the model cannot be pruned (nothing prunable, or not a Keras functional model)"


class VariantsFailedError(TritonDeployError):
    """optimize: some variants could not be built or failed their own validation; the rest was written."""

    exit_code, means = 24, ("optimize: some variants could not be built or failed their own validation (each is "
                            "marked failed in the report); the others are written and published")


# ---- clients: codes 30-39 (``clients/errors.py`` translates transport exceptions into these) -----------------------


class ServerUnavailableError(ClientError):
    """Nothing answers at the URL, the connection broke, or the server said 503/UNAVAILABLE (after retries).

    ``no_server`` is set when no server of the client's protocol is at the URL at all (connection refused, or the
    other protocol answers: an HTTP client on Triton's gRPC port or the reverse): waiting for readiness cannot help
    there, so ``wait_ready`` gives up after the retries instead of the whole ready timeout."""

    exit_code, means = 30, "nothing answers at the URL, or the server is unavailable (after retries)"

    def __init__(self, message: str, *, hint: str | None = None, no_server: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.no_server = no_server


class TlsError(ServerUnavailableError):
    """TLS between the client and the server failed: a certificate the client does not trust or that names another
    host, TLS on one side only, or a client certificate missing or refused under mutual TLS."""

    exit_code, means = 50, ("TLS failed: untrusted or misnamed certificate, TLS on one side only, client certificate "
                            "missing or refused")

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, no_server=True)  # waiting for readiness cannot mend it


class ModelNotFoundError(ClientError):
    """The server does not know the model, or it never became ready."""

    exit_code, means = 31, "the server does not know the model, or it never became ready"


class ModelMismatchError(ClientError):
    """The model exists but is not an image classifier this client can drive (tensor names, kinds, shapes)."""

    exit_code, means = 32, "the model is not an image classifier this client can drive"


class InvalidInputError(ClientError):
    """An argument the client cannot use: an input of an unsupported kind, a top-k above what the model returns."""

    exit_code, means = 33, "an argument the client cannot use"


class RequestTooLargeError(ClientError):
    """The server refused a request for its size (batch above the model's max batch size, body above the cap)."""

    exit_code, means = 34, "the server refused a request for its size"


class RequestTimeoutError(ClientError):
    """No answer within the client's timeout."""

    exit_code, means = 35, "no answer within the client's timeout"


class InferenceError(ClientError):
    """Any other error the server reported for an inference request."""

    exit_code, means = 36, "any other error the server reported for an inference request"


class IncompleteRunError(ClientError):
    """The ``classify`` command classified some images but not all (each failure was reported by name)."""

    exit_code, means = 37, "classify: some images could not be classified (each is named on stderr)"


class ImageError(ClientError):
    """One input image could not be classified (unreadable file, not an image, rejected by the server).
    Carries ``source`` (a path, or ``#i`` for in-memory inputs) and ``index`` in the caller's list."""

    exit_code, means = 38, "one input image could not be classified"

    def __init__(self, source: str, message: str, *, index: int = -1) -> None:
        super().__init__(f"{source}: {message}")
        self.source, self.reason, self.index = source, message, index


class ClassificationError(ClientError):
    """Raised by ``classify`` when some images failed; ``outcomes`` holds every image's result or error, in order."""

    exit_code, means = 39, "classify() in Python: some images failed"

    def __init__(self, outcomes: list) -> None:
        failures = [o for o in outcomes if o.error is not None]
        first = failures[0].error
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(f"{len(failures)} of {len(outcomes)} images could not be classified: {first}{more}",
                         hint="use classify_many() to get the good results with per-image errors")
        self.outcomes = outcomes
        self.failures = failures


# ---- evaluation: codes 40-49 -------------------------------------------------------------------------------------


class AccuracyGateError(ClientError):
    """``evaluate --min-accuracy``: the model scored below the gate (the report is written all the same and
    ``evaluation`` holds it)."""

    exit_code, means = 40, "evaluate: the model's accuracy is below --min-accuracy (the report is written)"

    def __init__(self, message: str, *, evaluation=None) -> None:
        super().__init__(message, hint="see report.md")
        self.evaluation = evaluation


class DatasetError(ClientError):
    """Labelled images for ``evaluate`` that cannot be used: a missing or empty DATA_DIR, a folder matching no label."""

    exit_code, means = 41, "evaluate: DATA_DIR is missing, holds no images, or has a folder that matches no label"


def error_classes() -> list[type[TritonDeployError]]:
    """Every error class, the base first, then by exit code."""
    found, todo = [], [TritonDeployError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted(found, key=lambda cls: cls.exit_code)


# class name -> (exit code, what it means), derived from the classes: what the README's table and the docs show.
EXIT_CODES: dict[str, tuple[int, str]] = {cls.__name__: (cls.exit_code, cls.means) for cls in error_classes()}
