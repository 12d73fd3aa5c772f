"""TensorRT readiness of an exported ONNX model: a compatibility check and the ``trtexec`` command. (The ONNX Runtime
TensorRT execution-provider config for Triton's onnxruntime backend is a repository option, ``TensorRTAccelerator``
in ``triton_deploy.repository.render``, rendered and validated like every other config.)

TensorRT is not installable on the development machines, and a plan is bound to one GPU model and TensorRT version,
so plans are built at deploy time on the target GPU and never committed. What can be checked here is the ONNX graph:

* opset inside TensorRT 10's parser range (``TRT_OPSET_RANGE``);
* exactly one dynamic dimension per graph input and output, the leading batch dimension, so one optimisation profile
  (min / opt / max batch) covers every shape Triton sends; inner dimensions static;
* every operator in TensorRT's ONNX parser's supported set (``SUPPORTED_OPS``); anything else (ONNX Runtime's
  ``com.microsoft`` contrib ops, ``ConvInteger`` from dynamic INT8, ...) is reported by name with its count;
* for INT8 plans, QDQ quantisation must be symmetric INT8 (zero point 0): TensorRT rejects UINT8 activations with a
  zero point, which is what ONNX Runtime's CPU-oriented static quantisation writes by default.

``SUPPORTED_OPS`` lists the default-domain ONNX operators that TensorRT 10's ONNX parser imports (its operator
matrix), restricted to what image classifiers use plus the common tensor plumbing. An operator that is missing here
but supported by a newer TensorRT is reported as a problem: add it to the set when the target's TensorRT is newer.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from triton_deploy.errors import Problem, UsageError, raise_problems, unknown_choice
from triton_deploy.errors import TensorRTCompatibilityError as TensorRTCompatibilityError  # re-exported

TRT_OPSET_RANGE = (9, 20)  # TensorRT 10.x ONNX parser, inclusive
PRECISIONS = ("fp32", "fp16", "int8")

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Hardmax
Identity If InstanceNormalization IsInf IsNaN LRN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LpNormalization LpPool MatMul Max MaxPool Mean Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or
PRelu Pad ParametricSoftplus Pow QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND
Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum
Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


@dataclass(frozen=True)
class TensorRTReport:
    model: str
    opset: int
    precision: str
    inputs: dict[str, list]  # name -> shape, None for the dynamic dimension
    outputs: dict[str, list]
    operators: dict[str, int]  # op type -> count
    unsupported: dict[str, int]  # "domain::Op" or "Op" -> count
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"model": self.model, "compatible": self.compatible, "opset": self.opset, "precision": self.precision,
                "inputs": self.inputs, "outputs": self.outputs, "operators": self.operators,
                "unsupported_operators": self.unsupported, "problems": self.problems, "warnings": self.warnings}

    def text(self) -> str:
        lines = [f"TensorRT check of {self.model}: {'compatible' if self.compatible else 'NOT compatible'} "
                 f"(opset {self.opset}, precision {self.precision})"]
        lines += [f"  input  {name} {shape}" for name, shape in self.inputs.items()]
        lines += [f"  output {name} {shape}" for name, shape in self.outputs.items()]
        lines.append("  operators: " + ", ".join(f"{op} x{n}" for op, n in sorted(self.operators.items())))
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def check_model(model: Path | onnx.ModelProto, *, precision: str = "fp16") -> TensorRTReport:
    """Collect every reason TensorRT would refuse ``model`` (a path or a loaded graph); never raises for them."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint=f"--precision takes {'|'.join(PRECISIONS)}")
    name = str(model) if isinstance(model, Path | str) else (model.graph.name or "model")
    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, Path | str) else model
    problems: list[str] = []
    warnings: list[str] = []

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    low, high = TRT_OPSET_RANGE
    if not low <= opset <= high:
        problems.append(f"opset {opset} is outside TensorRT's supported range {low}-{high} (re-export with --opset)")

    initializers = {i.name for i in proto.graph.initializer}
    inputs = {v.name: _shape(v) for v in proto.graph.input if v.name not in initializers}
    outputs = {v.name: _shape(v) for v in proto.graph.output}
    for kind, values in (("input", inputs), ("output", outputs)):
        for tensor, shape in values.items():
            problems += _shape_problems(kind, tensor, shape)

    operators: Counter[str] = Counter()
    unsupported: Counter[str] = Counter()
    for node in _all_nodes(proto.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        operators[key] += 1
        if key not in SUPPORTED_OPS:
            unsupported[key] += 1
    if unsupported:
        problems.append("operators outside TensorRT's supported set: "
                        + ", ".join(f"{op} (x{n})" for op, n in sorted(unsupported.items())))

    quantized = operators.get("QuantizeLinear", 0) > 0
    if quantized:
        problems += _qdq_problems(proto)
        if precision != "int8":
            warnings.append("the graph is QDQ-quantised: build it with --int8 (explicit quantisation); "
                            f"--precision {precision} would still need INT8 enabled for the Q/DQ layers")
    elif precision == "int8":
        warnings.append("no Q/DQ nodes: INT8 needs a calibration cache built by TensorRT on the target "
                        "(trtexec --int8 --calib=CACHE), or use the int8_static variant (explicit quantisation)")
    return TensorRTReport(name, opset, precision, inputs, outputs, dict(operators), dict(unsupported), problems,
                          warnings)


def _shape(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _shape_problems(kind: str, tensor: str, shape: list) -> list[str]:
    if not shape:
        return [f"{kind} {tensor!r} has no shape information (run shape inference before export)"]
    problems = []
    if shape[0] is not None:
        problems.append(f"{kind} {tensor!r} has a fixed batch dimension {shape[0]}; Triton batching needs it "
                        "dynamic (the exporter names it 'batch')")
    inner = [i for i, d in enumerate(shape[1:], start=1) if d is None]
    if inner:
        problems.append(f"{kind} {tensor!r} has dynamic inner dimensions at axes {inner}: only the batch "
                        "dimension may be dynamic for one optimisation profile")
    return problems


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _qdq_problems(proto: onnx.ModelProto) -> list[str]:
    """TensorRT's explicit quantisation takes INT8 Q/DQ with zero point 0 only."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    bad_type, nonzero = set(), set()
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero_point = constants.get(node.input[2])
        if zero_point is None:
            continue
        if zero_point.dtype.name != "int8":
            bad_type.add(zero_point.dtype.name)
        elif zero_point.any():
            nonzero.add(node.input[2])
    problems = []
    if bad_type:
        problems.append(f"Q/DQ zero points of type {', '.join(sorted(bad_type))}: TensorRT needs symmetric INT8 "
                        "(re-quantise with --int8-symmetric)")
    if nonzero:
        problems.append(f"{len(nonzero)} Q/DQ zero points are not 0: TensorRT needs symmetric INT8 "
                        "(re-quantise with --int8-symmetric)")
    return problems


# ---- trtexec -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanOptions:
    max_batch_size: int = 32
    opt_batch_size: int | None = None  # default: half the max batch size, where dynamic batching usually lands
    precision: str = "fp16"
    onnx_path: str = "model.onnx"
    plan_path: str = "model.plan"
    calibration_cache: str | None = None  # for INT8 without Q/DQ nodes
    workspace_mib: int = 2048

    def check(self) -> None:
        problems: list[Problem] = []
        if self.precision not in PRECISIONS:
            problems.append(unknown_choice("precision", self.precision, "--precision", PRECISIONS))
        if not 1 <= self.max_batch_size <= 4096:
            problems.append((f"max batch size {self.max_batch_size} is outside 1-4096", "check --max-batch-size"))
        opt = self.opt_batch_size
        if opt is not None and not 1 <= opt <= self.max_batch_size:
            problems.append((f"opt batch size {opt} must lie in 1..{self.max_batch_size}", "check --opt-batch-size"))
        raise_problems(problems)


def trtexec_command(report: TensorRTReport, options: PlanOptions) -> list[str]:
    """The ``trtexec`` argv that builds the plan: one profile whose batch range matches ``max_batch_size``."""
    options.check()
    opt = options.opt_batch_size or max(1, options.max_batch_size // 2)

    def shapes(batch: int) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in [batch, *shape[1:]])}"
                        for name, shape in report.inputs.items())

    command = ["trtexec", f"--onnx={options.onnx_path}", f"--saveEngine={options.plan_path}",
               f"--minShapes={shapes(1)}", f"--optShapes={shapes(opt)}", f"--maxShapes={shapes(options.max_batch_size)}",
               f"--memPoolSize=workspace:{options.workspace_mib}M"]
    if options.precision == "fp16":
        command.append("--fp16")
    elif options.precision == "int8":
        command += ["--int8", "--fp16"]  # FP16 for the layers TensorRT keeps out of INT8
        quantized = report.operators.get("QuantizeLinear", 0) > 0
        if not quantized:
            command.append(f"--calib={options.calibration_cache or 'calibration.cache'}")
    return command


def trtexec_text(report: TensorRTReport, options: PlanOptions) -> str:
    return shlex.join(trtexec_command(report, options))


def check_export(export_dir: Path, options: PlanOptions) -> tuple[TensorRTReport, str]:
    """Report and trtexec command for an export directory (``tensorrt-check`` adds the classifier's GPU config,
    rendered by the repository's templates with ``TensorRTAccelerator``)."""
    from triton_deploy.spec import Manifest

    options.check()
    manifest = Manifest.read(Path(export_dir))
    report = check_model(Path(export_dir) / manifest.model_file, precision=options.precision)
    return report, trtexec_text(report, options)
