"""The PDE pair pipeline: a pair index (.npy) and an image folder -> ``tf.data`` batches.

Elements are ``({"self_input1": (b, h, w, 3), "self_input2": (b, h, w, 3)},
{"self_output": targets})`` with images in [-1, 1]; the two images of a pair are
augmented independently. Files are read, decoded and augmented in parallel inside
``tf.data``; training data is reshuffled every epoch, and every random choice is a
function of (seed, epoch, pair position), so the same ``--seed`` gives the same
batches and two epochs differ.

A pair index reuses each image hundreds of times per epoch (3,100 images in 800,000
pairs in the original), so by default the images are decoded and resized to the
load size once, kept in memory (:class:`ImageCache`, uint8) and only cropped and
augmented per pair; without the cache each pair reads and decodes its two files.
"""
import dataclasses
import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pde_self_supervised.preprocess_img import (INPUT_SIZE, LOAD_SIZE, decode_image, load_image,
                                                one_cached_img, one_img)
from data_processing.pair_index import check_pair_index, read_record
from utils.errors import UserError
from utils.image_check import check_image_file  # noqa: F401  (part of this module's API)
from utils.image_check import find_bad_images as find_bad_image_files

NUM_PAIR_CLASSES = 4
# Default grades of the four pair classes for the grading distance (the original's
# re_label: same view -> 1, different view -> 0).
DEFAULT_GRADES = (1.0, 1.0, 0.0, 0.0)


class PairDataError(UserError):
    """A pair index, image folder or split that cannot be trained on."""


def load_pair_index(x_path, y_path):
    """Read the pair index: names (n, 2) as str and classes (n,) as int64."""
    for p in (x_path, y_path):
        if not Path(p).is_file():
            raise PairDataError(f"{p}: pair index file not found; make it with "
                                f"make_dataset.py or give its path")
    x = np.load(x_path, allow_pickle=False)
    y = np.load(y_path, allow_pickle=False)
    if x.ndim != 2 or x.shape[1] != 2:
        raise PairDataError(f"{x_path}: expected an array of shape (n, 2) of image names, "
                            f"got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise PairDataError(f"{y_path}: expected {len(x)} pair classes (one per row of "
                            f"{x_path}), got shape {y.shape}")
    check_pair_index(x_path, y_path, x, y)
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= NUM_PAIR_CLASSES)
    if bad.any():
        raise PairDataError(f"{y_path}: pair classes must be 0..3; found {y[bad][:5].tolist()}")
    return x.astype(str), y


def resolve_image_dir(names, image_dir, x_path):
    """The folder the images of ``names`` (from the index ``x_path``) are read from,
    said in one line: ``image_dir``, or "" for an index of absolute paths (then
    ``--image-dir`` must be empty: it would be ignored). An empty ``--image-dir`` with
    plain names is refused rather than read from the current folder."""
    names = np.unique(np.asarray(names).reshape(-1))
    absolute = np.array([os.path.isabs(n) for n in names])
    if absolute.any():
        if not absolute.all() or image_dir:
            first = names[absolute][0]
            raise PairDataError(f"{x_path}: names absolute paths (e.g. {first}), which "
                                f"--image-dir {image_dir!r} would not apply to; give "
                                f"--image-dir '' to use those paths as they are, or rebuild "
                                f"the index with plain names (make_dataset.py)"
                                if image_dir else
                                f"{x_path}: mixes absolute paths ({first}) and plain names; "
                                f"rebuild it with make_dataset.py")
        print(f"Images: the absolute paths in {x_path} (--image-dir '')")
        return ""
    if not image_dir:
        raise PairDataError(f"--image-dir: empty, and {x_path} names files without a folder; "
                            f"give the folder of the stage images (select_img.py's output)")
    record = read_record(x_path) or {}
    made = record.get("image_dir")
    used = os.path.abspath(image_dir)
    note = f" (the index was made from {made})" if made and made != used else ""
    print(f"Images: {used}{note}")
    return image_dir


def split_by_fractions(x, y, train, val):
    """Split in file order: the first ``train`` fraction, the next ``val``, the rest test.

    With 800,000 pairs, (0.9, 0.05) gives the original's 720k/40k/40k and
    (0.425, 0.05) its 340k/40k/20k... rest.
    """
    if not (0 <= train <= 1 and 0 <= val <= 1 and train + val <= 1):
        raise PairDataError(f"--split fractions must be in [0, 1] and sum to at most 1, "
                            f"got {train} {val}")
    n = len(x)
    a = int(round(train * n))
    b = min(n, a + int(round(val * n)))
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def find_missing(names, image_dir):
    """Unique names of ``names`` with no file in ``image_dir``, sorted."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise PairDataError(f"{image_dir}: image folder not found; give --image-dir, the "
                            f"folder of stage images from select_img.py")
    present = set(os.listdir(image_dir))
    missing = []
    for name in np.unique(names):
        if name not in present and not (image_dir / name).is_file():
            missing.append(str(name))
    return missing


def check_all_present(names, image_dir, index_name="the pair index"):
    """Raise a :class:`PairDataError` naming ``index_name`` (the file the names come
    from), the first missing files and their count."""
    missing = find_missing(names, image_dir)
    if missing:
        n_unique = len(np.unique(names))
        raise PairDataError(f"{index_name}: {len(missing)} of {n_unique} images named there are "
                            f"missing from {image_dir}; first: {', '.join(missing[:5])}; give the "
                            f"--image-dir the pair index was made from, or rebuild it "
                            f"(make_dataset.py)")


def find_bad_images(names, image_dir):
    """``{name: reason}`` for the unique images of ``names`` that are cut off or do not
    decode with TensorFlow's decoder (each decoded once; the verdicts are cached, see
    :mod:`utils.image_check`)."""
    paths = {os.path.join(str(image_dir), str(n)): str(n) for n in np.unique(names)}
    bad = find_bad_image_files(list(paths), decoder="tf", desc="checking images")
    return {paths[p]: why for p, why in bad.items()}


def find_undecodable(names, image_dir):
    """``{name: error}`` for images TensorFlow cannot decode (slow: decodes each once)."""
    bad = {}
    for name in tqdm(np.unique(names), desc="checking images", unit="img", leave=False):
        try:
            decode_image(tf.io.read_file(os.path.join(image_dir, name)))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
            bad[str(name)] = exc.message.splitlines()[0]
    return bad


def bad_images_message(bad, image_dir):
    (name, why), *rest = bad.items()
    more = (f" (and {len(rest)} more: " + ", ".join(n for n, _ in rest[:4])
            + (" ..." if len(rest) > 4 else "") + ")") if rest else ""
    return (f"{os.path.join(str(image_dir), name)}: {why} (an unreadable image{more}); replace or "
            f"delete it (and rebuild the pair index), or pass --skip-bad-images to train "
            f"without the pairs that use it")


@dataclasses.dataclass
class ImageCache:
    """Images resized to the load size, in memory: ``array[index[name]]`` is (lh, lw, 3) uint8."""
    array: np.ndarray
    index: dict
    bad: dict  # name -> why it could not be decoded (left out of the cache)

    @property
    def nbytes(self):
        return self.array.nbytes


def cache_bytes(n_images, load_size):
    return n_images * load_size[0] * load_size[1] * 3


def build_image_cache(names, image_dir, load_size=LOAD_SIZE, skip_bad=False):
    """Decode and resize every image named in ``names`` once, in parallel.

    Undecodable images raise :class:`PairDataError` naming them, or with ``skip_bad``
    are listed in ``cache.bad`` for the caller to drop their pairs.
    """
    unique = [str(u) for u in np.unique(names)]
    paths = [os.path.join(str(image_dir), u) for u in unique]
    array = np.empty((len(unique), load_size[0], load_size[1], 3), np.uint8)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(unique)), paths))
    ds = ds.map(lambda i, p: (i, load_image(tf.io.read_file(p), load_size)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    # Bad files are found below by which rows never arrived.
    ds = ds.ignore_errors().batch(32).prefetch(2)
    filled = np.zeros(len(unique), bool)
    with tqdm(total=len(unique), desc="decoding images", unit="img") as bar:
        for rows, images in ds:
            rows = rows.numpy()
            array[rows] = images.numpy()
            filled[rows] = True
            bar.update(len(rows))
    bad = {}
    if not filled.all():
        failed = [unique[i] for i in np.flatnonzero(~filled)]
        bad = find_undecodable(failed, image_dir) or {n: "could not be decoded" for n in failed}
        if not skip_bad:
            raise PairDataError(bad_images_message(bad, image_dir))
    return ImageCache(array=array, index={u: i for i, u in enumerate(unique)}, bad=bad)


def drop_pairs_with(x, y, bad_names):
    """Remove the pairs that use any of ``bad_names``; return (x, y, number removed)."""
    if not bad_names:
        return x, y, 0
    keep = ~np.isin(x, list(bad_names)).any(axis=1)
    return x[keep], y[keep], int((~keep).sum())


def make_targets(y, kind, grades=DEFAULT_GRADES):
    """Class ids -> one-hot (n, 4) for ``"class"``; grade values (n, 1) for ``"grading"``."""
    if kind == "class":
        return np.eye(NUM_PAIR_CLASSES, dtype=np.float32)[y]
    if kind == "grading":
        grades = np.asarray(grades, np.float32)
        if grades.shape != (NUM_PAIR_CLASSES,):
            raise PairDataError(f"--grades needs {NUM_PAIR_CLASSES} values, got {grades.tolist()}")
        return grades[y][:, None]
    raise ValueError(f"kind must be 'class' or 'grading', not {kind!r}")


def pair_dataset(x, y, image_dir, batch_size, kind="class", grades=DEFAULT_GRADES,
                 load_size=LOAD_SIZE, input_size=INPUT_SIZE, seed=0, training=True,
                 steps_per_epoch=None, first_epoch=0, augment=True, colour_augment=True,
                 skip_errors=False, cache=None, num_parallel_calls=tf.data.AUTOTUNE):
    """Build the ``tf.data`` pipeline for one split.

    ``training=True``: an endless stream, epoch after epoch from ``first_epoch``, each
    epoch ``steps_per_epoch`` full batches (default ``len(x) // batch_size``, one pass)
    from a fresh permutation of the pairs (more permutations when the epoch is longer
    than one pass), for ``fit(..., steps_per_epoch=...)``.
    ``training=False``: one pass in file order, the last batch possibly smaller, with
    the same augmentation every time it is iterated (a stable validation loss).
    ``colour_augment=False`` augments by random crops and flips only.
    ``skip_errors`` drops pairs whose image fails to decode instead of stopping.
    ``cache`` (an :class:`ImageCache` holding every image of ``x``) replaces reading
    and decoding the files; ``load_size`` is then the cache's.
    """
    n = len(x)
    if n == 0:
        raise PairDataError("empty split: no pairs to read")
    if training:
        full = n // batch_size
        if full == 0:
            raise PairDataError(f"the training split has {n} pairs, fewer than one batch of "
                                f"{batch_size}; lower --batch-size")
        steps_per_epoch = steps_per_epoch or full

    # Pairs as indices into a short list of unique images, so the graph holds small arrays.
    unique, inverse = np.unique(x, return_inverse=True)
    if cache is None:
        paths = tf.constant([os.path.join(str(image_dir), u) for u in unique])
        pair_ids = tf.constant(inverse.reshape(n, 2).astype(np.int32))

        def image(row, seed):
            return one_img(tf.io.read_file(tf.gather(paths, row)), seed, load_size, input_size,
                           augment, colour_augment)
    else:
        rows = np.array([cache.index[str(u)] for u in unique], np.int32)
        pair_ids = tf.constant(rows[inverse].reshape(n, 2))
        shape = cache.array.shape[1:]

        def image(row, seed):
            # A copy out of the NumPy array: the cache is never copied into the graph.
            pixels = tf.numpy_function(lambda r: cache.array[r], [row], tf.uint8, stateful=False)
            return one_cached_img(tf.ensure_shape(pixels, shape), seed, input_size, augment,
                                  colour_augment)

    targets = tf.constant(make_targets(y, kind, grades))
    base_seed = tf.constant([seed, 0 if training else 1], tf.int64)

    def load(index, epoch, position):
        # Seeded by the place in the epoch, so a pair seen twice is augmented twice.
        elem_seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(base_seed, epoch), position)
        s1, s2 = tf.unstack(tf.random.experimental.stateless_split(elem_seed, 2))
        ids = tf.gather(pair_ids, index)
        return ({"self_input1": image(ids[0], s1), "self_input2": image(ids[1], s2)},
                {"self_output": tf.gather(targets, index)})

    if training:
        take = steps_per_epoch * batch_size
        passes = -(-take // n)

        def one_epoch(epoch):
            # One random permutation of the pairs per pass, drawn from (seed, epoch).
            epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
            keys = tf.random.stateless_uniform([passes, n], epoch_seed)
            order = tf.cast(tf.reshape(tf.argsort(keys, axis=1), [-1])[:take], tf.int64)
            return tf.data.Dataset.from_tensor_slices((order, tf.range(take, dtype=tf.int64))).map(
                lambda i, position: (i, epoch, position))

        ds = tf.data.Dataset.counter(start=first_epoch, dtype=tf.int64).flat_map(one_epoch)
    else:
        ds = tf.data.Dataset.range(n).map(lambda i: (i, tf.constant(0, tf.int64), i))
    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    if skip_errors:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Elements are generated, not read from shard-able files: shard by data.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
