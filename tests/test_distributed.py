"""Distribution: who writes the files (multiworker: the chief only), two local workers
that train alike, the entry points and the fused batch norm under MirroredStrategy."""
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from utils.run import Run, read_log
from utils.distribute import is_chief

ROOT = Path(__file__).resolve().parents[1]


def _strategy(task_type, task_id, cluster):
    spec = types.SimpleNamespace(as_dict=lambda: cluster)
    resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                     cluster_spec=lambda: spec)
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_is_chief():
    assert is_chief() and is_chief(types.SimpleNamespace())
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert is_chief(_strategy("worker", 0, workers))
    assert not is_chief(_strategy("worker", 1, workers))
    with_chief = {"chief": ["127.0.0.1:3"], **workers}
    assert is_chief(_strategy("chief", 0, with_chief))
    assert not is_chief(_strategy("worker", 0, with_chief))



@pytest.mark.parametrize("index", [0, 1])
def test_only_the_chief_worker_gets_the_run_folder(tmp_path, monkeypatch, index):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": index}}))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)   # TMPDIR is read once, then cached
    (tmp_path / "tmp").mkdir()
    args = types.SimpleNamespace(strategy="multiworker", resume=None, epochs=1)
    run = Run.start("unet", args, root=tmp_path / "logs")
    run.write_text("training_log.csv", "epoch,loss\n0,1.0\n")
    if index == 0:
        assert run.chief and run.dir.parent == tmp_path / "logs"
        assert {p.name for p in run.dir.iterdir()} == {"args.json", "run.json", "training_log.csv"}
        assert not list((tmp_path / "tmp").iterdir())
    else:
        assert not run.chief and run.dir.parent == tmp_path / "tmp"
        assert not (tmp_path / "logs").exists()
        assert read_log(run.dir)["loss"] == [1.0]
    # Without multiworker there is one process: always the chief.
    assert Run.start("unet", types.SimpleNamespace(strategy="mirrored", resume=None),
                     root=tmp_path / "logs").chief


# Logical devices must be configured before TensorFlow initialises: a fresh process.
MIRRORED_BN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from nets.layers import BatchNormalization, keras_batch_norm
    from utils.precise_bn import recalibrate_batchnorm

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (8, 8, 8, 3)).astype("float32")
    y = rng.normal(0.0, 1.0, (8, 2)).astype("float32")
    result = {"replicas": strategy.num_replicas_in_sync}
    for kind in ("fused", "keras"):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input((8, 8, 3))
            h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
            if kind == "keras":
                with keras_batch_norm():
                    bn = BatchNormalization(momentum=0.5, name="bn")
            else:
                bn = BatchNormalization(momentum=0.5, name="bn")
            h = keras.layers.GlobalAveragePooling2D()(bn(h))
            model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
            model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        trained = [w.ravel().tolist() for w in model.get_weights()]
        recalibrate_batchnorm(model, [x[:4], x[4:]], steps=2)
        result[kind] = {"trained": trained,
                        "precise_mean": model.get_layer("bn").moving_mean.numpy().tolist()}
    json.dump(result, sys.stdout)
""")


def test_fused_batch_norm_under_mirrored_strategy_matches_keras():
    run = subprocess.run([sys.executable, "-c", MIRRORED_BN], cwd=ROOT, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    for fused, keras_ in zip(result["fused"]["trained"], result["keras"]["trained"]):
        assert fused == pytest.approx(keras_, rel=1e-4, abs=1e-5)
    assert result["fused"]["precise_mean"] == pytest.approx(result["keras"]["precise_mean"],
                                                            rel=1e-4, abs=1e-5)


# The real entry points under --strategy mirrored on two logical CPUs, one process
# each (as in use: two strategies in one process share collective keys). Prints last
# what the test checks.
MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    # The graph optimizer costs a third of a first ResNet50 step on a CPU, and gains
    # nothing in one step.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    from utils.distribute import get_strategy

    script, argv = sys.argv[1], json.loads(sys.argv[2])
    if script == "pde":
        from pde_self_supervised.con_train_resnet_class import main
    else:
        from train import main
    result = main(argv)
    print(json.dumps({"replicas": get_strategy("mirrored").num_replicas_in_sync,
                      "loss": result["history"]["loss"], "run_dir": str(result["run_dir"]),
                      "encoder": str(result.get("encoder_path"))}))
""")


def _run_mirrored(script, argv):
    run = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, script, json.dumps(argv)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert len(result["loss"]) == 1 and np.isfinite(result["loss"]).all()
    return result, run.stdout


# Two processes, each tracing a step on two replicas (ResNet50 for PDE): minutes of CPU.
@pytest.mark.slow
def test_mirrored_strategy_runs_a_pde_step_with_precise_bn_and_a_unet_step(tmp_path):
    from tests.test_pde_train import QUICK, data_args, make_pair_set
    from tests.test_train import make_voc

    files = make_pair_set(tmp_path)
    pde, out = _run_mirrored("pde", data_args(tmp_path, files, tmp_path / "logs") + QUICK + [
        "--strategy", "mirrored", "--epochs", "1", "--steps-per-epoch", "1",
        "--validation-steps", "1", "--precise-bn", "1"])
    assert "Precise BN: moving statistics re-estimated from 1 training batches" in out
    assert Path(pde["encoder"]).is_file()

    voc = make_voc(tmp_path, counts=(("train", 4), ("val", 2)), size=(32, 32))
    unet, _ = _run_mirrored("unet", [
        "--strategy", "mirrored", "--voc-path", str(voc), "--backbone", "vgg",
        "--input-shape", "32", "32", "--freeze-epoch", "1", "--unfreeze-epoch", "1",
        "--freeze-batch-size", "2", "--steps-per-epoch", "1", "--eval-split", "none",
        "--mixed-precision", "--logs-dir", str(tmp_path / "logs")])
    assert (Path(unet["run_dir"]) / "last_epoch.keras").is_file()


def _free_ports(n):
    # Bound together so the n ports differ; closed before the workers bind them.
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _keras_weights(path):
    """Every array in a ``.keras`` file's weights (layers and optimizer), by HDF5 path."""
    import h5py

    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
        arrays = {}
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


# Two processes each import TensorFlow and trace a VGG U-Net step: 18 s on the 2-core
# machine (about 40 s of CPU), minutes when other jobs hold the cores.
def test_multiworker_two_local_workers_train_alike_and_only_the_chief_writes(tmp_path):
    from tests.test_train import make_voc

    voc = make_voc(tmp_path, counts=(("train", 4), ("val", 2)), size=(32, 32))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    argv = ["train.py", "--strategy", "multiworker", "--voc-path", str(voc),
            "--backbone", "vgg", "--input-shape", "32", "32", "--freeze-epoch", "1",
            "--unfreeze-epoch", "1", "--freeze-batch-size", "2", "--steps-per-epoch", "2",
            "--eval-split", "none", "--save-period", "0", "--seed", "3"]
    workers = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        # TMPDIR: where a non-chief's scratch folder goes, kept for the comparison.
        env = dict(os.environ, TF_CONFIG=json.dumps(task), TMPDIR=str(scratch),
                   PDE_KEEP_WORKER_FILES="1", TF_CPP_MIN_LOG_LEVEL="2")
        workers.append(subprocess.Popen(
            [sys.executable, *argv, "--logs-dir", str(tmp_path / f"logs{index}")], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + 480
    outputs = []
    try:
        for w in workers:
            outputs.append(w.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        for w in workers:   # a worker left waiting for its peer would wait forever
            if w.poll() is None:
                w.kill()
                w.wait()
    for index, (w, out) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, f"worker {index}:\n{out[-3000:]}"

    # Worker 0 is the chief (the cluster names no chief): one run folder, the record.
    (run_dir,) = (tmp_path / "logs0").iterdir()
    assert {"args.json", "training_log.csv", "epoch_loss.png", "last_epoch.keras",
            "best_epoch.keras", "results.json", "tensorboard"} <= {p.name for p in run_dir.iterdir()}
    assert read_log(run_dir)["epoch"] == [0]
    # Worker 1 wrote nothing under its --logs-dir, everything into its scratch folder.
    assert not (tmp_path / "logs1").exists()
    assert "Not the chief" in outputs[1] and "Not the chief" not in outputs[0]
    (worker_dir,) = (tmp_path / "tmp1").iterdir()
    assert not list((tmp_path / "tmp0").iterdir())

    chief, other = (_keras_weights(d / "last_epoch.keras") for d in (run_dir, worker_dir))
    assert chief.keys() == other.keys() and len(chief) > 20
    assert chief["optimizer/vars/0"] == 2   # the step count: two steps trained
    # The decoder's batch norm moved its moving mean; the workers agree on it too.
    assert np.abs(chief["layers/batch_normalization/vars/2"]).max() > 0
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
