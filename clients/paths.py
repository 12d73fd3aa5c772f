"""Command-line PATH arguments -> the image files to classify: files as given, directories searched recursively for
image files, glob patterns (``**`` included) expanded. Order is stable: arguments in order, each expanded sorted. A
file reached by several arguments (``DIR`` and ``'DIR/**/*.png'``) is classified once, where it first appears."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from triton_deploy.contract import IMAGE_SUFFIXES


def expand_paths(arguments: Sequence[str]) -> list[str]:
    """Files named explicitly are kept whatever their suffix (and even when missing, so their error is reported by
    name); directories and globs contribute image files only."""
    files: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files += sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif not path.exists() and glob.has_magic(argument):
            files += sorted(m for m in glob.glob(argument, recursive=True) if Path(m).is_file())
        else:
            files.append(argument)
    seen: set[str] = set()
    unique = []
    for file in files:
        key = os.path.abspath(file)  # 'd/a.png' and './d/a.png' are one file; a symlink stays its own input
        if key not in seen:
            seen.add(key)
            unique.append(file)
    return unique
