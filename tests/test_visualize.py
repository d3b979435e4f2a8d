"""visualize.py: the filter grid and the stage-embedding plots with a k-NN check."""
import json

import numpy as np
import pytest
from PIL import Image

import visualize


@pytest.fixture(scope="module")
def stem_weights(tmp_path_factory):
    """A small legacy by-name file holding only the first layers of ResNet50 (conv1,
    bn_conv1) and of VGG16 (block1_conv1)."""
    import keras

    from utils.weights import save_weights_by_name

    keras.utils.set_random_seed(5)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(64, 7, strides=2, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn_conv1")(x)
    y = keras.layers.Conv2D(64, 3, padding="same", name="block1_conv1")(inputs)
    stem = keras.Model(inputs, [x, y])
    path = tmp_path_factory.mktemp("weights") / "stem.h5"
    save_weights_by_name(stem, path)
    return path


def test_filters_grid(stem_weights, tmp_path):
    path = stem_weights
    r = visualize.main(["filters", "--model-path", str(path), "--grid", "2", "--steps", "3",
                        "--input-size", "32", "32", "--out-dir", str(tmp_path / "f")])
    grid = np.asarray(Image.open(r["grid"]))
    crop = 32 - 2 * (32 // 4)                  # border crop limited to size / 4
    assert grid.shape == (2 * crop + 5, 2 * crop + 5, 3) and r["filters"] == 4
    assert grid[:crop, :crop].std() > 0        # gradient ascent changed the noise
    assert Image.open(r["filter_0"]).size == (crop, crop)
    assert r["loaded_layers"] == 2             # conv1 and bn_conv1 came from the file


def test_filters_batched_equals_one_at_a_time():
    from nets.encoders import build_encoder

    encoder = build_encoder((32, 32, 3), "vgg")
    together = visualize.visualize_filters(encoder, "block2_conv1", [0, 1, 2], 2, 10.0,
                                           batch_size=3, seed=1)
    single = visualize.visualize_filters(encoder, "block2_conv1", [0, 1, 2], 2, 10.0,
                                         batch_size=1, seed=1)
    # Same starting noise only for the first filter (the generator advances per batch).
    np.testing.assert_allclose(together[0], single[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no_such_layer"):
        visualize.visualize_filters(encoder, "no_such_layer", [0])
    with pytest.raises(ValueError, match="64 filters"):
        visualize.visualize_filters(encoder, "block1_conv1", [64])


def _stage_folder(folder):
    """Twelve stage images, three stages told apart by colour, plus one stray file."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    colours = {0: (90, 60, 40), 1: (60, 160, 60), 2: (200, 40, 60)}
    for stage, rgb in colours.items():
        for day in range(4):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 12, (40, 56, 3)), 0, 255)
            name = f"E88570046p1t09i{stage}d2021-0{stage + 1}-1{day}_09.jpg"
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
    Image.new("RGB", (8, 8)).save(folder / "holiday.jpg")
    return folder


def test_embeddings_plots_and_knn(stem_weights, tmp_path, capsys):
    folder = _stage_folder(tmp_path / "stages")
    # VGG: the embedding logic does not depend on the backbone, and it builds faster.
    r = visualize.main(["embeddings", "--model-path", str(stem_weights), "--image-dir",
                        str(folder), "--input-size", "32", "32", "--batch-size", "5",
                        "--backbone", "vgg",
                        "--knn-folds", "4", "--out-dir", str(tmp_path / "e")])
    assert r["images"] == 12 and r["stages"] == {0: 4, 1: 4, 2: 4}
    for key in ("pca_png", "tsne_png"):
        assert Image.open(r[key]).size[0] > 100
    assert r["knn_folds"] == 4 and r["knn_baseline"] == pytest.approx(1 / 3)
    # Colours this different are separable even by a barely trained encoder.
    assert r["knn_accuracy"] > 0.6
    saved = np.load(tmp_path / "e/embeddings.npz")
    assert saved["features"].shape == (12, 512) and r["loaded_layers"] == 1
    assert json.loads((tmp_path / "e/embeddings.json").read_text())["images"] == 12
    assert "holiday.jpg" in capsys.readouterr().out


def test_knn_needs_two_images_per_stage():
    r = visualize.knn_stage_accuracy(np.eye(3), [0, 1, 1])
    assert r["knn_accuracy"] is None and "2 images" in r["knn_note"]
