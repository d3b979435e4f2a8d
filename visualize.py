"""Look inside a pretrained encoder: filter images and stage embeddings.

    # inputs that excite the first 81 filters of bn4c_branch2c, as a 9x9 grid
    python visualize.py filters --model-path encoder.weights.h5
    # PCA / t-SNE of the encoder's features of stage images, and a k-NN stage accuracy
    python visualize.py embeddings --model-path encoder.weights.h5 --image-dir out/

Both write into a new run folder (``logs/visualize_<time>`` unless ``--out-dir``).
"""
import argparse
import sys
from pathlib import Path

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from nets.encoders import BACKBONES  # noqa: E402
from utils.errors import MissingInput, OutputExists, UserError, writable_dir  # noqa: E402
from utils.image_check import bad_images_error, find_bad_images, rgb8  # noqa: E402
from utils.options import add_logs_dir, add_seed  # noqa: E402
from utils.run import make_run_dir, write_json  # noqa: E402
from utils.utils import set_seed  # noqa: E402

FEATURE_NAMES = ("feat1", "feat2", "feat3", "feat4", "feat5")


def load_encoder(input_shape, backbone="resnet50", model_path=None):
    """An encoder built by ``nets.encoders.build_encoder`` with weights loaded by name."""
    from nets.encoders import build_encoder
    from utils.weights import load_weights_by_name

    encoder = build_encoder(tuple(input_shape), backbone)
    encoder.loaded_layers = []
    if model_path:
        encoder.loaded_layers = load_weights_by_name(encoder, model_path).loaded
    else:
        print("No --model-path: showing a randomly initialised encoder.")
    return encoder


def _deprocess(img, crop):
    """Centre on 0 with std 0.15 around grey, crop the border, clip, to uint8 (as the original)."""
    img = img - img.mean()
    img = img / (img.std() + 1e-5) * 0.15
    if crop:
        img = img[crop:-crop, crop:-crop]
    return (np.clip(img + 0.5, 0, 1) * 255).astype(np.uint8)


def visualize_filters(encoder, layer_name="bn4c_branch2c", filter_indices=range(81),
                      iterations=30, learning_rate=10.0, batch_size=27, seed=11):
    """Gradient ascent on the input to maximise each filter's mean activation.

    Returns one float image (H, W, 3) per filter. Filters are optimised in batches:
    with the encoder in inference mode, each image's gradient depends only on itself,
    so the result equals the original's one-filter-at-a-time loop.
    """
    import keras
    import tensorflow as tf

    try:
        layer = encoder.get_layer(layer_name)
    except ValueError as exc:
        names = [lay.name for lay in encoder.layers if lay.name.startswith("bn")][:8]
        raise ValueError(f"layer {layer_name!r} not in the {encoder.name} encoder "
                         f"(e.g. {', '.join(names)} ...)") from exc
    extractor = keras.Model(encoder.inputs, layer.output)
    channels = layer.output.shape[-1]
    filter_indices = list(filter_indices)
    if max(filter_indices) >= channels:
        raise ValueError(f"layer {layer_name} has {channels} filters; asked for index "
                         f"{max(filter_indices)}")
    h, w = layer.output.shape[1:3]
    # The original left 2 pixels of border out of the loss; tiny maps keep them.
    border = 2 if min(h, w) > 4 else 0

    @tf.function
    def step(img, onehot):
        with tf.GradientTape() as tape:
            tape.watch(img)
            act = extractor(img, training=False)
            act = act[:, border:h - border, border:w - border, :]
            # Mean activation of each image's own filter.
            loss = tf.reduce_sum(tf.reduce_mean(act, axis=(1, 2)) * onehot)
        grads = tape.gradient(loss, img)
        grads = tf.math.l2_normalize(grads, axis=(1, 2, 3))
        return img + learning_rate * grads

    rng = np.random.default_rng(seed)
    shape = tuple(encoder.input_shape[1:])
    images = []
    for start in tqdm(range(0, len(filter_indices), batch_size), desc="filters", unit="batch"):
        idx = filter_indices[start:start + batch_size]
        # Near-grey noise in [-0.125, 0.125], the original's start.
        img = tf.constant((rng.random((len(idx), *shape), dtype=np.float32) - 0.5) * 0.25)
        onehot = tf.one_hot(idx, channels)
        for _ in range(iterations):
            img = step(img, onehot)
        images.extend(img.numpy())
    return images


def stitch(images, n_cols, margin=5):
    """A black canvas with ``images`` in rows of ``n_cols`` and ``margin`` pixels between."""
    h, w = images[0].shape[:2]
    n_rows = -(-len(images) // n_cols)
    canvas = np.zeros((n_rows * h + (n_rows - 1) * margin, n_cols * w + (n_cols - 1) * margin, 3),
                      dtype=np.uint8)
    for k, img in enumerate(images):
        i, j = divmod(k, n_cols)
        canvas[i * (h + margin):i * (h + margin) + h, j * (w + margin):j * (w + margin) + w] = img
    return canvas


def run_filters(args, out_dir):
    encoder = load_encoder((*args.input_size, 3), args.backbone, args.model_path)
    n = args.grid * args.grid
    raw = visualize_filters(encoder, args.layer, range(n), args.steps, args.lr,
                            args.batch_size, args.seed)
    # The original cropped 25 pixels of each border off a 180-pixel image.
    crop = min(args.crop, min(args.input_size) // 4)
    images = [_deprocess(img, crop) for img in raw]
    grid_path = out_dir / f"filters_{args.layer}_{args.grid}x{args.grid}.png"
    Image.fromarray(stitch(images, args.grid)).save(grid_path)
    first_path = out_dir / f"filter_{args.layer}_0.png"
    Image.fromarray(images[0]).save(first_path)
    print(f"Saved {grid_path}")
    return {"grid": str(grid_path), "filter_0": str(first_path), "filters": n,
            "loaded_layers": len(encoder.loaded_layers)}


def _stage_images(folder, max_images=None, seed=11):
    from data_processing.names import FileNameError, is_image_file, parse_stage_name

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInput(folder, "image folder not found", "check --image-dir")
    items, bad = [], []
    for p in sorted(folder.iterdir()):
        if not is_image_file(p):
            continue
        try:
            items.append((p, parse_stage_name(p.name)))
        except FileNameError:
            bad.append(p.name)
    if bad:
        print(f"Skipped {len(bad)} images whose names are not stage names, e.g. {bad[0]}")
    if not items:
        raise UserError(folder, "no stage images named "
                                "<camera>p<preset>t<HH>i<stage>d<YYYY-MM-DD>_<HH>.jpg",
                        "give the out/ folder of select_img.py")
    if max_images and len(items) > max_images:
        pick = np.random.default_rng(seed).choice(len(items), max_images, replace=False)
        items = [items[i] for i in sorted(pick)]
    return items


def encode_images(encoder, paths, input_size, batch_size=16, scale="pde"):
    """Global-average-pooled feat5 of every image: (N, channels) float32.

    ``scale="pde"`` maps pixels to [-1, 1] as the PDE pretraining did; ``"unet"`` to
    [0, 1] as the U-Net does.
    """
    import keras

    pooled = keras.Model(encoder.inputs,
                         keras.layers.GlobalAveragePooling2D()(encoder.outputs[-1]))
    h, w = input_size
    feats = []
    for start in tqdm(range(0, len(paths), batch_size), desc="encode", unit="batch"):
        batch = []
        for p in paths[start:start + batch_size]:
            with Image.open(p) as im:
                im = rgb8(im).resize((w, h), Image.BICUBIC)
                batch.append(np.asarray(im, dtype=np.float32))
        n = len(batch)
        # Pad the last batch to full size: one traced graph instead of two.
        batch += [batch[-1]] * (batch_size - n)
        x = np.stack(batch)
        x = x / 127.5 - 1.0 if scale == "pde" else x / 255.0
        feats.append(np.asarray(pooled.predict_on_batch(x))[:n])
    return np.concatenate(feats).astype(np.float32)


def knn_stage_accuracy(features, stages, k=5, folds=5, seed=11):
    """Cross-validated k-NN (cosine) stage accuracy, with the majority-class baseline.

    Returns ``None`` for the accuracy when some stage has fewer than 2 images.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    stages = np.asarray(stages)
    _, counts = np.unique(stages, return_counts=True)
    baseline = float(counts.max() / counts.sum())
    n_splits = int(min(folds, counts.min()))
    if n_splits < 2 or len(counts) < 2:
        return {"knn_accuracy": None, "knn_baseline": baseline, "knn_folds": n_splits,
                "knn_note": "need at least 2 stages with 2 images each"}
    k_eff = int(min(k, len(stages) - len(stages) // n_splits))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=k_eff, metric="cosine"),
                             features, stages, cv=cv)
    return {"knn_accuracy": float(scores.mean()), "knn_accuracy_std": float(scores.std()),
            "knn_baseline": baseline, "knn_folds": n_splits, "knn_k": k_eff}


def _scatter(points, stages, title, path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for s in sorted(set(stages)):
        sel = np.asarray(stages) == s
        ax.scatter(points[sel, 0], points[sel, 1], s=14, label=f"stage {s}", alpha=0.8)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_embeddings(args, out_dir):
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    items = _stage_images(args.image_dir, args.max_images, args.seed)
    paths = [p for p, _ in items]
    stages = [n.stage for _, n in items]
    encoder = load_encoder((*args.input_size, 3), args.backbone, args.model_path)
    feats = encode_images(encoder, paths, args.input_size, args.batch_size, args.scale)
    np.savez(out_dir / "embeddings.npz", features=feats, stages=np.asarray(stages),
             names=np.asarray([p.name for p in paths]))
    result = {"images": len(paths), "loaded_layers": len(encoder.loaded_layers), "stages": {int(s): int(c) for s, c in
                                                zip(*np.unique(stages, return_counts=True))}}
    n_comp = min(2, len(paths), feats.shape[1])
    pca_points = PCA(n_components=n_comp, random_state=args.seed).fit_transform(feats)
    if n_comp < 2:
        pca_points = np.pad(pca_points, ((0, 0), (0, 2 - n_comp)))
    pca_path = out_dir / "embeddings_pca.png"
    _scatter(pca_points, stages, f"PCA of feat5 ({len(paths)} images)", pca_path)
    result["pca_png"] = str(pca_path)
    if len(paths) >= 4:
        perplexity = float(min(args.perplexity, len(paths) - 1))
        # Barnes-Hut only pays off for thousands of points.
        method = "exact" if len(paths) <= 1000 else "barnes_hut"
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method,
                    random_state=args.seed)
        tsne_path = out_dir / "embeddings_tsne.png"
        _scatter(tsne.fit_transform(feats), stages,
                 f"t-SNE of feat5 (perplexity {perplexity:g})", tsne_path)
        result["tsne_png"] = str(tsne_path)
    else:
        print("Fewer than 4 images: no t-SNE plot.")
    result.update(knn_stage_accuracy(feats, stages, args.knn_k, args.knn_folds, args.seed))
    if result["knn_accuracy"] is not None:
        print(f"k-NN (k={result['knn_k']}, {result['knn_folds']}-fold) stage accuracy: "
              f"{result['knn_accuracy']:.3f} (majority class: {result['knn_baseline']:.3f})")
    else:
        print(f"No k-NN accuracy: {result['knn_note']}")
    write_json(out_dir / "embeddings.json", result)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-path", default=None,
                        help="pretrained weights: encoder.weights.h5, a Siamese/U-Net "
                             "checkpoint or a legacy .h5, loaded by layer name")
    common.add_argument("--backbone", choices=sorted(BACKBONES), default=None,
                        help="(default: the --model-path file's, else resnet50; original: "
                             "resnet50)")
    common.add_argument("--out-dir", default=None, type=writable_dir,
                        help="output folder (default: a new <logs-dir>/visualize_<time>)")
    add_logs_dir(common)
    add_seed(common)

    f = sub.add_parser("filters", parents=[common], help="gradient-ascent filter grid")
    f.add_argument("--layer", default="bn4c_branch2c", help="(original: bn4c_branch2c)")
    f.add_argument("--grid", type=int, default=9, help="grid side; grid^2 filters (original: 9)")
    f.add_argument("--steps", type=int, default=30, help="gradient-ascent steps (original: 30)")
    f.add_argument("--lr", type=float, default=10.0, help="step size (original: 10)")
    f.add_argument("--input-size", type=int, nargs=2, default=(180, 180), metavar=("H", "W"),
                   help="(original: 180 180)")
    f.add_argument("--crop", type=int, default=25,
                   help="border cropped off each filter image (original: 25; at most size/4)")
    f.add_argument("--batch-size", type=int, default=27, help="filters optimised together")

    e = sub.add_parser("embeddings", parents=[common], help="PCA / t-SNE / k-NN of stage images")
    e.add_argument("--image-dir", required=True,
                   help="folder of stage images <camera>p<preset>t<HH>i<stage>d<date>_<HH>.jpg")
    e.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="encoder input (default: the size the --model-path file was trained "
                        "at, else 288 512, the PDE pretraining crop)")
    e.add_argument("--scale", choices=("pde", "unet"), default=None,
                   help="pixel scaling: pde = [-1, 1] (PDE pretraining), unet = [0, 1] "
                        "(default: the --model-path file's, else pde)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-images", type=int, default=None, help="random subset of this size")
    e.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    e.add_argument("--knn-k", type=int, default=5, help="neighbours of the k-NN check")
    e.add_argument("--knn-folds", type=int, default=5, help="cross-validation folds")
    return p.parse_args(argv)


def check_inputs(args):
    """The weights file and (embeddings) the stage images, before any model is built."""
    from utils.weights import check_weights_file

    if args.model_path:
        check_weights_file(args.model_path, "--model-path")
    if args.mode == "embeddings":
        items = _stage_images(args.image_dir, args.max_images, args.seed)
        bad = find_bad_images([p for p, _ in items], "pil")
        if bad:
            raise bad_images_error(bad, "replace or delete it")


# --scale by the pixel scale in a model card (utils.model_card.PIXEL_SCALES).
SCALE_OF_CARD = {"[-1, 1]": "pde", "[0, 1]": "unet"}


def settle_from_card(args):
    """Fill the options left None from the ``--model-path`` file's card (else the
    defaults), with a one-line note for a file without a card."""
    from utils.model_card import DEFAULTS, no_card_note, read_card

    card = read_card(args.model_path) if args.model_path else None
    if args.model_path and card is None:
        print(no_card_note(args.model_path, f"reading it as a {args.backbone or DEFAULTS['backbone']}"
                                            f" encoder" + (f" at {args.scale or 'pde'} scale"
                                                           if args.mode == "embeddings" else "")
                           + ": give the options to override"))
    card = card or {}
    args.backbone = args.backbone or card.get("backbone") or DEFAULTS["backbone"]
    if args.mode == "embeddings":
        args.input_size = args.input_size or card.get("input_shape") or (288, 512)
        args.scale = args.scale or SCALE_OF_CARD.get(card.get("pixel_scale"), "pde")


def main(argv=None):
    args = parse_args(argv)
    set_seed(args.seed)
    check_inputs(args)
    settle_from_card(args)
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if any(out_dir.iterdir()):
            raise OutputExists(out_dir, "is not empty", "choose a new --out-dir")
        write_json(out_dir / "args.json", vars(args))
    else:
        out_dir = make_run_dir(f"visualize_{args.mode}", args, root=args.logs_dir)
    run = run_filters if args.mode == "filters" else run_embeddings
    result = run(args, out_dir)
    result.update(mode=args.mode, out_dir=str(out_dir))
    return result


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
