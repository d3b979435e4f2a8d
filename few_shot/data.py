"""Few-shot data: a labelled image folder, the K-shot split, normalisation, P x K batches.

Two layouts are read:

* one subfolder per class (``<root>/<class>/*.jpg``), the common convention;
* step 2's stage images (``<camera>p<preset>t<HH>i<stage>d<date>_<HH>.jpg`` in one
  folder), the class being the stage in the name (``--stages-from-names``).

Few-shot sets are small, so the images are decoded once, resized, and kept in memory
as uint8; every problem (an empty class, too few images, an unreadable file) is
reported before any training.
"""
import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from data_processing.names import FileNameError, is_image_file, parse_stage_name
from utils.errors import UserError
from utils.image_check import rgb8

# ImageNet's channel statistics on 0..1 pixels (torchvision's, used by the study).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The study's own data set's fixed constants (the DoctorP plant-disease images).
DOCTORP_MEAN = (0.4467, 0.4889, 0.3267)
DOCTORP_STD = (0.2299, 0.2224, 0.2289)
NORMALIZATIONS = ("imagenet", "doctorp", "computed", "none", "encoder")
# "encoder": the scale an encoder file was pretrained on, from its model card, as mean
# and std on 0..1 pixels (the study fed its ImageNet backbones ImageNet's scale).
SCALE_STATS = {"[0, 1]": ((0.0,) * 3, (1.0,) * 3), "[-1, 1]": ((0.5,) * 3, (0.5,) * 3)}


class FewShotDataError(UserError):
    """A problem with the image folder, found before training."""


@dataclasses.dataclass
class LabelledImages:
    """Image paths with integer labels and the class names (label i = ``classes[i]``)."""
    paths: list
    labels: np.ndarray
    classes: list
    root: Path


def _images_in(folder):
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))


def read_class_folders(root):
    """``<root>/<class>/<image>``: one subfolder per class, classes sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FewShotDataError(f"{root}: image folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        hint = (" (it holds stage images: add --stages-from-names)"
                if any(is_image_file(p) for p in root.iterdir()) else "")
        raise FewShotDataError(f"{root}: no class subfolders; expected <root>/<class>/<image>"
                               + hint)
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = _images_in(folder)
        if not found:
            raise FewShotDataError(f"{folder}: class {folder.name!r} has no images "
                                   f"(.jpg, .jpeg, .png); remove the folder or add images")
        paths += found
        labels += [label] * len(found)
    return LabelledImages(paths, np.asarray(labels, np.int64), [f.name for f in folders], root)


def read_stage_images(root):
    """Step 2's stage images in ``root``; the class of each is the stage in its name,
    parsed by :func:`data_processing.names.parse_stage_name`. Classes are the stages
    present, in order (``stage 0``, ``stage 1`` ...)."""
    root = Path(root)
    if not root.is_dir():
        raise FewShotDataError(f"{root}: image folder not found")
    paths = _images_in(root)
    if not paths:
        raise FewShotDataError(f"{root}: no images (.jpg, .jpeg, .png) in this folder")
    try:
        stages = [parse_stage_name(p.name).stage for p in paths]
    except FileNameError as exc:
        raise FewShotDataError(f"{root}: {exc}") from exc
    present = sorted(set(stages))
    index = {s: i for i, s in enumerate(present)}
    return LabelledImages(paths, np.asarray([index[s] for s in stages], np.int64),
                          [f"stage {s}" for s in present], root)


def split_shots(labels, shots, seed, where="the image folder", classes=None):
    """K training images per class, drawn at random (seeded); the rest are held out.

    Returns sorted ``(train_indices, test_indices)``. Every class needs at least K + 1
    images, so that each one is also evaluated."""
    labels = np.asarray(labels)
    if shots < 1:
        raise FewShotDataError(f"--shots {shots}: give at least one image per class")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < shots + 1:
            name = classes[c] if classes is not None else c
            raise FewShotDataError(f"{where}: class {name!r} has {len(members)} images, "
                                   f"fewer than --shots {shots} + 1 (one held out); "
                                   f"lower --shots or add images")
        picked = rng.choice(members, shots, replace=False)
        train += picked.tolist()
        test += np.setdiff1d(members, picked).tolist()
    return np.sort(train), np.sort(test)


def load_images(paths, size, where=None):
    """Decode and resize every file: uint8 (N, H, W, 3). ``size`` is (H, W). An
    unreadable file raises :class:`FewShotDataError` naming it (and ``where``)."""
    h, w = size
    out = np.empty((len(paths), h, w, 3), np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                out[i] = np.asarray(rgb8(im).resize((w, h), Image.BILINEAR))
        except (OSError, ValueError, SyntaxError) as exc:
            folder = where or Path(path).parent
            raise FewShotDataError(f"{folder}: unreadable image {Path(path).name} ({exc})") from exc
    return out


def normalization_stats(kind, train_images=None, weights=None):
    """(mean, std) per channel on 0..1 pixels: ImageNet's, the study's data set's fixed
    constants (``doctorp``), computed from ``train_images`` (``computed``), (0, 1) for
    ``none``, or for ``encoder`` the scale the ``weights`` file's model card names
    (ImageNet's for ``weights`` "imagenet"; (0, 1), the U-Net's, for "none")."""
    if kind == "encoder":
        return _np_stats(*encoder_scale_stats(weights))
    if kind == "imagenet":
        return _np_stats(IMAGENET_MEAN, IMAGENET_STD)
    if kind == "doctorp":
        return _np_stats(DOCTORP_MEAN, DOCTORP_STD)
    if kind == "none":
        return _np_stats(*SCALE_STATS["[0, 1]"])
    if kind == "computed":
        x = np.asarray(train_images, np.float64).reshape(-1, 3) / 255.0
        return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)
    raise ValueError(f"unknown normalisation {kind!r}; choose from {', '.join(NORMALIZATIONS)}")


def _np_stats(mean, std):
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def encoder_scale_stats(weights):
    """(mean, std) of ``--normalize encoder`` for ``weights``; FewShotDataError (one line
    naming the file) where its card is missing or names a scale with no fixed constants."""
    from utils.model_card import read_card

    if weights in (None, "none"):
        return SCALE_STATS["[0, 1]"]
    if weights == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    card = read_card(weights) if Path(weights).is_file() else None
    scale = (card or {}).get("pixel_scale")
    if scale not in SCALE_STATS:
        raise FewShotDataError(
            f"{weights}: --normalize encoder reads the pixel scale from the file's model card, "
            + (f"and {scale!r} has no fixed constants" if card else "and it has none")
            + "; give --normalize none ([0, 1]), imagenet or computed")
    return SCALE_STATS[scale]


class PKSampler:
    """Batches of P classes x K images, as index arrays of length P·K.

    Each batch draws P distinct classes and K images of each (without replacement
    when the class has K images, with replacement otherwise), so every batch holds
    the positives and negatives that online mining needs."""

    def __init__(self, labels, p, k, seed=0):
        self.labels = np.asarray(labels)
        self.by_class = {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}
        if p > len(self.by_class):
            raise FewShotDataError(f"a batch of {p} classes needs {p} classes; the training "
                                   f"set has {len(self.by_class)} (lower --batch-classes)")
        if p < 1 or k < 1:
            raise FewShotDataError(f"P x K = {p} x {k}: both must be at least 1")
        self.p, self.k = int(p), int(k)
        self.rng = np.random.default_rng(seed)

    def batch(self):
        classes = self.rng.choice(sorted(self.by_class), self.p, replace=False)
        picks = [self.rng.choice(self.by_class[int(c)], self.k,
                                 replace=len(self.by_class[int(c)]) < self.k)
                 for c in classes]
        return np.concatenate(picks)

    def __iter__(self):
        while True:
            yield self.batch()
