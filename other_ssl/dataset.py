"""Single-image input for the baselines: an image folder (e.g. step 2's ``out/``) read
through ``tf.data``: decode, resize, shuffle, batch, prefetch.

The original loaded one pre-made NumPy array of every image into memory; this streams
the files instead, so the folder can be any size.
"""
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from data_processing.names import is_image_file, parse_stage_name
from utils.errors import MissingInput, UserError
from utils.image_check import bad_images_error, find_bad_images


def list_images(folder):
    """The image files (.jpg, .jpeg, .png) directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInput(folder, "image folder not found",
                           "give --image-dir, e.g. the out/ folder of select_img.py")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    if not paths:
        raise UserError(folder, "no images (.jpg, .jpeg, .png) in this folder (subfolders "
                                "are not searched)", "give the folder that holds the photos")
    return paths


def check_images(paths, skip_bad=False):
    """Decode every image once (cached) before training: an error naming the first
    unreadable one, or with ``skip_bad`` the readable paths and a warning naming the
    others."""
    bad = find_bad_images(paths, decoder="tf")
    if not bad:
        return list(paths)
    if not skip_bad:
        raise bad_images_error(bad, "replace or delete it, or pass --skip-bad-images")
    warnings.warn(f"--skip-bad-images: {len(bad)} unreadable image(s) left out: "
                  + "; ".join(f"{p}: {why}" for p, why in bad.items()), stacklevel=2)
    kept = [p for p in paths if str(p) not in bad]
    if not kept:
        raise UserError(Path(paths[0]).parent, "no readable image left", "replace the images")
    return kept


def stage_labels(paths):
    """The phenological stage of each stage image, from its file name (step 2's
    ``<camera>p<preset>t<HH>i<stage>d<date>_<HH>.jpg``); a bad name raises
    ``FileNameError`` naming the file."""
    return [parse_stage_name(Path(p).name).stage for p in paths]


def check_batch_size(n_images, batch_size, where):
    """Batches drop the remainder, so fewer images than one batch means no step at all."""
    if n_images < batch_size:
        raise UserError(where, f"{n_images} images, fewer than the batch size {batch_size}",
                        "lower --batch-size or add images")


def load_image(path, size):
    """One file -> float32 (H, W, 3) in 0..255, resized (bilinear, no letterbox) to ``size``."""
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), size)
    image.set_shape((size[0], size[1], 3))
    return image


def make_image_dataset(paths, input_shape, batch_size, labels=None, shuffle=True,
                       seed=None, repeat=False, shuffle_buffer=None, drop_remainder=True,
                       map_fn=None):
    """Batches of images (0..255 float32) or ``(images, labels)``.

    ``map_fn(image, label_or_None)`` may transform single examples (scaling,
    augmentation) before batching. ``repeat=True`` cycles forever (for a capped
    ``steps_per_epoch``); otherwise one pass per epoch, reshuffled each epoch.
    ``shuffle_buffer=None`` shuffles over the whole list.
    """
    size = (int(input_shape[0]), int(input_shape[1]))
    files = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
    if labels is not None:
        ds = tf.data.Dataset.zip(files, tf.data.Dataset.from_tensor_slices(
            tf.constant(list(labels), tf.int32)))
    else:
        ds = files
    if shuffle:
        # Names, not pixels, are shuffled: a buffer over the whole folder costs little.
        buffer = min(len(paths), shuffle_buffer) if shuffle_buffer else len(paths)
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def load(*item):
        image = load_image(item[0], size)
        label = item[1] if len(item) > 1 else None
        if map_fn is not None:
            return map_fn(image, label)
        return image if label is None else (image, label)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def image_statistics(paths, input_shape, limit=1024, batch_size=32):
    """Per-channel (mean, std) on 0..1 pixels of the images at ``input_shape`` (H, W):
    of all of them, or of ``limit`` spread evenly over the sorted list. Computed once
    before training (CMID's authors normalise with their data set's statistics)."""
    paths = list(paths)
    if limit and len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).astype(int)]
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for batch in make_image_dataset(paths, input_shape, batch_size, shuffle=False,
                                    drop_remainder=False):
        x = batch.numpy().reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        squares += np.square(x).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return [float(v) for v in mean], [float(max(v, 1e-6)) for v in std]
