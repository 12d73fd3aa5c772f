"""Load TensorFlow, Keras and tf2onnx without the start-up notices a user cannot act on.

Importing TensorFlow 2.21 writes, from C++ and straight to file descriptor 2, "WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR" and a oneDNN notice (twice each); ``TF_CPP_MIN_LOG_LEVEL``
does not stop either. tf2onnx then triggers TensorFlow's Python deprecation warnings ("convert_variables_to_constants
... is deprecated", "Instructions for updating: ..."). None of it is about the user's model. So the import runs with
descriptor 2 captured, the lines known to be such notices are dropped and anything else is written back; afterwards
the Python loggers of TensorFlow, absl and tf2onnx pass errors only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOTICES = re.compile("|".join((
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions",
    r"Could not find cuda drivers",
    r"TF-TRT Warning",
    r"failed call to cuInit",
)))

_done = False


def load_tensorflow() -> None:
    """Import TensorFlow, Keras and tf2onnx once, quietly (see the module docstring). Idempotent."""
    global _done
    if _done:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    captured: list[str] = []
    if "tensorflow" not in sys.modules:
        with _descriptor_2_captured(captured):
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
            with contextlib.suppress(ImportError):
                import tf2onnx  # noqa: F401
    for line in "".join(captured).splitlines(keepends=True):
        if not NOTICES.search(line):
            sys.stderr.write(line)
    for name in ("tensorflow", "tf2onnx", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging  # TensorFlow's own logging library, loaded with it above

        absl_logging.set_verbosity(absl_logging.ERROR)
    _done = True


@contextlib.contextmanager
def _descriptor_2_captured(into: list[str]) -> Iterator[None]:
    """Point file descriptor 2 at a temporary file for the block (C++ writes there, not to ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            into.append(sink.read().decode("utf-8", errors="replace"))
