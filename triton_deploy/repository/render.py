"""Render the four ``config.pbtxt`` files of one classifier from its manifest and the repository options.

The model contexts built here are plain dataclasses; the jinja2 templates beside this module only lay them out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from triton_deploy.contract import CLASS_IDS, IMAGE, LABELS, LABELS_FILE, OUTPUTS, PROBABILITIES, SCORES
from triton_deploy.errors import Problem, raise_problems, unknown_choice
from triton_deploy.spec import Manifest, TensorSpec

TEMPLATES = Path(__file__).parent / "templates"
BACKENDS = ("python", "onnxruntime", "tensorrt")
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")



TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class TensorRTAccelerator:
    """ONNX Runtime's TensorRT execution provider for an onnxruntime-backend classifier on GPU, with the engine cache
    on so instances and restarts reuse built engines (TensorRT otherwise rebuilds an engine per instance)."""

    precision: str = "fp16"
    engine_cache_path: str = "/tmp/trt_engine_cache"
    workspace_bytes: int = 2 << 30
    calibration_table: str | None = None  # INT8 without Q/DQ nodes: a table built by TensorRT on the target

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.precision not in TENSORRT_PRECISIONS:
            problems.append(unknown_choice("precision", self.precision, "--precision", TENSORRT_PRECISIONS))
        if self.workspace_bytes < 1:
            problems.append((f"TensorRT workspace {self.workspace_bytes} bytes must be positive", "check the workspace"))
        return problems

    @property
    def parameters(self) -> dict[str, str]:
        """The execution provider's parameters, in the order the config lists them."""
        parameters = {"precision_mode": self.precision.upper(), "max_workspace_size_bytes": str(self.workspace_bytes),
                      "trt_engine_cache_enable": "1", "trt_engine_cache_path": self.engine_cache_path}
        if self.precision == "int8" and self.calibration_table:
            parameters |= {"int8_calibration_table_name": self.calibration_table,
                           "int8_use_native_calibration_table": "1"}
        return parameters


@dataclass(frozen=True)
class RepositoryOptions:
    """Everything ``triton-deploy repo`` lets a platform team tune. Defaults suit the local CPU server."""

    output: Path = Path("model_repository")
    classifier_backend: str = "python"
    prefix: str | None = None  # default: the manifest's model name
    max_batch_size: int = 32
    top_k: int = 5
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None  # the classifier's; default: 0 on CPU, 500 on GPU (queue_delay_us)
    step_queue_delay_us: int = 0  # preprocess/postprocess: batch what is already queued, never wait
    preprocess_instances: int = 1
    classifier_instances: int | None = None  # default: 2 on CPU (measured faster than 1 with all cores), 1 on GPU
    postprocess_instances: int = 1
    instance_kind: str = "cpu"  # classifier instances: cpu | gpu
    version_policy: str = "latest:1"  # latest:N | all | specific:1,2
    keep_versions: int | None = None
    intra_op_threads: int | None = None  # default: the server's CPUs / classifier instances (classifier_parameters)
    inter_op_threads: int = 1
    session_batch_size: int | None = None  # images per ONNX Runtime call (python backend); None: sized to the cache
    monitoring: bool = True  # custom metrics from the preprocess and postprocess steps (model_metrics)
    low_confidence: float = 0.5  # a prediction whose top-1 probability is below this counts as low-confidence
    drift_window: int = 1000  # predictions the drift score compares with the export's reference
    drift_min_predictions: int = 200  # the drift score is NaN until the window holds this many
    tensorrt_accelerator: TensorRTAccelerator | None = None  # onnxruntime backend on GPU: run through TensorRT

    @property
    def queue_delay_us(self) -> int:
        """How long the classifier's batcher waits to fill a batch, with the default resolved. On CPU, ONNX Runtime's
        throughput stops growing after a few images per call, and under load requests queue anyway while the
        instances are busy, so waiting only adds latency (measured, 2 instances: digits at concurrency 1 served 630
        instead of 474 images/s, and 7 % more at 16). GPUs gain from larger batches, so there it waits 500 µs."""
        if self.max_queue_delay_us is not None:
            return self.max_queue_delay_us
        return 500 if self.instance_kind == "gpu" else 0

    @property
    def instances(self) -> int:
        """Classifier instances, with the default resolved."""
        if self.classifier_instances is not None:
            return self.classifier_instances
        return 1 if self.instance_kind == "gpu" else 2

    def check(self) -> None:
        problems: list[Problem] = []
        if self.classifier_backend not in BACKENDS:
            problems.append(unknown_choice("classifier backend", self.classifier_backend, "--classifier-backend",
                                           BACKENDS))
        if self.prefix is not None and not NAME_PATTERN.match(self.prefix):
            problems.append((f"model prefix {self.prefix!r} must start with a letter and hold only letters, digits, "
                             "'_' and '-' (at most 64)", "check --prefix"))
        if not 1 <= self.max_batch_size <= 4096:
            problems.append((f"max batch size {self.max_batch_size} is outside 1-4096", "check --max-batch-size"))
        if self.top_k < 1:
            problems.append((f"top-k must be at least 1, got {self.top_k}", "check --top-k"))
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            problems.append((f"preferred batch sizes {bad} must lie in 1..max batch size {self.max_batch_size}",
                             "check --preferred-batch-sizes / --max-batch-size"))
        if self.queue_delay_us < 0 or self.step_queue_delay_us < 0:
            problems.append(("queue delays must be >= 0", "check --max-queue-delay-us / --step-queue-delay-us"))
        for flag, count in (("--preprocess-instances", self.preprocess_instances),
                            ("--classifier-instances", self.instances),
                            ("--postprocess-instances", self.postprocess_instances)):
            if count < 1:
                problems.append((f"{flag} must be at least 1, got {count}", f"check {flag}"))
        if self.instance_kind not in ("cpu", "gpu"):
            problems.append((f"unknown instance kind {self.instance_kind!r}", "--instance-kind takes cpu|gpu"))
        if self.classifier_backend == "tensorrt" and self.instance_kind != "gpu":
            problems.append(("the tensorrt backend runs on GPUs only", "add --instance-kind gpu"))
        if self.session_batch_size is not None and self.session_batch_size < 0:
            problems.append((f"session batch size must be >= 0 (0: the whole batch), got {self.session_batch_size}",
                             "check --session-batch-size"))
        if self.intra_op_threads is not None and self.intra_op_threads < 0:
            problems.append((f"intra-op threads must be >= 0, got {self.intra_op_threads}", "check --intra-op-threads"))
        if not 0.0 <= self.low_confidence <= 1.0:
            problems.append((f"low-confidence threshold {self.low_confidence:g} is outside 0-1 (a probability)",
                             "check --low-confidence"))
        if self.drift_window < 1 or not 1 <= self.drift_min_predictions <= self.drift_window:
            problems.append((f"drift window {self.drift_window} must be >= 1 and hold at least its minimum of "
                             f"{self.drift_min_predictions} predictions (>= 1)",
                             "check --drift-window / --drift-min-predictions"))
        if self.keep_versions is not None and self.keep_versions < 1:
            problems.append(("--keep-versions must be at least 1", "check --keep-versions"))
        try:
            version_policy_text(self.version_policy)
        except ValueError as exc:
            problems.append((str(exc), "check --version-policy"))
        if self.tensorrt_accelerator is not None:
            if self.classifier_backend != "onnxruntime" or self.instance_kind != "gpu":
                problems.append(("the TensorRT accelerator needs the onnxruntime backend on GPU",
                                 "use --classifier-backend onnxruntime --instance-kind gpu"))
            problems += self.tensorrt_accelerator.problems()
        raise_problems(problems)


def version_policy_text(policy: str) -> str:
    """``latest:N`` / ``all`` / ``specific:1,2`` -> the protobuf text of a ``version_policy``."""
    kind, _, arg = policy.partition(":")
    try:
        if kind == "all" and not arg:
            return "{ all { } }"
        if kind == "latest":
            count = int(arg or "1")
            if count >= 1:
                return f"{{ latest {{ num_versions: {count} }} }}"
        if kind == "specific":
            versions = [int(v) for v in arg.split(",")]
            if versions and all(v >= 1 for v in versions):
                return f"{{ specific {{ versions: [ {', '.join(map(str, versions))} ] }} }}"
    except ValueError:
        pass
    raise ValueError(f"version policy {policy!r} is not one of latest:N, all, specific:V1,V2")


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]
    format: str | None = None
    label_filename: str | None = None  # outputs only: Triton's classification extension answers with these labels

    @classmethod
    def of(cls, spec: TensorSpec, *, image: bool = False, labels: str | None = None) -> Tensor:
        layout = f"FORMAT_{spec.layout}" if image and spec.layout else None
        return cls(spec.name, spec.config_dtype, spec.dims, layout, labels)


@dataclass(frozen=True)
class Instances:
    count: int
    kind: str = "KIND_CPU"


@dataclass(frozen=True)
class Batching:
    enabled: bool
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int


@dataclass(frozen=True)
class WarmupSample:
    name: str
    input: Tensor
    file: str | None  # file name under warmup/; None = zero data


@dataclass(frozen=True)
class ModelContext:
    name: str
    max_batch_size: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    batching: Batching
    instances: Instances
    version_policy: str = "{ latest { num_versions: 1 } }"
    parameters: dict[str, str] = field(default_factory=dict)
    warmup: tuple[WarmupSample, ...] = ()
    accelerator: TensorRTAccelerator | None = None


@dataclass(frozen=True)
class ModelNames:
    ensemble: str
    preprocess: str
    classifier: str
    postprocess: str

    @classmethod
    def for_prefix(cls, prefix: str) -> ModelNames:
        return cls(prefix, f"{prefix}_preprocess", f"{prefix}_classifier", f"{prefix}_postprocess")

    def all(self) -> tuple[str, str, str, str]:
        return (self.preprocess, self.classifier, self.postprocess, self.ensemble)


PREPROCESS_WARMUP = "sample_image"
CLASSIFIER_WARMUP = "sample_input"


# What one ONNX Runtime call's activations may take before a dynamic batch is split: about a server core's L2 plus
# its share of L3. Measured on a 2-core EPYC (1 MiB L2 per core, 32 MiB L3), CPU per image at batch 1 / 8 / 16:
# MobileNetV2-224 (4.9 MB largest activation) 3.4 / 4.2 / 4.5 ms; the digits CNN (0.5 MB) flat up to 8, then rising.
ACTIVATION_BUDGET_BYTES = 4 * 1024 * 1024


def session_batch_size(manifest: Manifest, options: RepositoryOptions) -> int:
    """Images per ONNX Runtime call in the python classifier; 0 runs the whole dynamic batch in one call."""
    if options.session_batch_size is not None:
        return options.session_batch_size
    largest = manifest.largest_activation_bytes_per_image
    if not largest:
        return 0  # an export from before this was recorded: keep one call per batch
    size = max(1, ACTIVATION_BUDGET_BYTES // int(largest))
    return 0 if size >= options.max_batch_size else size


def classifier_parameters(manifest: Manifest, options: RepositoryOptions) -> dict[str, str]:
    if options.classifier_backend == "tensorrt":
        return {}
    if options.intra_op_threads is not None:
        threads = str(options.intra_op_threads)
    elif options.classifier_backend == "python":
        # Resolved by the model when it starts, from the CPUs the server may use (affinity and cgroup quota, so a
        # pod's CPU limit counts) divided among the instances; the config stays independent of where it was made.
        threads = "auto"
    else:
        # The native onnxruntime backend takes a number: one instance lets ONNX Runtime use every core (0); several
        # share the cores of the machine that renders the repository (--intra-op-threads to set it for the target).
        threads = "0" if options.instances == 1 else str(max(1, (os.cpu_count() or 1) // options.instances))
    parameters = {"intra_op_thread_count": threads, "inter_op_thread_count": str(options.inter_op_threads)}
    if options.classifier_backend == "python":
        parameters["session_batch_size"] = str(session_batch_size(manifest, options))
    return parameters


REFERENCE_FILE = "reference.json"


def input_parameters(manifest: Manifest) -> dict[str, str]:
    """How pixels become the classifier's input, stated in its config for clients that call it directly with tensors
    (Triton's model metadata has no place for it): ``(pixel * input_scale - input_mean) / input_std`` per channel,
    after converting to ``input_color_mode`` in ``input_channel_order`` and resizing with ``input_resample``. The
    layout is the input's ``format`` field, which Triton's example clients read."""
    keys = ("color_mode", "channel_order", "layout", "scale", "mean", "std", "resample")
    parameters = manifest.preprocessing.to_parameters()
    return {f"input_{key}": parameters[key] for key in keys}


def monitoring_parameters(manifest: Manifest, options: RepositoryOptions, names: ModelNames,
                          version: int) -> tuple[dict[str, str], dict[str, str]]:
    """Parameters of the preprocess and the postprocess model that switch their custom metrics on and label them
    with the ensemble's name and the classifier version this repository serves."""
    if not options.monitoring:
        return {"monitoring": "false"}, {"monitoring": "false"}
    labels = {"monitoring": "true", "ensemble": names.ensemble, "model_version": str(version)}
    postprocess = labels | {"low_confidence_threshold": repr(float(options.low_confidence))}
    if manifest.reference is not None:
        postprocess |= {"reference_file": REFERENCE_FILE, "drift_window": str(options.drift_window),
                        "drift_min_predictions": str(options.drift_min_predictions)}
    return labels, postprocess


def render_configs(manifest: Manifest, options: RepositoryOptions, names: ModelNames,
                   version: int = 1) -> dict[str, str]:
    """Model name -> config.pbtxt text for the four models of one classifier (``version``: the classifier's)."""
    batching = Batching(options.dynamic_batching, tuple(options.preferred_batch_sizes), options.queue_delay_us)
    # Waiting to fill a batch costs latency at every step it is applied to; only the classifier's compute gains
    # much from larger batches, so the python steps batch whatever is queued without waiting.
    step_batching = Batching(options.dynamic_batching, (), options.step_queue_delay_us)
    mbs = options.max_batch_size
    image = Tensor(IMAGE, "TYPE_STRING", (1,))
    model_input = Tensor.of(manifest.input, image=True)
    scores = Tensor.of(manifest.output)
    k = min(options.top_k, manifest.num_classes)
    top = (Tensor(CLASS_IDS, "TYPE_INT64", (k,)), Tensor(SCORES, "TYPE_FP32", (k,)),
           Tensor(LABELS, "TYPE_STRING", (k,)))
    # Every class's probability, labelled, for Triton's classification extension (class_count) on the ensemble.
    probabilities = Tensor(PROBABILITIES, "TYPE_FP32", (manifest.num_classes,), label_filename=LABELS_FILE)
    source = f"export '{manifest.name}'"
    preprocess_monitoring, postprocess_monitoring = monitoring_parameters(manifest, options, names, version)

    preprocess = ModelContext(
        name=names.preprocess, max_batch_size=mbs, inputs=(image,), outputs=(Tensor.of(manifest.input),),
        batching=step_batching, instances=Instances(options.preprocess_instances),
        parameters=manifest.preprocessing.to_parameters() | preprocess_monitoring,
        warmup=(WarmupSample("sample_image", image, PREPROCESS_WARMUP),),
    )
    classifier = ModelContext(
        name=names.classifier, max_batch_size=mbs, inputs=(model_input,),
        outputs=(Tensor.of(manifest.output, labels=LABELS_FILE),), batching=batching,
        instances=Instances(options.instances, "KIND_GPU" if options.instance_kind == "gpu" else "KIND_CPU"),
        version_policy=version_policy_text(options.version_policy),
        parameters=classifier_parameters(manifest, options) | input_parameters(manifest),
        warmup=(WarmupSample("sample_input", Tensor.of(manifest.input), CLASSIFIER_WARMUP),),
        accelerator=options.tensorrt_accelerator,
    )
    postprocess = ModelContext(
        name=names.postprocess, max_batch_size=mbs, inputs=(scores,), outputs=(*top, probabilities),
        batching=step_batching, instances=Instances(options.postprocess_instances),
        parameters={"top_k": str(k), "output_kind": manifest.output_kind, "labels_file": LABELS_FILE}
        | postprocess_monitoring,
        warmup=(WarmupSample("zeros", scores, None),),
    )
    ensemble = ModelContext(name=names.ensemble, max_batch_size=mbs, inputs=(image,), outputs=(*top, probabilities),
                            batching=Batching(False, (), 0), instances=Instances(1))
    steps = [
        {"model": names.preprocess, "inputs": {IMAGE: IMAGE},
         "outputs": {manifest.input.name: "preprocessed_image"}},
        {"model": names.classifier, "inputs": {manifest.input.name: "preprocessed_image"},
         "outputs": {manifest.output.name: "class_scores"}},
        {"model": names.postprocess, "inputs": {manifest.output.name: "class_scores"},
         "outputs": {name: name for name in (*OUTPUTS, PROBABILITIES)}},
    ]
    env = _environment()
    common = {"source": source, "backend": options.classifier_backend, "top_k": k}
    return {
        names.preprocess: env.get_template("preprocess.pbtxt.j2").render(model=preprocess, **common),
        names.classifier: env.get_template("classifier.pbtxt.j2").render(model=classifier, **common),
        names.postprocess: env.get_template("postprocess.pbtxt.j2").render(model=postprocess, **common),
        names.ensemble: env.get_template("ensemble.pbtxt.j2").render(model=ensemble, steps=steps, **common),
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["pbstr"] = protobuf_string
    return env


def protobuf_string(value: object) -> str:
    """A protobuf text-format string literal: quotes, backslashes and control characters escaped."""
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    escaped = "".join(c if c >= " " else f"\\{ord(c):03o}" for c in escaped)
    return f'"{escaped}"'


def gpu_classifier_config(manifest: Manifest, accelerator: TensorRTAccelerator, max_batch_size: int = 32) -> str:
    """The classifier's config.pbtxt for Triton's onnxruntime backend on GPU with the TensorRT accelerator, rendered
    like every other config and parsed with Triton's ModelConfig protobuf before it is returned."""
    # validation loads tritonclient's protobuf schema: only when configs are checked
    from .validate import parse_config

    options = RepositoryOptions(classifier_backend="onnxruntime", instance_kind="gpu", max_batch_size=max_batch_size,
                                tensorrt_accelerator=accelerator)
    options.check()
    names = ModelNames.for_prefix(manifest.name)
    text = tidy(render_configs(manifest, options, names)[names.classifier])
    parse_config(text, f"{names.classifier}/config.pbtxt")
    return text


def tidy(text: str) -> str:
    """Collapse the blank lines jinja leaves between blocks, so configs read like hand-written ones."""
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
