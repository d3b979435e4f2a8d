"""Distribution: who writes the files, and the fused batch norm under MirroredStrategy."""
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from utils.utils import is_chief

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
