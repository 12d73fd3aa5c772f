"""Write output directories atomically: readers see the old directory or the complete new one, never a half."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError, UsageError


def check_writable(path: Path, *, flag: str, kind: str = "directory") -> None:
    """Refuse, before any long work, an output ``path`` (a ``kind`` "directory" or "file") that cannot be written:
    one line naming the path, the flag and the system's reason (read-only file system, permission denied, a file
    where a folder is needed). A directory that does not exist yet is checked where it would be created; the check
    writes and removes a temporary file there, which also catches what permission bits do not (a read-only mount,
    a full disk's inode table)."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        _refuse(path, flag, f"{existing} is a file, not a directory")
    if existing == path and kind == "directory" and not path.is_dir():
        _refuse(path, flag, "it is a file, not a directory")
    if existing == path and kind == "file" and path.is_dir():
        _refuse(path, flag, "it is a directory, not a file")
    # an existing directory is replaced through a sibling (atomic_directory): its parent must take writes too
    folders = {existing.parent} if existing == path else {existing}
    if existing.is_dir():
        folders.add(existing)
    try:
        for folder in sorted(folders):
            with tempfile.TemporaryFile(dir=folder):
                pass
        if existing == path and kind == "file":
            with open(path, "ab"):  # appending nothing leaves the file as it was
                pass
    except OSError as exc:
        _refuse(path, flag, exc.strerror or str(exc))


def _refuse(path: Path, flag: str, reason: str) -> None:
    raise UsageError(f"cannot write {flag} {path}: {reason}", hint=f"choose another {flag}")


def check_output_dir(path: Path, *, force: bool, flag: str = "--output") -> None:
    """Refuse to replace an existing, non-empty directory unless ``force`` is set, and a directory that cannot be
    written (``check_writable``)."""
    check_writable(path, flag=flag)
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
