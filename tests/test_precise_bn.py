"""Precise batch-norm statistics: the moving statistics become the data's, weights stay."""
import keras
import numpy as np
import pytest

from utils.precise_bn import batchnorm_layers, recalibrate_batchnorm


def _model():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="bn_in")],
                             name="inner")
    x = keras.Input((4,))
    y = keras.layers.BatchNormalization(name="bn_out")(keras.layers.Dense(3, name="d")(inner(x)))
    return keras.Model(x, y)


def test_moving_statistics_become_the_batch_average_and_weights_stay():
    model = _model()
    assert [l.name for l in batchnorm_layers(model)] == ["bn_in", "bn_out"]
    rng = np.random.default_rng(0)
    batches = [rng.normal(5.0, 2.0, (8, 4)).astype("float32") for _ in range(6)]
    kernel = model.get_layer("d").kernel.numpy().copy()
    used = recalibrate_batchnorm(model, iter(batches + batches), steps=6)
    assert used == 6
    bn_in = model.get_layer("inner").get_layer("bn_in")
    np.testing.assert_allclose(bn_in.moving_mean.numpy(),
                               np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(bn_in.moving_variance.numpy(),
                               np.mean([b.var(0) for b in batches], 0), rtol=1e-4)
    # The layer after the Dense sees normalised inputs: its statistics are not the init's.
    assert not np.allclose(model.get_layer("bn_out").moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(model.get_layer("d").kernel.numpy(), kernel)
    assert all(l.momentum == 0.99 for l in batchnorm_layers(model))


def test_tuples_and_empty_input():
    model = _model()
    x = np.ones((4, 4), "float32") * 3
    assert recalibrate_batchnorm(model, [(x, None)], steps=5) == 1
    np.testing.assert_allclose(model.get_layer("inner").get_layer("bn_in").moving_mean.numpy(), 3.0)
    fresh = _model()
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_batchnorm(fresh, [], steps=3)
    np.testing.assert_array_equal(fresh.get_layer("bn_out").moving_mean.numpy(), 0.0)
    with pytest.raises(ValueError, match="at least 1"):
        recalibrate_batchnorm(fresh, [x], steps=0)
