"""scripts/latency_floor.py: the repository copy it writes is the same ensemble with do-nothing python steps, served by
the real Triton; the source repository is left as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from conftest import encode_digit
from triton_deploy.server import ServerOptions, TritonServer, free_ports

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "latency_floor.py"


def floor_copy(source: Path, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(source), str(output)], capture_output=True, text=True,
                          timeout=120)


def test_the_floor_repository_answers_with_zeros_of_the_ensembles_shapes(digits_repository, heldout_digits, tmp_path):
    before = {p: p.read_bytes() for p in digits_repository.rglob("*") if p.is_file()}
    output = tmp_path / "floor"
    done = floor_copy(digits_repository, output)
    assert done.returncode == 0, done.stderr
    assert "digits_classifier, digits_postprocess, digits_preprocess" in done.stdout
    assert {p: p.read_bytes() for p in digits_repository.rglob("*") if p.is_file()} == before
    for step in ("digits_preprocess", "digits_classifier", "digits_postprocess"):
        assert (output / step / "config.pbtxt").read_bytes() == (digits_repository / step / "config.pbtxt").read_bytes()
        assert "Stand-in" in (output / step / "1" / "model.py").read_text(encoding="utf-8")

    http, grpc, metrics = free_ports(3)
    options = ServerOptions(repository=output, http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_s=5)
    images, _ = heldout_digits
    with TritonServer(options):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        request = httpclient.InferInput("IMAGE", [2, 1], "BYTES")
        request.set_data_from_numpy(np.array([[encode_digit(images[0])], [encode_digit(images[1])]], dtype=np.object_))
        result = client.infer("digits", [request])
    assert result.as_numpy("CLASS_IDS").shape == (2, 5) and not result.as_numpy("CLASS_IDS").any()
    assert result.as_numpy("PROBABILITIES").shape == (2, 10) and not result.as_numpy("PROBABILITIES").any()
    assert result.as_numpy("LABELS").tolist() == [[b""] * 5] * 2


def test_an_existing_output_or_a_repository_without_python_steps_is_refused(digits_repository, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    done = floor_copy(digits_repository, taken)
    assert done.returncode != 0 and "exists" in done.stderr
    assert list(taken.iterdir()) == []

    ensemble_only = tmp_path / "ensemble-only"
    (ensemble_only / "digits").mkdir(parents=True)
    (ensemble_only / "digits" / "config.pbtxt").write_bytes((digits_repository / "digits" / "config.pbtxt").read_bytes())
    done = floor_copy(ensemble_only, tmp_path / "out")
    assert done.returncode != 0 and "no python-backend model" in done.stderr
    assert not (tmp_path / "out").exists()
