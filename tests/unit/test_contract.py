"""The shared names in ``triton_deploy.contract`` are the ones the copied files use too: the python models that run
inside Triton and the Helm chart's scripts cannot import the package, so they carry the names as literals."""

from __future__ import annotations

from pathlib import Path

from triton_deploy import contract
from triton_deploy.monitoring import model_metrics as mm

ROOT = Path(__file__).resolve().parents[2]
PYTHON_MODELS = ROOT / "triton_deploy" / "repository" / "python_models"
CHART_FILES = ROOT / "helm" / "triton-classifier" / "files"


def test_python_models_read_and_write_the_contract_tensors():
    assert f'INPUT = "{contract.IMAGE}"' in (PYTHON_MODELS / "preprocess.py").read_text()
    postprocess = (PYTHON_MODELS / "postprocess.py").read_text()
    assert all(f'pb_utils.Tensor("{name}"' in postprocess for name in (*contract.OUTPUTS, contract.PROBABILITIES))
    # The tooling mark (the label probe's), looked for by the python models through the copied model_metrics.
    assert mm.TOOLING_PARAMETER == contract.TOOLING_PARAMETER and "mm.traffic_rows(" in postprocess
    assert "mm.traffic_rows(" in (PYTHON_MODELS / "preprocess.py").read_text()
    assert not contract.TOOLING_PARAMETER.startswith("triton_")  # Triton refuses request parameters named so


def test_chart_scripts_use_the_contract_tensors():
    helm_test = (CHART_FILES / "helm_test_inference.py").read_text()
    assert f'EXPECTED_INPUT = "{contract.IMAGE}"' in helm_test
    assert f"EXPECTED_OUTPUTS = {contract.OUTPUTS!r}".replace("'", '"') in helm_test
    assert f'"name": "{contract.IMAGE}"' in (CHART_FILES / "liveness_inference.py").read_text()


def test_image_suffixes_are_lower_case_and_dotted():
    assert all(s.startswith(".") and s == s.lower() for s in contract.IMAGE_SUFFIXES)
    assert {".png", ".jpg", ".jpeg", ".pgm"} <= contract.IMAGE_SUFFIXES
