"""train.py end to end on a tiny VOC set (VGG U-Net, 64x64, one epoch per phase), the
frozen phase, resume, encoder transfer, options, and the validation mIoU callback."""
import csv
import json

import keras
import numpy as np
import pytest
from PIL import Image

import train
from nets.encoders import build_encoder, weighted_layers
from nets.unet import build_unet, get_encoder
from utils.utils_metrics import MeanIoU
from utils.callbacks import ResumableEarlyStopping
from utils.run import checkpoint_epoch
from utils.utils import set_seed
from utils.utils_metrics import fast_hist, per_class_iu
from utils.weights import save_encoder, save_weights_by_name

SEED = 3
# One worker runs the whole module, so the trained run is built once under xdist.


def make_voc(root, counts=(("train", 6), ("val", 2), ("test", 2)), size=(80, 64)):
    """Tiny VOCdevkit: a red square (class 1) and a green bar (class 2) on grey."""
    rng = np.random.default_rng(0)
    voc = root / "VOCdevkit"
    dirs = [voc / "VOC2007" / d for d in ("JPEGImages", "SegmentationClass",
                                         "ImageSets/Segmentation")]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    w, h = size
    k = 0
    for split, n in counts:
        ids = []
        for _ in range(n):
            image = np.full((h, w, 3), 100, np.uint8)
            mask = np.zeros((h, w), np.uint8)
            x, y = rng.integers(0, w - 24), rng.integers(0, h - 30)
            image[y:y + 20, x:x + 20] = (230, 30, 30)
            mask[y:y + 20, x:x + 20] = 1
            image[-8:, : w // 2] = (30, 210, 30)
            mask[-8:, : w // 2] = 2
            name = f"im{k:02d}"
            k += 1
            Image.fromarray(image).save(dirs[0] / f"{name}.jpg", quality=95)
            Image.fromarray(mask).save(dirs[1] / f"{name}.png")
            ids.append(name)
        (dirs[2] / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc


def base_argv(voc, logs):
    return ["--voc-path", str(voc), "--backbone", "vgg", "--input-shape", "64", "64",
            "--freeze-epoch", "1", "--unfreeze-epoch", "2", "--freeze-batch-size", "2",
            "--unfreeze-batch-size", "2", "--steps-per-epoch", "1", "--num-workers", "2",
            "--logs-dir", str(logs), "--seed", str(SEED)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("unet_train")
    voc = make_voc(root)
    encoder_file = save_encoder(build_encoder((64, 64, 3), "vgg"), root / "encoder.weights.h5",
                                backbone="vgg")
    result = train.main(base_argv(voc, root / "logs") + ["--model-path", str(encoder_file)])
    return {"root": root, "voc": voc, "encoder_file": encoder_file, "result": result}


def _weights(model):
    return [np.asarray(w) for w in model.weights]


def test_run_folder_history_and_test_metrics(run):
    result = run["result"]
    run_dir = result["run_dir"]
    assert run_dir.parent == run["root"] / "logs"
    names = {p.name for p in run_dir.iterdir()}
    assert {"args.json", "training_log.csv", "best_epoch.keras", "last_epoch.keras",
            "epoch_loss.png", "epoch_loss.txt", "results.json", "miou_test"} <= names
    epochs = sorted(n for n in names if n.startswith("ep0"))
    assert len(epochs) == 2 and epochs[0].startswith("ep001-loss") and epochs[1].endswith(".keras")
    assert result["model_path"] == run_dir / "last_epoch.keras"
    assert result["best_model_path"] == run_dir / "best_epoch.keras"
    args = json.loads((run_dir / "args.json").read_text())
    assert args["backbone"] == "vgg" and args["freeze_lr"] == 1e-4

    history = result["history"]
    assert history["epoch"] == [0, 1]
    assert {"loss", "val_loss", "f_score", "val_f_score", "mIoU", "val_mIoU",
            "learning_rate"} <= set(history)
    # Each phase starts at its own rate (the x0.96 decay is per epoch within a phase).
    np.testing.assert_allclose(history["learning_rate"], [1e-4, 1e-5], rtol=1e-5)
    assert all(0 <= v <= 1 for v in history["val_mIoU"])
    with open(run_dir / "training_log.csv") as f:
        assert len(list(csv.DictReader(f))) == 2

    metrics = result["test_metrics"]
    for key in ("mIoU", "mPA", "accuracy"):
        assert isinstance(metrics[key], float) and 0 <= metrics[key] <= 1
    assert (run_dir / "miou_test" / "metrics.json").is_file()
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["test_metrics"]["mIoU"] == pytest.approx(metrics["mIoU"])


def _decoder_kernels(model):
    # Layer order, not names: auto-generated names differ between builds.
    encoder = get_encoder(model)
    return [np.asarray(layer.weights[0]) for layer in model.layers
            if layer is not encoder and layer.weights]


def test_frozen_phase_keeps_encoder_and_trains_decoder(run):
    run_dir = run["result"]["run_dir"]
    after_frozen = keras.models.load_model(next(run_dir.glob("ep001-*.keras")), compile=False)
    after_unfrozen = keras.models.load_model(run_dir / "last_epoch.keras", compile=False)
    pretrained = build_encoder((64, 64, 3), "vgg")
    pretrained.load_weights(run["encoder_file"])

    for a, b in zip(_weights(get_encoder(after_frozen)), _weights(pretrained)):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in
               zip(_weights(get_encoder(after_unfrozen)), _weights(pretrained))]
    assert any(changed)

    # main() seeds, then builds: the same seed rebuilds its initial decoder exactly.
    set_seed(SEED)
    initial = _decoder_kernels(build_unet((64, 64, 3), 5, "vgg"))
    set_seed(SEED)
    again = _decoder_kernels(build_unet((64, 64, 3), 5, "vgg"))
    assert all(np.array_equal(a, b) for a, b in zip(initial, again))
    trained = _decoder_kernels(after_frozen)
    assert [a.shape for a in trained] == [a.shape for a in initial]
    changed = [not np.array_equal(a, b) for a, b in zip(trained, initial)]
    assert all(changed), changed


def test_resume_continues_from_the_logged_epoch(run, capsys):
    run_dir = run["result"]["run_dir"]
    # The run is complete (2 of 2 epochs): resume trains nothing, evaluates the last
    # epoch again beside the first evaluation and keeps every file.
    before = sorted(p.name for p in run_dir.iterdir())
    result = train.main(["--resume", str(run_dir)])
    out = capsys.readouterr().out
    assert "Resuming" in out and "at epoch 3" in out
    assert result["run_dir"] == run_dir and result["initial_epoch"] == 2
    assert result["history"]["epoch"] == [0, 1]
    assert result["test_metrics"]["mIoU"] == pytest.approx(run["result"]["test_metrics"]["mIoU"])
    after = sorted(p.name for p in run_dir.iterdir())
    assert set(after) - set(before) == {"args_resume.json", "miou_test_2"}
    resumed = json.loads((run_dir / "args_resume.json").read_text())
    assert resumed["backbone"] == "vgg" and resumed["init_epoch"] == 2


def test_longer_resume_without_the_final_optimizer_state_starts_a_fresh_adam(run, tmp_path,
                                                                               capsys):
    from utils.run import has_optimizer_state

    first = train.main(base_argv(run["voc"], tmp_path / "logs")
                       + ["--model-path", str(run["encoder_file"]), "--save-period", "0",
                          "--no-final-optimizer-state", "--eval-split", "none"])
    last = first["run_dir"] / "last_epoch.keras"
    assert checkpoint_epoch(last) == 2 and not has_optimizer_state(last)
    again = train.main(["--resume", str(first["run_dir"]), "--unfreeze-epoch", "3"])
    assert "holds no optimizer state" in capsys.readouterr().out
    assert again["history"]["epoch"] == [0, 1, 2] and checkpoint_epoch(last) == 3


def test_whole_checkpoint_loads_into_encoder_and_unrelated_file_raises(run, tmp_path, capsys):
    model = build_unet((64, 64, 3), 5, "vgg")
    report = train.load_pretrained(model, run["result"]["run_dir"] / "last_epoch.keras")
    assert len(report.loaded) == 13 and not report.missing and not report.mismatched
    assert "13/13 layers matched" in capsys.readouterr().out

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="unrelated")])
    path = save_weights_by_name(other, tmp_path / "other.h5")
    with pytest.raises(ValueError, match=r"other\.h5: no layer .* matched"):
        train.load_pretrained(model, path)


def test_resnet50_encoder_file_transfers_every_layer(tmp_path, capsys):
    source = build_encoder((64, 64, 3), "resnet50")
    path = save_encoder(source, tmp_path / "encoder.weights.h5")
    legacy = save_weights_by_name(source, tmp_path / "resnet50_notop_style.h5")
    model = build_unet((64, 64, 3), 5, "resnet50")
    for file in (path, legacy):
        report = train.load_pretrained(model, file)
        assert len(report.loaded) == 106 == report.total
        assert not report.missing and not report.mismatched
    assert "106/106 layers matched" in capsys.readouterr().out
    for a, b in zip(weighted_layers(get_encoder(model))[::15], weighted_layers(source)[::15]):
        for x, y in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(x, y)


def test_defaults_and_phase_plans():
    args = train.parse_args([])
    assert (args.num_classes, args.backbone, args.input_shape, args.voc_path) == \
        (5, "resnet50", [576, 1024], "VOCdevkit")
    assert (args.init_epoch, args.freeze_epoch, args.unfreeze_epoch) == (0, 60, 120)
    assert (args.freeze_batch_size, args.unfreeze_batch_size) == (18, 8)
    assert (args.freeze_lr, args.unfreeze_lr, args.lr_decay) == (1e-4, 1e-5, 0.96)
    assert (args.loss, args.early_stopping_patience, args.num_workers) == ("dice_focal", 8, 7)
    assert args.freeze_train and args.eval_split == "test"

    plan = [(p.start, p.end, p.batch_size, p.lr, p.frozen) for p in train.plan_phases(args)]
    assert plan == [(0, 60, 18, 1e-4, True), (60, 120, 8, 1e-5, False)]
    frozen = train.plan_phases(train.parse_args(["--frozen-only"]))
    assert [(p.start, p.end, p.batch_size, p.frozen) for p in frozen] == \
        [(0, 60, 18, True), (60, 120, 8, True)]
    for flag in ("--from-scratch", "--no-freeze-train"):
        phases = train.plan_phases(train.parse_args([flag]))
        assert [(p.start, p.end, p.frozen) for p in phases] == [(0, 60, False), (60, 120, False)]
    late = train.plan_phases(train.parse_args(["--init-epoch", "70"]))
    assert [(p.start, p.end) for p in late] == [(70, 120)]


@pytest.mark.parametrize("argv, message", [
    (["--frozen-only", "--from-scratch"], "--frozen-only: needs the frozen phase"),
    (["--from-scratch", "--model-path", "x.h5"], "drop --model-path"),
    (["--cls-weights", "1", "2"], "--cls-weights has 2 values for 5 classes"),
    (["--input-shape", "100", "64"], "not divisible by 32"),
    (["--init-model", "a.keras", "--model-path", "x.h5"], "already holds the encoder"),
    (["--input-shape", "64", "64", "--train-crop", "96", "64"], "larger than --input-shape"),
    (["--input-shape", "64", "64", "--train-crop", "48", "32"], "not divisible by 32"),
])
def test_contradictory_options_fail_early(argv, message):
    with pytest.raises(ValueError, match=message):
        train.main(argv)


def test_training_on_crops_evaluates_whole_photos_at_the_input_shape(run, tmp_path, capsys):
    argv = base_argv(run["voc"], tmp_path) + ["--train-crop", "32", "32", "--augment", "light",
                                              "--frozen-only", "--unfreeze-epoch", "1"]
    result = train.main(argv)
    assert "random 32x32 windows" in capsys.readouterr().out
    model = keras.models.load_model(result["model_path"], compile=False)
    assert model.input_shape == (None, None, None, 3)   # trained at 32x32, used at 64x64
    assert model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0).shape == (1, 64, 64, 5)
    metrics = result["test_metrics"]
    assert 0 <= metrics["mIoU"] <= 1 and metrics["images"] == 2
    args = json.loads((result["run_dir"] / "args.json").read_text())
    assert args["train_crop"] == [32, 32] and args["augment"] == "light"


def test_fine_tuning_from_the_frozen_phase_checkpoint_repeats_the_full_run(run, tmp_path,
                                                                         capsys):
    """--init-model <ep001 of a run> --init-epoch 1 trains only the unfrozen epoch, and
    with the same seed ends where the run that trained both phases ended."""
    first = run["result"]["run_dir"]
    start = next(first.glob("ep001-*.keras"))
    result = train.main(base_argv(run["voc"], tmp_path / "logs")
                        + ["--init-model", str(start), "--init-epoch", "1",
                           "--save-period", "0", "--eval-split", "none"])
    assert "Loaded the whole U-Net from" in capsys.readouterr().out
    assert result["history"]["epoch"] == [1]
    assert sorted(p.name for p in result["run_dir"].glob("*.keras")) == \
        ["best_epoch.keras", "last_epoch.keras"]
    ours = keras.models.load_model(result["model_path"], compile=False)
    full = keras.models.load_model(first / "last_epoch.keras", compile=False)
    for a, b in zip(_weights(ours), _weights(full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Resuming it (complete: nothing to train) reads its own last epoch, not ep001; and
    # if a kill came after that last_epoch.keras, before the (lazy) best_epoch.keras of
    # the same epoch, the resume writes it from the loaded weights.
    (result["run_dir"] / "best_epoch.keras").unlink()
    again = train.main(["--resume", str(result["run_dir"]), "--eval-split", "none"])
    assert again["initial_epoch"] == 2 and again["history"]["epoch"] == [1]
    assert checkpoint_epoch(result["run_dir"] / "best_epoch.keras") == 2
    best = keras.models.load_model(result["run_dir"] / "best_epoch.keras", compile=False)
    for a, b in zip(_weights(best), _weights(ours)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="--init-model"):
        train.main(base_argv(run["voc"], tmp_path / "logs")
                   + ["--init-model", str(tmp_path / "missing.keras")])


def test_resume_needs_a_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path)])
    assert "no args.json" in capsys.readouterr().err


def test_train_split_smaller_than_batch_fails_before_any_run_folder(tmp_path):
    voc = make_voc(tmp_path, counts=(("train", 1), ("val", 1)))
    with pytest.raises(ValueError, match="train split has 1 images, fewer than"):
        train.main(base_argv(voc, tmp_path / "logs") + ["--eval-split", "none"])
    with pytest.raises(FileNotFoundError, match=r"Segmentation/test\.txt"):
        train.main(base_argv(voc, tmp_path / "logs"))
    assert not (tmp_path / "logs").exists()


def test_mean_iou_metric_confusion_and_ignore():
    labels = np.array([0, 0, 1, 1, 2, 3])      # 3 = ignore for 3 classes
    preds = np.array([0, 1, 1, 1, 0, 2])
    hist = fast_hist(labels, preds, 3)
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_allclose(per_class_iu(hist), [1 / 3, 2 / 3, 0])

    # The compiled metric on the same pixels, over two batches, plus a letterbox-bar
    # pixel (background for the loss, flagged ignore): left out like the ignored one.
    probs = np.eye(3, dtype=np.float32)[preds].reshape(1, 2, 3, 3)
    targets = np.eye(4, dtype=np.float32)[labels].reshape(1, 2, 3, 4)
    bar_target = np.array([1, 0, 0, 1], np.float32).reshape(1, 1, 1, 4)
    metric = MeanIoU(3)
    metric.update_state(targets[:, :1], probs[:, :1])
    metric.update_state(targets[:, 1:], probs[:, 1:])
    metric.update_state(bar_target, np.eye(3, dtype=np.float32)[[2]].reshape(1, 1, 1, 3))
    assert float(metric.result()) == pytest.approx(1 / 3)
    np.testing.assert_allclose(metric.per_class(), [1 / 3, 2 / 3, 0])
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_val_miou_and_its_per_class_line_come_from_the_validation_pass(capsys):
    from nets.unet_training import CE
    from utils.callbacks import PerClassIoU

    rng = np.random.default_rng(0)
    x, xv = (rng.random((n, 4, 4, 3)).astype("float32") for n in (8, 4))
    y, yv = (np.eye(4, dtype="float32")[rng.integers(0, 4, (n, 4, 4))] for n in (8, 4))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(3, 1, activation="softmax")])
    metric = MeanIoU(3)
    model.compile("sgd", loss=CE(np.ones(3)), metrics=[metric])
    history = model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=4, verbose=0,
                        callbacks=[PerClassIoU(metric)])
    labels = np.where(yv[..., 3] == 1, 3, yv[..., :3].argmax(-1))
    expected = per_class_iu(fast_hist(labels, model.predict(xv, verbose=0).argmax(-1), 3))
    assert history.history["val_mIoU"][-1] == pytest.approx(expected.mean(), abs=1e-6)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == (f"Epoch 2: val_mIoU {expected.mean():.4f} (per class "
                       + " ".join(f"{v:.3f}" for v in expected) + ")")


def test_early_stopping_counts_the_epochs_logged_before_a_resume():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Identity()])
    stopper = ResumableEarlyStopping(previous=[1.0, 1.1, 1.2], monitor="val_loss", patience=3)
    stopper.set_model(model)
    stopper.on_train_begin()
    assert stopper.wait == 2 and stopper.best == 1.0
    stopper.on_epoch_end(3, {"val_loss": 1.05})
    assert model.stop_training


def test_checkpoint_save_period_keeps_last_and_best(tmp_path):
    """save_period=2 names every second epoch; last/best are always current, and a best
    epoch that got no named file survives later epochs."""
    from utils.callbacks import EpochCheckpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    checkpoint = EpochCheckpoint(tmp_path, save_period=2, verbose=0)
    checkpoint.set_model(model)
    for epoch, miou in enumerate((0.2, 0.5, 0.4)):   # best at epoch 2 (index 1)
        model.layers[0].kernel.assign(np.full((3, 1), float(epoch), np.float32))
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0, "val_mIoU": miou})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best_epoch.keras", "ep002-loss1.000-val_loss1.000.keras", "last_epoch.keras"]

    def kernel(name):
        return float(keras.models.load_model(tmp_path / name).layers[0].kernel.numpy()[0, 0])

    assert kernel("last_epoch.keras") == 2.0 and kernel("best_epoch.keras") == 1.0

    # save_period=0: no named files; a best epoch written as last survives the next epoch.
    other = tmp_path / "none"
    other.mkdir()
    checkpoint = EpochCheckpoint(other, save_period=0, verbose=0)
    checkpoint.set_model(model)
    for epoch, miou in enumerate((0.5, 0.1)):
        model.layers[0].kernel.assign(np.full((3, 1), 10.0 + epoch, np.float32))
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0, "val_mIoU": miou})
    assert sorted(p.name for p in other.iterdir()) == ["best_epoch.keras", "last_epoch.keras"]
    assert (float(keras.models.load_model(other / "best_epoch.keras").layers[0].kernel.numpy()[0, 0])
            == 10.0)
    with pytest.raises(ValueError, match="save_period"):
        EpochCheckpoint(tmp_path, save_period=-1)


def test_best_checkpoint_is_written_only_when_it_would_be_lost(tmp_path):
    """A new best waits in memory while last_epoch.keras holds the same weights; it is
    written before last_epoch.keras moves on, and at the end of training."""
    from utils.callbacks import EpochCheckpoint
    from utils.run import checkpoint_epoch

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    checkpoint = EpochCheckpoint(tmp_path, save_period=0, verbose=0)
    checkpoint.set_model(model)
    checkpoint.set_params({"epochs": 4})
    best = tmp_path / "best_epoch.keras"

    def kernel(name):
        return float(keras.models.load_model(tmp_path / name).layers[0].kernel.numpy()[0, 0])

    for epoch, miou, written in ((0, 0.2, None), (1, 0.5, None), (2, 0.4, 1.0), (3, 0.6, 1.0)):
        model.layers[0].kernel.assign(np.full((3, 1), float(epoch), np.float32))
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0, "val_mIoU": miou})
        assert kernel("last_epoch.keras") == float(epoch)
        assert (kernel("best_epoch.keras") if best.exists() else None) == written
    checkpoint.on_train_end()
    assert kernel("best_epoch.keras") == 3.0 and checkpoint_epoch(best) == 4
    assert float(model.layers[0].kernel.numpy()[0, 0]) == 3.0      # the model keeps its weights


def test_resume_points_carry_the_optimizer_state_only_where_it_is_used(tmp_path):
    """Mid-phase, last_epoch.keras has Adam's moments; at the end of a phase that another
    follows it has none (the next phase starts a fresh optimizer) and is that epoch's
    named copy itself; at the end of the last phase it keeps them (a longer resume)."""
    from utils.callbacks import EpochCheckpoint
    from utils.run import checkpoint_epoch, has_optimizer_state

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    checkpoint = EpochCheckpoint(tmp_path, filename="ep{epoch:03d}.keras", save_period=2,
                                 verbose=0)
    checkpoint.set_model(model)
    checkpoint.set_params({"epochs": 2})
    checkpoint.last_phase = False
    last = tmp_path / "last_epoch.keras"
    checkpoint.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0, "val_mIoU": 0.5})
    assert has_optimizer_state(last) and checkpoint_epoch(last) == 1
    checkpoint.on_epoch_end(1, {"loss": 1.0, "val_loss": 1.0, "val_mIoU": 0.4})
    assert not has_optimizer_state(last) and checkpoint_epoch(last) == 2
    assert last.stat().st_ino == (tmp_path / "ep002.keras").stat().st_ino
    # Without a named copy of the epoch it is written, still without the moments; the
    # last phase's end keeps them.
    for last_phase in (False, True):
        other = tmp_path / f"other{last_phase}"
        other.mkdir()
        checkpoint = EpochCheckpoint(other, save_period=0, verbose=0)
        checkpoint.set_model(model)
        checkpoint.set_params({"epochs": 1})
        checkpoint.last_phase = last_phase
        checkpoint.on_epoch_end(0, {"loss": 1.0})
        assert has_optimizer_state(other / "last_epoch.keras") == last_phase
    # final_optimizer_state=False: the last phase's end is weights only too, and a last
    # epoch that is also the best is written once, under both names.
    final = tmp_path / "final"
    final.mkdir()
    checkpoint = EpochCheckpoint(final, save_period=0, verbose=0, final_optimizer_state=False)
    checkpoint.set_model(model)
    checkpoint.set_params({"epochs": 1})
    checkpoint.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0, "val_mIoU": 0.5})
    assert not has_optimizer_state(final / "last_epoch.keras")
    assert (final / "last_epoch.keras").stat().st_ino == (final / "best_epoch.keras").stat().st_ino
    assert checkpoint_epoch(final / "best_epoch.keras") == 1


def test_background_final_write_lands_after_wait_and_reraises_its_error(tmp_path):
    """background_final_write: the last phase's last file is written by a thread; after
    wait() it holds the model's weights under both names, and a failed write is raised
    by wait(), not lost. A phase that another follows writes in the caller's thread."""
    from utils.callbacks import EpochCheckpoint
    from utils.run import checkpoint_epoch

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)

    def checkpoint_in(folder, last_phase=True):
        folder.mkdir()
        checkpoint = EpochCheckpoint(folder, save_period=0, verbose=0,
                                     final_optimizer_state=False)
        checkpoint.background_final_write = True
        checkpoint.last_phase = last_phase
        checkpoint.set_model(model)
        checkpoint.set_params({"epochs": 1})
        return checkpoint

    checkpoint = checkpoint_in(tmp_path / "ok")
    checkpoint.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0, "val_mIoU": 0.5})
    checkpoint.on_train_end()
    assert checkpoint.wait() >= 0.0 and checkpoint.wait() == 0.0
    best, last = tmp_path / "ok" / "best_epoch.keras", tmp_path / "ok" / "last_epoch.keras"
    assert best.stat().st_ino == last.stat().st_ino and checkpoint_epoch(best) == 1
    saved = keras.models.load_model(best)
    for a, b in zip(saved.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)

    def fail(*args, **kwargs):
        raise OSError("No space left on device")

    checkpoint = checkpoint_in(tmp_path / "full")
    checkpoint.run.save_model = fail
    checkpoint.on_epoch_end(0, {"loss": 1.0})      # no val_mIoU: last_epoch.keras only
    with pytest.raises(OSError, match="No space left"):
        checkpoint.wait()

    checkpoint = checkpoint_in(tmp_path / "phase", last_phase=False)
    checkpoint.run.save_model = fail
    with pytest.raises(OSError, match="No space left"):
        checkpoint.on_epoch_end(0, {"loss": 1.0})


def test_resume_period_skips_mid_phase_resume_points_but_never_a_best_epoch(tmp_path):
    from utils.callbacks import EpochCheckpoint
    from utils.run import checkpoint_epoch

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    checkpoint = EpochCheckpoint(tmp_path, save_period=0, verbose=0, resume_period_s=3600)
    checkpoint.set_model(model)
    checkpoint.set_params({"epochs": 3})
    checkpoint.on_train_begin()
    for epoch, miou in enumerate((0.5, 0.3, 0.4)):
        model.layers[0].kernel.assign(np.full((3, 1), float(epoch), np.float32))
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0, "val_mIoU": miou})
        written = sorted(p.name for p in tmp_path.iterdir())
        # Mid-phase nothing is written: a kill replays from the start, best included.
        assert written == ([] if epoch < 2 else ["best_epoch.keras", "last_epoch.keras"])
    best = keras.models.load_model(tmp_path / "best_epoch.keras")
    assert float(best.layers[0].kernel.numpy()[0, 0]) == 0.0
    assert checkpoint_epoch(tmp_path / "best_epoch.keras") == 1
    assert checkpoint_epoch(tmp_path / "last_epoch.keras") == 3


def test_pretraining_checkpoint_period_in_seconds_always_keeps_the_last_epoch(tmp_path):
    from utils.callbacks import Checkpoint
    from utils.run import Run, checkpoint_epoch, has_optimizer_state

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    for period_s, expected in ((0, ["ep001.keras", "ep002.keras", "ep003.keras"]),
                               (3600, ["ep003.keras"])):
        run = Run(tmp_path / str(period_s))
        run.dir.mkdir()
        checkpoint = Checkpoint(run, "ep{epoch:03d}.keras", period_s=period_s)
        checkpoint.set_model(model)
        checkpoint.set_params({"epochs": 3})
        checkpoint.on_train_begin()
        for epoch in range(3):
            checkpoint.on_epoch_end(epoch, {"loss": 1.0})
        assert sorted(p.name for p in run.dir.glob("*.keras")) == expected
        assert checkpoint_epoch(run.dir / "ep003.keras") == 3
        assert has_optimizer_state(run.dir / "ep003.keras")


def test_encoder_bn_batches_reestimates_a_frozen_encoders_statistics(tmp_path):
    # A random ResNet50 encoder starts with moving mean 0 / variance 1 in every batch norm;
    # a frozen phase leaves them as they are, so anything else in the saved U-Net comes
    # from the re-estimate on the U-Net's own training images.
    voc = make_voc(tmp_path, counts=(("train", 4), ("val", 2)))
    argv = ["--voc-path", str(voc), "--input-shape", "32", "32", "--frozen-only",
            "--freeze-epoch", "1", "--unfreeze-epoch", "1", "--freeze-batch-size", "2",
            "--steps-per-epoch", "1", "--num-workers", "2", "--eval-split", "none",
            "--run-eagerly", "--logs-dir", str(tmp_path / "logs"), "--seed", str(SEED)]
    run_dir = train.main(argv + ["--encoder-bn-batches", "2"])["run_dir"]
    model = keras.models.load_model(run_dir / "last_epoch.keras", compile=False)
    bn = get_encoder(model).get_layer("bn_conv1")
    assert np.abs(np.asarray(bn.moving_mean)).max() > 1e-3
    assert np.abs(np.asarray(bn.moving_variance) - 1).max() > 1e-3
