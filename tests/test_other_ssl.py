"""other_ssl: every method trains on a tiny encoder, three of them learn, every one
saves a ResNet50 encoder that the U-Net loads whole, and the two training scripts run
end to end on a folder of stage-named JPEGs.

ResNet50 is never trained per method (its first graph step costs 20-40 s here): the
method tests use a two-layer conv encoder, the end-to-end runs use --run-eagerly.
"""
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from nets.unet import build_unet, get_encoder
from other_ssl import augment
from other_ssl.base import CollapseMonitor, MomentumSSLMethod, check_embedding
from other_ssl.dataset import list_images, make_image_dataset, stage_labels
from other_ssl.methods import METHODS, get_method
from utils.weights import load_weights_by_name

LEARNING = ("simsiam", "simclr", "barlow_twins")
# Methods with views and heads of their own, tested in test_new_methods.py.
OWN_VIEWS = ("multitask", "cmid")
RESNET50_LAYERS = 106


def tiny_backbone(shape=(32, 32, 3)):
    image = keras.Input(shape)
    a = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(image)
    b = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(a)
    return keras.Model(image, [a, b], name="tiny")


class FlipOnly(keras.layers.Layer):
    """Rescale + random flip: views that differ, with little enough noise that 20 steps
    on 8 images show the loss going down."""

    def call(self, images, training=True):
        images = tf.cast(images, tf.float32) / 255.0
        return augment.random_flip(images) if training else images


def tiny_method(name, augmenter=None, **kwargs):
    cls = METHODS[name]
    if "queue_size" in cls.defaults:
        kwargs.setdefault("queue_size", 16)
    if "predictor_hidden" in cls.defaults and name == "byol":
        kwargs.setdefault("predictor_hidden", 32)
    return cls(backbone=tiny_backbone(), width=16, augmenter=augmenter, **kwargs)


def random_images(n, seed=0, size=32):
    return tf.constant((np.random.RandomState(seed).rand(n, size, size, 3) * 255).astype("float32"))


def write_stage_images(folder, n=6, size=(40, 60)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(1)
    for i in range(n):
        stage = i % 3
        pixels = (rng.rand(size[0], size[1], 3) * 80 + 60 * stage).astype("uint8")
        Image.fromarray(pixels).save(folder / f"E88570046p1t09i{stage}d2021-01-{10 + i:02d}_09.jpg")
    return folder


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory):
    return write_stage_images(tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def unet_encoder():
    return get_encoder(build_unet((32, 32, 3), 5))


def assert_loads_whole(encoder, path):
    report = load_weights_by_name(encoder, path, verbose=False)
    assert len(report.loaded) == RESNET50_LAYERS, report.summary()
    assert not report.missing and not report.mismatched


# Registry and bad input.

def test_registry_and_unknown_method():
    assert set(METHODS) == {"simclr", "moco", "simsiam", "byol", "barlow_twins", "nnclr",
                            "dcclr", "hsictwins", "twist", "dino", "multitask", "cmid"}
    with pytest.raises(ValueError, match="known methods: simclr, moco, simsiam"):
        get_method("swav")


def test_unknown_hyperparameter_is_refused():
    with pytest.raises(TypeError, match="queue_size"):
        METHODS["simsiam"](backbone=tiny_backbone(), width=8, queue_size=5)


def test_train_ssl_bad_input(tmp_path, stage_dir):
    from other_ssl import train_ssl

    with pytest.raises(ValueError, match="known methods"):
        train_ssl.main(["--method", "nope", "--image-dir", str(stage_dir)])
    with pytest.raises(ValueError, match="--queue-size: does not apply to simsiam"):
        train_ssl.main(["--method", "simsiam", "--queue-size", "8", "--image-dir", str(stage_dir)])
    with pytest.raises(ValueError, match=r"6 images, fewer than the batch size 48"):
        train_ssl.main(["--method", "simsiam", "--image-dir", str(stage_dir),
                        "--logs-dir", str(tmp_path / "logs")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}: no images"):
        train_ssl.main(["--method", "simclr", "--image-dir", str(empty)])
    with pytest.raises(FileNotFoundError, match="missing"):
        train_ssl.main(["--method", "simclr", "--image-dir", str(tmp_path / "missing")])
    # Nothing was half-created for the refused runs.
    assert not (tmp_path / "logs").exists()


# Augmentation and data.

def test_crop_and_resize_matches_tensorflow():
    rng = np.random.RandomState(0)
    images = rng.rand(3, 7, 11, 3).astype("float32")
    boxes = np.array([[0.1, 0.2, 0.7, 0.9], [0, 0, 1, 1], [0.33, 0.05, 0.5, 0.4]], "float32")
    want = tf.image.crop_and_resize(images, boxes, tf.range(3), (7, 11))
    np.testing.assert_allclose(augment.crop_and_resize(images, boxes), want, atol=1e-5)


def test_augment_views_differ_per_sample():
    layer = augment.SSLAugment()
    same = tf.repeat(random_images(1), 4, axis=0)
    view = layer(same, training=True).numpy()
    assert view.shape == (4, 32, 32, 3) and view.min() >= 0 and view.max() <= 1
    # Four copies of one image come out as four different views.
    assert min(np.abs(view[i] - view[j]).mean() for i in range(4) for j in range(i)) > 1e-3
    np.testing.assert_allclose(layer(same, training=False), same / 255.0, rtol=1e-6)
    # In a graph the jitter order is drawn per call, not frozen at tracing.
    graph_view = tf.function(lambda x: layer(x, training=True))(same).numpy()
    assert graph_view.shape == view.shape and np.abs(graph_view - view).mean() > 1e-3


def test_dataset_reads_folder_and_stages(stage_dir):
    paths = list_images(stage_dir)
    assert len(paths) == 6 and paths == sorted(paths)
    assert stage_labels(paths) == [0, 0, 1, 1, 2, 2]  # names sort by stage before date
    images, labels = next(iter(make_image_dataset(paths, (32, 48), 4, labels=stage_labels(paths),
                                                  seed=0)))
    assert images.shape == (4, 32, 48, 3) and labels.shape == (4,)
    assert float(tf.reduce_max(images)) > 1.0  # 0..255: the method rescales


# Methods on a tiny encoder.

def run_steps(model, images, n, graph):
    """``n`` optimiser steps on one batch; losses as floats."""
    step = tf.function(model.train_step) if graph else model.train_step
    losses = []
    for _ in range(n):
        for metric in model.metrics:
            metric.reset_state()
        logs = step(images)
        losses.append(float(logs["loss"]))
    return losses, {k: float(v) for k, v in logs.items()}


@pytest.mark.parametrize("name", [n for n in METHODS if n not in LEARNING + OWN_VIEWS])
def test_method_steps_give_finite_loss(name):
    keras.utils.set_random_seed(0)
    # MoCo runs as a graph (queue and momentum updates inside tf.function), with the
    # cheap augmenter to keep tracing short; the others eagerly with the real one.
    graph = name == "moco"
    model = tiny_method(name, augmenter=FlipOnly() if graph else None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    before = {"queue": np.array(model.queue)} if hasattr(model, "queue") else {}
    if isinstance(model, MomentumSSLMethod):
        before["m_kernel"] = np.array(model.m_encoder.weights[0])
    losses, logs = run_steps(model, random_images(4), 2, graph=graph)
    assert np.isfinite(losses).all() and 0 < logs["emb_std"] <= 1
    if "queue" in before:
        assert not np.allclose(before["queue"], model.queue)
    if isinstance(model, MomentumSSLMethod):
        online, momentum = model.encoder.weights[0], model.m_encoder.weights[0]
        # The momentum copy moved towards the online network but is its own variable.
        assert not np.allclose(before["m_kernel"], momentum)
        assert not np.allclose(online, momentum)
        # What gets saved is the online backbone, not the momentum copy.
        assert model.backbone in model.encoder.layers
        assert model.backbone not in model.m_encoder.layers


@pytest.mark.parametrize("name", LEARNING)
def test_loss_drops_over_20_steps(name):
    keras.utils.set_random_seed(1)
    model = tiny_method(name, augmenter=FlipOnly())
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    images = random_images(8, seed=2)
    if name == "simclr":
        # Through Keras' fit as a graph, as train_ssl runs: 20 epochs of one step.
        history = model.fit(images, batch_size=8, epochs=20, shuffle=False, verbose=0).history
        losses = history["loss"]
    else:
        losses, _ = run_steps(model, images, 20, graph=True)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses


def test_probe_sees_labels_but_not_the_encoder():
    keras.utils.set_random_seed(0)
    model = tiny_method("simclr", probe_classes=3)
    model.compile(optimizer="adam", jit_compile=False)
    images, labels = random_images(4), tf.constant([0, 1, 2, 0])
    with pytest.raises(ValueError, match="labels"):
        model.train_step(images)
    logs = model.train_step((images, labels))
    assert {"probe_loss", "probe_acc"} <= set(logs)
    # The probe loss alone gives the encoder no gradient (stop-gradient features).
    view = model.augmenter(images)
    with tf.GradientTape() as tape:
        out = model.ssl_forward(view, view, training=True)
        _, probe_loss = model._probe(out, labels, training=True)
    grads = tape.gradient(probe_loss, model.encoder.trainable_variables)
    assert all(g is None for g in grads)


def test_collapse_is_flagged(caplog):
    std, collapsed = check_embedding(tf.ones((8, 16)))
    assert std == pytest.approx(0.0, abs=1e-7) and collapsed
    assert not check_embedding(tf.random.normal((64, 16), seed=1))[1]
    monitor = CollapseMonitor(dim=256)
    with caplog.at_level(logging.WARNING, logger="other_ssl"):
        monitor.on_epoch_end(0, {"loss": -1.0, "emb_std": 0.06})
        assert not caplog.records
        monitor.on_epoch_end(1, {"loss": -1.0, "emb_std": 0.0004})
    assert monitor.collapsed_epochs == [2]
    assert "COLLAPSE WARNING" in caplog.text and "0.00040" in caplog.text


# The real encoder: saved per method, loaded whole by the U-Net. Building ten
# ResNet50s costs minutes here, so the full sweep is a slow test; the end-to-end MoCo
# run below covers the momentum path with the real encoder in every run.

@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_saves_a_resnet50_encoder_train_py_loads(name, tmp_path, unet_encoder):
    from utils.weights import save_encoder

    model = METHODS[name](input_shape=(32, 32, 3), pool="gap")
    assert tuple(model.backbone.outputs[-1].shape[1:]) == (1, 1, 2048)
    path = save_encoder(model.backbone, tmp_path / "encoder.weights.h5")
    assert_loads_whole(unet_encoder, path)
    np.testing.assert_array_equal(unet_encoder.get_layer("conv1").get_weights()[0],
                                  model.backbone.get_layer("conv1").get_weights()[0])


# End to end.

def test_train_ssl_main_end_to_end(tmp_path, stage_dir, unet_encoder, capsys):
    from other_ssl import train_ssl

    # MoCo: the real ResNet50 with its momentum copy and queue. One eager SGD step
    # keeps the run short; graph mode is covered by the tiny-encoder tests.
    result = train_ssl.main(["--method", "moco", "--image-dir", str(stage_dir),
                             "--input-shape", "32", "32", "--pool", "gap", "--epochs", "1",
                             "--steps-per-epoch", "1", "--batch-size", "2", "--queue-size", "8",
                             "--optimizer", "sgd", "--run-eagerly", "--precise-bn", "1",
                             "--logs-dir", str(tmp_path), "--seed", "3"])
    assert "Precise BN: encoder statistics re-estimated from 1 training batches" in \
        capsys.readouterr().out
    run_dir = result["run_dir"]
    assert run_dir.parent == tmp_path and run_dir.name.startswith("ssl_moco_")
    for name in ("args.json", "training_log.csv", "epoch_loss.png", "results.json",
                 "encoder.weights.h5"):
        assert (run_dir / name).is_file(), name
    assert len(list((run_dir / "checkpoints").glob("ep001-*.weights.h5"))) == 1
    assert result["encoder_path"] == run_dir / "encoder.weights.h5"
    assert len(result["history"]["loss"]) == 1 and np.isfinite(result["history"]["emb_std"][0])
    header = (run_dir / "training_log.csv").read_text().splitlines()[0]
    assert "emb_std" in header and "loss" in header
    assert_loads_whole(unet_encoder, result["encoder_path"])


def test_train_supervised_main_end_to_end(tmp_path, stage_dir, unet_encoder, capsys):
    from other_ssl import train_supervised

    result = train_supervised.main(["--image-dir", str(stage_dir), "--input-shape", "32", "32",
                                    "--epochs", "1", "--batch-size", "2", "--val-split", "0.34",
                                    "--steps-per-epoch", "1", "--optimizer", "sgd",
                                    # 1e-3 made the inference-mode output (moving BN
                                    # statistics of one step) NaN: a non-finite val_loss.
                                    "--learning-rate", "1e-5",
                                    "--run-eagerly", "--precise-bn", "1",
                                    "--logs-dir", str(tmp_path)])
    assert "Precise BN: statistics re-estimated from 1 training batches" in \
        capsys.readouterr().out
    run_dir = result["run_dir"]
    assert run_dir.name.startswith("supervised_stage_") and result["num_stages"] == 3
    for name in ("args.json", "training_log.csv", "epoch_loss.png", "results.json"):
        assert (run_dir / name).is_file(), name
    assert 0.0 <= result["val_accuracy"] <= 1.0
    assert "val_accuracy" in result["history"]
    assert_loads_whole(unet_encoder, result["encoder_path"])

    # --resume RUN_DIR alone continues from the run's args.json and its checkpoint.
    again = train_supervised.main(["--resume", str(run_dir), "--epochs", "2"])
    assert again["run_dir"] == run_dir and len(again["history"]["loss"]) == 2
    assert (run_dir / "args_resume.json").is_file()
    assert again["encoder_path"] == run_dir / "encoder_2.weights.h5"   # the first one kept
