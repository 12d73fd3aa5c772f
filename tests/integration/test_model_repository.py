"""The committed ``model_repository/`` is exactly what ``triton-deploy repo`` generates for the digits export, so a
reader sees what Triton loads without running anything. Model binaries are git-ignored; everything else must match."""

from __future__ import annotations

from pathlib import Path

import pytest

from triton_deploy.repository.render import RepositoryOptions
from triton_deploy.repository.writer import generate_repository

COMMITTED = Path(__file__).resolve().parents[2] / "model_repository"
BINARIES = {".onnx", ".plan"}
# Written from the trained model's held-out predictions: it changes with every training (not bit-exact on several
# threads) like the weights, so it is git-ignored as they are; the monitoring tests check its content.
TRAINED = {"reference.json"}

pytestmark = pytest.mark.slow


def tree(root: Path) -> dict[str, bytes]:
    """Generated files by relative path; binaries, what training writes and bytecode (a Python run may write it) are
    not compared."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix not in BINARIES and p.name not in TRAINED and "__pycache__" not in p.parts}


def test_committed_repository_has_not_drifted(digits_export, tmp_path):
    fresh = tmp_path / "model_repository"
    generate_repository([digits_export], RepositoryOptions(output=fresh))
    committed, generated = tree(COMMITTED), tree(fresh)
    assert sorted(committed) == sorted(generated), "files differ: run 'make demo' (or triton-deploy repo) and commit"
    drifted = [name for name in generated if committed[name] != generated[name]]
    assert not drifted, f"{drifted} differ from the generator's output: regenerate model_repository/ and commit"
