"""Every segmentation metric of the project, under the original's names.

Training-time metrics on tensors (``Iou_score``, ``f_score``, thresholded, as the
original logs them in ``fit``) and the evaluation on a confusion matrix
(``fast_hist``, ``per_class_iu``, ``per_class_PA_Recall``, ``per_class_Precision``,
``per_Accuracy``, ``compute_mIoU``, ``show_results``), used by ``get_miou.py``, the
training-time ``val_mIoU`` (``utils.callbacks.MeanIoU``) and the benchmarks.

The rule for a class that never appears (no label and no predicted pixel): its IoU,
recall and precision are 0, not NaN, because each denominator is clamped to 1 as in
the original; the means are ``np.nanmean`` as in the original, so such a class counts
as 0 in mIoU and mPA. Every caller reports the same numbers for the same matrix.
"""
import csv
import warnings
from pathlib import Path

import keras
import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.run import write_json

RESULT_FILES = ("mIoU.png", "mPA.png", "Recall.png", "Precision.png", "confusion_matrix.csv",
                "confusion_matrix.png", "metrics.json")


def _binarise(y_true, y_pred, threhold):
    # Keras is imported here so the confusion-matrix evaluation runs without TensorFlow.
    from keras import ops

    y_pred = ops.cast(ops.greater(ops.cast(y_pred, "float32"), threhold), "float32")
    return ops.cast(y_true, "float32")[..., :-1], y_pred


def Iou_score(smooth=1e-5, threhold=0.5):
    """``(|T and P| + smooth) / (|T or P| + smooth)`` per class.

    Takes the one-hot target with the extra last "ignore" channel (dropped) and the
    softmax output, thresholds the prediction at ``threhold`` (the original's
    spelling), sums over batch, height and width; Keras averages the vector it returns.
    """
    from keras import ops

    def metric(y_true, y_pred):
        y_true, y_pred = _binarise(y_true, y_pred, threhold)
        intersection = ops.sum(y_true * y_pred, axis=(0, 1, 2))
        union = ops.sum(y_true + y_pred, axis=(0, 1, 2)) - intersection
        return (intersection + smooth) / (union + smooth)

    metric.__name__ = "Iou_score"
    return metric


def f_score(beta=1, smooth=1e-5, threhold=0.5):
    """F-beta of the thresholded prediction per class (beta = 1: Dice); the same
    formula as the Dice loss (:func:`nets.unet_training.f_beta`)."""
    from nets.unet_training import f_beta

    def metric(y_true, y_pred):
        y_true, y_pred = _binarise(y_true, y_pred, threhold)
        return f_beta(y_true, y_pred, beta, smooth)

    metric.__name__ = "f_score"
    return metric


def fast_hist(a, b, n):
    """Confusion matrix (n x n, rows = label, columns = prediction) of two flat arrays.

    Labels outside 0..n-1 (e.g. 255, the VOC border) are ignored.
    """
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    k = (a >= 0) & (a < n)
    pred = b[k].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= n):
        raise ValueError(f"prediction holds class {int(pred.max())} outside 0..{n - 1}")
    return np.bincount(n * a[k].astype(np.int64) + pred, minlength=n ** 2).reshape(n, n)


def per_class_iu(hist):
    """IoU per class: TP / (TP + FP + FN); 0 for a class absent from labels and predictions
    (see the module's note)."""
    return np.diag(hist) / np.maximum(hist.sum(1) + hist.sum(0) - np.diag(hist), 1)


def per_class_PA_Recall(hist):
    """Recall per class (the original's "PA"): TP / labelled pixels of the class."""
    return np.diag(hist) / np.maximum(hist.sum(1), 1)


def per_class_Precision(hist):
    """Precision per class: TP / pixels predicted as the class."""
    return np.diag(hist) / np.maximum(hist.sum(0), 1)


def per_Accuracy(hist):
    """Pixel accuracy over all classes."""
    return np.sum(np.diag(hist)) / np.maximum(np.sum(hist), 1)


def read_class_map(path, name):
    """A one-channel class-index PNG (pixel value = class) as an array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed as {name!r} but not found")
    array = np.array(Image.open(path))
    if array.ndim == 3:
        raise ValueError(f"{path}: a class-index PNG must have one channel "
                         f"(pixel value = class), this one has shape {array.shape}")
    return array


def confusion_of_arrays(pairs, num_classes, count=None, gt_dir=None):
    """Accumulate the confusion matrix of ``(name, label, prediction, where)`` class
    maps (``where`` names the prediction in an error).

    Returns ``(hist, skipped, ignored)``: the matrix, ``(name, label shape, prediction
    shape)`` of the pairs left out because their sizes differ, and the number of label
    pixels outside the classes (ignored, as the original).
    """
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    skipped = []
    ignored, ignored_in = 0, []
    seen = 0
    for ind, (name, label, pred, where) in enumerate(tqdm(pairs, total=count, desc="mIoU",
                                                          unit="img")):
        seen += 1
        if label.shape != pred.shape:
            skipped.append((name, label.shape, pred.shape))
            continue
        outside = int(np.count_nonzero(label >= num_classes))
        if outside:
            ignored += outside
            ignored_in.append(name)
        try:
            hist += fast_hist(label, pred, num_classes)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        if ind > 0 and ind % 10 == 0:
            tqdm.write(f"{ind} / {count or '?'}: mIoU-{100 * np.nanmean(per_class_iu(hist)):0.2f}%; "
                       f"mPA-{100 * np.nanmean(per_class_PA_Recall(hist)):0.2f}%; "
                       f"Accuracy-{100 * per_Accuracy(hist):0.2f}%")
    if ignored:
        # 255 marks borders in VOC labels; other values usually mean a wrong class count.
        print(f"Note: {ignored} label pixels with values >= {num_classes} were ignored "
              f"(in {len(ignored_in)} labels, e.g. {ignored_in[0]}.png).")
    if skipped:
        listing = ", ".join(f"{n} (label {s[1]}x{s[0]}, prediction {p[1]}x{p[0]})"
                            for n, s, p in skipped[:20])
        warnings.warn(f"{len(skipped)} of {seen} images were left out of the "
                      f"metrics because label and prediction sizes differ (label size != "
                      f"image size in {gt_dir}?): {listing}"
                      + (" ..." if len(skipped) > 20 else ""), stacklevel=3)
    return hist, skipped, ignored


def confusion_of_files(gt_dir, pred_dir, png_name_list, num_classes):
    """:func:`confusion_of_arrays` of ``<gt_dir>/<name>.png`` and ``<pred_dir>/<name>.png``."""
    def pairs():
        for name in png_name_list:
            gt_path, pred_path = Path(gt_dir) / f"{name}.png", Path(pred_dir) / f"{name}.png"
            label = read_class_map(gt_path, name)
            yield name, label, read_class_map(pred_path, name), pred_path

    return confusion_of_arrays(pairs(), num_classes, len(png_name_list), gt_dir)


def compute_mIoU(gt_dir, pred_dir, png_name_list, num_classes, name_classes=None):
    """Compare ``<gt_dir>/<name>.png`` with ``<pred_dir>/<name>.png`` for every name.

    Returns ``(hist, IoUs, PA_Recall, Precision)``: the confusion matrix as an integer
    array and the per-class float arrays. Pairs whose sizes differ are left out with a
    warning naming them.
    """
    print("Num classes", num_classes)
    hist, _, _ = confusion_of_files(gt_dir, pred_dir, png_name_list, num_classes)
    IoUs, PA_Recall, Precision = per_class_iu(hist), per_class_PA_Recall(hist), per_class_Precision(hist)
    print_summary(hist, IoUs, PA_Recall, Precision, name_classes)
    return hist, IoUs, PA_Recall, Precision


def print_summary(hist, IoUs, PA_Recall, Precision, name_classes):
    """Print each class's IoU, recall and precision, then mIoU, mPA and accuracy."""
    if name_classes is not None:
        for k, name in enumerate(name_classes):
            print(f"===>{name}:\tIou-{100 * IoUs[k]:.2f}; Recall (equal to the PA)-"
                  f"{100 * PA_Recall[k]:.2f}; Precision-{100 * Precision[k]:.2f}")
    print(f"===> mIoU: {100 * np.nanmean(IoUs):.2f}; mPA: {100 * np.nanmean(PA_Recall):.2f}; "
          f"Accuracy: {100 * per_Accuracy(hist):.2f}")


def _bar_chart(values, name_classes, title, xlabel, path, tick_font_size=12):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(values) + 1.5))
    ax.barh(range(len(values)), values, color="royalblue")
    ax.set_title(title, fontsize=tick_font_size + 2)
    ax.set_xlabel(xlabel, fontsize=tick_font_size)
    ax.set_yticks(range(len(values)), name_classes, fontsize=tick_font_size)
    top = max([v for v in values if np.isfinite(v)] + [1.0])
    ax.set_xlim(0, top * 1.2)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}" if v < 1.0 else f" {v}", color="royalblue", va="center",
                fontweight="bold")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _heatmap(hist, name_classes, path, tick_font_size=12):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    # Row-normalised, so a rare class is as readable as the background.
    rows = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    n = len(name_classes)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.5, 1.0 * n + 2))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), name_classes, rotation=45, ha="right", fontsize=tick_font_size)
    ax.set_yticks(range(n), name_classes, fontsize=tick_font_size)
    ax.set_xlabel("predicted", fontsize=tick_font_size)
    ax.set_ylabel("label", fontsize=tick_font_size)
    ax.set_title("Confusion matrix (share of each label row; pixel counts)",
                 fontsize=tick_font_size)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{rows[i, j]:.2f}\n{int(hist[i, j])}", ha="center", va="center",
                    fontsize=max(tick_font_size - 4, 6),
                    color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metrics_dict(hist, IoUs, PA_Recall, Precision, name_classes):
    """Plain-Python summary: per-class IoU / recall / precision, mIoU, mPA, accuracy."""
    return {
        "mIoU": float(np.nanmean(IoUs)),
        "mPA": float(np.nanmean(PA_Recall)),
        "accuracy": float(per_Accuracy(hist)),
        "mPrecision": float(np.nanmean(Precision)),
        "classes": list(name_classes),
        "IoU": [float(v) for v in IoUs],
        "recall": [float(v) for v in PA_Recall],
        "precision": [float(v) for v in Precision],
        "per_class": {n: {"IoU": float(i), "recall": float(r), "precision": float(p)}
                      for n, i, r, p in zip(name_classes, IoUs, PA_Recall, Precision)},
        "confusion_matrix": np.asarray(hist).astype(int).tolist(),
    }


def show_results(miou_out_path, hist, IoUs, PA_Recall, Precision, name_classes,
                 tick_font_size=12, extra=None, overwrite=False):
    """Write the original's charts and CSV plus ``confusion_matrix.png`` and ``metrics.json``.

    Refuses to replace earlier results in ``miou_out_path`` unless ``overwrite``.
    Returns the metrics dict (with ``extra`` merged in).
    """
    out = Path(miou_out_path)
    out.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        existing = [f for f in RESULT_FILES if (out / f).exists()]
        if existing:
            raise FileExistsError(f"{out} already holds results ({', '.join(existing)}); "
                                  f"choose another output folder")
    name_classes = list(name_classes)
    charts = [(IoUs, f"mIoU = {100 * np.nanmean(IoUs):.2f}%", "Intersection over Union", "mIoU.png"),
              (PA_Recall, f"mPA = {100 * np.nanmean(PA_Recall):.2f}%", "Pixel Accuracy", "mPA.png"),
              (PA_Recall, f"mRecall = {100 * np.nanmean(PA_Recall):.2f}%", "Recall", "Recall.png"),
              (Precision, f"mPrecision = {100 * np.nanmean(Precision):.2f}%", "Precision",
               "Precision.png")]
    for values, title, xlabel, fname in charts:
        _bar_chart(list(values), name_classes, title, xlabel, out / fname, tick_font_size)
        print(f"Save {fname[:-4]} out to {out / fname}")
    with open(out / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([" "] + name_classes)
        for name, row in zip(name_classes, np.asarray(hist)):
            writer.writerow([name] + [str(int(x)) for x in row])
    print(f"Save confusion_matrix out to {out / 'confusion_matrix.csv'}")
    _heatmap(np.asarray(hist), name_classes, out / "confusion_matrix.png", tick_font_size)
    metrics = metrics_dict(hist, IoUs, PA_Recall, Precision, name_classes)
    metrics.update(extra or {})
    write_json(out / "metrics.json", metrics)
    return metrics


@keras.saving.register_keras_serializable(package="pde")
class MeanIoU(keras.metrics.Metric):
    """Mean IoU of the argmax prediction, by ``get_miou``'s rule, accumulated in a
    confusion matrix over an epoch or a validation pass; compiled with the model, so
    ``fit`` logs ``val_mIoU`` from its validation pass (no second pass over the photos).

    ``y_true`` is one-hot with the extra last "ignore" channel
    (:func:`utils.dataloader.build_dataset`); a pixel whose ignore channel is set is
    left out, also when it carries a class for the loss, as the letterbox bars do with
    ``mark_bars``. :meth:`per_class` gives the IoU of each class.
    """

    def __init__(self, num_classes, name="mIoU", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        # float64 counts stay exact far beyond any split's pixel count.
        self.confusion = self.add_variable(shape=(self.num_classes, self.num_classes),
                                           initializer="zeros", dtype="float64",
                                           name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops, n = keras.ops, self.num_classes
        y_true = ops.cast(y_true, "float32")
        valid = ops.cast(ops.equal(y_true[..., -1], 0.0), "float64")
        index = ops.argmax(y_true[..., :-1], axis=-1) * n + ops.argmax(y_pred, axis=-1)
        counts = ops.bincount(ops.reshape(ops.cast(index, "int32"), [-1]),
                              weights=ops.reshape(valid, [-1]), minlength=n * n)
        self.confusion.assign_add(ops.reshape(ops.cast(counts, "float64"), (n, n)))

    def per_class(self):
        """IoU per class (NumPy) from the counts so far (:func:`per_class_iu`)."""
        return per_class_iu(keras.ops.convert_to_numpy(self.confusion))

    def result(self):
        ops, hist = keras.ops, self.confusion
        tp = ops.diagonal(hist)
        iou = tp / ops.maximum(ops.sum(hist, axis=0) + ops.sum(hist, axis=1) - tp, 1.0)
        return ops.cast(ops.mean(iou), "float32")

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
