"""Step 3: the pair index: image pairs labelled with their prior class, balanced.

Class of a pair of stage images (view = camera + preset; the time of day is ignored)::

                 same stage   other stage
    same view        0             1
    other view       2             3

The original built all N(N-1)/2 pairs, labelled them and drew 200,000 of each class
with replacement. Here the same distribution (uniform over the pairs of a class, with
replacement) is drawn without listing the pairs: memory and time grow with N and the
number of samples, not N^2. Output as the original: an ``.npy`` of shape (n, 2) with
file names and an ``.npy`` of classes::

    python data_processing/make_dataset.py --path out/ --seed 0
"""
import argparse
import os
import random
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data_processing.names import (FileNameError, is_image_file, pair_class,  # noqa: E402
                                   parse_stage_name)
from data_processing.pair_index import write_record  # noqa: E402
from utils.errors import MissingInput, OutputExists, UserError, writable_file  # noqa: E402
from utils.image_check import rgb8  # noqa: E402
from utils.run import removed_on_error  # noqa: E402

CLASSES = (0, 1, 2, 3)
CLASS_NAMES = {0: "same view, same stage", 1: "same view, other stage",
               2: "other view, same stage", 3: "other view, other stage"}
SPLITS = ("train", "val", "test")


def get_dir(path, kind=True):
    """The sorted entries of ``path``: full paths (``kind=True``) or names, as the original."""
    names = sorted(os.listdir(path))
    return [os.path.join(path, n) for n in names] if kind else names


def get_label(X):
    """Prior class (0..3) of a pair ``(a, b)`` of stage image names or paths
    (:func:`data_processing.names.pair_class`), as the original's function."""
    return pair_class(X[0], X[1])


def _exclusive_cumsum(x):
    out = np.zeros_like(x)
    np.cumsum(x[:-1], out=out[1:])
    return out


class PairSampler:
    """Draws pairs of one class uniformly (with replacement) without listing all pairs.

    ``views`` and ``stages`` are integer codes per image. For a class, every image i has
    w_i partners; draw i with probability w_i / sum(w), then a partner uniformly among
    those w_i. Each unordered pair then has probability 2 / sum(w): uniform. Partners
    are found by offset arithmetic in two orderings of the images (by view then stage,
    and by stage then view), where every (view, stage) group is one contiguous block.
    """

    def __init__(self, views, stages):
        v = np.asarray(views, dtype=np.int64)
        k = np.asarray(stages, dtype=np.int64)
        self.n = len(v)
        self.v, self.k = v, k
        nv = int(v.max()) + 1 if self.n else 0
        nk = int(k.max()) + 1 if self.n else 0
        self.counts = np.bincount(v * nk + k, minlength=nv * nk).reshape(nv, nk)  # (V, K)
        self.view_total = self.counts.sum(1)
        self.stage_total = self.counts.sum(0)
        self.order_a = np.lexsort((k, v))                 # view-major
        self.off_a = _exclusive_cumsum(self.counts.ravel()).reshape(nv, nk)
        self.order_b = np.lexsort((v, k))                 # stage-major
        self.off_b = _exclusive_cumsum(self.counts.T.ravel()).reshape(nk, nv)
        self.rank_a = np.empty(self.n, dtype=np.int64)
        self.rank_a[self.order_a] = np.arange(self.n)
        group = self.counts[v, k]
        self._weights = {
            0: group - 1,
            1: self.view_total[v] - group,
            2: self.stage_total[k] - group,
            3: self.n - self.view_total[v] - self.stage_total[k] + group,
        }

    def pair_count(self, cls):
        """Number of unordered pairs of class ``cls``."""
        return int(self._weights[cls].sum()) // 2

    def sample(self, cls, size, rng):
        """``(size, 2)`` image indices ``i < j``, uniform over the pairs of ``cls``."""
        w = self._weights[cls]
        cum = np.cumsum(w)
        if size and (not len(cum) or cum[-1] == 0):
            raise UserError(f"class {cls} ({CLASS_NAMES[cls]}) has no pair")
        x = rng.integers(0, cum[-1], size=size) if size else np.zeros(0, np.int64)
        i = np.searchsorted(cum, x, side="right")
        r = x - (cum[i] - w[i])        # uniform in [0, w_i): which partner
        v, k = self.v[i], self.k[i]
        group = self.counts[v, k]
        if cls == 0:       # the rest of i's own group
            start = self.off_a[v, k]
            pos = start + r + (r >= self.rank_a[i] - start)
            j = self.order_a[pos]
        elif cls == 1:     # i's view block minus i's group
            start = self.off_a[v, 0]
            pos = start + r + (r >= self.off_a[v, k] - start) * group
            j = self.order_a[pos]
        elif cls == 2:     # i's stage block minus i's group
            start = self.off_b[k, 0]
            pos = start + r + (r >= self.off_b[k, v] - start) * group
            j = self.order_b[pos]
        else:              # another stage t, then t's block minus view v
            per_stage = self.stage_total[None, :] - self.counts[v, :]
            per_stage[np.arange(len(i)), k] = 0
            cum_t = np.cumsum(per_stage, axis=1)
            t = (cum_t <= r[:, None]).sum(1)
            r = r - (cum_t[np.arange(len(i)), t] - per_stage[np.arange(len(i)), t])
            start = self.off_b[t, 0]
            pos = start + r + (r >= self.off_b[t, v] - start) * self.counts[v, t]
            j = self.order_b[pos]
        return np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)


def parse_names(names, skip_bad=False):
    """Sorted unique names and their (view code, stage code, date) arrays.

    Returns ``(names, views, stages, dates, view_names, bad)``; a name that does not
    parse raises :class:`FileNameError` naming it, or is counted in ``bad`` with
    ``skip_bad``.
    """
    kept, fields, bad = [], [], []
    for name in sorted(set(names)):
        try:
            fields.append(parse_stage_name(name))
        except FileNameError:
            if not skip_bad:
                raise
            bad.append(name)
            continue
        kept.append(name)
    view_names, views = np.unique([f.view for f in fields], return_inverse=True)
    stage_values, stages = np.unique([f.stage for f in fields], return_inverse=True)
    dates = np.array([f.date for f in fields])
    return (kept, views.astype(np.int64), stages.astype(np.int64), dates,
            list(view_names), bad)


def _largest_remainder(total, fractions):
    raw = np.asarray(fractions, dtype=float) * total
    out = np.floor(raw).astype(int)
    for idx in np.argsort(-(raw - out), kind="stable")[: total - out.sum()]:
        out[idx] += 1
    return out


def _allocate(units, fractions, rng, minimum):
    """Shuffle ``units`` and cut them into len(fractions) groups by the fractions,
    giving each group with a fraction > 0 at least ``minimum`` units when possible."""
    units = list(units)
    rng.shuffle(units)
    sizes = _largest_remainder(len(units), fractions)
    nonzero = [s for s, f in enumerate(fractions) if f > 0]
    if len(units) >= minimum * len(nonzero):
        for s in nonzero:
            while sizes[s] < minimum:
                donor = int(np.argmax(sizes))
                sizes[donor] -= 1
                sizes[s] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [units[bounds[s]:bounds[s + 1]] for s in range(len(fractions))]


def split_images(views, stages, dates, fractions, by, rng):
    """Split assignment (0 train, 1 val, 2 test) per image, by whole views or dates."""
    if by == "view":
        # Classes 2 and 3 need two views inside a split.
        groups = _allocate(np.unique(views), fractions, rng, minimum=2)
        key = views
    else:
        # Stratified by stage so every split gets dates of every stage it can.
        groups = [[] for _ in fractions]
        taken = set()
        for s in np.unique(stages):
            todo = sorted(set(dates[stages == s]) - taken)
            taken.update(todo)
            for g, part in zip(groups, _allocate(todo, fractions, rng, minimum=1)):
                g.extend(part)
        key = dates
    assign = np.full(len(views), -1, dtype=np.int64)
    for s, units in enumerate(groups):
        assign[np.isin(key, units)] = s
    return assign


def balanced_pairs(views, stages, per_class, rng, classes=CLASSES, drop_empty=False, where="",
                   hint=""):
    """Pairs (image indices, shape (n, 2)) and labels: ``per_class`` of each class, shuffled.

    A class with no possible pair raises ``ValueError`` (or is left out with
    ``drop_empty``). Returns ``(pairs, labels, available)`` with the number of possible
    pairs per class.
    """
    sampler = PairSampler(views, stages)
    available = {c: sampler.pair_count(c) for c in classes}
    empty = [c for c in classes if available[c] == 0 and per_class > 0]
    if empty and not drop_empty:
        c = empty[0]
        raise UserError(f"{where}class {c} ({CLASS_NAMES[c]}) has no possible pair among "
                         f"{len(views)} images in {len(np.unique(views))} view(s) and "
                         f"{len(np.unique(stages))} stage(s); add images{hint} or pass "
                         f"--drop-empty-classes")
    parts, labels = [], []
    for c in classes:
        if c in empty:
            continue
        parts.append(sampler.sample(c, per_class, rng))
        labels.append(np.full(per_class, c, dtype=np.int64))
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    perm = rng.permutation(len(labels))
    return pairs[perm], labels[perm], available


def _same_npy(path, array):
    try:
        old = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return False
    return old.shape == array.shape and old.dtype == array.dtype and np.array_equal(old, array)


def save_outputs(outputs, overwrite=False):
    """Write ``{path: array}``; an existing file with other content is an error unless
    ``overwrite``, checked for all files before any is written."""
    todo = {}
    for path, array in outputs.items():
        if Path(path).exists() and _same_npy(path, array):
            continue
        if Path(path).exists() and not overwrite:
            raise OutputExists(f"{path} exists with different content; nothing was written. "
                                  f"Choose other output names or pass --overwrite.")
        todo[path] = array
    for path, array in todo.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.part{os.getpid()}"
        with removed_on_error(tmp, path):
            with open(tmp, "wb") as f:      # a file handle: np.save would append ".npy" to a name
                np.save(f, array)
            os.replace(tmp, path)


def split_path(path, split):
    """``x_out.npy`` -> ``x_out_train.npy``."""
    path = Path(path)
    stem = path.name[:-4] if path.name.endswith(".npy") else path.name
    return str(path.with_name(f"{stem}_{split}.npy"))


def save_preview(path, image_dir, x, labels, per_class=3, overwrite=False):
    """A grid, one row per class, of ``per_class`` pairs (``x``: names, shape (n, 2))
    shown side by side with their labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    if Path(path).exists() and not overwrite:
        raise OutputExists(f"{path} exists; choose another --preview or pass --overwrite")
    classes = [c for c in CLASSES if (labels == c).any()]
    fig, axes = plt.subplots(len(classes), per_class, squeeze=False,
                             figsize=(4 * per_class, 2.2 * len(classes)))
    for row, c in enumerate(classes):
        for col, idx in enumerate(np.flatnonzero(labels == c)[:per_class]):
            tiles = []
            for name in x[idx]:
                file = Path(image_dir) / Path(name).name
                if not file.is_file():
                    raise MissingInput(f"--preview needs the image files: {file} not found")
                with Image.open(file) as im:
                    im = rgb8(im).copy()
                    im.thumbnail((256, 256))
                    tiles.append(np.asarray(im.resize((256, int(256 * im.height / im.width) or 1))))
            h = min(t.shape[0] for t in tiles)
            gap = np.full((h, 8, 3), 255, np.uint8)
            axes[row, col].imshow(np.concatenate([tiles[0][:h], gap, tiles[1][:h]], axis=1))
            axes[row, col].set_title(f"class {c}: {CLASS_NAMES[c]}\n{Path(x[idx, 0]).name}\n"
                                     f"{Path(x[idx, 1]).name}", fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Step 3: label image pairs with their prior class and save a balanced "
                    "pair index (.npy of file-name pairs and .npy of classes).")
    parser.add_argument("--path", "--image-dir", dest="path", default="out",
                        help="folder of stage images from select_img (original: "
                             "/mnt/hdd/cherry2021/out); non-image files such as manifest.csv "
                             "are ignored")
    parser.add_argument("--names-file", default=None,
                        help="read the image names from this text file (one per line) instead "
                             "of listing --path")
    parser.add_argument("--x-out", "--out-x", dest="x_out", default="x_out_inx200000.npy",
                        type=writable_file,
                        help="pairs of file names, shape (n, 2) (original: x_out_inx200000.npy)")
    parser.add_argument("--y-out", "--out-y", dest="y_out", default="y_out_inx200000.npy",
                        type=writable_file,
                        help="classes 0..3, shape (n,) (original: y_out_inx200000.npy)")
    parser.add_argument("--per-class", type=int, default=200000,
                        help="pairs drawn per class, with replacement (original: 200000)")
    parser.add_argument("--split", nargs=3, type=float, default=None, metavar=("TRAIN", "VAL", "TEST"),
                        help="also write <x>_train/_val/_test.npy (and for y) with these fractions "
                             "of each class (original: none; its trainers cut the file at "
                             "720000/760000, i.e. 0.9 0.05 0.05)")
    parser.add_argument("--split-by", choices=["view", "date"], default="view",
                        help="split whole views (camera+preset) or whole dates, so no image of a "
                             "val/test pair is in a train pair")
    parser.add_argument("--skip-bad-names", action="store_true",
                        help="skip and count image names that do not parse (default: error)")
    parser.add_argument("--drop-empty-classes", action="store_true",
                        help="leave out a class that has no possible pair (default: error)")
    parser.add_argument("--preview", default=None, type=writable_file,
                        help="also save a PNG grid of a few pairs of each class (needs the images in --path)")
    parser.add_argument("--preview-pairs", type=int, default=3, help="pairs per class in --preview")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files with different content")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed for sampling, splitting and shuffling (original: unseeded)")
    return parser.parse_args(argv)


def _read_names(args):
    if args.names_file:
        lines = Path(args.names_file).read_text().splitlines()
        return [ln.strip() for ln in lines if ln.strip()]
    if not Path(args.path).is_dir():
        raise MissingInput(f"image folder not found: {args.path} (run select_img first, "
                                f"or give --path / --names-file)")
    return [n for n in get_dir(args.path, kind=False) if is_image_file(n)]


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    source = args.names_file or args.path
    try:
        names, views, stages, dates, view_names, bad = parse_names(_read_names(args), args.skip_bad_names)
    except FileNameError as exc:
        raise FileNameError(f"{source}: {exc}; rename it, or pass --skip-bad-names to skip "
                            f"such files") from None
    if bad:
        print(f"warning: --skip-bad-names: skipped {len(bad)} names that do not parse, "
              f"e.g. {bad[0]}")
    if not names:
        raise UserError(f"{source}: no stage images found")
    print(f"{len(names)} images, {len(view_names)} views, {len(np.unique(stages))} stages")
    names_arr = np.asarray(names)

    results = {"splits": {}, "skipped_names": len(bad), "n_images": len(names)}
    outputs = {}
    if args.split is None:
        pairs, labels, available = balanced_pairs(views, stages, args.per_class, rng,
                                                  drop_empty=args.drop_empty_classes)
        x, y = names_arr[pairs], labels
        results["available"] = available
    else:
        fractions = np.asarray(args.split, dtype=float)
        if (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
            raise UserError(f"--split {args.split}: fractions must be >= 0 and sum to 1")
        assign = split_images(views, stages, dates, fractions, args.split_by, rng)
        per_split = _largest_remainder(args.per_class, fractions)
        xs, ys = [], []
        results["available"] = {}
        for s, split in enumerate(SPLITS):
            idx = np.flatnonzero(assign == s)
            if per_split[s] == 0:
                continue
            if not len(idx):
                raise UserError(f"split {split!r}: no {args.split_by} was assigned to it "
                                 f"(only {len(np.unique(views if args.split_by == 'view' else dates))} "
                                 f"{args.split_by}s); lower the number of splits or add images")
            # Re-code views and stages inside the split so the sampler's tables stay small.
            sv = np.unique(views[idx], return_inverse=True)[1]
            sk = np.unique(stages[idx], return_inverse=True)[1]
            p, lab, available = balanced_pairs(
                sv, sk, int(per_split[s]), rng, drop_empty=args.drop_empty_classes,
                where=f"split {split!r} ({len(np.unique(views[idx]))} views, "
                      f"{len(np.unique(dates[idx]))} dates): ",
                hint=", change --split" + (", use --split-by date" if args.split_by == "view" else ""))
            results["available"][split] = available
            sx, sy = names_arr[idx[p]], lab
            xs.append(sx)
            ys.append(sy)
            xp, yp = split_path(args.x_out, split), split_path(args.y_out, split)
            outputs[xp], outputs[yp] = sx, sy
            results["splits"][split] = (xp, yp)
            print(f"{split}: {len(idx)} images, {len(sy)} pairs")
        # Train, then val, then test: the original's file-order slicing still works.
        x, y = np.concatenate(xs), np.concatenate(ys)
    outputs = {args.x_out: x, args.y_out: y, **outputs}
    save_outputs(outputs, overwrite=args.overwrite)
    # What ties each X to its Y and its images, checked by the PDE loaders.
    for xp, yp in [(args.x_out, args.y_out), *results["splits"].values()]:
        write_record(xp, yp, outputs[xp], outputs[yp], None if args.names_file else args.path)
    counts = {int(c): int((y == c).sum()) for c in CLASSES}
    print("possible pairs per class:", results["available"])
    print("sampled pairs per class: ", counts)
    print(f"wrote {args.x_out} {x.shape} and {args.y_out} {y.shape}")
    if args.preview:
        save_preview(args.preview, args.path, x, y,
                     per_class=args.preview_pairs, overwrite=args.overwrite)
        results["preview"] = args.preview
        print(f"wrote {args.preview}")
    results.update(x=args.x_out, y=args.y_out, counts=counts)
    return results


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
