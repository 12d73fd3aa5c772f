"""Locating the ``tritonserver`` the nvidia-pytriton wheel ships and staging the backend directory it needs.

The wheel carries the server binary, its shared libraries and the python backend with one stub per Python version.
``ServerInstallation.discover`` assembles a backend directory from those pieces (once per environment) and knows
which command-line flags this binary supports, read from its own ``--help``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from triton_deploy.errors import ServerError

# Caps the bytes of one HTTP request body. Triton gained it in 2025 (server PR #8174, 64 MiB default); the 2.51
# binary in the nvidia-pytriton wheel does not have it, so it is passed only to a binary whose --help lists it.
HTTP_MAX_INPUT_SIZE_FLAG = "--http-max-input-size"


@dataclass(frozen=True)
class ServerInstallation:
    """Where the server binary, its libraries and the prepared backend directory are."""

    binary: Path
    library_dir: Path
    backend_dir: Path

    @classmethod
    def discover(cls, cache_dir: Path | None = None) -> ServerInstallation:
        try:
            import pytriton
        except ImportError:
            raise ServerError("the nvidia-pytriton package is not installed; it provides the tritonserver binary",
                              hint="run 'make setup'") from None
        root = Path(pytriton.__file__).parent / "tritonserver"
        binary = root / "bin" / "tritonserver"
        library_dir = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
        python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / python_version / "triton_python_backend_stub"
        for required in (binary, stub, root / "backends" / "python" / "libtriton_python.so"):
            if not required.exists():
                raise ServerError(f"{required} is missing from the nvidia-pytriton installation")
        cache = cache_dir or Path(sys.prefix) / "var" / "triton-deploy" / f"backends-py{python_version}"
        backend_dir = cache
        python_dir = backend_dir / "python"
        if not (python_dir / "triton_python_backend_stub").exists():
            staging = backend_dir.with_name(backend_dir.name + f".tmp-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(root / "backends" / "python", staging / "python")
            shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
            shutil.rmtree(backend_dir, ignore_errors=True)
            staging.rename(backend_dir)
        return cls(binary, library_dir, backend_dir)

    @functools.cached_property
    def flags(self) -> frozenset[str]:
        """Every option this binary's ``--help`` lists (read once per installation; empty if it cannot run)."""
        try:
            result = subprocess.run([str(self.binary), "--help"], env=self.environment(), capture_output=True,
                                    text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return frozenset()
        return frozenset(re.findall(r"^\s+(--[a-z0-9][a-z0-9-]*)", result.stdout + result.stderr, flags=re.M))

    @functools.cached_property
    def key_shim(self) -> Path | None:
        """``keyshim.c`` built into a preload library beside the backend directory (once per environment), so the admin
        key reaches Triton without being on its command line; None when no C compiler can build it."""
        library = self.backend_dir.parent / "keyshim.so"
        source = Path(__file__).with_name("keyshim.c")
        if library.exists() and library.stat().st_mtime >= source.stat().st_mtime:
            return library
        compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if compiler is None:
            return None
        staging = library.with_name(f"keyshim.{os.getpid()}.so")
        try:
            subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(staging), str(source)], check=True,
                           capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            staging.unlink(missing_ok=True)
            return None
        staging.replace(library)
        return library

    def supports(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def caps_http_body(self) -> bool:
        """Whether this binary can cap the size of an HTTP request body."""
        return self.supports(HTTP_MAX_INPUT_SIZE_FLAG)

    def environment(self) -> dict[str, str]:
        """os.environ plus the library path for the server and this environment's bin/ first on PATH, so the
        python-backend stub imports numpy, Pillow and onnxruntime from here."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.library_dir), env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
        return env
