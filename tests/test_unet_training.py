"""U-Net losses and metrics against values computed by hand and by the original formulas."""
import math

import numpy as np
import pytest

from nets.unet_training import CE, Focal_Loss, dice_loss_with_CE, dice_loss_with_Focal_Loss, get_loss
from utils.utils_metrics import Iou_score, f_score

EPS = 1e-7


def _np(x):
    return np.asarray(x, dtype=np.float64)


def tiny_case():
    """One image of 1x2 pixels, 2 classes + ignore: pixel A is class 0, pixel B ignored."""
    y_true = np.array([[[[1, 0, 0], [0, 0, 1]]]], np.float32)
    y_pred = np.array([[[[0.8, 0.2], [0.6, 0.4]]]], np.float32)
    return y_true, y_pred, np.array([2.0, 1.0], np.float32)


def test_losses_by_hand_with_ignore_channel_and_class_weights():
    y_true, y_pred, w = tiny_case()
    # Cross-entropy: only pixel A counts, weighted by 2; the mean runs over both pixels.
    ce = (-2 * math.log(0.8) + 0.0) / 2
    # Focal: log p_t = 2 log 0.8, p_t = 0.64, alpha 0.5, gamma 2; pixel B gives 0.
    focal = (-(1 - 0.64) ** 2 * 0.5 * 2 * math.log(0.8) + 0.0) / 2
    # Dice over the batch: tp = (0.8, 0), fp = (1.4 - 0.8, 0.6), fn = (0.2, 0).
    s0 = (2 * 0.8 + 1e-5) / (2 * 0.8 + 0.2 + 0.6 + 1e-5)
    s1 = 1e-5 / (0.6 + 1e-5)
    dice = 1 - (s0 + s1) / 2
    assert float(CE(w)(y_true, y_pred)) == pytest.approx(ce, rel=1e-6)
    assert float(Focal_Loss(w)(y_true, y_pred)) == pytest.approx(focal, rel=1e-5)
    assert float(dice_loss_with_CE(w)(y_true, y_pred)) == pytest.approx(ce + dice, rel=1e-5)
    assert float(dice_loss_with_Focal_Loss(w)(y_true, y_pred)) == pytest.approx(focal + dice, rel=1e-5)
    assert float(get_loss("dice_focal", w)(y_true, y_pred)) == pytest.approx(focal + dice, rel=1e-5)


def test_predictions_are_clipped_to_epsilon():
    y_true = np.array([[[[0, 1, 0]]]], np.float32)
    y_pred = np.array([[[[1.0, 0.0]]]], np.float32)
    assert float(CE([1, 1])(y_true, y_pred)) == pytest.approx(-math.log(EPS), rel=1e-4)


def reference(y_true, y_pred, w, beta=1.0, smooth=1e-5, alpha=0.5, gamma=2.0):
    """The original formulas, written out in NumPy."""
    t = _np(y_true)[..., :-1]
    p = np.clip(_np(y_pred), EPS, 1 - EPS)
    w = _np(w).reshape(1, 1, 1, -1)
    ce = np.mean(np.sum(-t * np.log(p) * w, axis=-1))
    logpt = np.sum(t * np.log(p) * w, axis=-1)
    pt = np.exp(logpt)
    focal = np.mean(-((1 - pt) ** gamma) * alpha * logpt)
    tp = np.sum(t * p, axis=(0, 1, 2))
    fp = np.sum(p, axis=(0, 1, 2)) - tp
    fn = np.sum(t, axis=(0, 1, 2)) - tp
    score = ((1 + beta ** 2) * tp + smooth) / ((1 + beta ** 2) * tp + beta ** 2 * fn + fp + smooth)
    dice = 1 - np.mean(score)
    return {"ce": ce, "focal": focal, "dice_ce": ce + dice, "dice_focal": focal + dice}


def random_case(seed=0, shape=(2, 3, 4), classes=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes + 1, size=shape)          # value `classes` = ignore
    y_true = np.eye(classes + 1, dtype=np.float32)[labels]
    logits = rng.normal(size=shape + (classes,)) * 3
    y_pred = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y_pred[0, 0, 0] = [1.0] + [0.0] * (classes - 1)            # exercises the clipping
    return y_true, y_pred.astype(np.float32), rng.uniform(0.5, 3, size=classes).astype(np.float32)


@pytest.mark.parametrize("name", ["ce", "focal", "dice_ce", "dice_focal"])
def test_losses_match_original_formulas(name):
    y_true, y_pred, w = random_case()
    got = float(get_loss(name, w)(y_true, y_pred))
    assert got == pytest.approx(reference(y_true, y_pred, w)[name], rel=1e-5)


def test_loss_options_and_errors():
    y_true, y_pred, w = random_case(seed=1)
    ref = reference(y_true, y_pred, w, beta=2, smooth=1e-3, alpha=0.25, gamma=1)
    got = dice_loss_with_Focal_Loss(w, beta=2, smooth=1e-3, alpha=0.25, gamma=1)(y_true, y_pred)
    assert float(got) == pytest.approx(ref["dice_focal"], rel=1e-5)
    with pytest.raises(ValueError, match="cls_weights has 3 entries"):
        CE([1, 1, 1])(y_true, y_pred)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("hinge", w)


def test_f_score_and_iou_by_hand():
    # 4 pixels, 2 classes + ignore; the last pixel is ignored.
    y_true = np.eye(3, dtype=np.float32)[[[[0, 0, 1, 2]]]]
    y_pred = np.array([[[[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.2, 0.8]]]], np.float32)
    # Thresholded at 0.5: class 0 predicted on pixel 0 only; class 1 on pixels 1, 2, 3.
    # Class 0: tp 1, fp 0, fn 1. Class 1: tp 1, fp 2, fn 0.
    s = 1e-5
    f = [(2 * 1 + s) / (2 * 1 + 1 + 0 + s), (2 * 1 + s) / (2 * 1 + 0 + 2 + s)]
    iou = [(1 + s) / (2 + s), (1 + s) / (3 + s)]
    np.testing.assert_allclose(f_score()(y_true, y_pred), f, rtol=1e-6)
    np.testing.assert_allclose(Iou_score()(y_true, y_pred), iou, rtol=1e-6)
    # beta = 2 weighs recall: class 0 scores (1 + 4) tp / ((1 + 4) tp + 4 fn + fp) = 5 / 9.
    np.testing.assert_allclose(f_score(beta=2)(y_true, y_pred)[0], (5 + s) / (9 + s), rtol=1e-6)
    # A higher threshold drops the 0.6 and 0.7 predictions of class 1.
    np.testing.assert_allclose(Iou_score(threhold=0.75)(y_true, y_pred)[1], (0 + s) / (2 + s), rtol=1e-6)


def test_warm_up_raises_the_rate_linearly_then_hands_over_to_the_epoch_decay():
    import keras
    import numpy as np

    from utils.callbacks import ExponentDecayScheduler

    class Seen(keras.callbacks.Callback):
        rates = []

        def on_train_batch_begin(self, batch, logs=None):
            self.rates.append(float(self.model.optimizer.learning_rate.numpy()))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1.0), "mse")
    model.fit(np.ones((6, 2)), np.zeros((6, 1)), batch_size=2, epochs=2, verbose=0,
              callbacks=[ExponentDecayScheduler(0.5, initial_lr=1e-2, warmup_steps=4), Seen()])
    # Steps 0-2 (epoch 1): 1/4, 2/4, 3/4 of 1e-2; step 3 (epoch 2, rate 5e-3): 4/4; then 5e-3.
    np.testing.assert_allclose(Seen.rates, [2.5e-3, 5e-3, 7.5e-3, 5e-3, 5e-3, 5e-3], rtol=1e-6)
