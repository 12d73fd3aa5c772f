"""Knowledge distillation: train a smaller Keras student on the exported teacher's soft targets, then export it.

The teacher is the exported ``model.onnx`` run with ONNX Runtime, so no Keras teacher (and no training code of the
original model) is needed. Training images are the export's own labelled training images (its ``Dataset``; only the
built-in model's dataset has them), through the export's own ``ImageTransform``. The loss is Hinton's: ``alpha * T^2 * CE(softmax(teacher / T), softmax(student / T)) +
(1 - alpha) * CE(labels, student)``. The student goes through the same conversion and checks as ``triton-deploy
export`` (tf2onnx, ONNX checker, strict shape inference, TensorFlow vs ONNX Runtime parity).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from triton_deploy.errors import Problem, UsageError, raise_problems
from triton_deploy.export import graph, pipeline, validate
from triton_deploy.export.datasets import Dataset
from triton_deploy.export.sources import LoadedModel
from triton_deploy.spec import Manifest, Parity


@dataclass(frozen=True)
class DistillOptions:
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft-target term; 1 - alpha goes to the hard labels
    epochs: int = 12
    channels: tuple[int, ...] = (16, 16, 32, 64)  # the built-in model's CNN has (32, 64, 128, 128)
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = 0

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.temperature <= 0:
            problems.append((f"distillation temperature must be > 0, got {self.temperature}",
                             "check --distill-temperature"))
        if not 0.0 <= self.alpha <= 1.0:
            problems.append((f"distillation alpha must be in [0, 1], got {self.alpha}", "check --distill-alpha"))
        if self.epochs < 1:
            problems.append(("distillation needs at least one epoch", "check --distill-epochs"))
        if not self.channels or any(c < 1 for c in self.channels):
            problems.append((f"student channels {self.channels} must be positive", "check --student-channels"))
        return problems

    def check(self) -> None:
        raise_problems(self.problems())


@dataclass(frozen=True)
class DistilledModel:
    proto: onnx.ModelProto
    parity: Parity  # the student in TensorFlow vs its ONNX export
    source: dict
    flops_per_image: int


def teacher_logits(session, inputs: np.ndarray, output_kind: str, batch_size: int = 64) -> np.ndarray:
    """The teacher's outputs as logits (log-probabilities for a softmax-ending model)."""
    name = session.get_inputs()[0].name
    outputs = np.concatenate([session.run(None, {name: inputs[i:i + batch_size]})[0]
                              for i in range(0, len(inputs), batch_size)])
    if output_kind == "probabilities":
        return np.log(np.clip(outputs, 1e-7, 1.0)).astype(np.float32)
    return outputs.astype(np.float32)


def distill(teacher_path: Path, manifest: Manifest, options: DistillOptions, dataset: Dataset, *, scratch: Path,
            on_epoch: Callable[[int, dict], None] | None = None) -> DistilledModel:
    """Train the student against ``teacher_path`` on ``dataset``'s training images and return its validated ONNX
    graph; ``on_epoch(epoch, logs)`` after each epoch."""
    options.check()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # late: keep TensorFlow off the start-up of commands that never distil
    import tensorflow as tf

    transform = manifest.preprocessing
    nhwc = dataclasses.replace(transform, layout="NHWC")  # Keras trains on NHWC
    nchw = transform.layout == "NCHW"
    training = dataset.training(nhwc)
    if training is None:
        raise UsageError(f"distillation trains on labelled training images and the export of '{manifest.name}' has "
                         "none", hint="leave 'distilled' out of --variants")
    x_train, fit_labels = training
    teacher = validate.onnx_session(teacher_path)
    targets = teacher_logits(teacher, x_train.transpose(0, 3, 1, 2).copy() if nchw else x_train, manifest.output_kind)
    if targets.shape[-1] != manifest.num_classes:
        raise UsageError(f"the teacher returns {targets.shape[-1]} scores but the manifest names "
                         f"{manifest.num_classes} classes", hint="check the export directory")

    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()
    height, width, channels = x_train.shape[1:]
    student = build_student((height, width, channels), manifest.num_classes, options.channels)
    student.compile(optimizer=keras.optimizers.Adam(learning_rate=options.learning_rate),
                    loss=distillation_loss(options.temperature, options.alpha, manifest.num_classes))
    y = np.concatenate([targets, fit_labels[:, None].astype(np.float32)], axis=1)
    callbacks = [] if on_epoch is None else [
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(epoch, logs or {}))]
    student.fit(x_train, y, epochs=options.epochs, batch_size=options.batch_size, shuffle=True, verbose=0,
                callbacks=callbacks)

    probabilities = manifest.output_kind == "probabilities"
    call = (lambda x: keras.ops.softmax(student(x, training=False))) if probabilities else (
        lambda x: student(x, training=False))
    height, width, channels = x_train.shape[1:]
    loaded = LoadedModel(
        name=manifest.name, call=call, input_shape=(height, width, channels), num_classes=manifest.num_classes,
        transform=transform, labels=manifest.labels, source={}, output_kind=manifest.output_kind,
        keras_model=student)
    path = Path(scratch) / "student.onnx"
    parity = pipeline.export_like(loaded, manifest, path, dataset.heldout(nhwc)[0][:32])
    proto = onnx.load(str(path))
    source = {"kind": "distilled", "teacher_sha256": manifest.model_sha256, "temperature": options.temperature,
              "alpha": options.alpha, "epochs": options.epochs, "channels": list(options.channels),
              "train_size": int(len(x_train))}
    return DistilledModel(proto, parity, source, _student_flops(student))


def build_student(input_shape: tuple[int, int, int], num_classes: int, channels: tuple[int, ...]):
    """Conv-BN-ReLU-MaxPool blocks with the given widths, global average pooling and a linear classifier."""
    import keras  # late: keep TensorFlow off the start-up of commands that never distil
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for width in channels:
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="student")


def distillation_loss(temperature: float, alpha: float, num_classes: int):
    """``y_true`` packs the teacher's logits and, in the last column, the hard label."""
    import keras  # late: keep TensorFlow off the start-up of commands that never distil
    from keras import ops

    def loss(y_true, y_pred):
        teacher, label = y_true[:, :num_classes], ops.cast(y_true[:, num_classes], "int32")
        soft_targets = ops.softmax(teacher / temperature)
        soft = keras.losses.categorical_crossentropy(soft_targets, y_pred / temperature, from_logits=True)
        hard = keras.losses.sparse_categorical_crossentropy(label, y_pred, from_logits=True)
        return alpha * (temperature ** 2) * soft + (1.0 - alpha) * hard

    return loss


def _student_flops(model) -> int:
    return 2 * graph.count_multiply_adds(model)  # FLOPs, as the manifest records them
