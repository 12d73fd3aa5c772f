"""TensorRT readiness of the trained digits export: its compatibility check, its trtexec command and its GPU config
parsed with Triton's own protobuf schema. (The rules on hand-built graphs are in tests/unit/test_tensorrt.py.)"""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_deploy.cli import main
from triton_deploy.optimize import tensorrt
from triton_deploy.repository.render import TensorRTAccelerator, gpu_classifier_config
from triton_deploy.spec import Manifest


@pytest.mark.slow
def test_digits_export_is_compatible_and_its_gpu_config_parses(digits_export):
    report, command = tensorrt.check_export(digits_export, tensorrt.PlanOptions(max_batch_size=8))
    config_text = gpu_classifier_config(Manifest.read(digits_export), TensorRTAccelerator(), max_batch_size=8)
    assert report.compatible, report.problems
    assert report.inputs == {"image": [None, 64, 64, 1]}
    assert "--maxShapes=image:8x64x64x1" in command
    config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP16"


@pytest.mark.slow
def test_tensorrt_check_command_prints_the_plan_command(digits_export, capsys):
    assert main(["tensorrt-check", str(digits_export), "--max-batch-size", "16", "--precision", "int8"]) == 0
    out = capsys.readouterr().out
    assert "compatible" in out and "--maxShapes=image:16x64x64x1" in out and "--calib=calibration.cache" in out
    assert 'value: "INT8"' in out
