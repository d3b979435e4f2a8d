"""Evaluate a segmentation model on a VOC split: confusion matrix, IoU, recall, precision.

Modes as the original: 0 predict the split and compute the metrics, 1 only predict
(class-index PNGs in ``<out>/detection-results``), 2 only compute from existing PNGs.
Mode 0 computes from the predictions in memory and also writes the PNGs, as the
original, unless ``--no-write-pngs``. The input size, classes and backbone come from
the model file's card; the options override them.

    python get_miou.py --model-path logs/unet_.../best_epoch.keras --voc-path VOCdevkit
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from utils.errors import MissingInput, OutputExists, UserError, user_errors, writable_dir  # noqa: E402
from utils.evaluate import as_unet, evaluate_ids, predicted_maps  # noqa: E402
from utils.options import add_logs_dir, add_seed  # noqa: E402
from utils.model_card import DEFAULTS, add_card_options, class_names, read_card, resolve  # noqa: E402
from utils.run import fresh_path, make_run_dir, write_json  # noqa: E402
from utils.utils import set_seed  # noqa: E402
from utils.utils_metrics import RESULT_FILES, compute_mIoU, show_results  # noqa: E402
from utils.voc import REPLACE_HINT, check_files, check_images, read_split, voc_dirs  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--miou-mode", type=int, choices=(0, 1, 2), default=0,
                   help="0 predict + compute, 1 predict only, 2 compute only (original: 0)")
    p.add_argument("--voc-path", default="VOCdevkit", help="VOCdevkit folder (original: VOCdevkit)")
    p.add_argument("--split", default="test", help="split list under ImageSets/Segmentation "
                                                   "(original: test)")
    p.add_argument("--model-path", help="trained model: .keras from train.py, or a weights file")
    add_card_options(p, name_classes=True)
    p.add_argument("--out-dir", default=None, type=writable_dir,
                   help="results folder (default: a new <logs-dir>/miou_<time>; original: miou_out)")
    p.add_argument("--pred-dir", default=None,
                   help="class-index PNGs (default: <out-dir>/detection-results); needed by "
                        "mode 2 to point at an earlier run's predictions")
    p.add_argument("--write-pngs", action=argparse.BooleanOptionalAction, default=True,
                   help="mode 0: also write the class-index PNGs of the predictions, as the "
                        "original (default: on); the metrics come from memory either way")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass "
                                                             "(default: 8; original: 1)")
    add_logs_dir(p)
    add_seed(p)
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
        if args.num_classes is not None:
            check_class_count(args.model_path, args.num_classes)
    if args.miou_mode == 2:
        given = Path(args.pred_dir) if args.pred_dir else Path(args.out_dir) / "detection-results"
        if not given.is_dir():
            raise MissingInput(given, "folder of predicted class maps not found",
                               "give --pred-dir of an earlier mode 0 or 1 run")
    nc = args.num_classes
    if nc is None and args.model_path:
        from utils.weights import model_class_count

        card = read_card(args.model_path)
        nc = resolve(None, card, {}, ("num_classes",))["num_classes"] if card else \
            model_class_count(args.model_path)
    with user_errors("--name-classes"):
        names = class_names(nc or DEFAULTS["num_classes"], args.name_classes)
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
        unet = as_unet(args.model_path, args.num_classes, args.backbone, args.input_shape,
                       args.name_classes)
        names = unet.name_classes
        if args.miou_mode == 0:
            print("Get predict result and miou.")
            metrics = evaluate_ids(unet, args.voc_path, image_ids, out_dir, args.batch_size,
                                   pred_dir if args.write_pngs else None, where=args.split)
            print("Get miou done.")
            result.update(metrics)
        else:
            print("Get predict result.")
            for _ in predicted_maps(unet, args.voc_path, image_ids, args.batch_size, pred_dir):
                pass
            print("Get predict result done.")
    if args.miou_mode == 2:
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
