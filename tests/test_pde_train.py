"""PDE training scripts end to end on a tiny learnable pair set.

One real training run (module fixture) serves the run-folder, loss, encoder-reload
and resume tests: the first traced step of a ResNet50 Siamese model costs about half
a minute of CPU, so the file trains once. The resumed epoch runs eagerly (no trace).
"""
import io
import shutil
import zipfile

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from pde_self_supervised import con_train_resnet, con_train_resnet_class, train_common
from pde_self_supervised.dataloader_2img import PairDataError
from utils.errors import UserError
from utils.run import Run, checkpoint_epoch, read_log


# Shared towers, global pooling and 32x32 keep the one training run cheap. The
# training split is exactly one batch, so every step sees the same batch statistics
# and the loss falls steadily (with batches that vary, batch norm at batch 8 makes a
# fresh ResNet50's loss jump around for far more than a few dozen steps).
QUICK = ["--input-shape", "32", "32", "--load-size", "32", "32", "--batch-size", "8",
         "--test-batch-size", "8", "--pool", "gap", "--shared-towers", "--no-augment"]


def make_pair_set(folder):
    """Four images (view = red or green, stage = low or high blue) and four pair types,
    one per prior class, twice: a pair set a network can learn in a few steps."""
    rng = np.random.default_rng(0)
    names = {}
    for view in range(2):
        for stage in range(2):
            a = np.zeros((32, 32, 3), np.uint8)
            a[..., view] = 200
            a[..., 2] = 40 if stage == 0 else 220
            a = np.clip(a.astype(int) + rng.integers(-10, 10, a.shape), 0, 255).astype(np.uint8)
            names[view, stage] = f"v{view}s{stage}.png"
            Image.fromarray(a).save(folder / names[view, stage])
    base = np.array([[names[0, 0], names[0, 0]], [names[0, 0], names[0, 1]],
                     [names[0, 0], names[1, 0]], [names[0, 0], names[1, 1]]])
    # Each pair in both orders: both towers see the same images in every batch.
    files = {}
    for split in ("train", "val", "test"):
        files[split] = (folder / f"x_{split}.npy", folder / f"y_{split}.npy")
        np.save(files[split][0], np.concatenate([base, base[:, ::-1]]))
        np.save(files[split][1], np.tile(np.arange(4), 2))
    return files


def data_args(folder, files, logs):
    return ["--image-dir", str(folder), "--pairs-x", str(files["train"][0]),
            "--pairs-y", str(files["train"][1]),
            "--val-pairs-x", str(files["val"][0]), "--val-pairs-y", str(files["val"][1]),
            "--test-pairs-x", str(files["test"][0]), "--test-pairs-y", str(files["test"][1]),
            "--logs-dir", str(logs)]


@pytest.fixture(scope="module")
def pair_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    return folder, make_pair_set(folder)


@pytest.fixture(scope="module")
def trained(pair_set, tmp_path_factory):
    import tensorflow as tf

    folder, files = pair_set
    logs = tmp_path_factory.mktemp("logs")
    # TensorFlow's graph optimizer takes a third of the first step's ~30 s on a CPU and
    # gains nothing in 20 small steps; switched off for this run only.
    saved = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        result = con_train_resnet_class.main(
            data_args(folder, files, logs) + QUICK + ["--epochs", "2", "--steps-per-epoch", "8",
                                                      "--precise-bn", "2"])
    finally:
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": saved.get("disable_meta_optimizer", False)})
    return result, folder, files


def test_run_folder_holds_the_record(trained):
    result, _, _ = trained
    run = result["run_dir"]
    assert run.name.startswith("pde_class_")
    for name in ("args.json", "training_log.csv", "epoch_loss.png", "epoch_loss.txt",
                 "epoch_val_loss.txt", "test_metrics.json",
                 "encoder.weights.h5"):
        assert (run / name).is_file(), name
    assert sorted(p.name[:5] for p in run.glob("ep*.keras")) == ["ep001", "ep002"]
    assert list((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    log = read_log(run)
    assert log["epoch"] == [0, 1] and len(log["val_loss"]) == 2 and log["pairs_per_s"][0] > 0
    assert set(result["test_metrics"]) >= {"loss", "acc", "mse", "view_acc", "stage_acc"}
    assert {"val_view_acc", "val_stage_acc"} <= set(log)
    assert result["encoder_path"] == run / "encoder.weights.h5"


def test_view_and_stage_halves_of_a_pair_prediction():
    """Classes: 0 same view same stage, 1 same view, 2 same stage, 3 neither."""
    from pde_self_supervised.metrics import stage_acc, view_acc

    true = np.eye(4, dtype="float32")[[0, 0, 1, 2, 3, 3]]
    pred = np.eye(4, dtype="float32")[[0, 1, 0, 0, 2, 3]] * 0.7 + 0.075
    # right / view only / view only / stage only / view only / right
    assert np.asarray(view_acc(true, pred)).tolist() == [1, 1, 1, 0, 1, 1]
    assert np.asarray(stage_acc(true, pred)).tolist() == [1, 0, 0, 1, 0, 1]


def test_shuffle_labels_permutes_the_training_classes_only(tmp_path):
    files = make_pair_set(tmp_path)
    base = data_args(tmp_path, files, tmp_path / "logs") + QUICK + ["--cache-images", "off"]
    kept, _ = train_common.prepare_data(con_train_resnet_class.parse_args(base))
    control, _ = train_common.prepare_data(
        con_train_resnet_class.parse_args(base + ["--shuffle-labels"]))
    np.testing.assert_array_equal(control["train"][0], kept["train"][0])
    assert sorted(control["train"][1]) == sorted(kept["train"][1])
    assert not np.array_equal(control["train"][1], kept["train"][1])
    for split in ("val", "test"):
        np.testing.assert_array_equal(control[split][1], kept[split][1])


def test_sixteen_steps_bring_the_loss_down(trained):
    loss = trained[0]["history"]["loss"]
    assert len(loss) == 2 and loss[1] < 0.7 * loss[0]


def test_precise_bn_makes_inference_match_training(trained):
    """The test pairs are the training pairs, unaugmented: with batch-norm statistics
    re-estimated from them, inference mode must score about as well as training did,
    where 16 steps of running averages at momentum 0.99 would still be mostly the
    initial mean 0 / variance 1."""
    result = trained[0]
    assert result["test_metrics"]["loss"] < result["history"]["loss"][0]
    assert result["test_metrics"]["acc"] >= 0.5


def test_saved_encoder_reloads_with_identical_outputs_and_into_a_unet(trained):
    from nets.encoders import build_encoder, weighted_layers
    from nets.unet import build_unet, get_encoder
    from utils.weights import load_weights_by_name

    result, _, _ = trained
    tower = result["model"].get_layer("resnet50")
    encoder = build_encoder((32, 32, 3), "resnet50")
    encoder.load_weights(result["encoder_path"])
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    for a, b in zip(encoder(x, training=False), tower(x, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    unet = build_unet((32, 32, 3), 5, "resnet50")
    report = load_weights_by_name(unet, result["encoder_path"])
    encoder_layers = [layer.name for layer in weighted_layers(get_encoder(unet))]
    assert len(encoder_layers) == 106 and report.loaded == encoder_layers
    assert not report.mismatched and not set(report.missing) & set(encoder_layers)
    # Step 6 may also be given a whole Siamese checkpoint: tower 1 matches by name.
    checkpoint = sorted(result["run_dir"].glob("ep002-*.keras"))[0]
    assert load_weights_by_name(unet, checkpoint).loaded == encoder_layers


def _optimizer_iterations(checkpoint):
    with zipfile.ZipFile(checkpoint) as z, z.open("model.weights.h5") as f:
        with h5py.File(io.BytesIO(f.read()), "r") as h:
            return int(h["optimizer/vars/0"][()])


def test_resume_continues_at_the_next_epoch(trained, tmp_path):
    result, folder, files = trained
    run = tmp_path / "run"
    run.mkdir()
    # A run stopped after epoch 1: its first checkpoint and the first row of its log.
    first = sorted(result["run_dir"].glob("ep001-*.keras"))[0]
    (run / first.name).hardlink_to(first)
    shutil.copy(result["run_dir"] / "args.json", run / "args.json")
    lines = (result["run_dir"] / "training_log.csv").read_text().splitlines()
    (run / "training_log.csv").write_text("\n".join(lines[:2]) + "\n")

    # A row of epoch 2 logged before a kill cut its checkpoint off: dropped, not doubled.
    (run / "training_log.csv").write_text("\n".join(lines[:3]) + "\n")
    (run / "ep002-loss1.000-val_loss1.000.keras").write_bytes(first.read_bytes()[:1000])
    # --resume RUN_DIR alone holds every data and model option (args.json).
    again = con_train_resnet_class.main(
        ["--epochs", "2", "--steps-per-epoch", "1", "--validation-steps", "1",
         "--resume", str(run), "--run-eagerly", "--logs-dir", str(tmp_path / "unused")])
    assert again["run_dir"] == run
    assert len(again["history"]["loss"]) == 1
    assert read_log(run)["epoch"] == [0, 1]
    resumed = [p for p in run.glob("ep002-*.keras") if checkpoint_epoch(p) == 2]
    assert len(resumed) == 1 and (run / first.name).exists() and (run / "args_resume.json").exists()
    # Optimizer state carried over: 8 steps of epoch 1, then 1 more.
    assert _optimizer_iterations(first) == 8
    assert _optimizer_iterations(resumed[0]) == 9
    assert not (tmp_path / "unused").exists()


def test_bad_inputs_fail_before_training(pair_set, tmp_path):
    folder, files = pair_set
    base = data_args(folder, files, tmp_path / "logs") + QUICK
    with pytest.raises(ValueError, match="not divisible by 32"):
        con_train_resnet_class.main(base + ["--input-shape", "48", "64"])

    x_missing = tmp_path / "x_missing.npy"
    np.save(x_missing, np.array([["v0s0.png", "gone_a.jpg"], ["gone_b.jpg", "v0s1.png"]] * 4))
    with pytest.raises(PairDataError, match=r"x_missing.npy: 2 of 4 images .* missing .*gone_a\.jpg, gone_b\.jpg"):
        con_train_resnet_class.main(base + ["--pairs-x", str(x_missing)])

    with pytest.raises(PairDataError, match="the val split is empty"):
        con_train_resnet.main(["--image-dir", str(folder), "--pairs-x", str(files["train"][0]),
                               "--pairs-y", str(files["train"][1]), "--split", "1.0", "0.0",
                               "--logs-dir", str(tmp_path / "logs")] + QUICK)

    with pytest.raises(SystemExit):
        con_train_resnet_class.main(base + ["--resume", str(tmp_path)])
    (tmp_path / "args.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        con_train_resnet_class.main(base + ["--resume", str(tmp_path)])
    assert not (tmp_path / "logs").exists()


def test_corrupt_image_is_named_or_skipped(pair_set, tmp_path):
    folder, files = pair_set
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(jpeg, format="JPEG")
    (images / "cut.jpg").write_bytes(jpeg.getvalue()[:300])
    x = np.load(files["train"][0])
    x[:2, 1] = "cut.jpg"
    np.save(tmp_path / "x.npy", x)
    args = (data_args(images, files, tmp_path / "logs") + QUICK
            + ["--pairs-x", str(tmp_path / "x.npy")])
    with pytest.raises(PairDataError, match=r"cut\.jpg: truncated JPEG"):
        con_train_resnet_class.main(args)
    splits, cache = train_common.prepare_data(
        con_train_resnet_class.parse_args(args + ["--skip-bad-images"]))
    assert len(splits["train"][0]) == 6 and "cut.jpg" not in splits["train"][0]
    assert cache is not None and "cut.jpg" not in cache.index


def test_grading_options_are_checked():
    args = con_train_resnet.parse_args([])
    assert (args.temperature, args.grades, args.distance, args.epochs, args.batch_size) == \
        (0.5, [1.0, 1.0, 0.0, 0.0], "cosine", 10, 72)
    assert args.split == [0.425, 0.05]
    assert con_train_resnet_class.parse_args([]).split == [0.9, 0.05]
    with pytest.raises(SystemExit):
        con_train_resnet.parse_args(["--grades", "1", "2", "0", "0"])


def test_prune_keeps_only_the_newest_checkpoints_this_run_wrote(tmp_path):
    import keras  # noqa: F401

    (tmp_path / "ep001-loss1.000-val_loss1.000.keras").write_text("earlier run")
    args = con_train_resnet_class.parse_args(["--keep-checkpoints", "1"])
    before, after = train_common._callbacks(args, Run(tmp_path))
    prune = [c for c in after if type(c).__name__ == "PruneCheckpoints"][0]
    for epoch in (2, 3):
        (tmp_path / f"ep{epoch:03d}-loss1.000-val_loss1.000.keras").write_text("new")
        prune.on_epoch_end(epoch - 1)
    assert sorted(p.name[:5] for p in tmp_path.glob("ep*.keras")) == ["ep001", "ep003"]


def test_freeze_stages_and_lr_schedule_reach_the_model(pair_set, tmp_path, capsys):
    folder, files = pair_set
    result = con_train_resnet_class.main(
        data_args(folder, files, tmp_path) + QUICK
        + ["--epochs", "1", "--steps-per-epoch", "2", "--validation-steps", "1",
           "--run-eagerly", "--freeze-stages", "conv1", "res2", "--freeze-bn",
           "--learning-rate", "2e-3",
           "--lr-schedule", "cosine", "--warmup-epochs", "0.5", "--min-learning-rate", "1e-4"])
    # One warm-up step from 1 % of the peak, then the cosine ends at the minimum after
    # the run's 2 steps.
    optimizer = result["model"].optimizer
    schedule = optimizer._learning_rate  # Keras 3 keeps the schedule object here
    assert [float(schedule(i)) for i in (0, 1)] == pytest.approx([2e-5, 2e-3])
    assert int(optimizer.iterations) == 2 and float(optimizer.learning_rate) == pytest.approx(1e-4)
    assert read_log(result["run_dir"])["learning_rate"] == pytest.approx([1e-4])
    assert ("Froze the convolution kernels and batch-norm scales and offsets of 22 layers "
            "(conv1, res2)") in capsys.readouterr().out
    frozen = {l.name for l in result["model"]._flatten_layers(include_self=False, recursive=True)
              if isinstance(l, keras.layers.Conv2D) and not l.trainable}
    assert "conv1" in frozen and "res2c_branch2c" in frozen and "res3a_branch2a" not in frozen
    # A resume freezes the batch norm again (variables' flags are not in the checkpoint).
    again = con_train_resnet_class.main(
        ["--epochs", "2", "--steps-per-epoch", "1", "--validation-steps", "1",
         "--resume", str(result["run_dir"]), "--run-eagerly"])
    bn = {l.name: l for l in again["model"]._flatten_layers(include_self=False, recursive=True)}
    assert not bn["bn2c_branch2c"].gamma.trainable and bn["bn3a_branch2a"].gamma.trainable
    np.testing.assert_array_equal(bn["bn_conv1"].gamma, np.ones(64))
    assert not np.allclose(bn["bn3a_branch2a"].gamma, 1.0)
    with pytest.raises(UserError, match="--freeze-bn: freezes the batch norm"):
        con_train_resnet_class.main(data_args(folder, files, tmp_path) + ["--freeze-bn"])
    with pytest.raises(SystemExit):
        con_train_resnet_class.parse_args(data_args(folder, files, tmp_path)
                                          + ["--freeze-stages", "res6"])
