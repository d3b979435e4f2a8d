"""Evaluate a segmentation model on a VOC split: confusion matrix, IoU, recall, precision.

Modes as the original: 0 predict the split and compute the metrics, 1 only predict
(class-index PNGs in ``<out>/detection-results``), 2 only compute from existing PNGs.

    python get_miou.py --model-path logs/unet_.../best_epoch.keras --voc-path VOCdevkit
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from nets.encoders import BACKBONES  # noqa: E402
from utils.errors import MissingInput, OutputExists, UserError, writable_dir  # noqa: E402
from utils.image_check import rgb8  # noqa: E402
from utils.run import fresh_path, make_run_dir, write_json  # noqa: E402
from utils.utils import NAME_CLASSES, set_seed  # noqa: E402
from utils.utils_metrics import (RESULT_FILES, compute_mIoU, confusion_of_files,  # noqa: E402
                                 per_class_iu, per_class_PA_Recall, per_class_Precision,
                                 print_summary, show_results)
from utils.voc import (REPLACE_HINT, check_files, check_images, image_path,  # noqa: E402
                       read_split, voc_dirs)


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
                    images.append(rgb8(im).copy())
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
    from utils.predictor import Unet

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
    check_files(voc_path, image_ids)
    check_images(voc_path, image_ids, where=f"split {split!r}", fix=REPLACE_HINT)
    out_dir = Path(out_dir) if out_dir is not None else make_run_dir("miou")
    unet = _as_unet(model, num_classes, backbone, input_shape, name_classes)
    names = _class_names(unet.num_classes, name_classes)
    pred_dir = predict_split(unet, voc_path, image_ids, out_dir / "detection-results", batch_size)
    gt_dir = voc_dirs(voc_path)[1]
    print("Num classes", unet.num_classes)
    hist, skipped, ignored = confusion_of_files(gt_dir, pred_dir, image_ids, unet.num_classes)
    if len(skipped) == len(image_ids):
        raise ValueError(f"no image of {split} could be compared: every label's size differs "
                         f"from its image's (see the warning above)")
    IoUs, recall, precision = per_class_iu(hist), per_class_PA_Recall(hist), per_class_Precision(hist)
    print_summary(hist, IoUs, recall, precision, names)
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
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet50",
                   help="U-Net encoder when loading a weights file (original: resnet50)")
    p.add_argument("--input-shape", type=int, nargs=2, default=(576, 1024), metavar=("H", "W"),
                   help="network input when loading a weights file (original: 576 1024)")
    p.add_argument("--out-dir", default=None, type=writable_dir,
                   help="results folder (default: a new <logs-dir>/miou_<time>; original: miou_out)")
    p.add_argument("--pred-dir", default=None,
                   help="class-index PNGs (default: <out-dir>/detection-results); needed by "
                        "mode 2 to point at an earlier run's predictions")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass "
                                                             "(default: 8; original: 1)")
    p.add_argument("--logs-dir", default="logs", type=writable_dir,
                   help="parent of the new run folder (default logs)")
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
        from utils.weights import check_class_count, check_weights_file

        check_weights_file(args.model_path, "--model-path")
        check_class_count(args.model_path, args.num_classes)
    if args.miou_mode == 2:
        given = Path(args.pred_dir) if args.pred_dir else Path(args.out_dir) / "detection-results"
        if not given.is_dir():
            raise MissingInput(given, "folder of predicted class maps not found",
                               "give --pred-dir of an earlier mode 0 or 1 run")
    names = _class_names(args.num_classes, args.name_classes)
    image_ids = read_split(args.voc_path, args.split)
    check_files(args.voc_path, image_ids, need_images=args.miou_mode != 2)
    if args.miou_mode != 2:
        check_images(args.voc_path, image_ids, where=f"split {args.split!r}", fix=REPLACE_HINT)
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
        gt_dir = voc_dirs(args.voc_path)[1]
        hist, IoUs, recall, precision = compute_mIoU(gt_dir, pred_dir, image_ids, len(names), names)
        print("Get miou done.")
        metrics = show_results(out_dir, hist, IoUs, recall, precision, names,
                               extra={"split": args.split})
        result.update(metrics)
    return result


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
