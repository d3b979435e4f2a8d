"""The synthetic orchard: layout, determinism, exact masks, phenology, bad input, and a
generated archive through steps 1-3."""
import datetime
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from data_processing import synthetic_orchard as so
from data_processing.date_pro import load_phenology
from data_processing.names import parse_archive_name

# The shortest season the stage windows allow, tiny photos, two cameras, one test tree.
SMALL = dict(cameras=2, presets=(1,), times=("12",), start="2021-01-01",
             end="2021-05-04", image_size=(64, 128), n_train=10, n_val=4, n_test=6,
             seed=3, test_cameras=1, progress=False)


@pytest.fixture(scope="module")
def orchard(tmp_path_factory):
    out = tmp_path_factory.mktemp("orchard") / "demo"
    return so.generate_orchard(out, **SMALL)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_across_worker_counts(orchard, tmp_path):
    again = so.generate_orchard(tmp_path / "again", **{**SMALL, "workers": 2})
    a, b = _files(orchard["root"]), _files(again["root"])
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_archive_layout_names_and_missing_days(orchard):
    manifest = json.loads((orchard["root"] / "orchard.json").read_text())
    photos = sorted(orchard["archive"].rglob("*.jpg"))
    assert len(photos) == orchard["n_archive"] == manifest["n_archive"]
    missing = {tuple(m.split()) for m in manifest["missing_days"]}
    assert 0 < len(missing) < 25      # a few, at a 3 % rate over 2 x 124 days
    days = (datetime.date(2021, 5, 4) - datetime.date(2021, 1, 1)).days + 1
    assert len(photos) == 2 * days - len(missing)
    cams = sorted(p.name for p in orchard["archive"].iterdir())
    assert cams == sorted(orchard["cameras"]) and all(len(c) == 9 for c in cams)
    for p in photos:
        name = parse_archive_name(p)
        assert name.preset == 1 and name.hour == "12"
        assert "2021-01-01" <= name.date <= "2021-05-04"
        assert (name.camera, name.date) not in missing
    with Image.open(photos[0]) as im:
        assert im.format == "JPEG" and im.size == (128, 64)


def test_phenology_priors_match_the_rendered_bud_dates(orchard):
    phen = load_phenology(orchard["phenology"])
    manifest = json.loads((orchard["root"] / "orchard.json").read_text())
    assert [(s.name, s.offset, s.last) for s in phen.stages] == [
        ("dormancy", -12, False), ("green leaves and flowering", 10, False),
        ("young fruit", 45, False), ("colouring and ripening", 84, False),
        ("harvested", None, True)]
    assert phen.window_days == 12 and (phen.start, phen.end) == ("2021-01-01", "2021-05-04")
    assert phen.cameras == {c: v["bud"] for c, v in manifest["cameras"].items()}
    for bud in phen.cameras.values():
        bud = datetime.date.fromisoformat(bud)
        assert bud - datetime.timedelta(days=12) >= datetime.date(2021, 1, 1)


def test_voc_masks_are_class_indices_matching_photos(orchard):
    voc = orchard["voc"] / "VOC2007"
    split = {n: (voc / "ImageSets/Segmentation" / f"{n}.txt").read_text().split()
             for n in ("train", "val", "test")}
    assert [len(split[n]) for n in ("train", "val", "test")] == [10, 4, 6]
    seen = set()
    for ids in split.values():
        for i in ids:
            with Image.open(voc / "JPEGImages" / f"{i}.jpg") as im:
                size = im.size
            with Image.open(voc / "SegmentationClass" / f"{i}.png") as m:
                assert m.mode == "P"
                mask = np.array(m)
            assert mask.shape == (size[1], size[0]) == (64, 128)
            assert mask.max() <= 4
            seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2, 3, 4}          # every class occurs somewhere
    # Train/val photos are archive photos, byte for byte.
    cam, preset, date, hour = split["train"][0].split("_")
    archive_photo = orchard["archive"] / cam / f"{preset}_{date}_{hour}.jpg"
    assert archive_photo.read_bytes() == (voc / "JPEGImages" / f"{split['train'][0]}.jpg").read_bytes()


def test_test_cameras_are_trees_no_training_photo_shows(orchard):
    voc = orchard["voc"] / "VOC2007/ImageSets/Segmentation"
    cams = {n: {i.split("_")[0] for i in (voc / f"{n}.txt").read_text().split()}
            for n in ("train", "val", "test")}
    assert cams["test"] == set(orchard["test_cameras"])
    assert not cams["test"] & (cams["train"] | cams["val"])
    assert not cams["test"] & set(orchard["cameras"])        # not in the archive either
    assert cams["train"] | cams["val"] <= set(orchard["cameras"])


def test_labelled_set_covers_every_stage(orchard):
    phen = load_phenology(orchard["phenology"])
    ids = (orchard["voc"] / "VOC2007/ImageSets/Segmentation/train.txt").read_text().split()
    offsets = set()
    for i in ids:
        cam, _, date, _ = i.split("_")
        offsets.add((datetime.date.fromisoformat(date)
                     - datetime.date.fromisoformat(phen.cameras[cam])).days)
    for first in (-12, 10, 45, 84):
        assert any(first <= o < first + 12 for o in offsets), first
    assert max(offsets) >= (datetime.date(2021, 5, 4) - datetime.date(2021, 1, 30)).days - 12


def test_stage_appearance_follows_the_phenology():
    """Flower pixels peak in the flowering window, fruit appears after it, and fruit
    turns from green to red only around the ripening window."""
    opts = dict(cameras=1, start="2021-01-01", end="2021-07-01", image_size=(128, 224),
                seed=5, presets=(4,), test_cameras=0)                # a close-up preset
    cfg = so.make_config(1, opts["start"], opts["end"], opts["image_size"], 5, 0)
    cam, bud = cfg.cameras[0], cfg.bud[cfg.cameras[0]]
    flower, fruit, leaf, redness = {}, {}, {}, {}
    for off in range(-12, 130, 6):
        rgb, label = so.render_photo(cam, 4, bud + datetime.timedelta(days=off), 12, **opts)
        flower[off] = (label == so.FLOWER).mean()
        fruit[off] = (label == so.FRUIT).mean()
        leaf[off] = (label == so.LEAF).mean()
        # Inner fruit pixels only: the soft edges mix with the leaves around.
        inner = cv2.erode((label == so.FRUIT).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        px = rgb[inner].astype(float)
        redness[off] = (px[:, 0] - px[:, 1]).mean() if len(px) > 20 else None
    peak = max(flower, key=flower.get)
    assert 10 <= peak < 22 and flower[peak] > 0.01
    assert flower[-12] == 0 and flower[48] == 0 and flower[90] == 0
    assert leaf[-12] == 0 and leaf[48] > 0.2
    assert fruit[-12] == 0 and fruit[12] < 0.1 * fruit[48]   # the odd early flower
    assert fruit[48] > 0.005 and fruit[84] > fruit[48]
    assert redness[48] < -10 and redness[66] < -10           # green among the leaves
    assert redness[90] > 20                                  # red when ripening
    assert fruit[126] == 0 and leaf[126] > 0.2               # harvested: leaves, no fruit
    # Neighbouring days look nearly identical (same weather and time), far ones do not.
    a, _ = so.render_photo(cam, 4, bud + datetime.timedelta(days=60), 12, **opts)
    b, _ = so.render_photo(cam, 4, bud + datetime.timedelta(days=61), 12, **opts)
    c, _ = so.render_photo(cam, 4, bud + datetime.timedelta(days=-10), 12, **opts)
    near, far = np.abs(a.astype(int) - b).mean(), np.abs(a.astype(int) - c).mean()
    assert near < far / 2


@pytest.mark.parametrize("change, message", [
    (dict(cameras=0), "at least one camera"),
    (dict(end="2021-04-30"), "stage windows need at least 123"),
    (dict(image_size=(60, 128)), "multiples of 32"),
    (dict(times=("9am",)), "not an hour"),
    (dict(test_cameras=0), "test camera"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        so.generate_orchard(tmp_path / "o", **{**SMALL, **change})
    assert not (tmp_path / "o").exists()


def test_existing_folder_is_not_overwritten_unless_asked(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    small = {**SMALL, "cameras": 1, "presets": (1,), "n_train": 1, "n_val": 0, "n_test": 0}
    with pytest.raises(FileExistsError, match="not empty"):
        so.generate_orchard(out, **small)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    res = so.generate_orchard(out, overwrite=True, prior_noise_days=5, **small)
    assert (out / "mine.txt").read_text() == "keep me"      # only our own outputs go
    truth = json.loads((out / "orchard.json").read_text())["cameras"]
    prior = load_phenology(res["phenology"]).cameras
    for cam, v in truth.items():
        gap = (datetime.date.fromisoformat(prior[cam]) - datetime.date.fromisoformat(v["bud"])).days
        assert abs(gap) <= 5


def test_cli_main_returns_the_paths(tmp_path):
    res = so.main(["--out", str(tmp_path / "c"), "--cameras", "1", "--presets", "1",
                   "--times", "12", "--end", "2021-05-04", "--image-size", "64", "128",
                   "--n-train", "2", "--n-val", "1", "--n-test", "2", "--test-cameras", "1",
                   "--contact-sheet", str(tmp_path / "sheet.png"), "--no-progress"])
    assert res["root"] == tmp_path / "c" and res["phenology"].is_file()
    assert res["voc"] == tmp_path / "c" / "VOCdevkit" and res["archive"].is_dir()
    with Image.open(res["contact_sheet"]) as im:
        assert im.size[0] > 5 * 2 * 64          # five stages, photo and mask each
    with pytest.raises(FileExistsError):
        so.main(["--out", str(tmp_path / "c"), "--cameras", "1", "--no-progress"])


def test_generated_archive_runs_through_select_img_and_make_dataset(orchard, tmp_path):
    from data_processing import make_dataset, select_img

    sel = select_img.main(["--archive", str(orchard["archive"]), "--phenology",
                           str(orchard["phenology"]), "--out", str(tmp_path / "out"),
                           "--presets", "1", "--times", "12", "--workers", "1"])
    counts = sel["counts"]
    assert set(counts) == set(orchard["cameras"])
    for cam, per_stage in counts.items():
        # Five stages, windows of 12 days, one preset and time, a few missing days.
        assert all(9 <= n <= 12 for n in per_stage.values()), (cam, per_stage)
    x_out, y_out = tmp_path / "x.npy", tmp_path / "y.npy"
    # Two views (cameras) and five stages: every pair class exists.
    make_dataset.main(["--path", str(tmp_path / "out"), "--x-out", str(x_out),
                       "--y-out", str(y_out), "--per-class", "50"])
    y = np.load(y_out)
    assert sorted(np.unique(y).tolist()) == [0, 1, 2, 3] and len(y) == 200


def test_colour_baseline_runs_on_a_generated_voc_set(orchard):
    from benchmarks import colour_baseline

    res = colour_baseline.main(["--voc", str(orchard["voc"]), "--model", "forest",
                                "--pixels-per-image", "400", "--stride", "2"])
    assert set(res["iou"]) == {"_background_", "fruit", "leaf", "trunk", "flower"}
    assert 0 < res["mIoU"] < 0.9 and 0 < res["accuracy"] <= 1
