"""Run mypy on the package as it is installed: triton_deploy with export/, optimize/, clients/ and loadtests/ mapped
into it by pyproject.toml's [tool.setuptools.package-dir].

mypy cannot follow setuptools' editable-install finder, so this lays the installed shape out as symlinks under
build/typecheck/ (read from pyproject.toml, so a new mapped folder is picked up) and checks that tree with the
settings in [tool.mypy]. Error paths read build/typecheck/triton_deploy/<folder>/...: the folder is the source.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def main() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapped = config["tool"]["setuptools"]["package-dir"]  # "triton_deploy.export" -> "export"
    shutil.rmtree(TREE, ignore_errors=True)
    package = TREE / "triton_deploy"
    package.mkdir(parents=True)
    for entry in (ROOT / "triton_deploy").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in mapped.items():
        (TREE / name.replace(".", "/")).symlink_to(ROOT / folder)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "triton_deploy"]
    return subprocess.call(command, cwd=TREE)


if __name__ == "__main__":
    sys.exit(main())
