"""Pairs per second of the PDE pair pipeline against a loader written the original's way.

Both read the same generated JPEGs (576x1024), resize to 432x768, augment with the
default PDE augmentation and crop to 288x512. The original-style loader does, per
batch, a Python loop over the pairs: PIL decode and bicubic resize, then the
augmentation as eager TensorFlow ops image by image (the original's
``dataloader_2img.minibatches`` / ``preprocess_img.double_img``).

    python benchmarks/bench_pair_pipeline.py --images 200 --batches 10
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from pde_self_supervised.dataloader_2img import build_image_cache, pair_dataset  # noqa: E402
from pde_self_supervised.preprocess_img import GRAY_P, JITTER_P, JITTER_STRENGTH  # noqa: E402
from utils.options import add_seed  # noqa: E402


def make_images(folder, count, size=(576, 1024), seed=0):
    """Write ``count`` JPEGs of simple drawn shapes on a noisy background."""
    rng = np.random.default_rng(seed)
    h, w = size
    names = []
    for i in range(count):
        base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, w - 50)), int(rng.integers(0, h - 50))
            x1, y1 = x0 + int(rng.integers(20, 300)), y0 + int(rng.integers(20, 200))
            draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        name = f"bench_{i:04d}.jpg"
        image.save(os.path.join(folder, name), quality=90)
        names.append(name)
    return names


def original_style_augment(image_np):
    """The original's per-image augmentation: eager random ops and Python coin flips."""
    image = tf.image.random_flip_left_right(image_np)
    image = tf.image.random_flip_up_down(image)
    image = tf.image.random_crop(image, (288, 512, 3))
    if tf.random.uniform([], 0, 1) < JITTER_P:
        s = JITTER_STRENGTH
        image = tf.image.random_brightness(image, max_delta=0.8 * s[0])
        image = tf.image.random_contrast(image, 1 - 0.8 * s[1], 1 + 0.8 * s[1])
        image = tf.image.random_saturation(image, 1 - 0.8 * s[2], 1 + 0.8 * s[2])
        image = tf.image.random_hue(image, 0.2 * s[3])
        image = tf.clip_by_value(image, 0, 255)
    if tf.random.uniform([], 0, 1) < GRAY_P:
        image = tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])
    return image / 127.5 - 1


def original_style_batches(x, image_dir, batch_size):
    """Yield batches the original's way: a Python loop over the pairs of each batch."""
    for start in range(0, len(x) - batch_size + 1, batch_size):
        pairs = []
        for a, b in x[start:start + batch_size]:
            imgs = []
            for name in (a, b):
                image = Image.open(os.path.join(image_dir, name)).resize((768, 432), Image.BICUBIC)
                imgs.append(np.asarray(original_style_augment(np.array(image, np.float32))))
            pairs.append(np.stack(imgs))
        batch = np.array(pairs, np.float32)
        yield {"self_input1": batch[:, 0], "self_input2": batch[:, 1]}


def time_batches(make_iterator, batches, batch_size):
    """One timed run: (pairs per second of wall time, CPU ms per pair).

    CPU time (all threads of this process) is the cost independent of parallelism.
    """
    iterator = make_iterator()
    next(iterator)  # warm-up: tracing, thread pools, first reads
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pairs = batches * batch_size
    return pairs / wall, 1000 * cpu / pairs


def time_rounds(loaders, batches, batch_size, repeats):
    """Every loader timed once per round, ``repeats`` rounds: {name: [(rate, cpu), ...]}.

    Taking turns puts each loader's runs in the same stretches of the machine's speed,
    so the per-round ratios to the baseline are side by side measurements.
    """
    runs = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, make in loaders.items():
            runs[name].append(time_batches(make, batches, batch_size))
    return runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="generated JPEGs (default 200)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per batch (default 16)")
    p.add_argument("--batches", type=int, default=10, help="timed batches per loader (default 10)")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds, each timing every loader once (default 3)")
    add_seed(p, 0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.timing import machine_line

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        names = make_images(folder, args.images, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        n_pairs = args.batch_size * (args.batches + 2)
        x = np.array(names)[rng.integers(0, len(names), (n_pairs, 2))]
        y = rng.integers(0, 4, n_pairs)

        start = time.perf_counter()
        cache = build_image_cache(x, folder)
        cache_s = time.perf_counter() - start
        loaders = {
            "tf.data, image cache (default)": lambda: iter(pair_dataset(
                x, y, folder, args.batch_size, seed=args.seed, cache=cache)),
            "tf.data, decoding files": lambda: iter(pair_dataset(
                x, y, folder, args.batch_size, seed=args.seed)),
            "original-style loader": lambda: original_style_batches(x, folder, args.batch_size),
        }
        runs = time_rounds(loaders, args.batches, args.batch_size, args.repeats)
    base = [rate for rate, _ in runs["original-style loader"]]
    print(f"pair pipeline, 576x1024 JPEGs -> 432x768 -> 288x512, default augmentation, "
          f"batch {args.batch_size}, {args.repeats} rounds x {args.batches} batches, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("  speed-up: the median over rounds of the loader's rate / the original-style "
          "loader's in the same round; rates and CPU: best round")
    result = {"cache_build_s": cache_s, "cpu_count": os.cpu_count(), "loaders": {}}
    for name, timed in runs.items():
        rate, cpu = max(r for r, _ in timed), min(c for _, c in timed)
        ratios = [r / b for (r, _), b in zip(timed, base)]
        result["loaders"][name] = {"pairs_per_s": rate, "cpu_ms_per_pair": cpu,
                                   "speedup": float(np.median(ratios)),
                                   "speedup_per_round": ratios}
        print(f"  {name:32s} {rate:7.1f} pairs/s  {np.median(ratios):4.1f}x "
              f"(rounds {', '.join(f'{r:.1f}' for r in ratios)})  {cpu:6.1f} CPU ms/pair")
    print(f"  (image cache of {args.images} images built once in {cache_s:.1f} s)")
    return result


if __name__ == "__main__":
    main()
