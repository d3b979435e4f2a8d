"""Reduced precision does not silently trade accuracy for speed: where ``--precision
auto`` would use bfloat16 (or float16 on a GPU), the U-Net training step's loss on a
fixed batch stays within a stated tolerance of the float32 one, before and after an
optimizer step (the ResNet50 encoder unfrozen, so every fused batch norm and the whole
backward pass are in it). Where ``auto`` keeps float32, these numerics are never used:
without native bfloat16 TensorFlow's fallback kernels differ (8.3 % on an AVX2-only
CPU), so the test checks the decision instead and skips, naming the CPU."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nets.unet import build_unet
from nets.unet_training import get_loss
from utils.precision import MIN_SPEEDUP, resolve_precision
from utils.utils import set_seed

# bfloat16 keeps 8 bits of mantissa (about 0.4 % per rounding). Averaged over every
# pixel, the Dice + Focal loss moves much less than that per layer; 2 % leaves room
# for other seeds and oneDNN versions while catching a broken cast (statistics kept
# in bfloat16, a float16 overflow, an unscaled gradient), which moves it far more.
LOSS_RTOL = 0.02


def _train_losses(model, x, y):
    """Loss on (x, y) in training mode, then again after one Adam step on it."""
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = get_loss("dice_focal", np.ones(5, "float32"))
    losses = []
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, tf.cast(model(x, training=True), tf.float32))
        losses.append(float(loss))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
    return losses


def test_bfloat16_step_loss_matches_float32():
    # The decision at the demo U-Net's sizes (64x128 windows, batch 8).
    decision = resolve_precision("auto", (64, 128), 8, quiet=True)
    if decision["precision"] == "float32":
        assert decision["device"] == "gpu" or not decision["native_bf16"] or \
            decision["probe"]["speedup"] < MIN_SPEEDUP, decision
        pytest.skip(f"--precision auto keeps float32 on {decision['cpu']} "
                    f"({decision['reason']}): no reduced-precision numerics to check")
    set_seed(0)
    shape = (64, 64, 3)
    reference = build_unet(shape, 5, "resnet50")
    try:
        keras.mixed_precision.set_global_policy(decision["policy"])
        mixed = build_unet(shape, 5, "resnet50")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(reference.get_weights())
    assert mixed.get_layer("resnet50").get_layer("res2a_branch2a").compute_dtype != "float32"
    # Photos of coarse 8x8-pixel blocks, each labelled by its brightest channel.
    rng = np.random.default_rng(0)
    blocks = rng.uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    x = np.kron(blocks, np.ones((1, 8, 8, 1), "float32"))
    y = np.eye(6, dtype="float32")[x.argmax(-1) + 1]
    float32_losses = _train_losses(reference, x, y)
    mixed_losses = _train_losses(mixed, x, y)
    np.testing.assert_allclose(mixed_losses, float32_losses, rtol=LOSS_RTOL)
    # The step changed the loss measurably, so this compares more than two constants.
    assert abs(float32_losses[1] - float32_losses[0]) > 1e-3
