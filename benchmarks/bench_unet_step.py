"""Seconds per U-Net training step: frozen, decoder alone, unfrozen; float32 vs bfloat16.

The step 6 model (ResNet50 U-Net, Dice + Focal loss, Adam) on in-memory random images,
so only the step is timed; the first steps (graph tracing) are left out. "decoder"
trains the same decoder layers on precomputed encoder features: what a cache of a
frozen encoder's outputs would leave to do per step.

    python benchmarks/bench_unet_step.py --input-shape 64 128 --batch-size 8 --steps 10
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

MODES = ("frozen", "decoder", "unfrozen")


def time_mode(args, mode, mixed):
    import keras

    from nets.unet import build_unet, get_encoder, unet_decoder
    from nets.unet_training import get_loss
    from utils.utils import set_mixed_precision, set_seed

    set_seed(args.seed)
    policy = set_mixed_precision(mixed)
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
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("dice_focal", np.ones(5)),
                  jit_compile=False)
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    elapsed = (time.perf_counter() - start) / args.steps
    set_mixed_precision(False)
    return policy, elapsed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-shape", type=int, nargs=2, default=[64, 128], metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (tracing)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    h, w = args.input_shape
    print(f"U-Net ResNet50 train step, {h}x{w}, batch {args.batch_size}, {args.steps} timed steps")
    rows = []
    for mode in args.modes:
        times = {}
        for mixed in (False, True):
            policy, seconds = time_mode(args, mode, mixed)
            times[policy] = seconds
        (p32, t32), (pbf, tbf) = times.items()
        rows.append((mode, t32, tbf))
        print(f"{mode:9s} {p32} {t32 * 1000:6.0f} ms/step   {pbf} {tbf * 1000:6.0f} ms/step   "
              f"ratio {t32 / tbf:.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    main()
