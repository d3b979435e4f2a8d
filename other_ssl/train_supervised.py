"""The "supervised phenological classification" baseline: train a ResNet50 classifier
on the stage of each selected image (from its file name) and keep its encoder.

    python other_ssl/train_supervised.py --image-dir out/

Writes a new run folder ``<logs>/supervised_stage_<time>/`` with ``args.json``,
``training_log.csv``, checkpoints, ``epoch_loss.png``, ``results.json`` (validation
accuracy) and ``encoder.weights.h5`` (the five-feature backbone) for ``train.py``.
The original repository has no code for this row of the paper's table; the defaults
follow the other pretrainings (Adam at the Keras default rate, 288x512 inputs).
"""

import argparse  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from nets.encoders import BACKBONES, build_encoder, check_input_shape  # noqa: E402
from other_ssl.base import POOLS  # noqa: E402
from other_ssl.dataset import (check_batch_size, check_images, list_images,  # noqa: E402
                               make_image_dataset, stage_labels)
from other_ssl.training import (CHECKPOINT, MAY_CHANGE, OPTIMIZERS, epoch_steps,  # noqa: E402
                                make_optimizer, resume)
from utils.callbacks import Checkpoint, fit_in_run  # noqa: E402
from utils.options import add_input_shape, add_run_options  # noqa: E402
from utils.run import Run, fresh_path, resume_args  # noqa: E402
from utils.utils import jit_compile_default, set_seed  # noqa: E402
from utils.distribute import get_strategy  # noqa: E402
from utils.precise_bn import add_precise_bn_arg, recalibrate_batchnorm  # noqa: E402
from utils.errors import UserError, user_errors  # noqa: E402
from utils.precision import set_precision  # noqa: E402
from utils.weights import save_encoder  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image-dir", default="out",
                   help="folder of stage images named <camera>p<preset>t<HH>i<stage>"
                        "d<YYYY-MM-DD>_<HH>.jpg (step 2's out/)")
    add_input_shape(p, [288, 512], "resize images to H W (as PDE pretraining)")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet50")
    p.add_argument("--pool", choices=POOLS, default="gap",
                   help="last feature map -> vector before the softmax layer")
    p.add_argument("--num-stages", type=int, default=None,
                   help="number of classes (None: the largest stage in the names + 1)")
    p.add_argument("--epochs", type=int, default=20,
                   help="(as PDE classification-distance pretraining)")
    p.add_argument("--batch-size", type=int, default=48, help="(as the other baselines)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="(as the original's pretrainings: adam)")
    p.add_argument("--learning-rate", type=float, default=1e-3,
                   help="(the Keras Adam default, as the original's Adam())")
    p.add_argument("--val-split", type=float, default=0.1,
                   help="fraction of images held out (stratified by stage) for validation")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="cap on steps per epoch (None: one pass over the training split)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out images that do not decode, naming them (default: stop "
                        "with an error naming the first)")
    p.add_argument("--save-period", type=int, default=1,
                   help="save a checkpoint every N epochs, and after the last")
    add_precise_bn_arg(p)
    add_run_options(p, may_change=MAY_CHANGE)
    return resume_args(p, argv, may_change=MAY_CHANGE, kind="supervised_stage")


def build_classifier(input_shape, num_stages, backbone="resnet50", pool="gap"):
    """image (0..1) -> backbone -> last feature map -> pool -> Dense(num_stages, softmax).

    The backbone is one sub-model named after it (``model.get_layer("resnet50")``)."""
    encoder = build_encoder(input_shape, backbone)
    image = keras.Input(shape=tuple(input_shape), name="image")
    last = encoder(image)[-1]
    pooled = (keras.layers.Flatten(name="flatten") if pool == "flatten"
              else keras.layers.GlobalAveragePooling2D(name="gap"))(last)
    probs = keras.layers.Dense(num_stages, activation="softmax", dtype="float32",
                               name="stage")(pooled)
    return keras.Model(image, probs, name=f"stage_classifier_{backbone}")


def split_indices(labels, val_split, seed):
    """Train and validation indices, stratified by stage where every stage has >= 2
    images; a plain random split otherwise."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if val_split <= 0:
        return idx, idx[:0]
    counts = Counter(labels)
    n_val = max(1, int(round(val_split * len(labels))))
    stratify = labels if min(counts.values()) >= 2 and n_val >= len(counts) else None
    train, val = train_test_split(idx, test_size=n_val, random_state=seed, shuffle=True,
                                  stratify=stratify)
    return np.sort(train), np.sort(val)


def _train_map(image, label):
    image = tf.image.random_flip_left_right(image) / 255.0
    return image, label


def _val_map(image, label):
    return image / 255.0, label


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    input_shape = (args.input_shape[0], args.input_shape[1], 3)
    with user_errors("--input-shape"):
        check_input_shape(input_shape, args.backbone)
    paths = check_images(list_images(args.image_dir), args.skip_bad_images)
    labels = stage_labels(paths)
    num_stages = args.num_stages or max(labels) + 1
    if max(labels) >= num_stages:
        raise UserError("--num-stages", f"{num_stages}, but {args.image_dir} holds stage "
                                        f"{max(labels)}", f"give --num-stages {max(labels) + 1} or more")
    if len(set(labels)) < 2:
        raise UserError(args.image_dir, f"every image is stage {labels[0]}",
                        "a stage classifier needs images of at least two stages")
    train_idx, val_idx = split_indices(labels, args.val_split, args.seed)
    check_batch_size(len(train_idx), args.batch_size,
                     f"{args.image_dir} (training split)")
    steps, capped = epoch_steps(len(train_idx), args.batch_size, args.steps_per_epoch)

    set_seed(args.seed)
    args.precision_decision = set_precision(args.precision, input_shape[:2], args.batch_size)
    train_paths, train_labels = [paths[i] for i in train_idx], [labels[i] for i in train_idx]
    train_ds = make_image_dataset(train_paths, input_shape, args.batch_size,
                                  labels=train_labels, seed=args.seed, repeat=capped,
                                  map_fn=_train_map)
    val_ds = None
    if len(val_idx):
        val_ds = make_image_dataset([paths[i] for i in val_idx], input_shape, args.batch_size,
                                    labels=[labels[i] for i in val_idx], shuffle=False,
                                    drop_remainder=False, map_fn=_val_map)
    with get_strategy(args.strategy).scope():
        model = build_classifier(input_shape, num_stages, args.backbone, args.pool)
        model.compile(optimizer=make_optimizer(args.optimizer, args.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      jit_compile=False if args.run_eagerly else jit_compile_default(),
                      run_eagerly=args.run_eagerly)

    run = Run.start("supervised_stage", args, root=args.logs_dir)
    run_dir = run.dir
    initial_epoch = resume(run, model, train_ds) if args.resume else 0
    counts = dict(sorted(Counter(labels).items()))
    print(f"stage classifier: {len(train_idx)} training / {len(val_idx)} validation images "
          f"from {args.image_dir}, images per stage {counts}; run folder {run_dir}")
    monitor = "val_accuracy" if val_ds is not None else "accuracy"
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    after = [Checkpoint(run, CHECKPOINT, args.save_period),
             keras.callbacks.ModelCheckpoint(str(run_dir / "checkpoints" / "best.weights.h5"),
                                             monitor=monitor, mode="max",
                                             save_best_only=True, save_weights_only=True)]
    history = fit_in_run(run, model, train_ds, after=after, validation_data=val_ds,
                         epochs=args.epochs, initial_epoch=initial_epoch,
                         steps_per_epoch=steps if capped else None, shuffle=False)

    encoder = model.get_layer(args.backbone)
    if args.precise_bn:
        used = recalibrate_batchnorm(model, train_ds, args.precise_bn)
        print(f"Precise BN: statistics re-estimated from {used} training batches")
    encoder_path = save_encoder(encoder, fresh_path(run_dir / "encoder.weights.h5"),
                                backbone=args.backbone, pretraining="supervised_stage",
                                input_shape=input_shape)
    val_accs = history.get("val_accuracy") or [None]
    val_acc = val_accs[-1]
    results = {"num_stages": num_stages, "images_per_stage": counts,
               "train_images": len(train_idx), "val_images": len(val_idx),
               "final_val_accuracy": val_acc,
               "best_val_accuracy": max(val_accs) if val_acc is not None else None,
               "final_accuracy": history.get("accuracy", [None])[-1],
               "encoder_path": encoder_path}
    run.write_json("results.json", results)
    print(f"validation accuracy {val_acc}; encoder saved to {encoder_path}")
    return {"run_dir": run_dir, "encoder_path": encoder_path, "history": history,
            "val_accuracy": val_acc, "num_stages": num_stages}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
