"""Segmentation losses of the original U-Net training, as pure functions.

Every factory takes ``cls_weights`` (one weight per class) and returns
``loss(y_true, y_pred)`` where

* ``y_true`` is one-hot with ``num_classes + 1`` channels, shape (B, H, W, C + 1); the
  last channel marks "ignore" pixels and is dropped, so those pixels add nothing to the
  cross-entropy and the Dice true positives (they still count in the mean over pixels
  and in the Dice false positives, as in the original);
* ``y_pred`` is the softmax output, shape (B, H, W, C), clipped to [eps, 1 - eps]
  with eps = 1e-7 (Keras' ``epsilon()``).

The values equal the original formulas (``bubbliiiing/unet-keras`` as used by PDE).
"""
import numpy as np
from keras import ops

EPSILON = 1e-7


def _weights(cls_weights):
    return np.asarray(cls_weights, dtype=np.float32).reshape(-1)


def _prepare(y_true, y_pred, weights):
    # Losses run in float32 even under a mixed-precision policy: log(1e-7) needs it.
    y_pred = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
    y_true = ops.cast(y_true, "float32")[..., :-1]
    if y_pred.shape[-1] is not None and y_pred.shape[-1] != weights.shape[0]:
        raise ValueError(f"cls_weights has {weights.shape[0]} entries but the model predicts "
                         f"{y_pred.shape[-1]} classes")
    return y_true, y_pred


def _cross_entropy(y_true, y_pred, weights):
    # Mean over pixels of the weighted per-pixel cross-entropy.
    return ops.mean(ops.sum(-y_true * ops.log(y_pred) * weights, axis=-1))


def _focal(y_true, y_pred, weights, alpha, gamma):
    # log p_t already carries the class weight, so p_t = exp(w * log p) = p ** w: the
    # original's formula, kept as is.
    logpt = ops.sum(y_true * ops.log(y_pred) * weights, axis=-1)
    pt = ops.exp(logpt)
    if alpha is not None:
        logpt = logpt * alpha
    return ops.mean(-ops.power(1.0 - pt, gamma) * logpt)


def f_beta(y_true, y_pred, beta=1, smooth=1e-5):
    """Per-class F-beta over the whole batch: (B, H, W, C), (B, H, W, C) -> (C,).

    The Dice loss uses it on probabilities, ``utils.utils_metrics.f_score`` on the
    thresholded prediction.
    """
    tp = ops.sum(y_true * y_pred, axis=(0, 1, 2))
    fp = ops.sum(y_pred, axis=(0, 1, 2)) - tp
    fn = ops.sum(y_true, axis=(0, 1, 2)) - tp
    b2 = beta ** 2
    return ((1 + b2) * tp + smooth) / ((1 + b2) * tp + b2 * fn + fp + smooth)


def _dice(y_true, y_pred, beta, smooth):
    # Per-class F-beta, then averaged over classes.
    return 1.0 - ops.mean(f_beta(y_true, y_pred, beta, smooth))


def CE(cls_weights):
    """Weighted categorical cross-entropy, mean over pixels."""
    weights = _weights(cls_weights)

    def loss(y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred, weights)
        return _cross_entropy(y_true, y_pred, weights)

    loss.__name__ = "CE"
    return loss


def Focal_Loss(cls_weights, alpha=0.5, gamma=2):
    """Focal loss ``-alpha (1 - p_t)^gamma log p_t`` with class-weighted ``log p_t``."""
    weights = _weights(cls_weights)

    def loss(y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred, weights)
        return _focal(y_true, y_pred, weights, alpha, gamma)

    loss.__name__ = "Focal_Loss"
    return loss


def dice_loss_with_CE(cls_weights, beta=1, smooth=1e-5):
    """Cross-entropy plus ``1 - mean F-beta (Dice)`` over classes."""
    weights = _weights(cls_weights)

    def loss(y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred, weights)
        return _cross_entropy(y_true, y_pred, weights) + _dice(y_true, y_pred, beta, smooth)

    loss.__name__ = "dice_loss_with_CE"
    return loss


def dice_loss_with_Focal_Loss(cls_weights, beta=1, smooth=1e-5, alpha=0.5, gamma=2):
    """Focal loss plus ``1 - mean F-beta (Dice)``: the original's default."""
    weights = _weights(cls_weights)

    def loss(y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred, weights)
        return _focal(y_true, y_pred, weights, alpha, gamma) + _dice(y_true, y_pred, beta, smooth)

    loss.__name__ = "dice_loss_with_Focal_Loss"
    return loss


LOSSES = {
    "dice_focal": dice_loss_with_Focal_Loss,
    "focal": Focal_Loss,
    "dice_ce": dice_loss_with_CE,
    "ce": CE,
}


def get_loss(name, cls_weights):
    """Loss by short name (``dice_focal``, ``focal``, ``dice_ce``, ``ce``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name](cls_weights)
