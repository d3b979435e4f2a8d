"""utils/weights.py: encoder weights survive every save/load route, by layer name."""
import keras
import numpy as np
import pytest

from nets.encoders import build_encoder, weighted_layers
from nets.unet import build_unet, get_encoder
from utils.weights import load_weights_by_name, save_encoder, save_weights_by_name

SHAPE = (32, 32, 3)
# First conv, a shortcut, the last BN: scrambling them changes every feature map.
SOME = ("conv1", "res3a_branch1", "bn4c_branch2b", "bn5c_branch2c")


def scramble(model, seed, names=None):
    """Random values in every weight (positive where BatchNorm needs a variance), so two
    encoders never agree by accident, moving statistics included. ``names`` limits it to
    a few layers (cheaper, and enough to make the outputs differ)."""
    rng = np.random.default_rng(seed)
    for layer in weighted_layers(model):
        if names is not None and layer.name not in names:
            continue
        layer.set_weights([np.abs(rng.normal(0.5, 0.1, w.shape)).astype("float32") + 0.1
                           if "variance" in w.name else
                           rng.normal(0, 0.05, w.shape).astype("float32")
                           for w in layer.weights])


def features(model, x):
    return [np.asarray(f) for f in model(x, training=False)]


def assert_same(a, b):
    for fa, fb in zip(a, b):
        np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def source():
    encoder = build_encoder(SHAPE)
    scramble(encoder, 0)
    x = np.random.default_rng(1).normal(size=(2,) + SHAPE).astype("float32")
    return encoder, x, features(encoder, x)


@pytest.fixture(scope="module")
def target():
    return build_encoder(SHAPE)


@pytest.fixture(scope="module")
def encoder_file(source, tmp_path_factory):
    return save_encoder(source[0], tmp_path_factory.mktemp("w") / "encoder.weights.h5")


def test_save_encoder_round_trip(source, target, encoder_file):
    encoder, x, want = source
    scramble(target, 2)
    report = load_weights_by_name(target, encoder_file, verbose=False)
    assert len(report.loaded) == 106 and report.total == 106
    assert not report.missing and not report.mismatched
    assert_same(features(target, x), want)


def test_save_encoder_into_unet(source, encoder_file):
    encoder, x, want = source
    unet = build_unet(SHAPE, 5, "resnet50")
    report = load_weights_by_name(unet, encoder_file, verbose=False)
    assert len(report.loaded) == 106
    # The decoder's layers are reported as not in the file, never silently.
    assert len(report.missing) == report.total - 106 > 0
    assert_same(features(get_encoder(unet), x), want)


def test_save_encoder_refuses_overwrite(source, encoder_file):
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_encoder(source[0], encoder_file)


def test_legacy_by_name_h5(source, target, tmp_path):
    encoder, x, want = source
    path = save_weights_by_name(encoder, tmp_path / "notop.h5")
    scramble(target, 4, SOME)
    assert not np.allclose(features(target, x)[-1], want[-1])
    report = load_weights_by_name(target, path, verbose=False)
    assert len(report.loaded) == 106
    assert_same(features(target, x), want)
    with pytest.raises(FileExistsError):
        save_weights_by_name(encoder, path)


def test_whole_model_keras_file(source, target, tmp_path):
    encoder, x, want = source
    # A checkpoint of a bigger model holding the encoder's layers, like a Siamese one.
    pooled = keras.layers.GlobalAveragePooling2D()(encoder.outputs[-1])
    head = keras.layers.Dense(4, name="self_output")(pooled)
    path = tmp_path / "siamese.keras"
    keras.Model(encoder.inputs, head).save(path)
    scramble(target, 5, SOME)
    report = load_weights_by_name(target, path, verbose=False)
    assert len(report.loaded) == 106 and report.unused == 1
    assert_same(features(target, x), want)


def test_no_matching_layer_names_the_file(target, tmp_path):
    inp = keras.Input((4,))
    other = keras.Model(inp, keras.layers.Dense(2, name="unrelated_dense")(inp))
    path = save_weights_by_name(other, tmp_path / "other.h5")
    with pytest.raises(ValueError, match="other.h5.*no layer"):
        load_weights_by_name(target, path, verbose=False)
