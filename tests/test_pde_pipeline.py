"""The PDE pair pipeline: shapes, range, pairing, randomness, equivalences, bad data."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pde_self_supervised import preprocess_img
from pde_self_supervised.dataloader_2img import (PairDataError, build_image_cache,
                                                 check_all_present, check_image_file,
                                                 find_undecodable, load_pair_index,
                                                 make_targets, pair_dataset,
                                                 split_by_fractions)

LOAD, INPUT = (48, 80), (32, 64)


def grey_images(folder, n=12):
    """Uniform grey images whose level encodes their id (augmentation keeps grey grey)."""
    names = []
    for i in range(n):
        name = f"id{i:02d}.png"
        Image.fromarray(np.full((60, 100, 3), 10 + 20 * i, np.uint8)).save(folder / name)
        names.append(name)
    return names


def noise_images(folder, n=6, size=(60, 100), seed=0):
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"noise{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def level_id(batch_images):
    """Image id back from the mean grey level of each image in a batch in [-1, 1]."""
    level = (batch_images.numpy().mean(axis=(1, 2, 3)) + 1) * 127.5
    return np.round((level - 10) / 20).astype(int)


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grey")
    names = grey_images(folder)
    # Pair k = (image k, image k+3); its class is k % 4.
    x = np.array([[names[k], names[(k + 3) % 12]] for k in range(12)])
    y = np.arange(12) % 4
    return folder, x, y


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noise")
    names = noise_images(folder)
    x = np.array([[names[k % 6], names[(k + 1) % 6]] for k in range(12)])
    return folder, x, np.arange(12) % 4


def first_batches(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("cached", [False, True])
def test_shapes_range_and_pairs_kept_together(grey, cached):
    folder, x, y = grey
    cache = build_image_cache(x, folder, LOAD) if cached else None
    ds = pair_dataset(x, y, folder, 4, load_size=LOAD, input_size=INPUT, seed=3, cache=cache)
    for inputs, targets in first_batches(ds, 3):
        a, b, t = inputs["self_input1"], inputs["self_input2"], targets["self_output"]
        assert a.shape == b.shape == (4, *INPUT, 3) and t.shape == (4, 4)
        for img in (a, b):
            assert -1.0 <= float(tf.reduce_min(img)) and float(tf.reduce_max(img)) <= 1.0
        ids1, ids2 = level_id(a), level_id(b)
        np.testing.assert_array_equal(ids2, (ids1 + 3) % 12)
        np.testing.assert_array_equal(np.argmax(t.numpy(), axis=1), ids1 % 4)


def test_epochs_differ_and_seed_reproduces(noise):
    folder, x, y = noise
    kw = dict(load_size=LOAD, input_size=INPUT, steps_per_epoch=3)
    epoch1, _, _, epoch2 = first_batches(pair_dataset(x, y, folder, 4, seed=5, **kw), 4)
    again = first_batches(pair_dataset(x, y, folder, 4, seed=5, **kw), 1)[0]
    other = first_batches(pair_dataset(x, y, folder, 4, seed=6, **kw), 1)[0]
    a1 = epoch1[0]["self_input1"].numpy()
    assert not np.allclose(a1, epoch2[0]["self_input1"].numpy())
    np.testing.assert_array_equal(a1, again[0]["self_input1"].numpy())
    np.testing.assert_array_equal(epoch1[1]["self_output"].numpy(), again[1]["self_output"].numpy())
    assert not np.allclose(a1, other[0]["self_input1"].numpy())


def test_each_epoch_sees_every_pair_once(grey):
    folder, x, y = grey
    ds = pair_dataset(x, y, folder, 4, load_size=LOAD, input_size=INPUT, seed=1, augment=False)
    batches = first_batches(ds, 6)
    for epoch in (batches[:3], batches[3:]):
        ids = np.concatenate([level_id(b[0]["self_input1"]) for b in epoch])
        assert sorted(ids) == list(range(12))
    # An epoch longer than the split: whole passes, each a new permutation.
    ds = pair_dataset(x, y, folder, 4, load_size=LOAD, input_size=INPUT, seed=1, augment=False,
                      steps_per_epoch=6)
    ids = np.concatenate([level_id(b[0]["self_input1"]) for b in first_batches(ds, 6)])
    assert sorted(ids[:12]) == sorted(ids[12:]) == list(range(12))
    assert list(ids[:12]) != list(ids[12:])


def test_two_images_of_a_pair_are_augmented_independently(noise):
    folder, _, _ = noise
    x = np.array([["noise0.jpg", "noise0.jpg"]] * 4)
    inputs, _ = first_batches(pair_dataset(x, np.zeros(4, int), folder, 4, load_size=LOAD,
                                           input_size=INPUT, seed=2), 1)[0]
    assert not np.allclose(inputs["self_input1"].numpy(), inputs["self_input2"].numpy())


def test_evaluation_split_is_fixed_and_keeps_the_remainder(noise):
    folder, x, y = noise
    ds = pair_dataset(x[:10], y[:10], folder, 4, load_size=LOAD, input_size=INPUT, seed=1,
                      training=False)
    first, second = list(ds), list(ds)
    assert [b[1]["self_output"].shape[0] for b in first] == [4, 4, 2]
    np.testing.assert_array_equal(first[0][0]["self_input1"].numpy(),
                                  second[0][0]["self_input1"].numpy())


def test_cache_and_file_paths_agree_without_augmentation(noise):
    folder, x, y = noise
    kw = dict(load_size=LOAD, input_size=INPUT, seed=1, training=False, augment=False)
    files = next(iter(pair_dataset(x, y, folder, 4, **kw)))[0]["self_input1"].numpy()
    cached = next(iter(pair_dataset(x, y, folder, 4, cache=build_image_cache(x, folder, LOAD),
                                    **kw)))[0]["self_input1"].numpy()
    # The cache rounds to uint8 (as the original's PIL resize did): half a grey level.
    assert np.abs(files - cached).max() <= 0.6 / 127.5


def test_resize_crop_equals_resize_then_crop():
    image = tf.random.stateless_uniform((60, 100, 3), (1, 2), 0, 255)
    seed = tf.constant([4, 5], tf.int64)
    out = preprocess_img.resize_crop(image, LOAD, INPUT, seed=seed)
    oy, ox = preprocess_img.crop_offset(LOAD, INPUT, seed).numpy()
    full = tf.image.resize(image, LOAD, method="bicubic", antialias=True)
    np.testing.assert_allclose(out.numpy(), full[oy:oy + INPUT[0], ox:ox + INPUT[1]].numpy(),
                               atol=0.05)


@pytest.mark.parametrize("subsampling", [0, 2])      # 4:4:4 (8-pixel blocks), 4:2:0 (16)
def test_jpeg_crops_decode_only_their_window_with_the_same_result(tmp_path, subsampling):
    """decode_resize_crop decodes only the window a crop reads: inside it, one block
    away from its cut edges (where chroma upsampling lacks the neighbour), the pixels
    are the whole decode's, and the crop is resize_crop's on the whole image."""
    path = tmp_path / "photo.jpg"
    image = np.random.default_rng(3).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    Image.fromarray(image).resize((576, 320), Image.BICUBIC).save(
        path, quality=90, subsampling=subsampling)
    data = tf.constant(path.read_bytes())
    whole = preprocess_img.decode_image(data).numpy()
    load, size, block = (240, 432), (64, 128), preprocess_img.JPEG_BLOCK
    starts = set()
    for i in range(8):
        seed = tf.constant([i, 1], tf.int64)
        offset = preprocess_img.crop_offset(load, size, seed)
        window, start, shape = preprocess_img.decode_window(data, load, size, offset)
        (y, x), (h, w) = start.numpy(), window.shape[:2]
        assert tuple(shape.numpy()) == (320, 576) and h * w < 320 * 576 / 2
        inner = (slice(block if y else 0, h - block if y + h < 320 else h),
                 slice(block if x else 0, w - block if x + w < 576 else w))
        np.testing.assert_array_equal(window.numpy()[inner],
                                      whole[y:y + h, x:x + w][inner])
        np.testing.assert_allclose(
            preprocess_img.decode_resize_crop(data, load, size, seed=seed).numpy(),
            preprocess_img.resize_crop(whole, load, size, seed=seed).numpy(), atol=0.05)
        starts.add((y, x))
    assert len(starts) > 2


def test_non_jpeg_images_are_decoded_whole(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (60, 100, 3), np.uint8)).save(path)
    data, seed = tf.constant(path.read_bytes()), tf.constant([2, 3], tf.int64)
    np.testing.assert_array_equal(
        preprocess_img.decode_resize_crop(data, LOAD, INPUT, seed=seed).numpy(),
        preprocess_img.resize_crop(preprocess_img.decode_image(data), LOAD, INPUT, seed=seed).numpy())


def test_grayscale_and_jitter_are_random_per_image():
    image = tf.random.stateless_uniform((48, 80, 3), (1, 2), 0, 255)
    outs = [preprocess_img.custom_augment(image, tf.constant([i, 0], tf.int64), INPUT).numpy()
            for i in range(40)]
    gray = [np.allclose(o[..., 0], o[..., 1]) and np.allclose(o[..., 1], o[..., 2]) for o in outs]
    assert 0 < sum(gray) < 40                       # p = 0.2
    assert all(0.0 <= o.min() and o.max() <= 255.0 for o in outs)


def test_crop_only_augmentation_is_a_flipped_crop_of_the_unchanged_pixels():
    # Every pixel unique: the output must be an exact window of the input, maybe flipped.
    rows, cols = np.meshgrid(np.arange(48), np.arange(80), indexing="ij")
    image = np.stack([rows * 5, cols * 3, np.full_like(rows, 7)], -1).astype(np.uint8)
    windows = set()
    for i in range(12):
        out = preprocess_img.custom_augment(tf.constant(image), tf.constant([i, 0], tf.int64),
                                            INPUT, colour=False).numpy()
        out = out[::-1] if out[0, 0, 0] > out[-1, 0, 0] else out       # undo the flips
        out = out[:, ::-1] if out[0, 0, 1] > out[0, -1, 1] else out
        oy, ox = int(out[0, 0, 0]) // 5, int(out[0, 0, 1]) // 3
        np.testing.assert_array_equal(out, image[oy:oy + INPUT[0], ox:ox + INPUT[1]])
        windows.add((oy, ox))
    assert len(windows) > 1                          # the crop is random per seed


def test_crop_only_pairs_are_never_grayscale(noise):
    folder, x, y = noise
    cache = build_image_cache(x, folder, LOAD)

    def gray_share(colour_augment):
        ds = pair_dataset(x, y, folder, 12, cache=cache, input_size=INPUT, training=False,
                          colour_augment=colour_augment)
        images = np.concatenate([b["self_input" + k].numpy()
                                 for b, _ in ds for k in "12"])
        return np.mean([np.allclose(i[..., 0], i[..., 1]) for i in images])

    assert gray_share(True) > 0          # 24 images, p = 0.2 each
    assert gray_share(False) == 0


def test_targets():
    np.testing.assert_array_equal(make_targets(np.array([2, 0]), "class"),
                                  [[0, 0, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(make_targets(np.array([0, 1, 2, 3]), "grading"),
                                  [[1], [1], [0], [0]])
    np.testing.assert_allclose(make_targets(np.array([1]), "grading", (1, .5, .25, 0)), [[.5]])


def test_split_fractions_reproduce_the_original_counts():
    x, y = np.zeros((800_000, 2), "<U2"), np.zeros(800_000, int)
    sizes = {k: len(v[0]) for k, v in split_by_fractions(x, y, 0.9, 0.05).items()}
    assert sizes == {"train": 720_000, "val": 40_000, "test": 40_000}
    sizes = {k: len(v[0]) for k, v in split_by_fractions(x, y, 0.425, 0.05).items()}
    assert sizes == {"train": 340_000, "val": 40_000, "test": 420_000}


def test_missing_files_are_listed_with_their_count(grey):
    folder, x, _ = grey
    x = np.concatenate([x, [["gone1.jpg", "id00.png"], ["gone2.jpg", "gone3.jpg"]]])
    with pytest.raises(PairDataError, match=r"3 of 15 images .* missing .*gone1\.jpg, gone2\.jpg"):
        check_all_present(x, folder)


def test_truncated_and_corrupt_images_are_named(tmp_path):
    names = noise_images(tmp_path, n=2)
    data = (tmp_path / names[0]).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    # Valid markers, garbage inside: only decoding finds it.
    (tmp_path / "inside.jpg").write_bytes(data[:600] + bytes(200) + b"\xff\xd9")
    assert check_image_file(tmp_path / names[1]) is None
    assert "truncated" in check_image_file(tmp_path / "cut.jpg")
    assert "not a JPEG" in check_image_file(tmp_path / "text.jpg")
    assert list(find_undecodable([names[1], "inside.jpg"], tmp_path)) == ["inside.jpg"]
    x = np.array([[names[1], "inside.jpg"]])
    with pytest.raises(PairDataError, match="inside.jpg"):
        build_image_cache(x, tmp_path, LOAD)
    cache = build_image_cache(x, tmp_path, LOAD, skip_bad=True)
    assert list(cache.bad) == ["inside.jpg"]


def test_bad_pair_index_and_empty_split(tmp_path):
    np.save(tmp_path / "x.npy", np.array(["a.jpg", "b.jpg"]))
    np.save(tmp_path / "y.npy", np.array([0]))
    with pytest.raises(PairDataError, match=r"shape \(n, 2\)"):
        load_pair_index(tmp_path / "x.npy", tmp_path / "y.npy")
    with pytest.raises(PairDataError, match="not found"):
        load_pair_index(tmp_path / "nope.npy", tmp_path / "y.npy")
    with pytest.raises(PairDataError, match="empty split"):
        pair_dataset(np.zeros((0, 2), str), np.zeros(0, int), tmp_path, 2)
    with pytest.raises(PairDataError, match="fewer than one batch"):
        pair_dataset(np.array([["a", "b"]]), np.zeros(1, int), tmp_path, 2)


def test_pipeline_benchmark_times_the_loaders_in_turns():
    """Each round times every loader once, so a ratio compares runs of one stretch."""
    from benchmarks.bench_pair_pipeline import time_rounds

    order = []

    def loader(name):
        def make():
            order.append(name)
            return iter(range(100))
        return make

    runs = time_rounds({"a": loader("a"), "b": loader("b")}, batches=3, batch_size=2, repeats=2)
    assert order == ["a", "b", "a", "b"]
    assert [len(v) for v in runs.values()] == [2, 2]
    assert all(rate > 0 and cpu >= 0 for timed in runs.values() for rate, cpu in timed)
