"""VOC input pipeline: shapes, one-hot and ignore channel, letterbox, augmentation, bad input."""
import numpy as np
import pytest
from PIL import Image

from utils.dataloader import (AUGMENTATIONS, build_dataset, check_split, get_random_data,
                              load_sample)

NC = 5


def make_voc(root, splits, size=(40, 20)):
    """Write a VOCdevkit with one image per id: a red block of class 1 on grey, and a
    strip of class 2 along the bottom. ``splits``: {split: [ids]}."""
    voc = root / "VOCdevkit"
    jpg_dir, png_dir = voc / "VOC2007/JPEGImages", voc / "VOC2007/SegmentationClass"
    list_dir = voc / "VOC2007/ImageSets/Segmentation"
    for d in (jpg_dir, png_dir, list_dir):
        d.mkdir(parents=True, exist_ok=True)
    w, h = size
    for split, ids in splits.items():
        for name in ids:
            image = np.full((h, w, 3), 90, np.uint8)
            mask = np.zeros((h, w), np.uint8)
            image[2:10, 4:20] = (220, 20, 20)
            mask[2:10, 4:20] = 1
            image[-4:] = (20, 200, 20)
            mask[-4:] = 2
            Image.fromarray(image).save(jpg_dir / f"{name}.jpg", quality=95)
            Image.fromarray(mask).save(png_dir / f"{name}.png")
        (list_dir / f"{split}.txt").write_text("".join(f"{n}\n" for n in ids))
    return voc


@pytest.fixture
def voc(tmp_path):
    return make_voc(tmp_path, {"train": ["a", "b", "c"], "val": ["d", "e", "f"]})


def test_letterbox_geometry_and_label_fill(voc):
    image, label = load_sample(voc, "d", (32, 32), NC, train=False)
    # 40x20 scaled by 0.8 to 32x16, centred: rows 8..23 hold the photo.
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    assert label.shape == (32, 32) and label.dtype == np.uint8
    np.testing.assert_allclose(image[:8], 128 / 255, atol=1e-6)
    np.testing.assert_allclose(image[24:], 128 / 255, atol=1e-6)
    assert (label[:8] == 0).all() and (label[24:] == 0).all()
    assert set(np.unique(label[8:24])) == {0, 1, 2}
    assert (label[21:24] == 2).all()              # the bottom strip, resized nearest
    _, filled = load_sample(voc, "d", (32, 32), NC, train=False, label_fill=NC)
    assert (filled[:8] == NC).all() and (filled[8:24] == label[8:24]).all()


def test_marked_bars_are_background_for_the_loss_and_ignored_for_the_miou(voc):
    plain, marked = (next(iter(build_dataset(voc, "val", (32, 32), 3, NC, train=False,
                                             mark_bars=mark)))[1].numpy()
                     for mark in (False, True))
    # Photo "d" (40x20) fills rows 8..23; its bars are background in both, and flagged
    # ignore (the last channel) only when marked; inside the photo nothing changes.
    d = 0
    np.testing.assert_array_equal(plain[d, :8, :, 0], 1)
    np.testing.assert_array_equal(marked[d, :8, :, 0], 1)
    np.testing.assert_array_equal(marked[d, :8, :, NC], 1)
    np.testing.assert_array_equal(plain[d, :8, :, NC], 0)
    np.testing.assert_array_equal(marked[d, 8:24], plain[d, 8:24])
    np.testing.assert_array_equal(marked[..., :NC], plain[..., :NC])


def test_values_above_class_count_become_ignore_and_are_counted(voc):
    png = voc / "VOC2007/SegmentationClass/a.png"
    mask = np.asarray(Image.open(png)).copy()
    mask[0, :3] = 7
    mask[1, :2] = 255
    Image.fromarray(mask).save(png)
    with pytest.warns(UserWarning, match=r"5 pixels in 1 of 3 masks.*\[7, 255\]"):
        check_split(voc, "train", NC)
    _, label = load_sample(voc, "a", (20, 40), NC, train=False)
    assert (label[0, :3] == NC).all() and (label[1, :2] == NC).all()
    assert label.max() == NC


def test_training_augmentation_keeps_labels_and_shapes():
    rng = np.random.default_rng(3)
    image = Image.fromarray(np.full((20, 40, 3), 90, np.uint8))
    label = Image.fromarray(np.tile(np.array([3, 1, 2, 5], np.uint8), (20, 10)))
    sizes = set()
    for _ in range(20):
        out, out_label = get_random_data(image, label, (24, 48), rng=rng)
        out_label = np.asarray(out_label)
        assert out.shape == (24, 48, 3) and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 255.0001
        assert out_label.shape == (24, 48)
        assert set(np.unique(out_label)) <= {0, 1, 2, 3, 5}
        sizes.add(int((out_label == 0).sum()))      # the canvas around the photo is 0
    assert len(sizes) > 5 and 0 in sizes            # scale and placement vary; some crop


def test_a_training_crop_is_a_window_of_the_photo_at_the_input_scale():
    rng = np.random.default_rng(4)
    # The label holds each pixel's row, the photo's red channel its column (x 5).
    rows = np.repeat(np.arange(24, dtype=np.uint8)[:, None], 48, 1)
    cols = np.repeat(np.arange(48)[None, :] * 5, 24, 0)
    label = Image.fromarray(rows)
    image = Image.fromarray(np.stack([cols, np.zeros_like(cols), np.zeros_like(cols)],
                                     -1).astype(np.uint8))
    plain = dict(jitter=0.0, scale=(1.0, 1.0), hue=0.0, sat=1.0, val=1.0)
    offsets = set()
    for _ in range(12):
        out, out_label = get_random_data(image, label, (24, 48), rng=rng, crop=(8, 16), **plain)
        out_label = np.asarray(out_label)
        assert out.shape == (8, 16, 3) and out_label.shape == (8, 16)
        red = out[..., 0]
        if red[0, 0] > red[0, -1]:                      # flipped: compare unflipped
            red = red[:, ::-1]
        y, x = int(out_label[0, 0]), int(round(red[0, 0] / 5))
        # Same scale: one row and one column of the photo per pixel of the crop.
        np.testing.assert_array_equal(out_label, rows[y:y + 8, x:x + 16])
        np.testing.assert_allclose(red, cols[y:y + 8, x:x + 16], atol=1)
        offsets.add((y, x))
    assert len(offsets) > 6                             # the window moves


def test_the_original_augmentation_is_get_random_datas_defaults_and_help_says_each(capsys):
    import inspect

    import train

    defaults = {k: v.default for k, v in inspect.signature(get_random_data).parameters.items()}
    assert {k: defaults[k] for k in AUGMENTATIONS["original"]} == AUGMENTATIONS["original"]
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'original' (scale 0.25-2, aspect ratio +-30 %, flip, hue +-0.1, saturation and " \
           "value x1/1.5-1.5)" in text
    assert "'light' (scale 0.8-1.25, aspect ratio +-10 %, flip, no hue shift" in text


@pytest.mark.parametrize("augment", sorted(AUGMENTATIONS))
def test_the_light_augmentation_keeps_scale_and_hue_near_the_photos(augment):
    rng = np.random.default_rng(5)
    image = Image.fromarray(np.tile(np.array([[[200, 40, 40]]], np.uint8), (24, 48, 1)))
    label = Image.fromarray(np.ones((24, 48), np.uint8))
    covered, hues = [], []
    for _ in range(30):
        out, out_label = get_random_data(image, label, (24, 48), rng=rng,
                                         **AUGMENTATIONS[augment])
        on = np.asarray(out_label) == 1
        covered.append(on.mean())
        r, g, b = out[on].mean(0)
        hues.append(r > g and r > b)                    # still red
    if augment == "light":
        assert min(covered) > 0.45 and all(hues)
    else:                                               # the original shrinks and shifts
        assert min(covered) < 0.3


def test_dataset_batches_one_hot_and_reproducible(voc):
    train = build_dataset(voc, "train", (32, 32), 2, NC, train=True, seed=5, num_workers=2)
    images, targets = next(iter(train))
    assert images.shape == (2, 32, 32, 3) and targets.shape == (2, 32, 32, NC + 1)
    assert images.dtype.name == "float32" and targets.dtype.name == "float32"
    assert float(images.numpy().min()) >= 0 and float(images.numpy().max()) <= 1
    np.testing.assert_array_equal(targets.numpy().sum(-1), 1)
    again = build_dataset(voc, "train", (32, 32), 2, NC, train=True, seed=5, num_workers=1)
    np.testing.assert_array_equal(next(iter(again))[0].numpy(), images.numpy())
    # Repeated forever, new augmentation on later passes.
    batches = [b[0].numpy() for b in train.take(4)]
    assert len(batches) == 4 and not np.array_equal(batches[0], batches[3])

    cropped = build_dataset(voc, "train", (32, 32), 2, NC, train=True, seed=5, crop=(16, 32),
                            augment="light")
    images, targets = next(iter(cropped))
    assert images.shape == (2, 16, 32, 3) and targets.shape == (2, 16, 32, NC + 1)
    # Validation sees whole photos, whatever the training crop.
    whole = build_dataset(voc, "val", (32, 32), 2, NC, train=False, crop=(16, 32))
    assert next(iter(whole))[0].shape == (2, 32, 32, 3)

    val = list(build_dataset(voc, "val", (32, 32), 2, NC, train=False))
    assert [b[0].shape[0] for b in val] == [2, 1]   # every image once, partial batch kept
    labels = np.argmax(val[0][1].numpy(), -1)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_grayscale_and_rgba_photos_become_rgb(voc):
    jpg_dir = voc / "VOC2007/JPEGImages"
    Image.open(jpg_dir / "b.jpg").convert("L").save(jpg_dir / "b.jpg")
    rgba = Image.open(jpg_dir / "c.jpg").convert("RGBA")
    rgba.save(jpg_dir / "c.png")
    (jpg_dir / "c.png").rename(jpg_dir / "c.jpg")   # a PNG named .jpg, as users do
    for name in ("b", "c"):
        image, _ = load_sample(voc, name, (16, 32), NC, train=True,
                               rng=np.random.default_rng(0))
        assert image.shape == (16, 32, 3)


def test_bad_inputs_name_the_file(voc, tmp_path):
    png_dir = voc / "VOC2007/SegmentationClass"
    list_dir = voc / "VOC2007/ImageSets/Segmentation"
    Image.fromarray(np.zeros((21, 40), np.uint8)).save(png_dir / "b.png")
    with pytest.raises(ValueError, match=r"b\.png: mask size 40x21 differs from its image .*b\.jpg"):
        check_split(voc, "train", NC)
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(png_dir / "b.png")
    with pytest.raises(ValueError, match=r"b\.png: mask mode RGB"):
        check_split(voc, "train", NC)
    (list_dir / "train.txt").write_text("a\nmissing_one\n")
    with pytest.raises(FileNotFoundError, match=r"missing_one\.jpg.*missing_one\.png"):
        check_split(voc, "train", NC)
    (voc / "VOC2007/JPEGImages/a.jpg").unlink()
    (list_dir / "train.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/a\.jpg"):
        check_split(voc, "train", NC)
    (list_dir / "train.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"train\.txt: the split list is empty"):
        check_split(voc, "train", NC)
    with pytest.raises(FileNotFoundError, match=r"test\.txt"):
        check_split(voc, "test", NC)
