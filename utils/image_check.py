"""Is every image of a run readable? Checked before any model is built.

Each file gets a header check (its first and last bytes: a cut-off download has no end
marker) and one full decode with the decoder its pipeline uses (``"pil"`` for the VOC
U-Net pipeline, ``"tf"`` for the tf.data pair and single-image pipelines). The result
per file (size, modification time, verdict) is kept in a small JSON file per folder
under ``$PDE_CACHE_DIR`` (default ``~/.cache/pde_tf``), so a re-run over unchanged files
decodes nothing.
"""
import concurrent.futures
import hashlib
import os
from pathlib import Path

from tqdm import tqdm

# CACHE_ENV is re-exported: callers and tests name the cache variable through this module.
from utils.cache import CACHE_ENV, cache_root, read_cache, write_cache  # noqa: F401
from utils.errors import UserError

# PIL's modes of one-band images deeper than 8 bits; convert("RGB") clips them to 255.
_DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
DECODERS = ("pil", "tf")
_CACHE_VERSION = 1


def rgb8(im, path=None):
    """A PIL image as 8-bit RGB (``im`` itself when it is already).

    16-bit greyscale (modes ``I;16*``, or ``I`` holding 16-bit values) is scaled to 8
    bits (value / 257), where PIL's ``convert("RGB")`` clips it to white; 16-bit RGB is
    read as 8-bit by PIL (and by TensorFlow and OpenCV) already. Other deep images
    (float, 32-bit) are refused with a line naming the file."""
    if im.mode == "RGB":
        return im
    if im.mode in _DEEP_GREY:
        import numpy as np
        from PIL import Image

        values = np.asarray(im).astype(np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise UserError(path or getattr(im, "filename", "image"),
                            f"{im.mode} image with values outside 0..65535",
                            "save it as an 8-bit or 16-bit photo")
        if im.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = (values + 128) // 257
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    if im.mode in ("F", "I;32", "I;32L", "I;32B"):
        raise UserError(path or getattr(im, "filename", "image"),
                        f"{im.mode} image (floating point or 32-bit) cannot be read as a photo",
                        "save it as an 8-bit or 16-bit photo")
    return im.convert("RGB")


def check_image_file(path):
    """A fast sanity check of an image file: the reason it is bad, or None.

    Reads only the first and last bytes: a JPEG must start with FFD8 and end with
    its FFD9 marker (a truncated download does not), a PNG must end with IEND.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 32))
            tail = f.read()
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size == 0:
        return "empty file"
    if head[:3] == b"\xff\xd8\xff":
        end = tail.rstrip(b"\x00\r\n ")[-4:]
        return None if b"\xff\xd9" in end else "truncated JPEG (no end marker)"
    if head == b"\x89PNG\r\n\x1a\n":
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head[:2] == b"BM" or head[:4] in (b"GIF8",):
        return None
    return "not a JPEG, PNG, BMP or GIF file"


def decode_error(path, decoder="pil"):
    """Decode ``path`` completely; the decoder's complaint, or None when it decodes."""
    if decoder == "pil":
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, ValueError, SyntaxError) as exc:   # PIL's errors for bad data
            return str(exc).splitlines()[0] or type(exc).__name__
        return None
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
        return exc.message.splitlines()[0]
    return None


def _cache_file(folder, decoder):
    root = cache_root()
    key = hashlib.sha1(f"{Path(folder).resolve()}|{decoder}".encode()).hexdigest()[:20]
    return root / "image_checks" / f"{key}.json"


def _read_cache(path):
    data = read_cache(path)
    return data.get("files", {}) if data.get("version") == _CACHE_VERSION else {}


def _write_cache(path, files):
    write_cache(path, {"version": _CACHE_VERSION, "files": files})


def _check_one(path, decoder):
    return check_image_file(path) or decode_error(path, decoder)


def find_bad_images(paths, decoder="pil", desc="checking images", workers=None):
    """``{path: reason}`` for the images in ``paths`` that are missing, cut off or do
    not decode, each decoded at most once per (size, modification time) ever."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
    by_folder = {}
    for p in dict.fromkeys(str(p) for p in paths):
        by_folder.setdefault(os.path.dirname(p), []).append(p)
    bad = {}
    for folder, files in by_folder.items():
        cache_path = _cache_file(folder, decoder)
        cache = _read_cache(cache_path)
        todo, stats = [], {}
        for p in files:
            try:
                st = os.stat(p)
            except OSError as exc:
                bad[p] = f"unreadable ({exc.strerror})"
                continue
            stats[p] = [st.st_size, st.st_mtime_ns]
            entry = cache.get(os.path.basename(p))
            if entry and entry[:2] == stats[p]:
                if entry[2]:
                    bad[p] = entry[2]
            else:
                todo.append(p)
        if not todo:
            continue
        with concurrent.futures.ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            results = pool.map(lambda p: _check_one(p, decoder), todo)
            for p, reason in tqdm(zip(todo, results), total=len(todo), desc=desc, unit="img",
                                  leave=False, disable=len(todo) < 50):
                cache[os.path.basename(p)] = stats[p] + [reason]
                if reason:
                    bad[p] = reason
        _write_cache(cache_path, cache)
    return bad


def bad_images_error(bad, fix):
    """One :class:`UserError` naming the first bad image, its reason and the count."""
    (path, why), *rest = bad.items()
    if rest:
        why += (f" (and {len(rest)} more unreadable image(s): "
                + ", ".join(p for p, _ in rest[:3]) + (" ..." if len(rest) > 3 else "") + ")")
    return UserError(path, why, fix)
