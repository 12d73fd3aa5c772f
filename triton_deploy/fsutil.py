"""Write output directories atomically: readers see the old directory or the complete new one, never a half."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError


def check_output_dir(path: Path, *, force: bool, flag: str = "--output") -> None:
    """Refuse to replace an existing, non-empty directory unless ``force`` is set."""
    if path.exists() and not force:
        if path.is_dir() and not any(path.iterdir()):
            return
        raise OutputExistsError(f"output directory {path} already exists", hint=f"choose another {flag} or pass --force")


@contextlib.contextmanager
def atomic_directory(path: Path, *, force: bool = False, flag: str = "--output") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; on success it replaces ``path`` in one rename.

    On any exception the temporary directory is removed and ``path`` is left exactly as it was.
    """
    path = Path(path).absolute()
    check_output_dir(path, force=force, flag=flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, path)


def replace_directory(staging: Path, path: Path) -> None:
    """Move ``staging`` to ``path``; an existing ``path`` is moved aside first and deleted only afterwards."""
    os.chmod(staging, 0o755)  # mkdtemp makes it 0700
    backup = None
    if path.exists():
        backup = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(backup, ignore_errors=True)
        path.rename(backup)
    try:
        staging.rename(path)
    except BaseException:
        if backup is not None:
            backup.rename(path)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
