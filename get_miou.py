"""Evaluate a segmentation model on a VOC split: confusion matrix, IoU, recall, precision.

Modes as the original: 0 predict the split and compute the metrics, 1 only predict
(class-index PNGs in ``<out>/detection-results``), 2 only compute from existing PNGs.

    python get_miou.py --model-path logs/unet_.../best_epoch.keras --voc-path VOCdevkit
"""
import argparse
import csv
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.errors import MissingInput, OutputExists, UserError  # noqa: E402
from utils.image_check import bad_images_error, find_bad_images  # noqa: E402
from utils.run import fresh_path  # noqa: E402
from utils.utils import NAME_CLASSES, make_run_dir, set_seed, write_json  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RESULT_FILES = ("mIoU.png", "mPA.png", "Recall.png", "Precision.png", "confusion_matrix.csv",
                "confusion_matrix.png", "metrics.json")


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
    """IoU per class: TP / (TP + FP + FN); 0 for a class absent from labels and predictions."""
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


def _confusion(gt_dir, pred_dir, png_name_list, num_classes):
    """Accumulate the confusion matrix.

    Returns ``(hist, skipped, ignored)``: the matrix, ``(name, label shape, prediction
    shape)`` of the pairs left out because their sizes differ, and the number of label
    pixels outside the classes (ignored, as the original).
    """
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    skipped = []
    ignored, ignored_in = 0, []
    for ind, name in enumerate(tqdm(png_name_list, desc="mIoU", unit="img")):
        gt_path = Path(gt_dir) / f"{name}.png"
        pred_path = Path(pred_dir) / f"{name}.png"
        for p in (gt_path, pred_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: listed as {name!r} but not found")
        label = np.array(Image.open(gt_path))
        pred = np.array(Image.open(pred_path))
        if label.ndim == 3 or pred.ndim == 3:
            bad = gt_path if label.ndim == 3 else pred_path
            raise ValueError(f"{bad}: a class-index PNG must have one channel "
                             f"(pixel value = class), this one has shape {label.shape}")
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
            raise ValueError(f"{pred_path}: {exc}") from exc
        if ind > 0 and ind % 10 == 0:
            tqdm.write(f"{ind} / {len(png_name_list)}: mIoU-{100 * np.nanmean(per_class_iu(hist)):0.2f}%; "
                       f"mPA-{100 * np.nanmean(per_class_PA_Recall(hist)):0.2f}%; "
                       f"Accuracy-{100 * per_Accuracy(hist):0.2f}%")
    if ignored:
        # 255 marks borders in VOC labels; other values usually mean a wrong class count.
        print(f"Note: {ignored} label pixels with values >= {num_classes} were ignored "
              f"(in {len(ignored_in)} labels, e.g. {ignored_in[0]}.png).")
    if skipped:
        listing = ", ".join(f"{n} (label {s[1]}x{s[0]}, prediction {p[1]}x{p[0]})"
                            for n, s, p in skipped[:20])
        warnings.warn(f"{len(skipped)} of {len(png_name_list)} images were left out of the "
                      f"metrics because label and prediction sizes differ (label size != "
                      f"image size in {gt_dir}?): {listing}"
                      + (" ..." if len(skipped) > 20 else ""), stacklevel=3)
    return hist, skipped, ignored


def compute_mIoU(gt_dir, pred_dir, png_name_list, num_classes, name_classes=None):
    """Compare ``<gt_dir>/<name>.png`` with ``<pred_dir>/<name>.png`` for every name.

    Returns ``(hist, IoUs, PA_Recall, Precision)``: the confusion matrix as an integer
    array and the per-class float arrays. Pairs whose sizes differ are left out with a
    warning naming them.
    """
    print("Num classes", num_classes)
    hist, _, _ = _confusion(gt_dir, pred_dir, png_name_list, num_classes)
    IoUs, PA_Recall, Precision = per_class_iu(hist), per_class_PA_Recall(hist), per_class_Precision(hist)
    _print_summary(hist, IoUs, PA_Recall, Precision, name_classes)
    return hist, IoUs, PA_Recall, Precision


def _print_summary(hist, IoUs, PA_Recall, Precision, name_classes):
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


def voc_root(voc_path):
    """The ``VOC2007`` folder of a VOCdevkit path (the folder itself is accepted too)."""
    voc_path = Path(voc_path)
    if (voc_path / "VOC2007").is_dir():
        return voc_path / "VOC2007"
    if (voc_path / "ImageSets").is_dir() or (voc_path / "JPEGImages").is_dir():
        return voc_path
    raise MissingInput(voc_path, "not a VOCdevkit folder (expected VOC2007/ with "
                                 "JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)",
                       "check --voc-path")


def read_split(voc_path, split="test"):
    """Image ids of ``ImageSets/Segmentation/<split>.txt``; errors name the file."""
    split_file = voc_root(voc_path) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise MissingInput(split_file, "split file not found", "check --voc-path and --split")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(split_file, "the split is empty", "list one image id per line")
    return ids


def image_path(voc_path, image_id):
    """``JPEGImages/<id>.jpg`` (or .jpeg/.png); a clear error when none exists."""
    folder = voc_root(voc_path) / "JPEGImages"
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{image_id}{suffix}"
        if p.is_file():
            return p
    raise MissingInput(folder / (image_id + '.jpg'), "image listed in the split but not found",
                       "add it or remove its line from the split list")


def check_split(voc_path, image_ids, need_images=True):
    """Fail before any work when an image or label of the split is missing."""
    gt_dir = voc_root(voc_path) / "SegmentationClass"
    missing = [str(gt_dir / f"{i}.png") for i in image_ids if not (gt_dir / f"{i}.png").is_file()]
    if missing:
        raise MissingInput(f"{len(missing)} labels listed in the split are missing: "
                           + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if need_images:
        bad = find_bad_images([image_path(voc_path, i) for i in image_ids], "pil",
                              desc="checking images")
        if bad:
            raise bad_images_error(bad, "replace it or remove its line from the split list")


def predict_split(unet, voc_path, image_ids, pred_dir, batch_size=8):
    """Write ``<pred_dir>/<id>.png`` class maps for every id; returns ``pred_dir``."""
    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    clash = [i for i in image_ids if (pred_dir / f"{i}.png").exists()]
    if clash:
        raise FileExistsError(f"{pred_dir} already holds predictions (e.g. {clash[0]}.png); "
                              f"choose another output folder")
    with tqdm(total=len(image_ids), desc="predict", unit="img") as bar:
        for start in range(0, len(image_ids), batch_size):
            ids = image_ids[start:start + batch_size]
            images = []
            for i in ids:
                with Image.open(image_path(voc_path, i)) as im:
                    im.load()
                    images.append(im.convert("RGB") if im.mode != "RGB" else im.copy())
            for i, mask in zip(ids, unet.predict_masks(images, batch_size=batch_size)):
                Image.fromarray(mask).save(pred_dir / f"{i}.png")
            bar.update(len(ids))
    return pred_dir


def _class_names(num_classes, name_classes):
    if name_classes is None:
        name_classes = (NAME_CLASSES if num_classes == len(NAME_CLASSES)
                        else [f"class_{k}" for k in range(num_classes)])
    if len(name_classes) != num_classes:
        raise ValueError(f"{len(name_classes)} class names given for {num_classes} classes")
    return list(name_classes)


def _as_unet(model, num_classes, backbone, input_shape, name_classes):
    from unet import Unet

    if isinstance(model, Unet):
        return model
    kwargs = {"num_classes": num_classes, "backbone": backbone}
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    if isinstance(model, (str, os.PathLike)):
        return Unet(model_path=model, name_classes=name_classes, **kwargs)
    return Unet(model=model, name_classes=name_classes, **kwargs)


def evaluate_split(model, voc_path, split="test", num_classes=5, name_classes=None,
                   input_shape=None, out_dir=None, backbone="resnet50", batch_size=8):
    """Predict a VOC split and compute its metrics (get_miou mode 0 in one call).

    ``model``: a ``keras.Model``, a ``unet.Unet`` or a model/weights path. Predictions go
    to ``<out_dir>/detection-results``, charts, CSV and ``metrics.json`` to ``out_dir``
    (default: a new ``logs/miou_<time>`` folder). Returns ``{"mIoU", "mPA", "accuracy",
    "IoU", "recall", "precision", "out_dir", ...}`` with plain floats.
    """
    image_ids = read_split(voc_path, split)
    check_split(voc_path, image_ids)
    out_dir = Path(out_dir) if out_dir is not None else make_run_dir("miou")
    unet = _as_unet(model, num_classes, backbone, input_shape, name_classes)
    names = _class_names(unet.num_classes, name_classes)
    pred_dir = predict_split(unet, voc_path, image_ids, out_dir / "detection-results", batch_size)
    gt_dir = voc_root(voc_path) / "SegmentationClass"
    print("Num classes", unet.num_classes)
    hist, skipped, ignored = _confusion(gt_dir, pred_dir, image_ids, unet.num_classes)
    if len(skipped) == len(image_ids):
        raise ValueError(f"no image of {split} could be compared: every label's size differs "
                         f"from its image's (see the warning above)")
    IoUs, recall, precision = per_class_iu(hist), per_class_PA_Recall(hist), per_class_Precision(hist)
    _print_summary(hist, IoUs, recall, precision, names)
    extra = {"split": split, "images": len(image_ids) - len(skipped),
             "skipped_size_mismatch": [s[0] for s in skipped],
             "ignored_label_pixels": ignored}
    metrics = show_results(out_dir, hist, IoUs, recall, precision, names, extra=extra)
    metrics["out_dir"] = str(out_dir)
    return metrics


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--miou-mode", type=int, choices=(0, 1, 2), default=0,
                   help="0 predict + compute, 1 predict only, 2 compute only (original: 0)")
    p.add_argument("--voc-path", default="VOCdevkit", help="VOCdevkit folder (original: VOCdevkit)")
    p.add_argument("--split", default="test", help="split list under ImageSets/Segmentation "
                                                   "(original: test)")
    p.add_argument("--model-path", help="trained model: .keras from train.py, or a weights file")
    p.add_argument("--num-classes", type=int, default=5, help="classes incl. background (original: 5)")
    p.add_argument("--name-classes", nargs="+", default=None,
                   help="class names in label order (original: " + " ".join(NAME_CLASSES) + ")")
    p.add_argument("--backbone", choices=("resnet50", "vgg"), default="resnet50",
                   help="U-Net encoder when loading a weights file (original: resnet50)")
    p.add_argument("--input-shape", type=int, nargs=2, default=(576, 1024), metavar=("H", "W"),
                   help="network input when loading a weights file (original: 576 1024)")
    p.add_argument("--out-dir", default=None,
                   help="results folder (default: a new <logs-dir>/miou_<time>; original: miou_out)")
    p.add_argument("--pred-dir", default=None,
                   help="class-index PNGs (default: <out-dir>/detection-results); needed by "
                        "mode 2 to point at an earlier run's predictions")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass "
                                                             "(original: 1)")
    p.add_argument("--logs-dir", default="logs", help="parent of the new run folder (default logs)")
    p.add_argument("--seed", type=int, default=11, help="random seed (default 11)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    set_seed(args.seed)
    if args.miou_mode in (0, 1) and not args.model_path:
        raise UserError("--model-path", "needed to predict (modes 0 and 1)",
                        "give the trained model (best_epoch.keras of a train.py run)")
    if args.miou_mode == 2 and not args.pred_dir and not args.out_dir:
        raise UserError("--miou-mode 2", "needs --pred-dir (or --out-dir of an earlier run)")
    if args.model_path and args.miou_mode in (0, 1):
        from utils.weights import check_weights_file

        check_weights_file(args.model_path, "--model-path")
    if args.miou_mode == 2:
        given = Path(args.pred_dir) if args.pred_dir else Path(args.out_dir) / "detection-results"
        if not given.is_dir():
            raise MissingInput(given, "folder of predicted class maps not found",
                               "give --pred-dir of an earlier mode 0 or 1 run")
    names = _class_names(args.num_classes, args.name_classes)
    image_ids = read_split(args.voc_path, args.split)
    check_split(args.voc_path, image_ids, need_images=args.miou_mode != 2)
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        existing = [f for f in RESULT_FILES if (out_dir / f).exists()]
        if args.miou_mode in (0, 2) and existing:
            raise OutputExists(out_dir, f"already holds results ({', '.join(existing)})",
                               "choose another --out-dir")
        # mode 1 then mode 2 in one folder keeps both
        write_json(fresh_path(out_dir / "args.json"), vars(args))
    else:
        out_dir = make_run_dir("miou", args, root=args.logs_dir)
    pred_dir = Path(args.pred_dir) if args.pred_dir else out_dir / "detection-results"
    result = {"out_dir": str(out_dir), "pred_dir": str(pred_dir)}

    if args.miou_mode in (0, 1):
        print("Load model.")
        unet = _as_unet(args.model_path, args.num_classes, args.backbone, args.input_shape, names)
        print("Get predict result.")
        predict_split(unet, args.voc_path, image_ids, pred_dir, args.batch_size)
        print("Get predict result done.")
        names = _class_names(unet.num_classes, args.name_classes)
    if args.miou_mode in (0, 2):
        print("Get miou.")
        gt_dir = voc_root(args.voc_path) / "SegmentationClass"
        hist, IoUs, recall, precision = compute_mIoU(gt_dir, pred_dir, image_ids, len(names), names)
        print("Get miou done.")
        metrics = show_results(out_dir, hist, IoUs, recall, precision, names,
                               extra={"split": args.split})
        result.update(metrics)
    return result


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
