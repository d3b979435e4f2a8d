"""The Unet predictor (loading, class maps, overlays) and predict.py's modes."""
import numpy as np
import pytest
from PIL import Image

import predict
from unet import VOC_PALETTE, Unet


@pytest.fixture(scope="module")
def unet_files(tmp_path_factory):
    """An untrained VGG U-Net at 64x64, saved whole and as an encoder file."""
    import keras

    from nets.unet import build_unet, get_encoder
    from utils.weights import save_encoder

    keras.utils.set_random_seed(3)
    model = build_unet((64, 64, 3), 5, "vgg")
    folder = tmp_path_factory.mktemp("unet")
    model.save(folder / "best_epoch.keras")
    save_encoder(get_encoder(model), folder / "encoder.weights.h5", backbone="vgg")
    return model, folder


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    """A two-layer stand-in with the U-Net's contract, for the script-level tests."""
    import keras

    keras.utils.set_random_seed(4)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(5, 1, activation="softmax")(x))
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    model.save(path)
    return path


def _photos():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)) for h, w in
            [(64, 64), (48, 80), (70, 50)]]


def test_predict_masks_batched_equals_single(unet_files):
    unet = Unet(model=unet_files[0])
    photos = _photos()
    masks = unet.predict_masks(photos, batch_size=2)
    assert [m.shape for m in masks] == [(64, 64), (48, 80), (70, 50)]
    assert all(m.dtype == np.uint8 and m.max() < 5 for m in masks)
    png = unet.get_miou_png(photos[1])
    assert png.mode == "L" and png.size == (80, 48)
    np.testing.assert_array_equal(np.asarray(png), masks[1])


def test_detect_image_blend_count_and_odd_modes(unet_files, capsys):
    unet = Unet(model=unet_files[0])
    photo = _photos()[1]
    gray = photo.convert("L")                      # converted to RGB, as the original
    out, shares = unet.detect_image(gray, count=True)
    assert out.mode == "RGB" and out.size == gray.size
    assert sum(shares.values()) == pytest.approx(1.0) and list(shares)[0] == "_background_"
    assert "_background_" in capsys.readouterr().out
    mask = unet.predict_masks([gray.convert("RGB")])[0]
    expected = (0.3 * np.asarray(gray.convert("RGB"), np.float32)
                + 0.7 * np.asarray(VOC_PALETTE, np.float32)[mask])
    assert np.abs(np.asarray(out, np.float32) - expected).max() <= 1.0
    plain = Unet(model=unet_files[0], blend=False).detect_image(photo.convert("RGBA"))
    colours = {tuple(c) for c in np.asarray(plain).reshape(-1, 3)}
    assert colours <= set(VOC_PALETTE[:5])
    assert unet.get_FPS(photo, 2) > 0


def test_loads_keras_file_and_encoder_file(unet_files):
    from nets.unet import get_encoder

    model, folder = unet_files
    photos = _photos()[:2]
    want = Unet(model=model).predict_masks(photos)
    from_file = Unet(model_path=folder / "best_epoch.keras", input_shape=(128, 128))
    assert from_file.input_shape == (64, 64) and from_file.num_classes == 5
    for a, b in zip(want, from_file.predict_masks(photos)):
        np.testing.assert_array_equal(a, b)
    # Only an encoder: its weights arrive, the decoder stays random, with a warning.
    with pytest.warns(UserWarning, match="random"):
        enc = Unet(model_path=folder / "encoder.weights.h5", backbone="vgg", input_shape=(64, 64))
    for a, b in zip(get_encoder(model).get_weights(), get_encoder(enc.model).get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        Unet(model_path=folder / "nothing.keras")


@pytest.mark.slow
def test_loads_legacy_h5_and_whole_weights_file(unet_files):
    from utils.weights import save_weights_by_name

    model, folder = unet_files
    photos = _photos()[:2]
    want = Unet(model=model).predict_masks(photos)
    save_weights_by_name(model, folder / "legacy_unet.h5")
    model.save_weights(folder / "unet.weights.h5")
    # A legacy Keras 2 checkpoint (the encoder by name, the decoder by order) and a
    # Keras 3 save_weights file of the whole U-Net.
    for name in ("legacy_unet.h5", "unet.weights.h5"):
        other = Unet(model_path=folder / name, backbone="vgg", input_shape=(64, 64))
        for a, b in zip(want, other.predict_masks(photos)):
            np.testing.assert_array_equal(a, b)


def _write_images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(_photos()[:n]):
        im.save(folder / f"p{k}.jpg")
    return sorted(folder.glob("*.jpg"))


def test_predict_mode_never_overwrites(tiny_keras, tmp_path, capsys):
    paths = _write_images(tmp_path / "img")
    args = ["--model-path", str(tiny_keras), "--dir-save-path", str(tmp_path / "out"), "--count"]
    r1 = predict.main([*map(str, paths), *args])
    r2 = predict.main([str(paths[0]), *args])
    assert [p.rsplit("/", 1)[-1] for p in r1["saved"]] == ["p0.jpg", "p1.jpg"]
    assert r2["saved"][0].endswith("p0_2.jpg")
    assert Image.open(r2["saved"][0]).size == Image.open(paths[0]).size
    assert sum(r1["shares"][str(paths[0])].values()) == pytest.approx(1.0)
    assert "fruit" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predict.main([str(tmp_path / "missing.jpg"), *args])


def test_dir_predict_and_fps(tiny_keras, tmp_path):
    _write_images(tmp_path / "img", 3)
    (tmp_path / "img/notes.txt").write_text("not an image")
    r = predict.main(["--mode", "dir_predict", "--model-path", str(tiny_keras),
                      "--dir-origin-path", str(tmp_path / "img"),
                      "--dir-save-path", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert len(r["saved"]) == 3
    r = predict.main(["--mode", "fps", "--model-path", str(tiny_keras), "--test-interval", "3",
                      "--fps-image-path", str(tmp_path / "img/p0.jpg")])
    assert r["fps"] > 0 and r["seconds_per_image"] > 0


def test_video_mode(tiny_keras, tmp_path):
    import cv2

    src = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (48, 32))
    for k in range(4):
        writer.write(np.full((32, 48, 3), 40 * k, np.uint8))
    writer.release()
    out = tmp_path / "seg.avi"
    r = predict.main(["--mode", "video", "--model-path", str(tiny_keras), "--video-path", str(src),
                      "--video-save-path", str(out), "--video-fps", "5"])
    assert r["frames"] == 4 and r["video_save_path"] == str(out)
    cap = cv2.VideoCapture(str(out))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (32, 48, 3)
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        predict.main(["--mode", "video", "--model-path", str(tiny_keras),
                      "--video-path", str(bad), "--video-save-path", ""])
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        predict.main(["--mode", "video", "--model-path", str(tiny_keras),
                      "--video-path", str(tmp_path / "nowhere.mp4")])
