"""The one reader of a VOC segmentation folder.

Layout (as the original)::

    <voc>/VOC2007/JPEGImages/<id>.jpg              (.jpeg and .png are found too)
    <voc>/VOC2007/SegmentationClass/<id>.png       pixel value = class index
    <voc>/VOC2007/ImageSets/Segmentation/<split>.txt

Every function takes either the VOCdevkit folder or its VOC2007 folder. A split file
lists one image id per line (the first word of each non-blank line).
"""
import warnings
from pathlib import Path

from utils.errors import MissingInput, UserError
from utils.image_check import bad_images_error, find_bad_images

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def voc_root(voc_path):
    """The ``VOC2007`` folder of a VOCdevkit path (the VOC2007 folder itself is accepted)."""
    voc_path = Path(voc_path)
    if (voc_path / "VOC2007").is_dir():
        return voc_path / "VOC2007"
    if (voc_path / "ImageSets").is_dir() or (voc_path / "JPEGImages").is_dir():
        return voc_path
    raise MissingInput(voc_path, "not a VOCdevkit folder (expected VOC2007/ with "
                                 "JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)",
                       "check --voc-path")


def voc_dirs(voc_path):
    """``(JPEGImages, SegmentationClass, ImageSets/Segmentation)`` folders."""
    root = voc_root(voc_path)
    return root / "JPEGImages", root / "SegmentationClass", root / "ImageSets" / "Segmentation"


def split_path(voc_path, split):
    return voc_dirs(voc_path)[2] / f"{split}.txt"


def read_split(voc_path, split="test"):
    """Image ids listed in ``<split>.txt``; errors name the file."""
    path = split_path(voc_path, split)
    if not path.is_file():
        raise MissingInput(path, "split list not found", f"give the VOCdevkit folder that "
                           f"holds VOC2007/ImageSets/Segmentation/{split}.txt")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(path, "the split list is empty", "list one image id per line")
    return ids


def image_path(voc_path, image_id):
    """``JPEGImages/<id>.jpg`` (or .jpeg/.png); a clear error when none exists."""
    folder = voc_dirs(voc_path)[0]
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{image_id}{suffix}"
        if p.is_file():
            return p
    raise MissingInput(folder / (image_id + '.jpg'), f"image listed in the split but not "
                                                     f"found (looked for {', '.join(IMAGE_SUFFIXES)})",
                       "add it or remove its line from the split list")


def label_path(voc_path, image_id):
    """``SegmentationClass/<id>.png`` (it may not exist)."""
    return voc_dirs(voc_path)[1] / f"{image_id}.png"


def check_files(voc_path, image_ids, need_images=True, where="the split"):
    """Fail before any work when a label (or, with ``need_images``, an image) is missing."""
    jpg_dir, png_dir, _ = voc_dirs(voc_path)
    missing = []
    for i in image_ids:
        if need_images and not any((jpg_dir / f"{i}{s}").is_file() for s in IMAGE_SUFFIXES):
            missing.append(str(jpg_dir / f"{i}.jpg"))
        if not (png_dir / f"{i}.png").is_file():
            missing.append(str(png_dir / f"{i}.png"))
    if missing:
        raise MissingInput(f"{where}: {len(missing)} listed file(s) are missing: "
                           + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
                           fix="add them or remove their lines")


REPLACE_HINT = "replace or delete it (and its line in the split list)"
SKIP_HINT = f"{REPLACE_HINT}, or pass --skip-bad-images"


def check_images(voc_path, image_ids, skip_bad=False, where="the split", fix=SKIP_HINT):
    """Decode every listed photo once (the verdicts are cached, :mod:`utils.image_check`)
    before any work. An unreadable one raises a UserError naming it and ``fix`` (a
    script without ``--skip-bad-images`` gives :data:`REPLACE_HINT`); with ``skip_bad``
    it is left out by name, with a warning. Returns the ids kept."""
    paths = {str(image_path(voc_path, i)): i for i in image_ids}
    bad = find_bad_images(list(paths), "pil", desc=f"checking {Path(str(where)).stem} images")
    if bad and not skip_bad:
        raise bad_images_error(bad, fix)
    if bad:
        warnings.warn(f"--skip-bad-images: {len(bad)} unreadable image(s) of {where} left "
                      f"out: " + "; ".join(f"{p}: {why}" for p, why in bad.items()),
                      stacklevel=2)
    kept = [i for p, i in paths.items() if p not in bad]
    if not kept:
        raise UserError(where, "no readable image left", "replace the unreadable images")
    return kept


def mask_classes(voc_path, image_id, num_classes):
    """The classes (< ``num_classes``) present in one photo's mask."""
    import numpy as np
    from PIL import Image

    with Image.open(label_path(voc_path, image_id)) as mask:
        values = np.unique(np.asarray(mask))
    return {int(v) for v in values if v < num_classes}


def label_budget_order(voc_path, image_ids, num_classes, seed):
    """``image_ids`` in the order label budgets take them: every budget of N photos is
    the first N, so the 4 are among the 8 and the 8 among the 16.

    One seeded permutation; then the fewest photos (greedily, the first in the
    permutation of those that add the most) that hold every class present in the split
    move to the front, so the smallest budget that can see every class does."""
    import numpy as np

    order = [image_ids[i] for i in np.random.default_rng(seed).permutation(len(image_ids))]
    classes = {i: mask_classes(voc_path, i, num_classes) for i in order}
    rank = {i: k for k, i in enumerate(order)}
    missing = set().union(*classes.values())
    cover = []
    while missing:
        best = max(order, key=lambda i: (len(classes[i] & missing), -rank[i]))
        cover.append(best)
        missing -= classes[best]
    return cover + [i for i in order if i not in cover]


def draw_labelled(voc_path, image_ids, count, num_classes, seed, where="--train-count"):
    """The first ``count`` photos of :func:`label_budget_order`; a UserError naming
    ``where`` when ``count`` is not between 1 and the split's size."""
    if not 1 <= count <= len(image_ids):
        raise UserError(where, f"{count} photos asked for, the train split has "
                               f"{len(image_ids)}", f"give 1 to {len(image_ids)}")
    return label_budget_order(voc_path, image_ids, num_classes, seed)[:count]
