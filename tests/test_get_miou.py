"""Metrics with hand-computed answers, result files, and get_miou on a tiny VOC set."""
import json
from fractions import Fraction as F

import numpy as np
import pytest
from PIL import Image

import get_miou
from utils.evaluate import evaluate_split
from utils.utils_metrics import (compute_mIoU, fast_hist, per_Accuracy, per_class_iu,
                                 per_class_PA_Recall, per_class_Precision, show_results)

# Label and prediction, 3 classes. By hand (rows = label, columns = prediction):
#   label 0 (2 px) -> predicted 0, 1        row [1, 1, 0]
#   label 1 (3 px) -> predicted 1, 1, 2     row [0, 2, 1]
#   label 2 (4 px) -> predicted 2, 2, 2, 1  row [0, 1, 3]
LABEL = np.array([[0, 0, 1], [1, 1, 2], [2, 2, 2]], np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 2], [2, 2, 1]], np.uint8)
HIST = [[1, 1, 0], [0, 2, 1], [0, 1, 3]]
IOU = [F(1, 2), F(2, 5), F(3, 5)]          # TP / (row + column - TP)
RECALL = [F(1, 2), F(2, 3), F(3, 4)]       # TP / row
PRECISION = [F(1, 1), F(2, 4), F(3, 4)]    # TP / column


def _write_masks(folder, masks):
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        Image.fromarray(np.asarray(mask, np.uint8)).save(folder / f"{name}.png")


def test_fast_hist_and_per_class_values():
    hist = fast_hist(LABEL.ravel(), PRED.ravel(), 3)
    assert hist.tolist() == HIST
    np.testing.assert_allclose(per_class_iu(hist), [float(v) for v in IOU])
    np.testing.assert_allclose(per_class_PA_Recall(hist), [float(v) for v in RECALL])
    np.testing.assert_allclose(per_class_Precision(hist), [float(v) for v in PRECISION])
    assert per_Accuracy(hist) == pytest.approx(6 / 9)


def test_fast_hist_ignores_labels_outside_the_classes():
    label = np.array([0, 255, 1, 3, 1])      # 255 (VOC border) and 3 (>= n) are ignored
    pred = np.array([0, 1, 1, 0, 0])
    assert fast_hist(label, pred, 3).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="outside"):
        fast_hist(np.array([0, 1]), np.array([0, 7]), 3)


def test_compute_mIoU_hand_made_masks(tmp_path, capsys):
    # A second image adds class 0 correctly predicted twice and one ignored pixel.
    label2 = np.array([[0, 0, 255]])
    pred2 = np.array([[0, 0, 2]])
    _write_masks(tmp_path / "gt", {"a": LABEL, "b": label2})
    _write_masks(tmp_path / "pred", {"a": PRED, "b": pred2})
    hist, ious, recall, precision = compute_mIoU(tmp_path / "gt", tmp_path / "pred",
                                                 ["a", "b"], 3, ["bg", "x", "y"])
    assert hist.dtype.kind == "i" and hist.tolist() == [[3, 1, 0], [0, 2, 1], [0, 1, 3]]
    # Class 0 now: TP 3, row 4, column 3.
    np.testing.assert_allclose(ious, [3 / 4, 2 / 5, 3 / 5])
    np.testing.assert_allclose(recall, [3 / 4, 2 / 3, 3 / 4])
    np.testing.assert_allclose(precision, [1, 2 / 4, 3 / 4])
    assert np.nanmean(ious) == pytest.approx((3 / 4 + 2 / 5 + 3 / 5) / 3)
    assert "1 label pixels with values >= 3 were ignored" in capsys.readouterr().out


def test_absent_class_counts_as_zero_like_the_original(tmp_path):
    _write_masks(tmp_path / "gt", {"a": LABEL})
    _write_masks(tmp_path / "pred", {"a": PRED})
    _, ious, recall, _ = compute_mIoU(tmp_path / "gt", tmp_path / "pred", ["a"], 4)
    assert ious[3] == 0 and recall[3] == 0
    assert np.nanmean(ious) == pytest.approx(float(sum(IOU)) / 4)


def test_size_mismatch_is_reported_not_silent(tmp_path):
    _write_masks(tmp_path / "gt", {"a": LABEL, "odd": np.zeros((3, 4))})
    _write_masks(tmp_path / "pred", {"a": PRED, "odd": np.zeros((3, 3))})
    with pytest.warns(UserWarning, match=r"1 of 2 images.*odd"):
        hist, *_ = compute_mIoU(tmp_path / "gt", tmp_path / "pred", ["a", "odd"], 3)
    assert hist.tolist() == HIST


def test_missing_prediction_names_the_file(tmp_path):
    _write_masks(tmp_path / "gt", {"a": LABEL})
    (tmp_path / "pred").mkdir()
    with pytest.raises(FileNotFoundError, match=r"pred.a\.png"):
        compute_mIoU(tmp_path / "gt", tmp_path / "pred", ["a"], 3)


def test_show_results_writes_every_file(tmp_path):
    hist = np.array(HIST)
    ious, recall, prec = per_class_iu(hist), per_class_PA_Recall(hist), per_class_Precision(hist)
    metrics = show_results(tmp_path, hist, ious, recall, prec, ["bg", "x", "y"])
    for name in get_miou.RESULT_FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    rows = (tmp_path / "confusion_matrix.csv").read_text().splitlines()
    assert rows[0].split(",") == [" ", "bg", "x", "y"] and rows[3] == "y,0,1,3"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["mIoU"] == pytest.approx(0.5) and metrics["mIoU"] == pytest.approx(0.5)
    assert saved["per_class"]["x"]["precision"] == pytest.approx(0.5)
    assert saved["accuracy"] == pytest.approx(6 / 9)
    with pytest.raises(FileExistsError):
        show_results(tmp_path, hist, ious, recall, prec, ["bg", "x", "y"])


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """Three test images of different sizes with random 5-class masks."""
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit"
    base = root / "VOC2007"
    rng = np.random.default_rng(0)
    ids = []
    for k, (w, h) in enumerate([(64, 64), (80, 48), (40, 56)]):
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(base / f"JPEGImages/i{k}.jpg")
        _write_masks(base / "SegmentationClass", {f"i{k}": rng.integers(0, 5, (h, w))})
        ids.append(f"i{k}")
    (base / "ImageSets/Segmentation").mkdir(parents=True)
    (base / "ImageSets/Segmentation/test.txt").write_text("\n".join(ids) + "\n")
    return root


def tiny_segmenter(size=64, num_classes=5):
    """A two-layer stand-in for the U-Net: same input and output contract, built in
    milliseconds (the U-Net itself is exercised in test_unet_predict.py)."""
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(num_classes, 1, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(1)
    model = tiny_segmenter()
    path = tmp_path_factory.mktemp("model") / "best_epoch.keras"
    model.save(path)
    return model, path


def test_evaluate_split_on_tiny_voc(voc, model_file, tmp_path):
    model, _ = model_file
    result = evaluate_split(model, voc, "test", out_dir=tmp_path / "ev", batch_size=2,
                            pred_dir=tmp_path / "ev/detection-results")
    preds = sorted(p.name for p in (tmp_path / "ev/detection-results").iterdir())
    assert preds == ["i0.png", "i1.png", "i2.png"]
    assert Image.open(tmp_path / "ev/detection-results/i1.png").size == (80, 48)
    assert {"mIoU", "mPA", "accuracy", "IoU", "recall", "precision", "out_dir"} <= set(result)
    assert len(result["IoU"]) == 5 and 0 <= result["mIoU"] <= 1
    assert isinstance(result["mIoU"], float)
    # The saved metrics agree with a recomputation from the saved predictions.
    hist, ious, *_ = compute_mIoU(voc / "VOC2007/SegmentationClass",
                                  tmp_path / "ev/detection-results", ["i0", "i1", "i2"], 5)
    assert result["mIoU"] == pytest.approx(float(np.nanmean(ious)))
    assert hist.sum() == 64 * 64 + 80 * 48 + 40 * 56
    np.testing.assert_array_equal(_csv_matrix(tmp_path / "ev"), hist)


def _csv_matrix(folder):
    rows = (folder / "confusion_matrix.csv").read_text().splitlines()[1:]
    return np.array([[int(x) for x in row.split(",")[1:]] for row in rows])


def test_confusion_from_arrays_equals_the_png_round_trip(voc, model_file, tmp_path):
    """Without PNGs the matrix comes from the predictions in memory: the same matrix
    as get_miou's PNG files give (mode 0 writes them, mode 2 reads them back)."""
    model, path = model_file
    evaluate_split(model, voc, "test", out_dir=tmp_path / "mem", batch_size=2)
    assert not (tmp_path / "mem/detection-results").exists()
    get_miou.main(["--voc-path", str(voc), "--model-path", str(path), "--out-dir",
                   str(tmp_path / "png"), "--batch-size", "3"])
    assert len(list((tmp_path / "png/detection-results").glob("*.png"))) == 3
    get_miou.main(["--miou-mode", "2", "--voc-path", str(voc), "--pred-dir",
                   str(tmp_path / "png/detection-results"), "--out-dir", str(tmp_path / "re")])
    memory = _csv_matrix(tmp_path / "mem")
    assert memory.sum() == 64 * 64 + 80 * 48 + 40 * 56
    np.testing.assert_array_equal(memory, _csv_matrix(tmp_path / "png"))
    np.testing.assert_array_equal(memory, _csv_matrix(tmp_path / "re"))


def test_main_modes_1_then_2_from_a_saved_model(voc, model_file, tmp_path):
    _, path = model_file
    out = tmp_path / "m"
    r1 = get_miou.main(["--miou-mode", "1", "--voc-path", str(voc), "--model-path", str(path),
                        "--out-dir", str(out), "--batch-size", "3"])
    assert len(list((out / "detection-results").glob("*.png"))) == 3
    assert not (out / "mIoU.png").exists() and "mIoU" not in r1
    r2 = get_miou.main(["--miou-mode", "2", "--voc-path", str(voc), "--out-dir", str(out)])
    assert (out / "mIoU.png").exists() and 0 <= r2["mIoU"] <= 1


def test_bad_splits_name_the_file(voc, model_file, tmp_path):
    import shutil

    bad = tmp_path / "VOCdevkit"
    shutil.copytree(voc, bad)
    seg = bad / "VOC2007/ImageSets/Segmentation"
    (seg / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.txt.*empty"):
        evaluate_split(model_file[0], bad, "empty", out_dir=tmp_path / "o1")
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        evaluate_split(model_file[0], bad, "val", out_dir=tmp_path / "o2")
    (seg / "gone.txt").write_text("i0\nnope\n")
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        evaluate_split(model_file[0], bad, "gone", out_dir=tmp_path / "o3")
    (bad / "VOC2007/SegmentationClass/nope.png").write_bytes(
        (bad / "VOC2007/SegmentationClass/i0.png").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"JPEGImages.nope\.jpg"):
        evaluate_split(model_file[0], bad, "gone", out_dir=tmp_path / "o4")


def test_absent_class_scores_zero_and_counts_in_the_mean():
    # Class 2 is neither labelled nor predicted: 0 (the original's clamped denominator),
    # and the NaN-aware mean still averages over all three classes.
    hist = fast_hist(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    np.testing.assert_allclose(per_class_iu(hist), [0.5, 2 / 3, 0.0])
    np.testing.assert_allclose(per_class_PA_Recall(hist), [0.5, 1.0, 0.0])
    np.testing.assert_allclose(per_class_Precision(hist), [1.0, 2 / 3, 0.0])
    assert np.nanmean(per_class_iu(hist)) == pytest.approx((0.5 + 2 / 3) / 3)


def test_training_val_miou_equals_get_miou_on_a_fixed_batch(model_file, tmp_path):
    """The val_mIoU that picks best_epoch.keras (the compiled metric, from the
    validation pass) is get_miou's mIoU on the same images."""
    from utils.utils_metrics import MeanIoU
    from utils.dataloader import build_dataset

    rng = np.random.default_rng(5)
    base = tmp_path / "VOCdevkit/VOC2007"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "ImageSets/Segmentation").mkdir(parents=True)
    masks = {}
    for k in range(3):       # network-sized photos: no resizing on either path
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(base / f"JPEGImages/v{k}.jpg")
        masks[f"v{k}"] = rng.integers(0, 4, (64, 64))        # class 4 never labelled
    masks["v0"][:4] = 255                                     # VOC border: ignored
    _write_masks(base / "SegmentationClass", masks)
    (base / "ImageSets/Segmentation/test.txt").write_text("v0\nv1\nv2\n")
    model, _ = model_file

    with pytest.warns(UserWarning, match="ignored by the loss"):
        dataset = build_dataset(tmp_path / "VOCdevkit", "test", (64, 64), 2, 5, train=False,
                                mark_bars=True)
    from nets.unet_training import CE

    model.compile(loss=CE(np.ones(5)), metrics=[MeanIoU(5)])
    logs = model.evaluate(dataset, return_dict=True, verbose=0)
    # get_miou accepts the VOC2007 folder as well as the VOCdevkit.
    result = evaluate_split(model, base, "test", out_dir=tmp_path / "ev", batch_size=2)
    assert logs["mIoU"] == pytest.approx(result["mIoU"], abs=1e-6)
    assert 0 < result["mIoU"] < 1


def test_pixel_probe_reads_each_feature_map_at_the_pixels_cell_and_fits_a_read_out(tmp_path):
    from benchmarks import pixel_probe
    from nets.unet import build_unet, get_encoder
    from tests.test_train import make_voc

    voc = make_voc(tmp_path, counts=(("train", 3), ("test", 2)), size=(80, 64))
    model = build_unet((None, None, 3), 5, "vgg")
    path = tmp_path / "unet.keras"
    model.save(path)
    features = pixel_probe.encoder_features(path, "vgg", 5)
    rgb = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    padded = np.full((64, 96, 3), 128, np.uint8)        # width 80 padded to 96
    padded[:, :80] = rgb
    maps = [np.asarray(m[0]) for m in get_encoder(model)(padded[None] / np.float32(255))]
    y, x = 37, 79                                       # the last column of the photo
    expected = np.concatenate([m[y * m.shape[0] // 64, x * m.shape[0] // 64] for m in maps])
    np.testing.assert_allclose(features(rgb, [y * 80 + x])[0], expected, rtol=1e-4, atol=1e-5)
    deepest = pixel_probe.encoder_features(path, "vgg", 5, maps=[4])(rgb, [y * 80 + x])[0]
    np.testing.assert_allclose(deepest, expected[-maps[4].shape[-1]:], rtol=1e-4, atol=1e-5)
    res = pixel_probe.main(["--voc", str(voc), "--backbone", "vgg", "--pixels-per-image",
                            "200", f"a={path}"])
    assert res["a"]["features"] == sum(m.shape[-1] for m in maps)
    assert res["a"]["train_pixels"] == 600 and 0 < res["a"]["mIoU"] <= 1
    with pytest.raises(SystemExit):
        pixel_probe.parse_args(["--voc", str(voc), str(path)])    # no NAME=
