"""nets.layers.BatchNormalization (the fused kernel) computes what
keras.layers.BatchNormalization computes."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nets.layers import BatchNormalization, keras_batch_norm
from utils.precise_bn import batchnorm_layers, recalibrate_batchnorm
from utils.precision import bf16_capped

SHAPE = (2, 5, 6, 3)


def _pair(dtype="float32", momentum=0.9, **kwargs):
    """A Keras BN and a fused BN with the same non-trivial weights."""
    rng = np.random.default_rng(1)
    weights = [rng.uniform(0.5, 1.5, 3), rng.normal(0, 1, 3), rng.normal(0, 1, 3),
               rng.uniform(0.5, 2.0, 3)]
    pair = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(momentum=momentum, dtype=dtype, **kwargs)
        layer.build(SHAPE)
        layer.set_weights([w.astype("float32") for w in weights])
        pair.append(layer)
    return pair


def _inputs(shape=SHAPE):
    return tf.constant(np.random.default_rng(2).normal(3.0, 2.0, shape).astype("float32"))


def _step(layer, x, training):
    """Output, gradients (input, gamma, beta) of a weighted sum, and the moving stats."""
    weight = tf.constant(np.random.default_rng(3).normal(0, 1, x.shape).astype("float32"))

    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weight)
        return (y, *tape.gradient(loss, [x, layer.gamma, layer.beta]))

    out = [np.asarray(tf.cast(t, tf.float32)) for t in run(x)]
    return out + [layer.moving_mean.numpy(), layer.moving_variance.numpy()]


@pytest.mark.parametrize("training", [True, False])
def test_float32_matches_keras(training):
    keras_bn, fused_bn = _pair()
    start = fused_bn.moving_variance.numpy()
    x = _inputs()
    for ref, got in zip(_step(keras_bn, x, training), _step(fused_bn, x, training)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    if training:
        # Keras updates with the biased batch variance, not the kernel's n/(n-1) one.
        biased = x.numpy().var(axis=(0, 1, 2))
        expected = 0.9 * start + 0.1 * biased
        np.testing.assert_allclose(fused_bn.moving_variance.numpy(), expected, rtol=1e-5)


@pytest.mark.skipif(
    bf16_capped(),
    reason="ONEDNN_MAX_CPU_ISA caps oneDNN below bfloat16, but TensorFlow still sends "
           "it bfloat16 batch norm on an AVX-512 CPU (no kernel: the op aborts)")
def test_bfloat16_matches_keras_within_tolerance():
    # Both upcast to float32 for the statistics; outputs are rounded to bfloat16
    # (8 mantissa bits), so they may differ by a unit in the last place: 1e-2
    # relative. Moving statistics are float32 on both paths.
    keras_bn, fused_bn = _pair(dtype="mixed_bfloat16")
    x = _inputs()
    ref, got = _step(keras_bn, x, True), _step(fused_bn, x, True)
    for name, r, g in zip(["y", "dx", "dgamma", "dbeta"], ref[:4], got[:4]):
        np.testing.assert_allclose(g, r, rtol=2e-2, atol=2e-2 * np.abs(r).max(), err_msg=name)
    for r, g in zip(ref[4:], got[4:]):
        np.testing.assert_allclose(g, r, rtol=1e-4)
    assert fused_bn.moving_mean.dtype == "float32"


def test_frozen_layer_uses_moving_statistics():
    keras_bn, fused_bn = _pair()
    fused_bn.trainable = False
    keras_bn.trainable = False
    x = _inputs()
    before = fused_bn.moving_mean.numpy().copy()
    np.testing.assert_allclose(fused_bn(x, training=True), keras_bn(x, training=False),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fused_bn.moving_mean.numpy(), before)


def _runs_fused_kernel(layer):
    graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
        tf.TensorSpec(SHAPE)).graph
    return any(op.type.startswith("FusedBatchNorm") for op in graph.get_operations())


def test_fused_kernel_runs_and_other_cases_fall_back():
    assert _runs_fused_kernel(_pair()[1])
    with keras_batch_norm():
        unfused = BatchNormalization()
    assert not _runs_fused_kernel(unfused)
    # A 2-D input and a channels-first axis take Keras's path, with its results.
    for shape, axis in (((4, 3), -1), ((2, 3, 5, 6), 1)):
        x = _inputs(shape)
        ref = keras.layers.BatchNormalization(axis=axis)
        got = BatchNormalization(axis=axis)
        np.testing.assert_allclose(got(x, training=True), ref(x, training=True),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.moving_variance.numpy(), ref.moving_variance.numpy(),
                                   rtol=1e-5)


def _tiny_model():
    inputs = keras.Input((6, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = BatchNormalization(name="bn_conv1")(x)
    return keras.Model(inputs, x)


def test_save_load_round_trip_and_weights_shared_with_keras_bn(tmp_path):
    model = _tiny_model()
    x = _inputs((2, 6, 8, 3))
    model(x, training=True)  # move the statistics away from their initial values
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("bn_conv1")) is BatchNormalization
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    # A model built with Keras's layer (an older checkpoint) takes the same weights.
    inputs = keras.Input((6, 8, 3))
    old = keras.Model(inputs, keras.layers.BatchNormalization(name="bn_conv1")(
        keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)))
    assert old.get_layer("bn_conv1").get_config() == model.get_layer("bn_conv1").get_config()
    old.save_weights(tmp_path / "old.weights.h5")
    model.load_weights(tmp_path / "old.weights.h5")
    np.testing.assert_allclose(model(x), old(x), rtol=1e-5, atol=1e-5)


def test_precise_bn_finds_fused_layers_and_sets_biased_statistics():
    model = _tiny_model()
    assert [layer.name for layer in batchnorm_layers(model)] == ["bn_conv1"]
    rng = np.random.default_rng(0)
    batches = [rng.normal(2.0, 3.0, (2, 6, 8, 3)).astype("float32") for _ in range(3)]
    recalibrate_batchnorm(model, batches, steps=3)
    conv = model.get_layer("conv")
    features = [conv(b).numpy() for b in batches]
    bn = model.get_layer("bn_conv1")
    np.testing.assert_allclose(bn.moving_mean.numpy(),
                               np.mean([f.mean((0, 1, 2)) for f in features], 0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(),
                               np.mean([f.var((0, 1, 2)) for f in features], 0), rtol=1e-4)
