"""The demo's export is reused by the test suite only while it is what the demo recorded, from the sources and
libraries installed now."""

from __future__ import annotations

from conftest import make_export
from triton_deploy import fingerprint


def test_a_recorded_export_matches_until_its_model_changes(tmp_path):
    export = make_export(tmp_path / "digits")
    assert not fingerprint.matches(export)  # nothing recorded yet
    fingerprint.record(export)
    assert fingerprint.fingerprint_file(export) == tmp_path / "digits.fingerprint"
    assert fingerprint.matches(export)
    make_export(tmp_path / "other", seed=1)
    (export / "model.onnx").write_bytes((tmp_path / "other" / "model.onnx").read_bytes())  # exported again by hand
    assert not fingerprint.matches(export)


def test_the_digest_covers_every_package_folder_and_changes_with_a_source(tmp_path, monkeypatch):
    folders = {folder.name for folder in fingerprint._package_dirs()}
    assert folders == {"triton_deploy", "export", "optimize", "clients", "loadtests"}
    before = fingerprint.source_fingerprint()
    assert fingerprint.source_fingerprint() == before
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "module.py").write_text("x = 1\n")
    monkeypatch.setattr(fingerprint, "_package_dirs", lambda: [package])
    one = fingerprint.source_fingerprint()
    (package / "module.py").write_text("x = 2\n")
    assert fingerprint.source_fingerprint() != one
