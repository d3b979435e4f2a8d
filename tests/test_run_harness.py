"""The run harness (utils/run.py): fresh names, the CSV log, resume options, and a real
kill -9 during a checkpoint write followed by a resume that ends where an uninterrupted
run of the same seed ends."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import argparse
import keras
import numpy as np
import pytest

from tests.test_train import make_voc
from utils.run import (Run, checkpoint_epoch, fresh_path, newest_checkpoint, read_log,
                       resume_args)

ROOT = Path(__file__).resolve().parents[1]


def test_fresh_path_counts_from_2_before_the_first_dot(tmp_path):
    path = tmp_path / "encoder.weights.h5"
    assert fresh_path(path) == path
    path.write_text("x")
    assert fresh_path(path).name == "encoder_2.weights.h5"
    (tmp_path / "encoder_2.weights.h5").write_text("x")
    assert fresh_path(path).name == "encoder_3.weights.h5"


def test_a_run_under_a_relative_logs_dir_writes_paths_built_from_its_folder(tmp_path,
                                                                              monkeypatch):
    # The default --logs-dir is the relative "logs": a path made from run.dir and given
    # back to run.write must land once in the run folder, not in run_dir/run_dir/.
    monkeypatch.chdir(tmp_path)
    run = Run.start("pde_class", argparse.Namespace(seed=1), root="logs")
    written = run.write_json(fresh_path(run.dir / "test_metrics.json"), {"acc": 0.5})
    assert written.parent == run.dir and written.is_file()
    assert run.dir.parent == tmp_path / "logs"


def test_log_keeps_every_column_and_truncates_to_the_checkpoint(tmp_path):
    from utils.callbacks import CurvePlot, EpochLog

    run = Run(tmp_path)
    log, plot = EpochLog(run), CurvePlot(run)
    for epoch, logs in enumerate(({"loss": 3.0}, {"loss": 2.0, "val_loss": 2.5, "val_mIoU": 0.4},
                                  {"loss": 1.0})):
        log.on_epoch_end(epoch, logs)
        plot.on_epoch_end(epoch, logs)
    history = read_log(tmp_path)
    assert history["epoch"] == [0, 1, 2] and history["loss"] == [3.0, 2.0, 1.0]
    assert np.isnan(history["val_loss"][0]) and history["val_mIoU"][1] == 0.4
    assert (tmp_path / "epoch_loss.txt").read_text().split() == ["3.0", "2.0", "1.0"]
    assert (tmp_path / "epoch_val_loss.txt").read_text().split() == ["2.5"]
    assert (tmp_path / "epoch_loss.png").stat().st_size > 0
    run.truncate_log(2)
    assert read_log(tmp_path)["epoch"] == [0, 1]
    assert not list(tmp_path.glob("tmp-*"))


def test_the_curves_are_redrawn_when_an_epoch_validated_and_when_training_ends(tmp_path):
    from utils.callbacks import CurvePlot, EpochLog

    run = Run(tmp_path)
    log, plot = EpochLog(run), CurvePlot(run, redraw_s=3600)
    png = tmp_path / "epoch_loss.png"
    log.on_epoch_end(0, {"loss": 3.0})
    plot.on_epoch_end(0, {"loss": 3.0})
    assert not png.exists() and (tmp_path / "epoch_loss.txt").read_text().split() == ["3.0"]
    log.on_epoch_end(1, {"loss": 2.0, "val_loss": 2.5})
    plot.on_epoch_end(1, {"loss": 2.0, "val_loss": 2.5})
    drawn = png.read_bytes()
    log.on_epoch_end(2, {"loss": 1.0})
    plot.on_epoch_end(2, {"loss": 1.0})
    assert png.read_bytes() == drawn
    plot.on_train_end()
    assert png.read_bytes() != drawn


def test_epoch_timer_keeps_the_first_batches_graph_building_out_of_both_figures(monkeypatch):
    from utils import callbacks
    from utils.callbacks import EpochTimer

    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])

    def wait(seconds):
        clock[0] += seconds

    timer = EpochTimer()
    timer.on_train_begin()
    # Epoch 1: a first step of 10 s (7 s of it building the graph), two steps of 3 s.
    timer.on_epoch_begin(0)
    for seconds in (10, 3, 3):
        wait(seconds)
        timer.on_train_batch_end(0)
    wait(0.5)
    timer.on_epoch_end(0)
    # Epoch 2: steps of 2, 3 and 4 s (median 3 s with epoch 1's), then a validation of
    # a first batch of 6 s (5 s building) and batches of 1 s and 0.5 s (a smaller one).
    timer.on_epoch_begin(1)
    for seconds in (2, 3, 4):
        wait(seconds)
        timer.on_train_batch_end(0)
    timer.on_test_begin()
    for seconds in (6, 1, 0.5):
        wait(seconds)
        timer.on_test_batch_end(0)
    timer.on_test_end()
    wait(0.25)
    timer.on_epoch_end(1)
    timer.on_train_end()
    assert timer.build_s == {"training": 7.0, "validation": 5.0}
    assert timer.steps_s == [9.0, 9.0]
    assert timer.other_s == [0.5, 2.75]
    assert timer.times == [9.5, 11.75]


def test_checkpoint_holds_its_epoch_and_a_cut_off_file_is_passed_over(tmp_path):
    run = Run(tmp_path)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    run.save_model(model, "ep001.keras", 1)
    run.save_model(model, "ep002.weights.h5", 2)
    whole = (tmp_path / "ep001.keras").read_bytes()
    (tmp_path / "ep003.keras").write_bytes(whole[: len(whole) // 2])   # a cut-off write
    assert checkpoint_epoch(tmp_path / "ep003.keras") is None
    assert newest_checkpoint(tmp_path.iterdir()) == (tmp_path / "ep002.weights.h5", 2)


def test_resume_reads_args_json_applies_safe_options_and_refuses_others(tmp_path, capsys):
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resume")
    Run(tmp_path).write_json("args.json", {"epochs": 7, "batch_size": 2, "resume": None})
    args = resume_args(p, ["--resume", str(tmp_path)], may_change=("epochs",))
    assert (args.epochs, args.batch_size) == (7, 2)
    assert resume_args(p, ["--resume", str(tmp_path), "--epochs", "9"], ("epochs",)).epochs == 9
    with pytest.raises(SystemExit):
        resume_args(p, ["--resume", str(tmp_path), "--batch-size", "4"], ("epochs",))
    assert "--batch-size (run: 2) differs" in capsys.readouterr().err


def _unet_argv(voc, logs):
    return ["--voc-path", str(voc), "--backbone", "vgg", "--input-shape", "64", "64",
            "--freeze-epoch", "1", "--unfreeze-epoch", "3", "--freeze-batch-size", "2",
            "--unfreeze-batch-size", "2", "--steps-per-epoch", "2", "--num-workers", "1",
            "--save-period", "0", "--eval-split", "none", "--run-eagerly",
            "--logs-dir", str(logs), "--seed", "5"]


def test_unet_killed_during_a_checkpoint_write_resumes_to_the_same_weights(tmp_path):
    import train

    voc = make_voc(tmp_path)
    # Killed while epoch 3's last_epoch.keras is half written: the resume must start
    # from epoch 2's (optimizer state included) and train epoch 3 once.
    env = dict(os.environ, PDE_PAUSE_AT_WRITE="last_epoch.keras:3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([sys.executable, "train.py", *_unet_argv(voc, tmp_path / "killed")],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "killed").glob("*/last_epoch.keras.paused")):
        assert proc.poll() is None and time.time() < deadline, "training ended before the hook"
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = next((tmp_path / "killed").iterdir())
    assert list(killed.glob("tmp-*last_epoch.keras"))          # the cut-off write is there
    assert checkpoint_epoch(killed / "last_epoch.keras") == 2
    assert read_log(killed)["epoch"] == [0, 1, 2]              # epoch 3 logged before the kill

    resumed = train.main(["--resume", str(killed)])
    reference = train.main(_unet_argv(voc, tmp_path / "whole"))
    assert resumed["initial_epoch"] == 2
    a, b = read_log(killed), read_log(reference["run_dir"])
    assert a["epoch"] == b["epoch"] == [0, 1, 2]
    for key in b:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)

    def weights(path):
        return keras.models.load_model(path, compile=False).get_weights()

    for x, y in zip(weights(killed / "last_epoch.keras"),
                    weights(reference["run_dir"] / "last_epoch.keras")):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
