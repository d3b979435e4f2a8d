"""How far does colour alone go? A per-pixel colour classifier on a VOC segmentation set.

Trains a classifier on the colour of single pixels (RGB, HSV with hue as a circle) sampled
from the train split's photos and masks, then reports per-class IoU, mIoU, mPA and pixel
accuracy on the test split. On the synthetic orchard this is the floor a U-Net must
clear: if colour alone came close to a perfect mIoU, the data set would not test shape,
texture or context.

    python benchmarks/colour_baseline.py --voc demo_data/VOCdevkit
    python benchmarks/colour_baseline.py --generate --image-size 288 512   # a fresh orchard
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# scikit-learn's gradient boosting runs OpenMP threads that crawl on a busy shared
# machine (65 s instead of 2.6 s for a 4,000-pixel fit here); one thread unless asked.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from utils.image_check import rgb8  # noqa: E402
from utils.options import add_seed  # noqa: E402
from utils.utils import NAME_CLASSES  # noqa: E402
from utils.utils_metrics import (fast_hist, per_Accuracy, per_class_iu,  # noqa: E402
                                 per_class_PA_Recall)
from utils.voc import image_path, label_path, read_split  # noqa: E402


def colour_features(rgb):
    """(..., 3) uint8 RGB -> (..., 7) float32: R, G, B, S, V (0..1) and cos/sin of hue."""
    hsv = cv2.cvtColor(rgb.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3).astype(np.float32)
    flat = rgb.reshape(-1, 3).astype(np.float32) / 255.0
    hue = hsv[:, 0] * (2 * np.pi / 256.0)
    feats = np.column_stack([flat, hsv[:, 1:] / 255.0, np.cos(hue), np.sin(hue)])
    return feats.reshape(rgb.shape[:-1] + (7,))


def read_pairs(voc, split, ids=None):
    """Photos (RGB uint8) and masks (class index) of one split of a VOC folder (or of
    its photos ``ids``)."""
    for i in ids or read_split(voc, split):
        with Image.open(image_path(voc, i)) as im:
            rgb = np.asarray(rgb8(im))
        with Image.open(label_path(voc, i)) as m:
            mask = np.asarray(m)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"{label_path(voc, i)}: mask {mask.shape} and photo "
                             f"{rgb.shape[:2]} differ")
        yield i, rgb, mask


def colour_at(rgb, idx):
    """:func:`colour_features` of the pixels at flat indices ``idx`` of a photo."""
    return colour_features(rgb.reshape(-1, 3)[idx])


def sample_pixels(voc, split, per_image, rng, n_classes, features=colour_at, ids=None):
    """``features(rgb, flat_indices)`` and the classes of ``per_image`` random labelled
    pixels of each photo of ``split`` (or of its photos ``ids``)."""
    xs, ys = [], []
    for _, rgb, mask in read_pairs(voc, split, ids):
        flat = mask.reshape(-1)
        idx = rng.choice(flat.size, size=min(per_image, flat.size), replace=False)
        idx = idx[flat[idx] < n_classes]
        xs.append(features(rgb, idx))
        ys.append(flat[idx])
    return np.concatenate(xs), np.concatenate(ys)


def make_model(name, seed, balanced=False):
    weight = "balanced" if balanced else None
    if name == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.15, random_state=seed,
                                              class_weight=weight)
    if name == "forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=60, min_samples_leaf=5, n_jobs=1,
                                      random_state=seed, class_weight=weight)
    if name == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler

        return make_pipeline(PolynomialFeatures(2), StandardScaler(),
                             LogisticRegression(max_iter=500, class_weight=weight))
    raise ValueError(f"unknown model {name!r}")


def evaluate(model, voc, split, stride, n_classes, features=colour_at):
    """Confusion matrix of ``model`` on every ``stride``-th pixel (both directions) of
    ``split``'s photos, from ``features(rgb, flat_indices)``."""
    hist = np.zeros((n_classes, n_classes), np.int64)
    for _, rgb, mask in read_pairs(voc, split):
        h, w = mask.shape
        idx = (np.arange(0, h, stride)[:, None] * w + np.arange(0, w, stride)[None, :]).ravel()
        pred = model.predict(features(rgb, idx))
        hist += fast_hist(mask.reshape(-1)[idx], pred, n_classes)
    return hist


def report(hist, names=NAME_CLASSES):
    """Per-class IoU and recall, mIoU, mPA, pixel accuracy and each class's share of the
    test pixels, from a confusion matrix."""
    iou, recall = per_class_iu(hist), per_class_PA_Recall(hist)
    return {"iou": {c: float(v) for c, v in zip(names, iou)},
            "recall": {c: float(v) for c, v in zip(names, recall)},
            "mIoU": float(np.nanmean(iou)), "mPA": float(np.nanmean(recall)),
            "accuracy": float(per_Accuracy(hist)),
            "test_share": {c: float(v) for c, v in zip(names, hist.sum(1) / hist.sum())}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--voc-path", "--voc", dest="voc", default=None,
                   help="VOCdevkit (or its VOC2007) folder with train and test lists")
    p.add_argument("--generate", action="store_true",
                   help="generate a labelled-only synthetic orchard in a temporary folder")
    p.add_argument("--image-size", type=int, nargs=2, default=[576, 1024], metavar=("H", "W"),
                   help="photo size for --generate (the orchard default: 576 1024)")
    p.add_argument("--cameras", type=int, default=4, help="archive cameras for --generate")
    p.add_argument("--model", choices=["hgb", "forest", "logreg"], default="hgb",
                   help="hgb: gradient-boosted trees (default), forest, or logreg on "
                        "degree-2 colour features")
    p.add_argument("--balanced", action="store_true",
                   help="weight classes inversely to their pixel share (favours small classes)")
    p.add_argument("--pixels-per-image", type=int, default=5000,
                   help="training pixels sampled from each train photo")
    p.add_argument("--stride", type=int, default=2,
                   help="evaluate every stride-th pixel in both directions")
    p.add_argument("--train-count", type=int, default=None, metavar="N",
                   help="train on N photos of the train split, the ones train.py "
                        "--train-count N --seed S draws (default: the whole split)")
    add_seed(p, 0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.timing import machine_line

    print(machine_line(), flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.generate:
            from data_processing.synthetic_orchard import generate_orchard

            res = generate_orchard(Path(tmp) / "orchard", cameras=args.cameras,
                                   image_size=tuple(args.image_size), seed=args.seed,
                                   write_archive=False, progress=True)
            voc = res["voc"]
        elif args.voc:
            voc = Path(args.voc)
        else:
            raise ValueError("give --voc <VOCdevkit folder> or --generate")
        n = len(NAME_CLASSES)
        rng = np.random.default_rng(args.seed)
        photos = None
        if args.train_count is not None:
            from utils.voc import draw_labelled

            photos = draw_labelled(voc, read_split(voc, "train"), args.train_count, n, args.seed)
        x, y = sample_pixels(voc, "train", args.pixels_per_image, rng, n, ids=photos)
        model = make_model(args.model, args.seed, args.balanced).fit(x, y)
        hist = evaluate(model, voc, "test", args.stride, n)
    result = {"model": args.model + (" balanced" if args.balanced else ""),
              "train_pixels": int(len(y)), "train_photos": photos, **report(hist),
              "seconds": round(time.perf_counter() - t0, 1)}
    print("command: python benchmarks/colour_baseline.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"colour-only {result['model']} on {result['train_pixels']} train pixels; test split:")
    print(f"{'class':14s} {'IoU':>6s} {'recall':>7s} {'share':>6s}")
    for c in NAME_CLASSES:
        print(f"{c:14s} {result['iou'][c]:6.3f} {result['recall'][c]:7.3f} {result['test_share'][c]:6.3f}")
    print(f"mIoU {result['mIoU']:.3f}  mPA {result['mPA']:.3f}  pixel accuracy "
          f"{result['accuracy']:.3f}  ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
