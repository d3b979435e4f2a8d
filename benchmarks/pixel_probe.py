"""What can a linear read-out find, pixel by pixel, in a frozen encoder's features?

For each U-Net checkpoint given (a ``train.py`` run's ``.keras`` file: its encoder with
the batch-norm statistics it was trained with, e.g. a frozen-only U-Net of
``run_pipeline.py``), every sampled pixel of a photo gets the encoder's five feature
maps read at the cell that holds it (3,904 numbers for ResNet50: strides 2 to 32), and a
multinomial logistic regression on standardised features is fit to the classes of
pixels sampled from the train split; the test split gives per-class IoU and mIoU, as
``benchmarks/colour_baseline.py`` does with a pixel's colour. No decoder is trained, so
the figure compares what the encoders hold without a decoder's training noise, and the
colour classifier is its floor.

    python benchmarks/pixel_probe.py --voc demo_data/demo/VOCdevkit \\
        pde=logs/pipeline_demo_<time>/unet_<time>/last_epoch.keras random=...
"""
import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

import numpy as np  # noqa: E402

from benchmarks.colour_baseline import evaluate, report, sample_pixels  # noqa: E402
from nets.encoders import BACKBONES  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.options import add_seed  # noqa: E402
from utils.utils import NAME_CLASSES, preprocess_input  # noqa: E402


def encoder_features(model_path, backbone="resnet50", num_classes=len(NAME_CLASSES),
                     maps=None):
    """``features(rgb, flat_indices) -> (n, channels)``: the frozen encoder of the U-Net
    checkpoint ``model_path``, each feature map (``maps``: their indices, shallow to
    deep; default all) read at the cell holding each pixel. The photo is padded (grey)
    to a multiple of 32 on the bottom and right; the pixels read are the photo's own."""
    from nets.unet import build_unet, get_encoder

    model = build_unet((None, None, 3), num_classes, backbone)
    try:
        model.load_weights(str(model_path))
    except ValueError as exc:
        raise UserError(model_path, f"not a {backbone} U-Net checkpoint with {num_classes} "
                                    f"classes ({exc})") from exc
    encoder = get_encoder(model)

    def features(rgb, idx):
        h, w = rgb.shape[:2]
        padded = np.full((-(-h // 32) * 32, -(-w // 32) * 32, 3), 128, np.uint8)
        padded[:h, :w] = rgb
        outputs = encoder(preprocess_input(padded)[None], training=False)
        y, x = np.divmod(np.asarray(idx), w)
        columns = []
        for k, m in enumerate(outputs):
            if maps is not None and k not in maps:
                continue
            m = np.asarray(m[0], np.float32)
            stride = padded.shape[0] // m.shape[0]
            columns.append(m[y // stride, x // stride])
        return np.concatenate(columns, axis=1)

    return features


# The read-out's defaults (benchmarks/pde_vs_random.py uses them as they are).
PIXELS_PER_IMAGE, STRIDE, SEED = 500, 2, 0


def probe(voc, model_path, pixels_per_image=PIXELS_PER_IMAGE, stride=STRIDE, seed=SEED,
          balanced=False, c=1.0, backbone="resnet50", maps=None):
    """Fit the read-out on the train split of ``voc`` and return :func:`report` of the
    test split, with the feature size and the number of training pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(NAME_CLASSES)
    features = encoder_features(model_path, backbone, n, maps)
    x, y = sample_pixels(voc, "train", pixels_per_image, np.random.default_rng(seed), n,
                         features)
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=c, max_iter=3000,
                                             class_weight="balanced" if balanced else None))
    model.fit(x, y)
    hist = evaluate(model, voc, "test", stride, n, features)
    return {"features": int(x.shape[1]), "train_pixels": int(len(y)), **report(hist)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="NAME=CHECKPOINT",
                   help="U-Net checkpoints (.keras) whose encoders to probe, each with a name "
                        "for the table, e.g. pde=.../last_epoch.keras")
    p.add_argument("--voc-path", "--voc", dest="voc", required=True,
                   help="VOCdevkit (or its VOC2007) folder with train and test lists; photos "
                        "at the size the U-Net was evaluated at")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet50",
                   help="the U-Nets' encoder (default: resnet50)")
    p.add_argument("--pixels-per-image", type=int, default=PIXELS_PER_IMAGE,
                   help=f"training pixels sampled from each train photo (default: "
                        f"{PIXELS_PER_IMAGE})")
    p.add_argument("--stride", type=int, default=STRIDE,
                   help=f"evaluate every stride-th pixel in both directions (default: {STRIDE})")
    p.add_argument("--balanced", action="store_true",
                   help="weight classes inversely to their pixel share")
    p.add_argument("--C", dest="c", type=float, default=1.0,
                   help="inverse L2 strength of the logistic regression (default: 1)")
    p.add_argument("--maps", type=int, nargs="+", choices=range(5), default=None,
                   help="read only these of the encoder's five feature maps, 0 (the shallowest, "
                        "ResNet50's stride 2) to 4 (the deepest, stride 32; default: all)")
    add_seed(p, SEED, help=f"pixel sampling seed (default: {SEED})")
    args = p.parse_args(argv)
    named = []
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"{item!r}: give NAME=CHECKPOINT")
        if not Path(path).is_file():
            p.error(f"{path}: no such checkpoint")
        named.append((name, Path(path)))
    args.models = named
    return args


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.timing import machine_line

    print(machine_line(), flush=True)
    results = {}
    for name, path in args.models:
        t0 = time.perf_counter()
        results[name] = probe(args.voc, path, args.pixels_per_image, args.stride, args.seed,
                              args.balanced, args.c, args.backbone, args.maps)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print("command: python benchmarks/pixel_probe.py "
          + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"linear read-out of frozen encoder features per pixel ("
          f"{next(iter(results.values()))['train_pixels']} train pixels); test split IoU:")
    print(f"{'encoder':12s} " + " ".join(f"{c[:10]:>10s}" for c in NAME_CLASSES)
          + f" {'mIoU':>7s} {'seconds':>8s}")
    for name, r in results.items():
        print(f"{name:12s} " + " ".join(f"{r['iou'][c]:10.3f}" for c in NAME_CLASSES)
              + f" {r['mIoU']:7.4f} {r['seconds']:8.1f}")
    return results


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
