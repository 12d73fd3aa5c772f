"""The built-in model: a small CNN trained on scikit-learn's bundled 8x8 digits, drawn the ways people send digits.

The data ships inside scikit-learn (no download). Each training digit is drawn many times with Pillow - any size from
8 to 512 px, every resampling filter, either polarity, with margins, colour, palettes, rotation, blur, noise and
JPEG/WebP compression (``render.py``) - and goes through the same ``ImageTransform`` the server uses, so training
sees exactly what serving computes. Robustness comes from the model: preprocessing treats digits like any image.

The network is sized for realistic compute (about 48M multiply-adds per image — "48 MFLOPs" in the convention
MobileNet's "300 MFLOPs" uses — from four 3x3 convolution blocks of 32 to 128 channels) so that serving overhead,
batching and quantisation show the effects they have on real models: with half that compute this CPU runs it so fast
that per-call overhead hides everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from triton_deploy.preprocessing import ImageTransform

from . import render

IMAGE_SIZE = 64
CHANNELS = (32, 64, 128, 128)  # one 3x3 conv block each, at 64, 32, 16 and 8 pixels
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
LABELS = tuple(str(d) for d in range(10))
TRANSFORM = ImageTransform(height=IMAGE_SIZE, width=IMAGE_SIZE, color_mode="L", scale=1.0 / 255.0)


@dataclass(frozen=True)
class DigitsData:
    """Digits as uint8 images at their native 8x8 size, with a seeded, recorded train / held-out split."""

    images: np.ndarray  # (N, 8, 8) uint8, ink bright on dark
    labels: np.ndarray  # (N,) int64
    train_indices: np.ndarray
    heldout_indices: np.ndarray
    seed: int
    test_fraction: float

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        index = self.train_indices if which == "train" else self.heldout_indices
        return self.images[index], self.labels[index]

    def record(self) -> dict:
        """What the manifest keeps so anyone can rebuild the same held-out set."""
        return {
            "name": "sklearn-digits",
            "image_size": [IMAGE_SIZE, IMAGE_SIZE],
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "train_size": int(len(self.train_indices)),
            "heldout_size": int(len(self.heldout_indices)),
            "heldout_indices": [int(i) for i in self.heldout_indices],
        }


def load_digits_data(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
    # scikit-learn (about a second to import): only when the digits data set is loaded
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.2 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0.2, 1), got {test_fraction}")
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels -> 0..255
    labels = bunch.target.astype(np.int64)
    indices = np.arange(len(labels))
    train, heldout = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=labels)
    return DigitsData(images, labels, np.sort(train), np.sort(heldout), seed, test_fraction)


def digit_image(pixels: np.ndarray, size: int = IMAGE_SIZE) -> Image.Image:
    """One 8x8 uint8 digit as a greyscale PIL image upscaled to ``size`` (what a user would send us)."""
    return Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)


def to_model_input(images: np.ndarray, transform: ImageTransform = TRANSFORM) -> np.ndarray:
    """8x8 uint8 digits -> the float tensor the model takes, through the serving transform."""
    pixels = np.stack([transform.resize(digit_image(image)) for image in images])
    return transform.normalise(pixels)


def build_digits_cnn():
    """Four conv blocks (32, 64, 128, 128 channels) at 64, 32, 16, 8 pixels: about 48M multiply-adds per image."""
    # TensorFlow: seconds to import, paid only by the commands that build, train or convert a model
    import keras
    from keras import layers

    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), name=INPUT_NAME)
    x = inputs
    for channels in CHANNELS:
        x = layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)  # short training: let moving stats keep up
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(len(LABELS), name=OUTPUT_NAME)(x)  # logits: the postprocess model applies softmax
    return keras.Model(inputs, outputs, name="digits_cnn")


# Training set size and length, chosen against the time budget (make demo's training step under 2 minutes on 2
# cores): every training digit drawn AUGMENTED_PER_IMAGE times, then EPOCHS passes in small batches (twice the updates
# of 32 for nearly the same time on this CPU) at a high peak rate. The measured sweep behind each value:
# docs/export.md#why-this-training-schedule
AUGMENTED_PER_IMAGE = 12
EPOCHS = 2
BATCH_SIZE = 16
PEAK_LEARNING_RATE = 1.2e-2


def training_steps(data: DigitsData, epochs: int = EPOCHS, per_image: int = AUGMENTED_PER_IMAGE,
                   batch_size: int = BATCH_SIZE) -> int:
    return epochs * -(-len(data.train_indices) * per_image // batch_size)


def augmented_training_set(data: DigitsData, per_image: int = AUGMENTED_PER_IMAGE,
                           transform: ImageTransform = TRANSFORM, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """The training digits (only ``data.train_indices``), each drawn ``per_image`` times with random renderings
    (see ``render.sample_renderings``), as the uint8 pixels the server's ``transform`` makes of those files.
    Deterministic for ``data.seed``. ``progress(n)`` is called as images are drawn."""
    images, labels = data.split("train")
    rng = np.random.default_rng([data.seed, 0])
    index = np.repeat(np.arange(len(images)), per_image)
    renderings = render.sample_renderings(len(index), rng)
    noise_seeds = rng.integers(0, 2**31, len(index))
    pixels = render.model_batch(images[index], renderings, transform, noise_seeds, progress=progress)
    return pixels, labels[index]


def train_digits_model(data: DigitsData, *, epochs: int = EPOCHS, per_image: int = AUGMENTED_PER_IMAGE,
                       batch_size: int = BATCH_SIZE, progress=None, render_progress=None):
    """Train the CNN on augmented digits, deterministically (seeded, deterministic ops). Returns the Keras model.

    ``render_progress(n)`` follows the drawing of the training set; ``progress`` is a Keras callback (per batch)."""
    # TensorFlow: seconds to import, paid only by the commands that build, train or convert a model
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(data.seed)
    tf.config.experimental.enable_op_determinism()
    pixels, labels = augmented_training_set(data, per_image, progress=render_progress)
    batches = _Batches(pixels, labels, batch_size, seed=data.seed)
    steps = epochs * len(batches)
    # Warm up, then cosine decay to zero: with two passes over the data the last steps need a small rate to settle.
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=1e-4, decay_steps=steps - steps // 10, warmup_target=PEAK_LEARNING_RATE, warmup_steps=steps // 10)
    model = build_digits_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks = [progress] if progress is not None else []
    model.fit(batches, epochs=epochs, verbose=0, callbacks=callbacks)
    return model


def _Batches(pixels: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):  # noqa: N802 (keras is lazy)
    """Shuffled batches of uint8 pixels, normalised per batch by the serving transform (the whole augmented set as
    float32 would take 4x the memory)."""
    # TensorFlow: seconds to import, paid only by the commands that build, train or convert a model
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng([seed, 2])
            self.order = self.rng.permutation(len(pixels))

        def __len__(self) -> int:
            return -(-len(pixels) // batch_size)

        def __getitem__(self, index: int):
            rows = np.sort(self.order[index * batch_size:(index + 1) * batch_size])
            return TRANSFORM.normalise(pixels[rows]), labels[rows]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(pixels))

    return Batches()


def count_multiply_adds(model) -> int:
    """Multiply-adds of the Conv2D, DepthwiseConv2D and Dense layers for one image: the bulk of the compute
    (FLOPs = 2x this)."""
    # TensorFlow: seconds to import, paid only by the commands that build, train or convert a model
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * c_out * kh * kw * layer.input.shape[-1] // getattr(layer, "groups", 1)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):  # one kh x kw filter per output channel
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * c_out * kh * kw
        elif isinstance(layer, keras.layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return int(macs)
