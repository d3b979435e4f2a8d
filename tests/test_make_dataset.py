"""Step 3: pair classes, balanced sampling without enumeration, splits, outputs."""
import itertools
import time

import numpy as np
import pytest
from PIL import Image

from data_processing import make_dataset
from data_processing.make_dataset import (PairSampler, balanced_pairs, get_label, parse_names)
from data_processing.names import FileNameError


def names_for(cameras, presets=(1, 2), stages=(0, 1, 2, 3, 4), days=3, times=("09", "12")):
    return [f"{c}p{p}t{t}i{s}d2021-{s + 1:02d}-{d:02d}_{t}.jpg"
            for c in cameras for p in presets for t in times for s in stages
            for d in range(1, days + 1)]


def write_names(path, names):
    path.write_text("\n".join(names) + "\n")
    return str(path)


def test_sampler_is_uniform_over_each_class():
    """Against brute force on an irregular set: counts of pairs, only pairs of the
    class, every pair reached, frequencies uniform (chi-square)."""
    rng = np.random.default_rng(0)
    names = [f"{c}p{p}t09i{s}d2021-03-{d:02d}_09.jpg"
             for c in ("E88570046", "LONG-CAMERA-9") for p in (1, 12) for s in (0, 1, 10)
             for d in range(1, int(rng.integers(1, 5)) + 1)]
    names, views, stages, *_ = parse_names(names)
    sampler = PairSampler(views, stages)
    by_class = {c: [] for c in range(4)}
    for i, j in itertools.combinations(range(len(names)), 2):
        by_class[get_label((names[i], names[j]))].append(i * len(names) + j)
    for c, pairs in by_class.items():
        assert sampler.pair_count(c) == len(pairs) > 0
        per_pair = 400
        drawn = sampler.sample(c, per_pair * len(pairs), rng)
        assert (drawn[:, 0] < drawn[:, 1]).all()
        keys, counts = np.unique(drawn[:, 0] * len(names) + drawn[:, 1], return_counts=True)
        assert keys.tolist() == sorted(pairs)
        chi2 = ((counts - per_pair) ** 2 / per_pair).sum()
        dof = len(pairs) - 1
        assert abs(chi2 - dof) < 6 * np.sqrt(2 * dof), (c, chi2, dof)


def test_main_balanced_reproducible_and_original_format(tmp_path):
    names = names_for(["E88570046", "F03210481"])
    nf = write_names(tmp_path / "names.txt", names)
    args = ["--names-file", nf, "--per-class", "500", "--seed", "7"]
    res = make_dataset.main(args + ["--x-out", str(tmp_path / "x.npy"), "--y-out", str(tmp_path / "y.npy")])
    x, y = np.load(res["x"]), np.load(res["y"])
    assert x.shape == (2000, 2) and x.dtype.kind == "U" and y.dtype == np.int64
    assert res["counts"] == {0: 500, 1: 500, 2: 500, 3: 500}
    assert [get_label(p) for p in x] == y.tolist()
    assert (x[:, 0] < x[:, 1]).all()        # combination order of the sorted names, as the original
    assert set(x.ravel()) <= set(names)
    assert len(set(y[:100].tolist())) == 4  # shuffled, not in class blocks
    again = make_dataset.main(args + ["--x-out", str(tmp_path / "x2.npy"), "--y-out", str(tmp_path / "y2.npy")])
    assert (np.load(again["x"]) == x).all() and (np.load(again["y"]) == y).all()
    other = make_dataset.main(["--names-file", nf, "--per-class", "500", "--seed", "8",
                               "--x-out", str(tmp_path / "x3.npy"), "--y-out", str(tmp_path / "y3.npy")])
    assert not (np.load(other["x"]) == x).all()


def test_fifty_thousand_names_in_seconds():
    names = names_for([f"E{88570000 + k:08d}" for k in range(56)], presets=(1, 2, 3, 4, 5),
                      times=("09", "12", "15"), days=12)[:50000]
    t0 = time.perf_counter()
    names, views, stages, *_ = parse_names(names)
    pairs, labels, available = balanced_pairs(views, stages, 200000, np.random.default_rng(0))
    seconds = time.perf_counter() - t0
    assert len(names) == 50000 and pairs.shape == (800000, 2)
    assert np.bincount(labels).tolist() == [200000] * 4
    assert sum(available.values()) == 50000 * 49999 // 2
    assert seconds < 20, seconds            # about 3 s here; N^2 enumeration would need 1.25e9 pairs
    sample = np.random.default_rng(1).integers(0, len(labels), 300)
    assert [get_label((names[pairs[k, 0]], names[pairs[k, 1]])) for k in sample] == labels[sample].tolist()


@pytest.mark.parametrize("by", ["view", "date"])
def test_split_leaves_no_shared_image(tmp_path, by):
    names = names_for([f"CAM{k}" for k in range(4)], presets=(1, 2), days=4)
    nf = write_names(tmp_path / "names.txt", names)
    res = make_dataset.main(["--names-file", nf, "--per-class", "400", "--split", "0.8", "0.1", "0.1",
                             "--split-by", by, "--x-out", str(tmp_path / "X.npy"),
                             "--y-out", str(tmp_path / "Y.npy")])
    assert set(res["splits"]) == {"train", "val", "test"}
    assert res["splits"]["train"] == (str(tmp_path / "X_train.npy"), str(tmp_path / "Y_train.npy"))
    xs = {s: np.load(xp) for s, (xp, yp) in res["splits"].items()}
    ys = {s: np.load(yp) for s, (xp, yp) in res["splits"].items()}
    assert {s: len(v) for s, v in ys.items()} == {"train": 1280, "val": 160, "test": 160}
    for s in xs:
        assert np.bincount(ys[s], minlength=4).tolist() == [len(ys[s]) // 4] * 4
    images = {s: set(v.ravel()) for s, v in xs.items()}
    assert not images["train"] & images["val"] and not images["train"] & images["test"]
    assert not images["val"] & images["test"]
    key = (lambda n: n.split("t")[0]) if by == "view" else (lambda n: n.split("d")[-1][:10])
    units = {s: {key(n) for n in v} for s, v in images.items()}
    assert not units["train"] & (units["val"] | units["test"])
    # X is train, then val, then test, so slicing the file by position still works.
    x = np.load(res["x"])
    assert (x[:1280] == xs["train"]).all() and (x[1280:1440] == xs["val"]).all()


def test_bad_names(tmp_path):
    names = names_for(["CAMA", "CAMB"]) + ["holiday photo.jpg"]
    nf = write_names(tmp_path / "names.txt", names)
    out = ["--x-out", str(tmp_path / "x.npy"), "--y-out", str(tmp_path / "y.npy")]
    with pytest.raises(FileNameError, match="holiday photo.jpg.*--skip-bad-names"):
        make_dataset.main(["--names-file", nf, "--per-class", "10"] + out)
    assert not (tmp_path / "x.npy").exists()
    res = make_dataset.main(["--names-file", nf, "--per-class", "10", "--skip-bad-names"] + out)
    assert res["skipped_names"] == 1 and res["n_images"] == len(names) - 1


def test_class_without_pairs(tmp_path):
    one_view = names_for(["CAMA"], presets=(1,))
    nf = write_names(tmp_path / "names.txt", one_view)
    out = ["--x-out", str(tmp_path / "x.npy"), "--y-out", str(tmp_path / "y.npy")]
    with pytest.raises(ValueError, match=r"class 2 \(other view, same stage\) has no possible pair"):
        make_dataset.main(["--names-file", nf, "--per-class", "10"] + out)
    res = make_dataset.main(["--names-file", nf, "--per-class", "10", "--drop-empty-classes"] + out)
    assert res["counts"] == {0: 10, 1: 10, 2: 0, 3: 0}


def test_never_overwrites_a_different_file(tmp_path):
    nf = write_names(tmp_path / "names.txt", names_for(["CAMA", "CAMB"]))
    out = ["--x-out", str(tmp_path / "x.npy"), "--y-out", str(tmp_path / "y.npy")]
    make_dataset.main(["--names-file", nf, "--per-class", "10"] + out)
    before = (tmp_path / "x.npy").read_bytes()
    make_dataset.main(["--names-file", nf, "--per-class", "10"] + out)   # identical: fine
    with pytest.raises(FileExistsError, match="x.npy exists with different content"):
        make_dataset.main(["--names-file", nf, "--per-class", "10", "--seed", "1"] + out)
    assert (tmp_path / "x.npy").read_bytes() == before
    make_dataset.main(["--names-file", nf, "--per-class", "10", "--seed", "1", "--overwrite"] + out)
    assert (tmp_path / "x.npy").read_bytes() != before
    with pytest.raises(ValueError, match="sum to 1"):
        make_dataset.main(["--names-file", nf, "--split", "0.5", "0.1", "0.1"] + out)


def test_folder_input_and_preview(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    for n in names_for(["CAMA", "CAMB"], stages=(0, 1), days=2):
        Image.new("RGB", (16, 9), (len(n) * 3 % 255, 90, 30)).save(folder / n)
    (folder / "manifest.csv").write_text("file\n")      # not an image: ignored
    res = make_dataset.main(["--path", str(folder), "--per-class", "20", "--preview",
                             str(tmp_path / "pairs.png"), "--x-out", str(tmp_path / "x.npy"),
                             "--y-out", str(tmp_path / "y.npy")])
    assert res["n_images"] == 32
    with Image.open(tmp_path / "pairs.png") as im:
        assert im.width > 300 and im.height > 300
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        make_dataset.main(["--path", str(tmp_path / "nothing")])
