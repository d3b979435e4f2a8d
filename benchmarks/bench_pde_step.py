"""Pairs per second of one classification-distance PDE training step, side by side.

The model of step 5 (ResNet50 towers, Adam) on in-memory random pairs, so only the
step is timed. Every configuration asked for (precision x batch-norm kernel, and
optionally a plain ``keras.applications.ResNet50`` Siamese of the same shape) is built
first, then timed one step each in turn for ``--steps`` rounds (``benchmarks/timing.py``),
so the ratios hold on a shared machine. Precisions are the trainers' names (``auto``:
what ``--precision auto`` picks here) or ``mixed`` (bfloat16 on a CPU, float16 on a GPU). "keras" BN is Keras 3's
unfused ``BatchNormalization``, "fused" the fused kernel the encoder uses
(``nets/layers.py``). GFLOP/s counts 3x the forward pass's FLOPs (TensorFlow's profiler).

    python benchmarks/bench_pde_step.py --input-shape 64 128 --batch-size 16 --pool gap \\
        --precision float32 mixed --bn keras fused --steps 8
    python benchmarks/bench_pde_step.py --input-shape 32 64 --batch-size 32 --pool gap \\
        --shared-towers --precision float32 --freeze-stages conv1 res2 res3 --freeze-bn both
"""
import argparse
import itertools
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

import numpy as np  # noqa: E402

from benchmarks.timing import (add_step_options, bench_precisions, forward_flops,  # noqa: E402
                               interleaved, jit_compile, machine_line, peak_report,
                               set_bench_precision, xla_ratios, xla_suffix)



def keras_app_siamese(shape, pool, shared_towers):
    """The PDE classification model with ``keras.applications.ResNet50(weights=None)``
    as its encoder: the plain Keras reference for the port's own ResNet50."""
    import keras

    from pde_self_supervised.con_resnet import projection_head
    from pde_self_supervised.layers import SquaredDifference

    inputs = [keras.Input(shape, name="self_input1"), keras.Input(shape, name="self_input2")]
    embeddings = []
    encoder = head = None
    for tower, x in enumerate(inputs):
        if encoder is None or not shared_towers:
            encoder = keras.applications.ResNet50(include_top=False, weights=None,
                                                  input_shape=shape, name=f"resnet50_{tower}")
            head = projection_head(pool, tower=tower)
        embeddings.append(head(encoder(x)))
    merged = SquaredDifference(name="squared_difference")(embeddings)
    output = keras.layers.Dense(4, activation="softmax", name="self_output",
                                dtype="float32")(merged)
    return keras.Model(inputs, {"self_output": output})


def build_step(args, precision, bn, adam="fused", freeze_bn=False, xla="default"):
    """A zero-argument callable running one train step of the configuration, and the
    model (for its FLOP count)."""
    import keras
    import tensorflow as tf

    from nets.layers import keras_batch_norm
    from pde_self_supervised.con_resnet_class import self_sup_resnet
    from pde_self_supervised.train_common import build_training_state
    from utils.optimizers import FusedAdam
    from utils.utils import set_seed

    set_seed(args.seed)
    set_bench_precision(precision, args.input_shape, args.batch_size)
    shape = (*args.input_shape, 3)
    if bn == "keras-app":
        model = keras_app_siamese(shape, args.pool, args.shared_towers)
    elif bn == "keras":
        with keras_batch_norm():
            model = self_sup_resnet(shape, pool=args.pool, shared_towers=args.shared_towers)
    else:
        model = self_sup_resnet(shape, pool=args.pool, shared_towers=args.shared_towers)
    if args.freeze_stages and bn != "keras-app":
        from nets.resnet50 import freeze_conv_stages

        freeze_conv_stages(model, args.freeze_stages, batch_norm=freeze_bn)
    optimizer = FusedAdam() if adam == "fused" else keras.optimizers.Adam()
    model.compile(optimizer=optimizer, loss="categorical_crossentropy",
                  metrics=["acc"], jit_compile=jit_compile(xla))
    # Layers keep the policy they were built with; the next model starts from float32.
    keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(args.seed)
    batch = (args.batch_size, *args.input_shape, 3)
    x = {"self_input1": rng.uniform(-1, 1, batch).astype("float32"),
         "self_input2": rng.uniform(-1, 1, batch).astype("float32")}
    y = {"self_output": np.eye(4, dtype="float32")[rng.integers(0, 4, args.batch_size)]}
    build_training_state(model, tf.data.Dataset.from_tensors((x, y)).element_spec)
    return (lambda: model.train_on_batch(x, y)), model, x


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_options(p, [96, 160], 16, 2)
    p.add_argument("--pool", choices=("flatten", "gap"), default="flatten")
    p.add_argument("--shared-towers", action="store_true",
                   help="one tower for both images (the demo profile's setting)")
    p.add_argument("--freeze-stages", nargs="+", default=[], metavar="STAGE",
                   help="keep these ResNet50 stages' convolution kernels fixed, as the PDE "
                        "scripts' --freeze-stages (the demo: conv1 res2 res3)")
    p.add_argument("--freeze-bn", choices=("off", "on", "both"), default="off",
                   help="with --freeze-stages, their batch-norm scale and offset fixed too "
                        "(the scripts' --freeze-bn): off, on, or both side by side")
    p.add_argument("--keras-resnet50", action="store_true",
                   help="also time a Siamese on keras.applications.ResNet50 (same shape, "
                        "head and policy), the plain Keras reference")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    precisions = bench_precisions(args.precision)
    print(machine_line(), flush=True)
    kinds = list(args.bn) + (["keras-app"] if args.keras_resnet50 else [])
    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    h, w = args.input_shape
    print(f"PDE classification-distance train step, {h}x{w}, batch {args.batch_size}, "
          f"pool {args.pool}, {'shared' if args.shared_towers else 'two'} towers, {device}; "
          f"median of {args.steps} interleaved rounds after {args.warmup} warm-up steps",
          flush=True)
    if args.freeze_stages:
        print(f"Convolution kernels of {', '.join(args.freeze_stages)} fixed; their batch "
              f"norm's scale and offset fixed in the rows marked frozen-bn (these steps skip "
              f"part of the backward pass: their GFLOP/s counts the full step's 3 x forward)")
    freeze_bn = {"off": (False,), "on": (True,), "both": (False, True)}[args.freeze_bn]
    steps, flops = {}, None
    for precision in precisions:
        for bn in kinds:
            for adam, xla in itertools.product(args.adam, args.xla):
                for frozen_bn in freeze_bn if bn != "keras-app" else (False,):
                    step, model, x = build_step(args, precision, bn, adam, frozen_bn, xla)
                    steps[f"{precision}/{bn}" + ("/keras-adam" if adam == "keras" else "")
                          + ("/frozen-bn" if frozen_bn else "")
                          + xla_suffix(xla)] = step
                    if flops is None and precision == "float32" and bn != "keras-app":
                        flops = 3 * forward_flops(model, x)
    results = interleaved(steps, args.steps, args.warmup)
    peak, peak_line = peak_report(args.peak_gflops)
    print(peak_line)
    if flops:
        print(f"  {flops / 1e9:.1f} GFLOP per step (3 x forward)")
    base = next(iter(results))
    for name, r in results.items():
        rate = f"{flops / r['s'] / 1e9:6.1f} GFLOP/s ({100 * flops / r['s'] / 1e9 / peak:3.0f} % of fp32 peak)" if flops else ""
        print(f"  {name:29s} {args.batch_size / r['s']:7.1f} pairs/s  {r['s']:6.3f} s/step  "
              f"CPU {100 * r['cpu']:3.0f} %  {rate}  x{results[base]['s'] / r['s']:.2f} vs {base}")
    for precision in precisions:
        if f"{precision}/keras" in results and f"{precision}/fused" in results:
            ratio = results[f"{precision}/keras"]["s"] / results[f"{precision}/fused"]["s"]
            print(f"  fused / keras BN, {precision}: {ratio:.2f}x")
    for bn in kinds:
        for precision in precisions:
            if precision != "float32" and f"float32/{bn}" in results:
                ratio = results[f"float32/{bn}"]["s"] / results[f"{precision}/{bn}"]["s"]
                print(f"  {precision} / float32, {bn}: {ratio:.2f}x")
    for precision in precisions:
        for bn in kinds:
            if f"{precision}/{bn}/keras-adam" in results and f"{precision}/{bn}" in results:
                ratio = results[f"{precision}/{bn}/keras-adam"]["s"] / results[f"{precision}/{bn}"]["s"]
                print(f"  fused / Keras Adam, {precision}, {bn}: {ratio:.2f}x")
    for name in results:
        trained = name.removesuffix("/frozen-bn")
        if trained != name and trained in results:
            ratio = results[trained]["s"] / results[name]["s"]
            print(f"  frozen / trained batch norm of the fixed stages, {trained}: {ratio:.2f}x")
    if "keras-app" in kinds and "fused" in kinds:
        for precision in precisions:
            ratio = results[f"{precision}/keras-app"]["s"] / results[f"{precision}/fused"]["s"]
            print(f"  port (fused) / keras.applications.ResNet50, {precision}: {ratio:.2f}x")
    for line in xla_ratios(results):
        print(line)
    return results


if __name__ == "__main__":
    main()
