"""Training metrics of the original U-Net: thresholded F-score and IoU per class.

Both take the one-hot target with the extra last "ignore" channel (dropped) and the
softmax output, threshold the prediction at ``threhold`` (the original's spelling),
sum over batch, height and width and return one score per class; Keras averages the
vector into the logged value. The confusion-matrix evaluation lives in ``get_miou.py``.
"""
from keras import ops


def _binarise(y_true, y_pred, threhold):
    y_pred = ops.cast(ops.greater(ops.cast(y_pred, "float32"), threhold), "float32")
    return ops.cast(y_true, "float32")[..., :-1], y_pred


def Iou_score(smooth=1e-5, threhold=0.5):
    """``(|T and P| + smooth) / (|T or P| + smooth)`` per class."""
    def metric(y_true, y_pred):
        y_true, y_pred = _binarise(y_true, y_pred, threhold)
        intersection = ops.sum(y_true * y_pred, axis=(0, 1, 2))
        union = ops.sum(y_true + y_pred, axis=(0, 1, 2)) - intersection
        return (intersection + smooth) / (union + smooth)

    metric.__name__ = "Iou_score"
    return metric


def f_score(beta=1, smooth=1e-5, threhold=0.5):
    """F-beta of the thresholded prediction per class (beta = 1: Dice)."""
    def metric(y_true, y_pred):
        y_true, y_pred = _binarise(y_true, y_pred, threhold)
        tp = ops.sum(y_true * y_pred, axis=(0, 1, 2))
        fp = ops.sum(y_pred, axis=(0, 1, 2)) - tp
        fn = ops.sum(y_true, axis=(0, 1, 2)) - tp
        b2 = beta ** 2
        return ((1 + b2) * tp + smooth) / ((1 + b2) * tp + b2 * fn + fp + smooth)

    metric.__name__ = "f_score"
    return metric
