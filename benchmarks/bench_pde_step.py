"""Pairs per second of one classification-distance PDE training step, float32 vs mixed.

The model of step 5 (two ResNet50 towers, Adam) at 96x160 with batch 16 by default,
on in-memory random pairs so only the step is timed; the first steps (graph tracing)
are left out. ``--mixed-precision`` in the training scripts is the "mixed" column:
bfloat16 on a CPU, float16 on a GPU.

    python benchmarks/bench_pde_step.py --input-shape 96 160 --batch-size 16 --steps 10
"""
import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def time_steps(args, mixed):
    import keras

    from pde_self_supervised.con_resnet_class import self_sup_resnet
    from pde_self_supervised.train_common import build_training_state
    from utils.utils import jit_compile_default, set_mixed_precision, set_seed

    set_seed(args.seed)
    policy = set_mixed_precision(mixed)
    model = self_sup_resnet((*args.input_shape, 3), pool=args.pool)
    model.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy",
                  metrics=["mse", "acc"], jit_compile=jit_compile_default())
    rng = np.random.default_rng(args.seed)
    shape = (args.batch_size, *args.input_shape, 3)
    x = {"self_input1": rng.uniform(-1, 1, shape).astype("float32"),
         "self_input2": rng.uniform(-1, 1, shape).astype("float32")}
    y = {"self_output": np.eye(4, dtype="float32")[rng.integers(0, 4, args.batch_size)]}
    import tensorflow as tf

    build_training_state(model, tf.data.Dataset.from_tensors((x, y)).element_spec)
    start = time.perf_counter()
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    elapsed = time.perf_counter() - start
    set_mixed_precision(False)
    return {"policy": policy, "pairs_per_s": args.steps * args.batch_size / elapsed,
            "s_per_step": elapsed / args.steps, "warmup_s": first}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-shape", type=int, nargs=2, default=[96, 160], metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    p.add_argument("--pool", choices=("flatten", "gap"), default="flatten")
    p.add_argument("--precision", choices=("both", "float32", "mixed"), default="both")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    runs = {"float32": False, "mixed": True}
    if args.precision != "both":
        runs = {args.precision: runs[args.precision]}
    results = {name: time_steps(args, mixed) for name, mixed in runs.items()}
    h, w = args.input_shape
    print(f"PDE classification-distance train step, {h}x{w}, batch {args.batch_size}, "
          f"pool {args.pool}, {device}, mean of {args.steps} steps after {args.warmup}")
    for name, r in results.items():
        print(f"  {name:8s} ({r['policy']:14s}) {r['pairs_per_s']:7.1f} pairs/s  "
              f"{r['s_per_step']:6.2f} s/step  (first {args.warmup} steps {r['warmup_s']:.0f} s)")
    if len(results) == 2:
        ratio = results["mixed"]["pairs_per_s"] / results["float32"]["pairs_per_s"]
        print(f"  mixed / float32: {ratio:.2f}x")
    return results


if __name__ == "__main__":
    main()
