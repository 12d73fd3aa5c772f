"""Learn from the server how to call a classifier: tensor names, dtypes, shapes, top-k, batch size, labels.

Model metadata is open to every caller and gives names, dtypes and shapes. The model configuration (max batch size,
the preprocess parameters) sits behind Triton's admin key by default; it is read when the caller passed the key and
otherwise replaced by a documented default (batch size) or an argument (``transform=`` for client preprocessing).

The ensemble's outputs are recognised by kind (one integer tensor = class ids, one float tensor = scores, one BYTES
tensor = labels), not by name. For client-side preprocessing the member models are ``<model>_preprocess``,
``<model>_classifier`` and ``<model>_postprocess`` (the names ``triton-deploy repo`` gives them). The labels and
whether the classifier emits logits are asked of the postprocess model itself: one batch of one-hot rows, whose
top-1 answers are the labels in class order and whose scores show whether a softmax was applied. So the client
uses the server's own labels without admin rights, and both modes produce the same answers. The probe carries the
``tooling`` request parameter, so the postprocess model leaves it out of its prediction metrics.

Written as generators that yield ``Call``s and receive their results, so one implementation serves the sync and the
asyncio clients (see ``drive`` of the transports in ``transport.py``).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from triton_deploy.contract import PROBABILITIES, TOOLING_PARAMETER
from triton_deploy.errors import ManifestError
from triton_deploy.postprocessing import softmax
from triton_deploy.preprocessing import ImageTransform
from triton_deploy.spec import TensorSpec

from .errors import InvalidInputError, ModelMismatchError

NEEDS_PREPROCESSING = "client-side preprocessing needs the parameters"  # evaluate words its own hint on this
DEFAULT_MAX_BATCH_SIZE = 8  # used when the config is not readable (no admin key): below any sane server limit


@dataclass(frozen=True)
class Call:
    """One request a discovery or inference step needs: kind is 'ready', 'metadata', 'config' or 'infer'."""

    kind: str
    model: str
    inputs: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # name -> (Triton dtype, array)
    outputs: tuple[TensorSpec, ...] = ()
    version: str = ""  # "" = the version the server's policy picks (the latest)
    parameters: dict[str, str] = field(default_factory=dict)  # request parameters (infer only)


@dataclass(frozen=True)
class EnsemblePlan:
    """How to call the ensemble with encoded images."""

    model: str
    image_input: TensorSpec
    class_ids: TensorSpec
    scores: TensorSpec
    labels: TensorSpec
    top_k: int
    max_batch_size: int
    max_batch_size_from: str  # "config", "argument" or "default"


@dataclass(frozen=True)
class LocalPlan:
    """How to call the classifier directly with tensors preprocessed here."""

    classifier: str
    input: TensorSpec
    output: TensorSpec
    transform: ImageTransform
    logits: bool
    labels: tuple[str, ...]
    version: str = ""  # the classifier version called ("" = latest)


def tensors(metadata: dict[str, Any], key: str) -> list[TensorSpec]:
    """``inputs``/``outputs`` of model metadata (HTTP JSON or gRPC-as-JSON, whose int64s are strings)."""
    try:
        return [TensorSpec(name=t["name"], shape=tuple(int(d) for d in t.get("shape", ())), dtype=t["datatype"])
                for t in metadata.get(key, [])]
    except (KeyError, ValueError, ManifestError) as exc:
        raise ModelMismatchError(f"model '{metadata.get('name')}' has metadata this client cannot read: {exc}") \
            from None


def parameters(config: dict[str, Any] | None) -> dict[str, str]:
    if not config:
        return {}
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def _config(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    """gRPC wraps the configuration in ``{"config": ...}``; HTTP returns it bare."""
    if answer is None:
        return None
    return answer.get("config", answer) if "config" in answer and "name" not in answer else answer


def _one(specs: list[TensorSpec], dtypes: tuple[str, ...], model: str, what: str) -> TensorSpec:
    found = [s for s in specs if s.dtype in dtypes]
    if len(found) != 1:
        have = ", ".join(f"{s.name} {s.dtype} {list(s.shape)}" for s in specs) or "none"
        raise ModelMismatchError(f"model '{model}' should have exactly one {what} ({'/'.join(dtypes)}); "
                                 f"it has: {have}", hint="check --model: it must name the ensemble")
    return found[0]


def _max_batch_size(config: dict[str, Any] | None, requested: int | None) -> tuple[int, str]:
    limit = int(config.get("max_batch_size", 0)) if config else None
    if limit is not None and limit <= 0:
        limit = 1  # a model without batching takes one image per request
    if requested is not None:
        if requested < 1:
            raise InvalidInputError(f"max_batch_size must be at least 1, not {requested}", hint="--batch-size")
        return (min(requested, limit), "config") if limit else (requested, "argument")
    if limit:
        return limit, "config"
    return DEFAULT_MAX_BATCH_SIZE, "default"


def discover_ensemble(model: str, max_batch_size: int | None) -> Generator[Call, Any, EnsemblePlan]:
    """Metadata (+ config when readable) of the ensemble -> ``EnsemblePlan``."""
    metadata = yield Call("metadata", model)
    config = _config((yield Call("config", model)))
    inputs, outputs = tensors(metadata, "inputs"), tensors(metadata, "outputs")
    image = _one(inputs, ("BYTES",), model, "encoded-image input")
    if len(inputs) != 1:
        raise ModelMismatchError(f"model '{model}' takes {len(inputs)} inputs; an image classifier ensemble takes "
                                 "one (encoded image bytes)", hint="check --model")
    class_ids = _one(outputs, ("INT64", "INT32"), model, "class-id output")
    # PROBABILITIES (every class, for Triton's classification extension) is not one of the ranked outputs.
    ranked = [s for s in outputs if s.name != PROBABILITIES]
    scores = _one(ranked, ("FP32", "FP16", "FP64"), model, "score output")
    labels = _one(outputs, ("BYTES",), model, "label output")
    top_k = scores.shape[-1] if scores.shape else -1
    if top_k < 1:
        raise ModelMismatchError(f"model '{model}' does not publish a fixed top-k (scores shape {list(scores.shape)})")
    limit, source = _max_batch_size(config, max_batch_size)
    return EnsemblePlan(model, image, class_ids, scores, labels, top_k, limit, source)


def discover_local(model: str, transform: ImageTransform | None, batch_size: int,
                   version: str = "") -> Generator[Call, Any, LocalPlan]:
    """The member models for client-side preprocessing -> ``LocalPlan`` (calling classifier ``version``)."""
    pre, classifier, post = f"{model}_preprocess", f"{model}_classifier", f"{model}_postprocess"
    if transform is None:
        pre_config = _config((yield Call("config", pre)))
        if pre_config is None:
            raise ModelMismatchError(
                f"{NEEDS_PREPROCESSING} of '{pre}', whose configuration the server only shows with the admin key", hint="pass the export's preprocessing: --manifest EXPORT_DIR/manifest.json "
                "(Python: transform=Manifest.read(export_dir).preprocessing), or the admin key: --admin-key / "
                "admin_key=, or use preprocess='server'")
        try:
            transform = ImageTransform.from_parameters(parameters(pre_config))
        except (TypeError, ValueError) as exc:
            raise ModelMismatchError(f"'{pre}' does not publish usable preprocessing parameters: {exc}") from None
    meta = yield Call("metadata", classifier, version=version)
    inputs, outputs = tensors(meta, "inputs"), tensors(meta, "outputs")
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelMismatchError(f"'{classifier}' should have one input and one output; it has {len(inputs)} and "
                                 f"{len(outputs)}", hint="check --model")
    tensor_in, tensor_out = inputs[0], outputs[0]
    if tuple(tensor_in.dims) != tuple(transform.input_dims):
        raise ModelMismatchError(f"'{classifier}' takes {tensor_in.name} {list(tensor_in.dims)} but the "
                                 f"preprocessing makes {list(transform.input_dims)}", hint="check transform=")
    classes = tensor_out.shape[-1]
    labels, top1 = yield from _probe_postprocess(post, batch_size, classes)
    post_config = _config((yield Call("config", post)))
    kind = parameters(post_config).get("output_kind")
    if kind is None:
        expected_softmax = float(softmax(np.eye(classes, dtype=np.float32)[:1])[0, 0])
        if all(abs(s - expected_softmax) < 1e-4 for s in top1):
            kind = "logits"
        elif all(abs(s - 1.0) < 1e-6 for s in top1):
            kind = "probabilities"
        else:
            raise ModelMismatchError(f"'{post}' scores one-hot rows as {top1[:3]}..., neither softmax nor identity")
    return LocalPlan(classifier, tensor_in, tensor_out, transform, kind == "logits", tuple(labels), version)


def discover_labels(model: str, batch_size: int) -> Generator[Call, Any, tuple[str, ...]]:
    """The ensemble's labels in class order, asked of its ``<model>_postprocess`` model (no admin key needed)."""
    labels, _top1 = yield from _probe_postprocess(f"{model}_postprocess", batch_size)
    return tuple(labels)


def _probe_postprocess(post: str, batch_size: int,
                       classes: int | None = None) -> Generator[Call, Any, tuple[list[str], list[float]]]:
    """Send one-hot rows: row i's top-1 is class i, so its first label is label i, and its score tells a softmax
    (logits in) from the identity (probabilities in). ``classes`` defaults to the postprocess model's input width."""
    post_meta = yield Call("metadata", post)
    post_in = _one(tensors(post_meta, "inputs"), ("FP32", "FP16", "FP64"), post, "score input")
    classes = classes or (post_in.shape[-1] if post_in.shape else -1)
    if classes < 2:
        raise ModelMismatchError(f"'{post}' takes scores of shape {list(post_in.shape)}; expected (batch, classes)")
    post_out = [s for s in tensors(post_meta, "outputs") if s.name != PROBABILITIES]
    post_scores = _one(post_out, ("FP32", "FP16", "FP64"), post, "score output")
    post_labels = _one(post_out, ("BYTES",), post, "label output")
    probe = np.eye(classes, dtype=np.float32)
    labels: list[str] = []
    top1: list[float] = []
    for start in range(0, classes, batch_size):
        rows = probe[start:start + batch_size]
        # Marked as tooling: the postprocess model answers it without counting it as predictions.
        answer = yield Call("infer", post, {post_in.name: (post_in.dtype, rows)}, (post_scores, post_labels),
                            parameters={TOOLING_PARAMETER: "label-probe"})
        labels += [_text(v) for v in answer[post_labels.name][:, 0]]
        top1 += [float(v) for v in answer[post_scores.name][:, 0]]
    return labels, top1


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)
