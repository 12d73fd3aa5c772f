"""Structured pruning on tiny real Keras models: a conv-BN stack, a MobileNetV2-style inverted residual block
(depthwise convolution, residual ``Add``) and layers the pruner cannot slice.

The exactness tests zero half of each layer's filters first: those have the smallest L1 norm, so the pruner must
remove exactly them, and since they contribute nothing the smaller network must give the same outputs. That checks
the ranking, the slicing of every following layer (BN, depthwise, the next convolution) and that residual branches
are cut at the same indices, all at once."""

from __future__ import annotations

import numpy as np
import pytest

from triton_deploy.errors import UsageError
from triton_deploy.export import digits, pipeline, validate
from triton_deploy.export.sources import LoadedModel
from triton_deploy.optimize import prune

pytestmark = pytest.mark.slow


def conv_bn_stack():
    """Conv(8)-BN-ReLU-MaxPool, Conv(16)-BN-ReLU, global pooling, Dense(3), on 16x16 greyscale."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 1), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.MaxPooling2D()(layers.ReLU()(layers.BatchNormalization()(x)))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    outputs = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def inverted_residual():
    """MobileNetV2's block: stem Conv(8)-BN, expand 1x1 Conv(16)-BN-ReLU6, 3x3 DepthwiseConv-BN-ReLU6, project
    1x1 Conv(8)-BN, Add with the stem, global pooling, Dense(3)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(4)
    inputs = keras.Input((16, 16, 3), name="image")
    stem = layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs))
    x = layers.Conv2D(16, 1, use_bias=False, name="expand")(stem)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    x = layers.BatchNormalization()(layers.Conv2D(8, 1, use_bias=False, name="project")(x))
    x = layers.Add(name="residual")([stem, x])
    outputs = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def zero_filters(model, layer_names, indices):
    """Zero the given output filters of each layer (fresh BN layers map 0 to 0, so those channels stay 0)."""
    for name in layer_names:
        layer = model.get_layer(name)
        kernel = layer.get_weights()[0]
        kernel[..., indices] = 0.0
        layer.set_weights([kernel, *layer.get_weights()[1:]])


def sample_batch(model, n=4):
    return np.random.default_rng(0).random((n, *model.inputs[0].shape[1:]), dtype=np.float32)


def test_conv_bn_stack_drops_the_smallest_filters_exactly():
    model = conv_bn_stack()
    zero_filters(model, ["conv1"], [0, 2, 4, 6])
    zero_filters(model, ["conv2"], list(range(1, 16, 2)))
    pruned = prune.prune(model, prune.PruneOptions(0.5))
    assert pruned.widths == {"conv1": (8, 4), "conv2": (16, 8)} and pruned.skipped == ()
    smaller = pruned.model
    np.testing.assert_array_equal(smaller.get_layer("conv1").get_weights()[0],
                                  model.get_layer("conv1").get_weights()[0][..., [1, 3, 5, 7]])
    batch = sample_batch(model)
    np.testing.assert_allclose(smaller(batch, training=False), model(batch, training=False), atol=1e-5)
    assert smaller.output_shape == model.output_shape


def test_pruned_stack_has_the_expected_multiply_adds():
    pruned = prune.prune(conv_bn_stack(), prune.PruneOptions(0.5))
    before = 16 * 16 * 8 * 9 * 1 + 8 * 8 * 16 * 9 * 8 + 16 * 3  # conv1 at 16x16, conv2 at 8x8, dense
    after = 16 * 16 * 4 * 9 * 1 + 8 * 8 * 8 * 9 * 4 + 8 * 3
    assert pruned.multiply_adds == (before, after)
    assert pruned.summary()["multiply_adds_per_image"]["ratio"] == pytest.approx(after / before)


def test_inverted_residual_prunes_depthwise_with_its_input_and_residual_branches_together():
    model = inverted_residual()
    zero_filters(model, ["stem", "project"], [1, 2, 5, 6])  # the Add ties these two: same indices on both
    zero_filters(model, ["expand"], list(range(8)))
    pruned = prune.prune(model, prune.PruneOptions(0.5))
    assert pruned.widths == {"stem": (8, 4), "expand": (16, 8), "project": (8, 4)}
    smaller = pruned.model
    assert smaller.get_layer("depthwise").get_weights()[0].shape == (3, 3, 8, 1)
    batch = sample_batch(model)
    np.testing.assert_allclose(smaller(batch, training=False), model(batch, training=False), atol=1e-5)


def test_pruned_block_exports_to_onnx_with_parity(tmp_path):
    pruned = prune.prune(inverted_residual(), prune.PruneOptions(0.5)).model
    loaded = LoadedModel(name="block", call=lambda x: pruned(x, training=False), input_shape=(16, 16, 3),
                         num_classes=3, transform=digits.TRANSFORM, labels=("a", "b", "c"), source={})
    path = tmp_path / "pruned.onnx"
    _, parity = pipeline.convert_and_check(loaded, path, sample_batch(pruned, 16), validate.ParityPlan(batch_sizes=(1, 16)),
                                           input_name="image", output_name="logits", opset=17, nchw=False)
    assert parity.max_abs_diff <= 1e-4 and parity.top1_agreement == 1.0
    import onnx

    weights = {t.name: tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}
    assert any(dims[:2] == (8, 1) and dims[2:] == (3, 3) for dims in weights.values())  # depthwise: 8 groups of 1


def test_a_layer_the_pruner_cannot_slice_is_named_and_its_inputs_kept_whole():
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, name="trunk")(inputs)
    joined = layers.Concatenate(name="join")([layers.Conv2D(4, 1, name="left")(x), layers.Conv2D(4, 1, name="right")(x)])
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(joined)))
    pruned = prune.prune(model, prune.PruneOptions(0.5))
    assert pruned.widths == {"trunk": (8, 4)}
    assert pruned.skipped == ("layer 'join' (Concatenate) is not a layer the pruner can slice; the filters of "
                              "'left', 'right' are kept whole",)


def test_nothing_prunable_is_one_clear_error():
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 1))
    flat = layers.Flatten(name="flat")(layers.Conv2D(4, 3, name="only")(inputs))
    model = keras.Model(inputs, layers.Dense(2)(flat))
    with pytest.raises(prune.PruneError, match=r"nothing to prune .*layer 'flat' \(Flatten\).*'only'"):
        prune.prune(model, prune.PruneOptions(0.5))


def test_sequential_models_prune_too():
    import keras
    from keras import layers

    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(6, 3, name="c"), layers.ReLU(),
                              layers.GlobalAveragePooling2D(), layers.Dense(2)])
    pruned = prune.prune(model, prune.PruneOptions(1 / 3, criterion="l2"))
    assert pruned.widths == {"c": (6, 4)} and pruned.model(sample_batch(model)).shape == (4, 2)


@pytest.mark.parametrize("options, flag", [(prune.PruneOptions(1.0), "--prune"), (prune.PruneOptions(0.0), "--prune"),
                                           (prune.PruneOptions(0.5, criterion="taylor"), "--prune-criterion")])
def test_bad_options_name_the_flag(options, flag):
    with pytest.raises(UsageError, match=flag):
        prune.prune(conv_bn_stack(), options)
