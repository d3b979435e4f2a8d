"""Label budgets: train.py --train-count draws nested, seeded subsets of the train split
that cover its classes early, and trains every budget for the same number of steps."""
import json

import numpy as np
import pytest
from PIL import Image

import train
from tests.test_train import base_argv, make_voc
from utils.errors import UserError
from utils.voc import draw_labelled, label_budget_order, mask_classes, read_split


def make_spread_voc(root, n=10, rare=(("im03", 3), ("im07", 4))):
    """A VOC train split where every photo holds classes 0-2 and class 3 (4) only photo
    im03 (im07): a draw covers every class only if it takes those two."""
    voc = root / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    ids = [f"im{k:02d}" for k in range(n)]
    for i in ids:
        mask = np.zeros((16, 16), np.uint8)
        mask[:4], mask[4:8] = 1, 2
        for rare_id, cls in rare:
            if i == rare_id:
                mask[8:12] = cls
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{i}.png")
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit", ids


def test_draw_is_nested_seeded_and_covers_the_classes_first(tmp_path):
    voc, ids = make_spread_voc(tmp_path)
    draws = {n: draw_labelled(voc, ids, n, 5, seed=11) for n in (2, 4, 8)}
    assert draws[2] == draws[4][:2] and draws[4] == draws[8][:4]          # nested
    assert draws[8] == draw_labelled(voc, ids, 8, 5, seed=11)              # seeded
    orders = {tuple(label_budget_order(voc, ids, 5, seed)) for seed in range(6)}
    assert len(orders) > 1                                                 # the seed matters
    # Two photos can hold all five classes, and the two-photo draw does, for any seed.
    for seed in range(6):
        two = draw_labelled(voc, ids, 2, 5, seed=seed)
        assert set().union(*(mask_classes(voc, i, 5) for i in two)) == {0, 1, 2, 3, 4}
        assert set(two) == {"im03", "im07"}
    # One photo cannot: it holds as many classes as any one photo can (4).
    assert len(set().union(*(mask_classes(voc, i, 5)
                             for i in draw_labelled(voc, ids, 1, 5, seed=3)))) == 4


@pytest.mark.parametrize("count", [0, 11])
def test_draw_out_of_range_is_a_user_error(tmp_path, count):
    voc, ids = make_spread_voc(tmp_path)
    with pytest.raises(UserError, match=r"--train-count: .* give 1 to 10"):
        draw_labelled(voc, ids, count, 5, seed=1)


def test_every_budget_trains_the_same_steps_on_its_nested_photos(tmp_path):
    voc = make_voc(tmp_path, counts=(("train", 6), ("val", 2), ("test", 2)))
    argv = base_argv(voc, tmp_path / "logs") + ["--frozen-only", "--steps-per-epoch", "0",
                                                "--unfreeze-epoch", "1"]
    runs = {}
    for n in (2, 4):
        # batch 2 over 6 photos: 3 steps an epoch at every budget, one epoch.
        result = train.main(argv + ["--train-count", str(n), "--eval-split", "none"])
        runs[n] = json.loads((result["run_dir"] / "results.json").read_text())
        args = json.loads((result["run_dir"] / "args.json").read_text())
        assert args["train_photos"] == runs[n]["train_photos"]
        assert len(runs[n]["train_photos"]) == n
    assert runs[2]["train_photos"] == runs[4]["train_photos"][:2]
    assert runs[2]["optimizer_steps"] == runs[4]["optimizer_steps"] == 6 // 2
    assert set(runs[4]["train_photos"]) <= set(read_split(voc, "train"))


def test_train_count_larger_than_the_split_stops_before_training(tmp_path):
    voc = make_voc(tmp_path)
    with pytest.raises(UserError, match="--train-count: 7 photos asked for, the train split "
                                        "has 6"):
        train.main(base_argv(voc, tmp_path / "logs") + ["--train-count", "7"])
    assert not (tmp_path / "logs").exists()
