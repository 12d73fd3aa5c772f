"""Structured (filter) pruning of a Keras model: drop whole convolution filters, rebuild a smaller network, copy the
kept weights.

Why structured: zeroing half the weights (unstructured magnitude pruning) gave no speed and no size gain in ONNX
Runtime on this project's CNN, while removing half of each layer's filters ran about 3.4x faster at batch 8. A
smaller ``Conv2D`` is a smaller dense kernel every runtime (ONNX Runtime, TensorRT, LiteRT) speeds up with.

How channels are tied together. Every tensor's channel axis belongs to a *channel group*. A ``Conv2D`` or ``Dense``
starts a new group (its filters are the group's channels); layers that act on each channel on its own pass the group
through: batch normalisation, activations, pooling, padding, dropout and depthwise convolutions (MobileNetV2's
``DepthwiseConv2D`` keeps one filter per input channel, so it is sliced with its input). Element-wise merges
(``Add``, ``Multiply``, ...) join their inputs' groups: the channels that meet in a residual addition are pruned
together, with the same indices on every branch, or not at all. A group is left whole when it touches the model's
input or output, or a layer the pruner cannot slice (``Concatenate``, ``Flatten``, ``Reshape``, grouped or
channels-first convolutions, depth multipliers above one, shared layers, custom layers, ...); each such layer is
named in ``PrunedModel.skipped``, one line per layer, so nothing is skipped silently.

Which filters stay (``criterion``): ``l1`` (default) ranks the output channels of a group by the L1 norm of their
filter weights (sum of absolute kernel values feeding that channel), ``l2`` by the Euclidean norm. When several
layers produce one group (residual branches), each layer's norms are divided by their mean first so every branch
weighs the same, then summed. The ``round((1 - fraction) * channels)`` highest-ranked channels (at least one) stay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triton_deploy.errors import Problem, PruneError, raise_problems
from triton_deploy.export import graph, pipeline, validate
from triton_deploy.export.sources import LoadedModel, keras_from_export
from triton_deploy.postprocessing import softmax
from triton_deploy.preprocessing import ImageTransform
from triton_deploy.progress import Reporter
from triton_deploy.spec import Manifest, Parity

from .base import Datasets
from .distill import teacher_logits

CRITERIA = ("l1", "l2")

# Layers that compute each channel from the same channel only, and have no per-channel weights.
_PASS_THROUGH = frozenset("""
ReLU LeakyReLU ELU ReLU6 MaxPooling2D AveragePooling2D GlobalAveragePooling2D GlobalMaxPooling2D Dropout
SpatialDropout2D GaussianNoise GaussianDropout ZeroPadding2D Cropping2D UpSampling2D Identity ActivityRegularization
""".split())
_MERGES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})
_CROSS_CHANNEL_ACTIVATIONS = frozenset({"softmax", "log_softmax"})


@dataclass(frozen=True)
class PruneOptions:
    fraction: float  # share of each prunable group's channels removed, in (0, 1)
    criterion: str = "l1"

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if not 0.0 < self.fraction < 1.0:
            problems.append((f"prune fraction {self.fraction:g} must lie strictly between 0 and 1 (the share of "
                             "filters removed per layer)", "check --prune"))
        if self.criterion not in CRITERIA:
            problems.append((f"unknown pruning criterion {self.criterion!r}",
                             f"--prune-criterion takes {'|'.join(CRITERIA)}"))
        return problems

    def check(self) -> None:
        raise_problems(self.problems())


@dataclass
class PrunedModel:
    model: Any  # the rebuilt, smaller keras.Model with the kept weights
    widths: dict[str, tuple[int, int]]  # producing layer -> (channels before, channels after)
    multiply_adds: tuple[int, int]  # per image, before and after
    options: PruneOptions
    skipped: tuple[str, ...] = ()  # one line per layer whose channels were left whole because it cannot be sliced

    def summary(self) -> dict:
        before, after = self.multiply_adds
        return {"fraction": self.options.fraction, "criterion": self.options.criterion,
                "widths": {name: list(pair) for name, pair in self.widths.items()},
                "multiply_adds_per_image": {"before": before, "after": after, "ratio": after / before},
                "left_unpruned": list(self.skipped)}


# ---- analysis: which channels are tied together ---------------------------------------------------------------


@dataclass
class _Group:
    channels: int
    producers: list[str] = field(default_factory=list)  # Conv2D / Dense layers whose filters are these channels
    frozen_by: list[str] = field(default_factory=list)  # why it must stay whole ("" entries: input/output, expected)


class _Groups:
    """Union-find over channel groups."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.data: list[_Group] = []

    def new(self, channels: int, producer: str | None = None, frozen_by: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.data.append(_Group(channels, [producer] if producer else [], [frozen_by] if frozen_by is not None else []))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            self.data[a].producers += self.data[b].producers
            self.data[a].frozen_by += self.data[b].frozen_by
        return a

    def group(self, g: int) -> _Group:
        return self.data[self.find(g)]


@dataclass
class _Analysis:
    groups: _Groups
    inputs: dict[str, int]  # layer -> group of its (channel-sliced) input
    outputs: dict[str, int]  # layer -> group of its output


def _key(tensor) -> tuple:
    operation, node_index, tensor_index = tensor._keras_history
    return operation.name, node_index, tensor_index


def _unsupported_reason(layer) -> str | None:
    """Why a layer of a kind the pruner knows still cannot be sliced; None when it can."""
    kind = type(layer).__name__
    if len(getattr(layer, "_inbound_nodes", [])) > 1:
        return "is shared by several calls"
    if kind in ("Conv2D", "DepthwiseConv2D") and getattr(layer, "data_format", "channels_last") != "channels_last":
        return "is channels-first"
    if kind == "Conv2D" and getattr(layer, "groups", 1) != 1:
        return "is a grouped convolution"
    if kind == "DepthwiseConv2D" and layer.depth_multiplier != 1:
        return f"has depth multiplier {layer.depth_multiplier}"
    if kind == "BatchNormalization" and layer.axis not in (-1, len(layer.input.shape) - 1):
        return f"normalises axis {layer.axis}, not the channel axis"
    if kind == "Activation" and getattr(layer.activation, "__name__", "") in _CROSS_CHANNEL_ACTIVATIONS:
        return f"applies {layer.activation.__name__} across channels"
    return None


def analyse(model) -> _Analysis:
    """Walk the layers in graph order and tie every tensor's channel axis to a group."""
    groups = _Groups()
    tensor_group: dict[tuple, int] = {}
    inputs: dict[str, int] = {}
    outputs: dict[str, int] = {}
    for tensor in model.inputs:
        tensor_group[_key(tensor)] = groups.new(int(tensor.shape[-1]), frozen_by="")
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        incoming = _flatten(layer.input)
        # A tensor from outside the walked layers (a Sequential model's input) is a whole group of its own.
        in_groups = [tensor_group[_key(t)] if _key(t) in tensor_group else groups.new(int(t.shape[-1]), frozen_by="")
                     for t in incoming]
        out_tensors = _flatten(layer.output)
        reason = _unsupported_reason(layer)
        known = kind in ("Conv2D", "Dense", "DepthwiseConv2D", "BatchNormalization", "Activation") \
            or kind in _PASS_THROUGH or kind in _MERGES
        if reason is None and not known:
            reason = "is not a layer the pruner can slice"
        if reason is None and kind in _MERGES and len({groups.group(g).channels for g in in_groups}) != 1:
            reason = "merges tensors of different channel counts (broadcasting)"
        if reason is None and len(out_tensors) != 1:
            reason = "has several outputs"
        if reason is not None:
            line = f"layer '{layer.name}' ({kind}) {reason}"
            for g in in_groups:
                groups.group(g).frozen_by.append(line)
            for t in out_tensors:
                tensor_group[_key(t)] = groups.new(int(t.shape[-1]) if t.shape else 0, frozen_by=line)
            continue
        (out,) = out_tensors
        if kind in ("Conv2D", "Dense"):
            inputs[layer.name] = in_groups[0]
            outputs[layer.name] = groups.new(int(out.shape[-1]), producer=layer.name)
        elif kind in _MERGES:
            merged = in_groups[0]
            for g in in_groups[1:]:
                merged = groups.union(merged, g)
            outputs[layer.name] = merged
        else:  # per-channel: the output keeps the input's group (and its slicing)
            inputs[layer.name] = outputs[layer.name] = in_groups[0]
        tensor_group[_key(out)] = outputs[layer.name]
    for tensor in model.outputs:
        groups.group(tensor_group[_key(tensor)]).frozen_by.append("")
    return _Analysis(groups, inputs, outputs)


def _flatten(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


# ---- ranking and rebuilding -------------------------------------------------------------------------------------


def channel_scores(model, producers: list[str], criterion: str) -> np.ndarray:
    """Importance of each output channel of a group: the filter norm, each producer scaled to mean 1, summed."""
    total = np.zeros(0)
    for name in producers:
        kernel = np.asarray(model.get_layer(name).kernel)
        flat = np.abs(kernel.reshape(-1, kernel.shape[-1]))
        norms = flat.sum(axis=0) if criterion == "l1" else np.sqrt((flat ** 2).sum(axis=0))
        norms = norms / max(float(norms.mean()), 1e-12)
        total = norms if not total.size else total + norms
    return total


def prune(model, options: PruneOptions) -> PrunedModel:
    """Remove ``options.fraction`` of the filters of every prunable group; return the smaller model with kept
    weights (not fine-tuned)."""
    import keras  # late: keep TensorFlow off the start-up of commands that never prune

    options.check()
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or not model.inputs:
        raise PruneError(f"{getattr(model, 'name', model)!r} is not a built Keras functional or Sequential model",
                         hint="pruning needs the Keras source: the built-in model, --keras-model or --arch")
    analysis = analyse(model)
    groups = analysis.groups
    keep: dict[int, np.ndarray] = {}
    kept_whole: dict[str, list[str]] = {}  # why -> the producers whose filters that keeps
    roots = sorted({groups.find(g) for g in [*analysis.inputs.values(), *analysis.outputs.values()]})
    for root in roots:
        group = groups.data[root]
        if not group.producers:
            continue
        reasons = [r for r in group.frozen_by if r]
        if reasons:
            for reason in dict.fromkeys(reasons):
                kept_whole.setdefault(reason, []).extend(group.producers)
            continue
        if "" in group.frozen_by:
            continue  # reaches the model's input or output: those widths are a contract
        count = max(1, int(round(group.channels * (1.0 - options.fraction))))
        scores = channel_scores(model, group.producers, options.criterion)
        keep[root] = np.sort(np.argsort(-scores, kind="stable")[:count])
    skipped = [f"{reason}; the filters of {', '.join(repr(p) for p in producers)} are kept whole"
               for reason, producers in kept_whole.items()]
    if not keep:
        raise PruneError(f"nothing to prune in {model.name!r}: no convolution's filters can be removed"
                         + (f" ({'; '.join(skipped)})" if skipped else ""), hint="check --prune")

    def kept(layer_name: str, table: dict[str, int]) -> np.ndarray | None:
        g = table.get(layer_name)
        return None if g is None else keep.get(groups.find(g))

    config = model.get_config()
    widths: dict[str, tuple[int, int]] = {}
    for layer_config in config["layers"]:
        layer_config.pop("build_config", None)  # recorded input widths: let every layer build from its new input
        name = layer_config["config"].get("name")
        out_keep = kept(name, analysis.outputs)
        kind = layer_config["class_name"]
        if out_keep is not None and kind in ("Conv2D", "Dense"):
            key = "filters" if kind == "Conv2D" else "units"
            widths[name] = (int(layer_config["config"][key]), int(len(out_keep)))
            layer_config["config"][key] = int(len(out_keep))
    smaller = type(model).from_config(config)
    for layer in model.layers:
        if not layer.weights:
            continue
        sliced = _slice_weights(layer, kept(layer.name, analysis.inputs), kept(layer.name, analysis.outputs))
        smaller.get_layer(layer.name).set_weights(sliced)
    return PrunedModel(smaller, widths, (graph.count_multiply_adds(model), graph.count_multiply_adds(smaller)), options,
                       tuple(skipped))


def _slice_weights(layer, in_keep: np.ndarray | None, out_keep: np.ndarray | None) -> list[np.ndarray]:
    """The layer's weights restricted to the kept input and output channels (None: all of them)."""
    kind = type(layer).__name__
    weights = [np.asarray(w) for w in layer.get_weights()]
    if in_keep is None and out_keep is None:
        return weights
    if kind in ("Conv2D", "Dense"):
        kernel = weights[0]
        if in_keep is not None:
            kernel = np.take(kernel, in_keep, axis=-2)
        if out_keep is not None:
            kernel = np.take(kernel, out_keep, axis=-1)
        rest = [w[out_keep] if out_keep is not None else w for w in weights[1:]]  # the bias
        return [kernel, *rest]
    if kind in ("DepthwiseConv2D", "BatchNormalization") and in_keep is not None:
        # Depthwise: kernel (kh, kw, channels, 1) and bias (channels,); BN: gamma, beta, moving mean and variance.
        return [np.take(w, in_keep, axis=2 if w.ndim == 4 else 0) for w in weights]
    raise PruneError(f"layer '{layer.name}' ({kind}) has weights on pruned channels but no slicing rule")


# ---- fine-tuning ------------------------------------------------------------------------------------------------


# Fine-tuning learns from the unpruned model's softened answers mixed with the labels, on every drawing the source
# trained on: its soft answers carry what it learnt about hard drawings, and on the built-in model this kept the
# worst robustness condition where labels alone lost it (the measurements: docs/optimize-notes.md, "Fine-tuning").
# How many drawings of each training image: ``fine_tune_renderings`` (12 by default, as the built-in model trained).
FINE_TUNE_LEARNING_RATE = 3e-3
SOFT_TARGET_TEMPERATURE = 2.0
SOFT_TARGET_WEIGHT = 0.7


def soft_targets(teacher_logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Training targets mixing the unpruned model's softened answers with the true labels."""
    one_hot = np.eye(teacher_logits.shape[1], dtype=np.float32)[labels]
    soft = softmax(teacher_logits / SOFT_TARGET_TEMPERATURE)
    return (SOFT_TARGET_WEIGHT * soft + (1 - SOFT_TARGET_WEIGHT) * one_hot).astype(np.float32)


def fine_tune(model, x: np.ndarray, targets: np.ndarray, *, epochs: int, from_logits: bool,
              learning_rate: float = FINE_TUNE_LEARNING_RATE, batch_size: int = 32, seed: int = 0,
              on_epoch: Callable[[int, dict], None] | None = None):
    """A few epochs on ``targets`` (one probability row per image, see ``soft_targets``), so the kept filters make up
    for the removed ones; the rate decays to zero so the last steps settle them."""
    import keras  # late: keep TensorFlow off the start-up of commands that never prune
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    steps = epochs * -(-len(x) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=from_logits), metrics=["accuracy"])
    callbacks = []
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(epoch, logs or {})))
    model.fit(x, targets, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0, callbacks=callbacks)
    return model


# ---- from an export directory to a validated, smaller ONNX model -------------------------------------------------


@dataclass
class PrunedExport:
    pruned: PrunedModel
    parity: Parity  # the pruned Keras model vs its ONNX export
    fine_tune_epochs: int  # 0 when there was nothing labelled to fine-tune on
    note: str

    def details(self) -> dict:
        return {"tool": "keras structured pruning", **self.pruned.summary(),
                "fine_tune_epochs": self.fine_tune_epochs, "note": self.note,
                "parity_tf_vs_onnx": {"max_abs_diff": self.parity.max_abs_diff,
                                      "top1_agreement": self.parity.top1_agreement}}


def prune_export(export_dir: Path, manifest: Manifest, options: PruneOptions, target: Path, datasets: Datasets,
                 nhwc: ImageTransform, *, fine_tune_epochs: int = 3, fine_tune_renderings: int = 12, seed: int = 0,
                 reporter: Reporter | None = None) -> PrunedExport:
    """Prune the export's Keras source, fine-tune it on the export's labelled training images when its dataset has
    them, and write it to ``target`` through the export's own checks (tf2onnx, ONNX checker, parity)."""
    reporter = reporter or Reporter(quiet=True)
    source = keras_from_export(export_dir, manifest)
    with reporter.step(f"Pruning {options.fraction:.0%} of the filters ({options.criterion} ranking)"):
        pruned = prune(source, options)
    for line in pruned.skipped:
        reporter.info(f"pruning: {line}")
    training = None
    if fine_tune_epochs:
        with reporter.bar(None, f"Drawing the training images ({fine_tune_renderings} renderings each where the "
                          "dataset can draw them)") as bar:
            training = datasets.own.training(nhwc, renderings=fine_tune_renderings, progress=bar.advance)
    if training is not None:
        # The model's own augmented training renderings (every filter, size, polarity, margin, colour and
        # compression it learnt to read): fine-tuning on the plain rendering alone would trade that robustness away.
        x, labels = training
        with reporter.step(f"Scoring {len(x)} training images with the unpruned model (soft targets)"):
            teacher = teacher_logits(validate.onnx_session(Path(export_dir) / manifest.model_file),
                                     x.transpose(0, 3, 1, 2).copy() if manifest.preprocessing.layout == "NCHW" else x,
                                     manifest.output_kind)
        percent = round(options.fraction * 100)
        with reporter.bar(fine_tune_epochs, f"Fine-tuning the {percent} % pruned model") as bar:
            fine_tune(pruned.model, x, soft_targets(teacher, labels), epochs=fine_tune_epochs,
                      from_logits=manifest.output_kind == "logits", seed=seed, on_epoch=lambda _e, logs: bar.advance(
                          1, status=f"loss {logs.get('loss', 0):.3f} acc {logs.get('accuracy', 0):.3f}"))
        note = (f"fine-tuned {fine_tune_epochs} epochs on the export's training images ({len(x)}), towards the "
                "unpruned model's softened answers mixed with the labels")
    elif not fine_tune_epochs:
        note = "not fine-tuned (--fine-tune-epochs 0)"
    else:
        note = ("the export's dataset has no labelled training images (a user model, or a random-weight --arch): "
                "pruned for speed measurement only, not fine-tuned")
    model: Any = pruned.model
    height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
    loaded = LoadedModel(name=manifest.name, call=lambda x: model(x, training=False),
                         input_shape=(height, width, channels), num_classes=manifest.num_classes,
                         transform=manifest.preprocessing, labels=manifest.labels, source={},
                         output_kind=manifest.output_kind, keras_model=model)
    parity_inputs = datasets.heldout.heldout(nhwc)[0][:32]
    parity = pipeline.export_like(loaded, manifest, target, parity_inputs, reporter)
    return PrunedExport(pruned, parity, fine_tune_epochs if training is not None else 0, note)
