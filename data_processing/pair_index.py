"""What ties a pair index together: its X (name pairs), its Y (classes) and its images.

``make_dataset.py`` writes beside each X file a record ``<x>.pairs.json`` holding the
fingerprints (SHA-256) of X and Y and the image folder the names were read from; the
PDE loaders check it (:func:`check_pair_index`), so an X from one run beside a Y from
another is refused, as is a Y whose classes contradict what the names determine
(:func:`contradicting_labels`, also for an index without a record, e.g. the original's).
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from data_processing.names import FileNameError, class_of, parse_stage_name
from utils.errors import UserError
from utils.run import json_text, write_atomic


class PairIndexError(UserError):
    """A pair index whose parts do not belong together."""


def record_path(x_path):
    """``x_out_train.npy`` -> ``x_out_train.pairs.json``."""
    x_path = Path(x_path)
    stem = x_path.name[:-4] if x_path.name.endswith(".npy") else x_path.name
    return x_path.with_name(f"{stem}.pairs.json")


def fingerprint(array):
    """SHA-256 of an array's dtype, shape and bytes (as ``np.load`` gives it back)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def index_record(x_path, y_path, x, y, image_dir):
    """The record of one X/Y pair written by make_dataset (see the module)."""
    return {"x": Path(x_path).name, "y": Path(y_path).name, "pairs": int(len(x)),
            "x_sha256": fingerprint(x), "y_sha256": fingerprint(y),
            "image_dir": os.path.abspath(image_dir) if image_dir else None}


def write_record(x_path, y_path, x, y, image_dir):
    """Write ``<x>.pairs.json`` for the X and Y just saved (atomically)."""
    text = json_text(index_record(x_path, y_path, x, y, image_dir))
    return write_atomic(record_path(x_path), lambda tmp: Path(tmp).write_text(text))


def read_record(x_path):
    path = record_path(x_path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise PairIndexError(path, f"unreadable pair index record ({exc})",
                             "rebuild the index with make_dataset.py") from None


def contradicting_labels(x, y):
    """Rows whose class ``y`` is not the class the two names determine (rows whose
    names do not parse as stage image names are not checked)."""
    unique, inverse = np.unique(np.asarray(x).reshape(-1), return_inverse=True)
    view, stage, parsed = [], [], []
    for name in unique:
        try:
            fields = parse_stage_name(name)
        except FileNameError:
            fields = None
        parsed.append(fields is not None)
        view.append(fields.view if fields else "")
        stage.append(fields.stage if fields else -1)
    view, stage, parsed = np.asarray(view), np.asarray(stage), np.asarray(parsed)
    a, b = inverse.reshape(-1, 2).T
    want = class_of(view[a] == view[b], stage[a] == stage[b])
    rows = np.flatnonzero(parsed[a] & parsed[b] & (want != np.asarray(y)))
    return [(int(r), int(want[r])) for r in rows]


def check_pair_index(x_path, y_path, x, y):
    """Refuse an X and Y that do not belong together: fingerprints that differ from
    make_dataset's record, or classes that contradict the names. Returns the record
    (or None for an index without one)."""
    record = read_record(x_path)
    redo = "give the Y file written with this X, or rebuild both with make_dataset.py"
    if record is not None:
        if record.get("x_sha256") != fingerprint(x):
            raise PairIndexError(x_path, f"changed since make_dataset.py wrote it (its record "
                                         f"{record_path(x_path).name} holds another "
                                         f"fingerprint)", "rebuild the index with make_dataset.py")
        if record.get("y_sha256") != fingerprint(y):
            raise PairIndexError(y_path, f"not the classes of {Path(x_path).name}: the record "
                                         f"{record_path(x_path).name} was written with "
                                         f"{record.get('y')}, of another fingerprint", redo)
    bad = contradicting_labels(x, y)
    if bad:
        row, want = bad[0]
        raise PairIndexError(y_path, f"{len(bad)} of {len(y)} classes contradict the names in "
                                     f"{Path(x_path).name} (first: row {row}, {x[row][0]} and "
                                     f"{x[row][1]} are class {want}, not {int(y[row])})", redo)
    return record
