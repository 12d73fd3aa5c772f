"""TensorRT readiness: the compatibility check on hand-built ONNX graphs (the trained export's check is in
tests/integration/test_tensorrt_integration.py), the trtexec command as text, and the
ONNX Runtime TensorRT-provider config parsed with Triton's own protobuf schema. (TensorRT itself is not installable
here; plans are built on the target GPU.)"""

from __future__ import annotations

import shlex

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

from conftest import make_export  # a tiny export directory: no TensorFlow needed
from triton_deploy.errors import UsageError
from triton_deploy.optimize import tensorrt
from triton_deploy.repository.render import RepositoryOptions, TensorRTAccelerator, gpu_classifier_config
from triton_deploy.spec import Manifest


def _graph(op: str = "Relu", *, domain: str = "", batch="batch", inner=(8,), opset: int = 17) -> onnx.ModelProto:
    """x [batch, *inner] -> op -> y: the smallest graph that exercises each rule."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *inner])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, *inner])
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(helper.make_graph([node], "tiny", [x], [y]), opset_imports=imports)


def test_plain_graph_with_dynamic_batch_is_compatible():
    report = tensorrt.check_model(_graph("Relu"))
    assert report.compatible, report.problems
    assert report.inputs == {"x": [None, 8]} and report.operators == {"Relu": 1}


def test_unsupported_operator_is_reported_by_name():
    report = tensorrt.check_model(_graph("MyCustomGelu", domain="com.example"))
    assert not report.compatible
    assert report.unsupported == {"com.example::MyCustomGelu": 1}
    assert "com.example::MyCustomGelu" in report.problems[0]


def test_integer_convolution_from_dynamic_int8_is_unsupported():
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 1, 2, 2])
    weight = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.uint8), "w")
    node = helper.make_node("ConvInteger", ["x", "w"], ["y"])
    model = helper.make_model(helper.make_graph([node], "conv_integer", [x], [y], [weight]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    report = tensorrt.check_model(model)
    assert report.unsupported == {"ConvInteger": 1}
    assert report.inputs == {"x": [None, 1, 4, 4]}  # the initializer is not listed as an input


def test_fixed_batch_dynamic_inner_dimension_and_opset_are_flagged():
    fixed = tensorrt.check_model(_graph(batch=4))
    assert any("fixed batch dimension 4" in p for p in fixed.problems)
    inner = tensorrt.check_model(_graph(inner=("height", 8)))
    assert any("dynamic inner dimensions at axes [1]" in p for p in inner.problems)
    old = tensorrt.check_model(_graph(opset=7))
    assert any("opset 7" in p for p in old.problems)


def test_operator_inside_a_subgraph_is_checked():
    then_graph = helper.make_graph([helper.make_node("Unheard", ["x"], ["t"], domain="com.example")], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 8])])
    else_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", 8])])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)
    model = helper.make_model(helper.make_graph([node], "branchy", [cond, x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    report = tensorrt.check_model(model)
    assert report.unsupported == {"com.example::Unheard": 1}
    assert any("'c'" in p and "no shape" in p for p in report.problems)  # a scalar input has no batch dimension


def test_trtexec_command_matches_the_batch_range_and_precision():
    report = tensorrt.check_model(_graph(inner=(64, 64, 1)))
    fp16 = tensorrt.trtexec_command(report, tensorrt.PlanOptions(max_batch_size=16, precision="fp16"))
    assert fp16[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan"]
    assert "--minShapes=x:1x64x64x1" in fp16 and "--optShapes=x:8x64x64x1" in fp16
    assert "--maxShapes=x:16x64x64x1" in fp16 and "--fp16" in fp16 and "--int8" not in fp16
    int8 = tensorrt.trtexec_text(report, tensorrt.PlanOptions(precision="int8", calibration_cache="digits.cache",
                                                              opt_batch_size=4))
    argv = shlex.split(int8)
    assert {"--int8", "--calib=digits.cache", "--optShapes=x:4x64x64x1", "--maxShapes=x:32x64x64x1"} <= set(argv)
    with pytest.raises(UsageError, match="opt batch size 64"):
        tensorrt.trtexec_command(report, tensorrt.PlanOptions(max_batch_size=32, opt_batch_size=64))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnxruntime_tensorrt_block_parses_as_a_model_config(precision, tmp_path):
    manifest = Manifest.read(make_export(tmp_path / "export"))
    accelerator = TensorRTAccelerator(precision, engine_cache_path="/cache/digits",
                                      calibration_table="calibration.flatbuffers")
    text = gpu_classifier_config(manifest, accelerator, max_batch_size=8)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == precision.upper()
    assert accelerator.parameters["trt_engine_cache_enable"] == "1"
    assert accelerator.parameters["trt_engine_cache_path"] == "/cache/digits"
    assert ("int8_calibration_table_name" in accelerator.parameters) == (precision == "int8")


def test_the_accelerator_is_refused_outside_the_onnxruntime_gpu_backend():
    with pytest.raises(UsageError, match="needs the onnxruntime backend on GPU; also: unknown precision 'fp8'"):
        RepositoryOptions(tensorrt_accelerator=TensorRTAccelerator(precision="fp8")).check()
