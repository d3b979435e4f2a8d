"""Seconds per U-Net training step: frozen, decoder alone, unfrozen; float32 vs bfloat16;
Keras's or the fused batch norm; side by side.

The step 6 model (ResNet50 U-Net, Dice + Focal loss, Adam) on in-memory random images,
so only the step is timed. "decoder" trains the same decoder layers on precomputed
encoder features: what a cache of a frozen encoder's outputs would leave to do per
step. Every configuration is built first, then timed one step each in turn for
``--steps`` rounds (``benchmarks/timing.py``), so the ratios hold on a shared machine.
GFLOP/s counts 3x the forward pass's FLOPs (TensorFlow's profiler), also for a frozen
encoder, whose weight gradients are not computed: there it overstates the work.

    python benchmarks/bench_unet_step.py --input-shape 64 128 --batch-size 8 --steps 10 \\
        --modes frozen unfrozen --bn keras fused
"""
import argparse
import itertools
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

MODES = ("frozen", "decoder", "unfrozen")


def build_step(args, mode, precision, bn, adam="fused", xla="default"):
    """A zero-argument callable running one train step, the model and its input."""
    import keras

    from nets.layers import keras_batch_norm
    from nets.unet import build_unet, get_encoder, unet_decoder
    from nets.unet_training import get_loss
    from utils.optimizers import FusedAdam
    from utils.utils import set_seed

    set_seed(args.seed)
    set_bench_precision(precision, args.input_shape, args.batch_size)
    if bn == "keras":
        with keras_batch_norm():
            unet = build_unet((*args.input_shape, 3), 5, "resnet50")
    else:
        unet = build_unet((*args.input_shape, 3), 5, "resnet50")
    encoder = get_encoder(unet)
    encoder.trainable = mode == "unfrozen"
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0, 1, (args.batch_size, *args.input_shape, 3)).astype("float32")
    y = np.eye(6, dtype="float32")[rng.integers(0, 5, (args.batch_size, *args.input_shape))]
    model = unet
    if mode == "decoder":
        # The same decoder, fed the five features directly.
        features = [keras.Input(t.shape[1:]) for t in encoder.outputs]
        model = keras.Model(features, unet_decoder(features, 5, "resnet50"))
        x = [np.asarray(f, "float32") for f in encoder(x, training=False)]
    optimizer = FusedAdam(1e-3) if adam == "fused" else keras.optimizers.Adam(1e-3)
    model.compile(optimizer=optimizer, loss=get_loss("dice_focal", np.ones(5)),
                  jit_compile=jit_compile(xla))
    # Layers keep the policy they were built with; the next model starts from float32.
    keras.mixed_precision.set_global_policy("float32")
    return (lambda: model.train_on_batch(x, y)), model, x


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_options(p, [64, 128], 8, 3)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    precisions = bench_precisions(args.precision)
    print(machine_line(), flush=True)
    h, w = args.input_shape
    print(f"U-Net ResNet50 train step, {h}x{w}, batch {args.batch_size}; median of "
          f"{args.steps} interleaved rounds after {args.warmup} warm-up steps", flush=True)
    steps, flops = {}, {}
    for mode in args.modes:
        for precision in precisions:
            for bn in args.bn:
                for adam, xla in itertools.product(args.adam, args.xla):
                    step, model, x = build_step(args, mode, precision, bn, adam, xla)
                    suffix = ("/keras-adam" if adam == "keras" else "") + xla_suffix(xla)
                    steps[f"{mode}/{precision}/{bn}{suffix}"] = step
                    if mode not in flops:
                        flops[mode] = 3 * forward_flops(model, x)
    results = interleaved(steps, args.steps, args.warmup)
    peak, peak_line = peak_report(args.peak_gflops)
    print(peak_line)
    for name, r in results.items():
        gflops = flops[name.split("/")[0]] / r["s"] / 1e9
        print(f"  {name:35s} {r['s'] * 1000:6.0f} ms/step  CPU {100 * r['cpu']:3.0f} %  "
              f"{gflops:6.1f} GFLOP/s ({100 * gflops / peak:3.0f} % of fp32 peak)")
    for mode in args.modes:
        for precision in precisions:
            pair = [f"{mode}/{precision}/{bn}" for bn in ("keras", "fused")]
            if all(name in results for name in pair):
                print(f"  {mode:9s} fused / keras BN, {precision}: "
                      f"{results[pair[0]]['s'] / results[pair[1]]['s']:.2f}x")
        for precision in precisions:
            for bn in args.bn:
                pair = [f"{mode}/{precision}/{bn}/keras-adam", f"{mode}/{precision}/{bn}"]
                if all(name in results for name in pair):
                    print(f"  {mode:9s} fused / Keras Adam, {precision}, {bn} BN: "
                          f"{results[pair[0]]['s'] / results[pair[1]]['s']:.2f}x")
        for bn in args.bn:
            for precision in precisions:
                pair = [f"{mode}/float32/{bn}", f"{mode}/{precision}/{bn}"]
                if precision != "float32" and all(name in results for name in pair):
                    print(f"  {mode:9s} {precision} / float32, {bn} BN: "
                          f"{results[pair[0]]['s'] / results[pair[1]]['s']:.2f}x")
    for line in xla_ratios(results):
        print(line)
    return results


if __name__ == "__main__":
    main()
