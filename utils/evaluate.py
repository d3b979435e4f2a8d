"""Evaluate a segmentation model on a VOC split: predict, arg-max, confusion matrix.

The confusion matrix is accumulated from the predicted class maps in memory
(:func:`utils.utils_metrics.confusion_of_arrays`); the class-index PNGs the original
wrote and read back (``get_miou.py``'s ``detection-results``) are written only when
asked for, and give the same matrix.
"""
import os
from pathlib import Path

from PIL import Image

from utils.image_check import rgb8
from utils.run import make_run_dir
from utils.utils_metrics import (confusion_of_arrays, per_class_iu, per_class_PA_Recall,
                                 per_class_Precision, print_summary, read_class_map,
                                 show_results)
from utils.voc import REPLACE_HINT, check_files, check_images, image_path, read_split, voc_dirs


def as_unet(model, num_classes=None, backbone=None, input_shape=None, name_classes=None):
    """A :class:`utils.predictor.Unet` of ``model`` (a ``Unet``, a ``keras.Model`` or a
    model file); options left None come from the model's card."""
    from utils.predictor import Unet

    if isinstance(model, Unet):
        return model
    kwargs = {"num_classes": num_classes, "backbone": backbone,
              "input_shape": tuple(input_shape) if input_shape is not None else None}
    if isinstance(model, (str, os.PathLike)):
        return Unet(model_path=model, name_classes=name_classes, **kwargs)
    return Unet(model=model, name_classes=name_classes, **kwargs)


def predicted_maps(unet, voc_path, image_ids, batch_size=8, pred_dir=None):
    """Yield ``(id, class map)`` for every id, predicted ``batch_size`` photos at a time;
    with ``pred_dir`` each map is also saved as ``<pred_dir>/<id>.png``."""
    if pred_dir is not None:
        pred_dir = Path(pred_dir)
        pred_dir.mkdir(parents=True, exist_ok=True)
        clash = [i for i in image_ids if (pred_dir / f"{i}.png").exists()]
        if clash:
            raise FileExistsError(f"{pred_dir} already holds predictions (e.g. {clash[0]}.png); "
                                  f"choose another output folder")
    for start in range(0, len(image_ids), batch_size):
        ids = image_ids[start:start + batch_size]
        images = []
        for i in ids:
            with Image.open(image_path(voc_path, i)) as im:
                im.load()
                images.append(rgb8(im).copy())
        for i, mask in zip(ids, unet.predict_masks(images, batch_size=batch_size)):
            if pred_dir is not None:
                Image.fromarray(mask).save(pred_dir / f"{i}.png")
            yield i, mask


def evaluate_split(model, voc_path, split="test", num_classes=None, name_classes=None,
                   input_shape=None, out_dir=None, backbone=None, batch_size=8,
                   pred_dir=None):
    """Predict a VOC split and compute its metrics (get_miou mode 0 in one call).

    ``model``: a ``keras.Model``, a ``Unet`` or a model file (its card gives what
    ``num_classes``, ``input_shape`` and ``backbone`` leave None). Charts, CSV and
    ``metrics.json`` go to ``out_dir`` (default: a new ``logs/miou_<time>`` folder);
    the class-index PNGs to ``pred_dir`` only when given. Returns ``{"mIoU", "mPA",
    "accuracy", "IoU", "recall", "precision", "out_dir", ...}`` with plain floats.
    """
    image_ids = read_split(voc_path, split)
    check_files(voc_path, image_ids)
    check_images(voc_path, image_ids, where=f"split {split!r}", fix=REPLACE_HINT)
    out_dir = Path(out_dir) if out_dir is not None else make_run_dir("miou")
    unet = as_unet(model, num_classes, backbone, input_shape, name_classes)
    return evaluate_ids(unet, voc_path, image_ids, out_dir, batch_size, pred_dir,
                        where=split)


def evaluate_ids(unet, voc_path, image_ids, out_dir, batch_size=8, pred_dir=None, where=""):
    """:func:`evaluate_split` of checked ``image_ids`` with a ``Unet``."""
    gt_dir = voc_dirs(voc_path)[1]
    print("Num classes", unet.num_classes)
    pairs = ((i, read_class_map(gt_dir / f"{i}.png", i), mask, f"prediction of {i}")
             for i, mask in predicted_maps(unet, voc_path, image_ids, batch_size, pred_dir))
    hist, skipped, ignored = confusion_of_arrays(pairs, unet.num_classes, len(image_ids), gt_dir)
    if len(skipped) == len(image_ids):
        raise ValueError(f"no image of {where} could be compared: every label's size differs "
                         f"from its image's (see the warning above)")
    IoUs, recall, precision = per_class_iu(hist), per_class_PA_Recall(hist), per_class_Precision(hist)
    print_summary(hist, IoUs, recall, precision, unet.name_classes)
    extra = {"split": where, "images": len(image_ids) - len(skipped),
             "skipped_size_mismatch": [s[0] for s in skipped],
             "ignored_label_pixels": ignored}
    metrics = show_results(out_dir, hist, IoUs, recall, precision, unet.name_classes, extra=extra)
    metrics["out_dir"] = str(out_dir)
    return metrics
