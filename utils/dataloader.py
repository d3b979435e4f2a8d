"""U-Net input pipeline: a ``tf.data.Dataset`` over a VOCdevkit split.

The folder (the VOCdevkit or its VOC2007) is read by :mod:`utils.voc`.

Each element is ``(image, target)``: ``image`` float32 (H, W, 3) scaled to 0..1, and
``target`` float32 one-hot (H, W, num_classes + 1) whose last channel marks pixels to
ignore (mask values >= num_classes). Files are decoded and augmented with PIL/OpenCV
(masks are palette PNGs, which ``tf.io.decode_png`` would expand to colours) inside a
parallel ``map``; one-hot encoding, batching and prefetching run in the graph.
"""
import warnings

import cv2
import numpy as np
import tensorflow as tf
from PIL import Image

from utils.errors import BAD_RECORD_MARK, UserError
from utils.utils import AUGMENTATIONS, cvtColor, preprocess_input, resize_image
from utils.voc import (SKIP_HINT, check_files, check_images, image_path, label_path,  # noqa: F401
                       read_split, split_path)

# The letterbox bars' label with ``mark_bars`` (masks hold 0..num_classes after reading).
BAR_LABEL = 255
MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


def check_split(voc_path, split, num_classes, check_values=True, skip_bad=False):
    """Read a split and check its files before training starts.

    Raises naming the files when an image or mask is missing, an image does not decode
    (each photo is decoded once, the verdict cached: :mod:`utils.image_check`), a mask
    is not single-band, or a mask's size differs from its image's. With ``skip_bad`` the
    undecodable photos are left out by name, with a warning. With ``check_values``
    every mask is decoded and pixels >= ``num_classes`` (to be ignored) are counted in
    one warning. Returns the ids.
    """
    names = read_split(voc_path, split)
    check_files(voc_path, names, where=split_path(voc_path, split))
    names = check_images(voc_path, names, skip_bad=skip_bad, where=split_path(voc_path, split))
    problems, ignored_files, ignored_pixels, ignored_values = [], [], 0, set()
    for n in names:
        jpg, png = image_path(voc_path, n), label_path(voc_path, n)
        try:
            with Image.open(jpg) as im:
                image_size = im.size
        except OSError as exc:
            raise UserError(jpg, f"cannot read the image ({exc})", SKIP_HINT) from exc
        try:
            with Image.open(png) as mask:
                if mask.mode not in MASK_MODES:
                    problems.append(f"{png}: mask mode {mask.mode} has several bands; a class "
                                    f"mask must hold one class index per pixel (mode L or P)")
                    continue
                if mask.size != image_size:
                    problems.append(f"{png}: mask size {mask.size[0]}x{mask.size[1]} differs "
                                    f"from its image {jpg} ({image_size[0]}x{image_size[1]})")
                    continue
                if check_values:
                    values = np.asarray(mask)
                    bad = values >= num_classes
                    if bad.any():
                        ignored_files.append(str(png))
                        ignored_pixels += int(bad.sum())
                        ignored_values.update(np.unique(values[bad]).tolist())
        except OSError as exc:
            raise UserError(png, f"cannot read the mask ({exc})",
                            "replace it with a one-band class-index PNG") from exc
    if problems:
        raise UserError(f"{len(problems)} bad mask(s) in split {split!r}: "
                        + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    if ignored_files:
        warnings.warn(
            f"split {split!r}: {ignored_pixels} pixels in {len(ignored_files)} of {len(names)} "
            f"masks have values >= num_classes={num_classes} (values "
            f"{sorted(ignored_values)[:10]}); they are ignored by the loss. First file: "
            f"{ignored_files[0]}", stacklevel=2)
    return names


def _label_array(label, num_classes):
    # Map out-of-range values before any resize: nearest resizing never invents values.
    label = np.asarray(label)
    label = np.where(label >= num_classes, num_classes, label).astype(np.uint8)
    return Image.fromarray(label)


def letterbox(image, label, input_shape, label_fill=0):
    """Resize keeping the aspect ratio and centre on a grey canvas (validation).

    ``input_shape`` is (h, w). The image follows ``utils.utils.resize_image`` (bicubic);
    the label is resized nearest and padded with ``label_fill`` (0 = background, as the
    original).
    """
    h, w = input_shape
    new_image, nw, nh = resize_image(image, (w, h))
    new_label = Image.new("L", (w, h), int(label_fill))
    new_label.paste(label.resize((nw, nh), Image.NEAREST), ((w - nw) // 2, (h - nh) // 2))
    return new_image, new_label


def get_random_data(image, label, input_shape, jitter=0.3, hue=0.1, sat=1.5, val=1.5, rng=None,
                    scale=(0.25, 2.0), crop=None):
    """The original's training augmentation on a PIL image and its L-mode label.

    Aspect ratio jitter, scale 0.25-2 (of ``input_shape``), horizontal flip, random
    placement on a grey (128) canvas (label 0 around it), then HSV jitter. The canvas is
    ``input_shape``, or with ``crop`` (h, w) a smaller window: the photo is sized for
    ``input_shape`` as before and a random ``crop`` of it is taken, so the crop has the
    pixel scale of a whole photo at ``input_shape``. Returns float32 RGB 0..255 (H, W, 3)
    and a PIL label of size (w, h) (the crop's, when given).
    """
    rng = rng or np.random.default_rng()

    def rand(a=0.0, b=1.0):
        return rng.random() * (b - a) + a

    h, w = input_shape
    new_ar = w / h * rand(1 - jitter, 1 + jitter) / rand(1 - jitter, 1 + jitter)
    scale = rand(*scale)
    if new_ar < 1:
        nh = int(scale * h)
        nw = int(nh * new_ar)
    else:
        nw = int(scale * w)
        nh = int(nw / new_ar)
    nw, nh = max(nw, 1), max(nh, 1)
    image = image.resize((nw, nh), Image.BICUBIC)
    label = label.resize((nw, nh), Image.NEAREST)
    if rand() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        label = label.transpose(Image.FLIP_LEFT_RIGHT)
    h, w = crop or (h, w)
    # An image larger than the canvas gets a negative offset, i.e. a random crop.
    dx, dy = int(rand(0, w - nw)), int(rand(0, h - nh))
    canvas = Image.new("RGB", (w, h), (128, 128, 128))
    canvas.paste(image, (dx, dy))
    new_label = Image.new("L", (w, h), 0)
    new_label.paste(label, (dx, dy))

    hue = rand(-hue, hue)
    sat = rand(1, sat) if rand() < 0.5 else 1 / rand(1, sat)
    val = rand(1, val) if rand() < 0.5 else 1 / rand(1, val)
    x = cv2.cvtColor(np.asarray(canvas, np.float32) / 255, cv2.COLOR_RGB2HSV)
    # OpenCV float hue is in degrees; the shift wraps round the colour circle.
    x[..., 0] = np.mod(x[..., 0] + hue * 360, 360)
    x[..., 1:] *= (sat, val)
    np.clip(x[..., 1:], 0, 1, out=x[..., 1:])
    return cv2.cvtColor(x, cv2.COLOR_HSV2RGB) * 255, new_label


def load_sample(voc_path, name, input_shape, num_classes, train, rng=None, label_fill=0,
                crop=None, augment="original"):
    """Read, augment (train) or letterbox (validation) one pair.

    Training draws the :data:`AUGMENTATIONS` entry ``augment``, on a random ``crop``
    window when given (see :func:`get_random_data`). Returns ``(image float32 (h, w, 3)
    in 0..1, label uint8 (h, w))``, (h, w) the crop's in training when given, where
    ignored pixels hold ``num_classes``.
    """
    jpg, png = image_path(voc_path, name), label_path(voc_path, name)
    with Image.open(jpg) as im:
        image = cvtColor(im)
        image.load()
    with Image.open(png) as mask:
        label = _label_array(mask, num_classes)
    if image.size != label.size:
        raise ValueError(f"{png}: mask size {label.size} differs from its image {jpg} {image.size}")
    if train:
        image, label = get_random_data(image, label, input_shape, rng=rng, crop=crop,
                                       **AUGMENTATIONS[augment])
    else:
        image, label = letterbox(image, label, input_shape, label_fill)
    return preprocess_input(image), np.asarray(label, dtype=np.uint8)


def build_dataset(voc_path, split, input_shape, batch_size, num_classes, train,
                  names=None, num_workers=None, seed=None, repeat=None, mark_bars=False, skip=0,
                  skip_bad=False, crop=None, augment="original"):
    """``tf.data`` pipeline of batches ``(images, one-hot targets)``.

    ``train=True``: shuffled each pass, augmented (``augment``, an :data:`AUGMENTATIONS`
    key; with ``crop`` (h, w) the batches hold random windows of that size at the scale
    of ``input_shape``), last partial batch dropped, repeated
    forever (``repeat``=None) so ``fit`` is driven by ``steps_per_epoch``. ``train=False``:
    file order, letterbox, every image once. ``num_workers`` parallel loaders
    (None = tf.data autotune). ``names`` skips re-reading and re-checking the split.
    ``skip`` samples of the stream are passed over unread (a resumed run).
    ``mark_bars`` (validation): the letterbox bars are background for the loss, as in
    the original, and also flagged in the ignore channel, so the mIoU leaves them out
    (:class:`utils.callbacks.MeanIoU`); the losses drop that channel.

    A sample that cannot be read fails the pipeline with an error naming the file
    (:data:`utils.errors.BAD_RECORD_MARK`), or with ``skip_bad`` is dropped with a
    warning naming it.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment {augment!r}: use one of {sorted(AUGMENTATIONS)}")
    if names is None:
        names = check_split(voc_path, split, num_classes, skip_bad=skip_bad)
    repeat = train if repeat is None else repeat
    voc_path, input_shape = str(voc_path), tuple(int(s) for s in input_shape)
    crop = tuple(int(s) for s in crop) if train and crop else None
    h, w = crop or input_shape
    dropped = set()

    def load(name, sample_seed):
        rng = np.random.default_rng(int(sample_seed) & (2 ** 63 - 1)) if train else None
        name = name.decode("utf8")
        try:
            image, label = load_sample(voc_path, name, input_shape, num_classes, train,
                                       rng=rng, label_fill=BAR_LABEL if mark_bars else 0,
                                       crop=crop, augment=augment)
            return image, label, b""
        # A Python exception raised inside tf.numpy_function under a parallel map can
        # leave tf.data threads blocked at interpreter exit (the run hung after its
        # traceback): report the file as data and fail, or drop, in the graph instead.
        except (OSError, ValueError, SyntaxError) as exc:
            try:
                where = image_path(voc_path, name)
            except OSError:          # gone since the check
                where = f"image {name!r} of the split"
            why = f"{where} (or its mask): {exc}"
            if skip_bad and name not in dropped:
                dropped.add(name)
                warnings.warn(f"--skip-bad-images: dropping {why}", stacklevel=1)
            return (np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.uint8),
                    f"{why}; {SKIP_HINT}".encode())

    def to_tensors(name, sample_seed):
        image, label, error = tf.numpy_function(load, [name, sample_seed],
                                                [tf.float32, tf.uint8, tf.string],
                                                stateful=False)
        image.set_shape((h, w, 3))
        label.set_shape((h, w))
        if not skip_bad:
            check = tf.debugging.Assert(tf.equal(error, ""),
                                        [tf.strings.join([BAD_RECORD_MARK, error])])
            with tf.control_dependencies([check]):
                image = tf.identity(image)
        target = tf.one_hot(tf.cast(label, tf.int32), num_classes + 1, dtype=tf.float32)
        if mark_bars:       # BAR_LABEL is past the one-hot depth: all zeros until here
            bar = tf.cast(tf.equal(label, BAR_LABEL), tf.float32)[..., None]
            target += bar * (tf.one_hot(0, num_classes + 1) + tf.one_hot(num_classes,
                                                                         num_classes + 1))
        return image, target, error

    ds = tf.data.Dataset.from_tensor_slices(list(names))
    if train:
        ds = ds.shuffle(len(names), seed=seed, reshuffle_each_iteration=True)
        # One augmentation seed per sample, new on every pass: reproducible under --seed
        # whatever the number of parallel workers.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    else:
        seeds = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()
    ds = tf.data.Dataset.zip((ds, seeds))
    if repeat:
        ds = ds.repeat()
    if skip:
        ds = ds.skip(skip)
    ds = ds.map(to_tensors, num_parallel_calls=num_workers or tf.data.AUTOTUNE,
                deterministic=True)
    if skip_bad:
        ds = ds.filter(lambda image, target, error: tf.equal(error, ""))
    ds = ds.map(lambda image, target, error: (image, target))
    ds = ds.batch(batch_size, drop_remainder=train)
    return ds.prefetch(tf.data.AUTOTUNE)
