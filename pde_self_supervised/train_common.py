"""What the two PDE training scripts share: options, data checks, the run loop.

``con_train_resnet_class.py`` and ``con_train_resnet.py`` each describe their model,
loss and defaults in a :class:`MethodSpec` and call :func:`run`.
"""
import argparse
import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from nets.encoders import check_input_shape
from nets.resnet50 import STAGE_NAMES, freeze_conv_stages
from pde_self_supervised.dataloader_2img import (PairDataError, bad_images_message,
                                                 build_image_cache, cache_bytes,
                                                 check_all_present, drop_pairs_with,
                                                 find_bad_images, find_undecodable,
                                                 load_pair_index, pair_dataset,
                                                 resolve_image_dir,
                                                 split_by_fractions)
from utils.errors import UserError, user_errors
from utils.precision import set_precision
from utils.precise_bn import add_precise_bn_arg, recalibrate_batchnorm
from utils.options import add_input_shape, add_resume_period, add_run_options
from utils.run import (Run, fresh_path, logged, newest_checkpoint, progress_verbose,
                       resume_args)
from utils.utils import jit_compile_default, set_seed
from utils.distribute import get_strategy

# The file names the original's make_dataset.py gave the pair index.
DEFAULT_PAIRS_X = "x_out_inx200000.npy"
DEFAULT_PAIRS_Y = "y_out_inx200000.npy"
CHECKPOINT_PATTERN = "ep{epoch:03d}-loss{loss:.3f}-val_loss{val_loss:.3f}.keras"
CHECKPOINT_RE = re.compile(r"^ep(\d+)-.*\.keras$")
SPLITS = ("train", "val", "test")
# Options a resumed run may change; the others come from the run's args.json.
RESUME_MAY_CHANGE = ("epochs", "steps_per_epoch", "keep_checkpoints", "resume_period_min",
                     "validation_steps", "cache_images", "cache_mb", "test_batch_size",
                     "skip_bad_images")


@dataclasses.dataclass
class MethodSpec:
    """One PDE variant: how to build, compile and name it."""
    run_name: str                      # run folder prefix, e.g. "pde_class"
    kind: str                          # "class" or "grading": the targets
    build_model: Callable              # args -> keras.Model
    make_optimizer: Callable           # learning rate (number or schedule) -> optimizer
    make_loss: Callable                # args -> loss
    make_metrics: Callable             # () -> compiled metrics
    epochs: int
    split: tuple                       # default (train, val) fractions; test is the rest
    split_note: str                    # the original's split, for the help text


def add_arguments(parser, spec):
    """The options both training scripts take, with the original's defaults."""
    data = parser.add_argument_group("data")
    data.add_argument("--image-dir", default="out",
                      help="folder of stage images from step 2 (original: out/)")
    data.add_argument("--pairs-x", default=DEFAULT_PAIRS_X,
                      help=f"pair index: image names, (n, 2) .npy from step 3 "
                           f"(original: {DEFAULT_PAIRS_X})")
    data.add_argument("--pairs-y", default=DEFAULT_PAIRS_Y,
                      help=f"pair index: classes 0..3, (n,) .npy (original: {DEFAULT_PAIRS_Y})")
    for split in ("val", "test"):
        data.add_argument(f"--{split}-pairs-x", default=None,
                          help=f"explicit {split} split names .npy (with --{split}-pairs-y); "
                               f"then --pairs-x/-y are the whole training split")
        data.add_argument(f"--{split}-pairs-y", default=None,
                          help=f"explicit {split} split classes .npy")
    data.add_argument("--split", type=float, nargs=2, metavar=("TRAIN", "VAL"),
                      default=list(spec.split),
                      help=f"fractions of the pair index, in file order, for training and "
                           f"validation; the rest is the test split (original: "
                           f"{spec.split_note}; default {spec.split[0]} {spec.split[1]})")
    add_input_shape(data, [288, 512], "network input, after the random crop; divisible by 32 "
                                      "(original: 288 512)")
    data.add_argument("--load-size", type=int, nargs=2, metavar=("H", "W"), default=[432, 768],
                      help="size images are resized to before the crop (original: 432 768)")
    data.add_argument("--no-augment", action="store_true",
                      help="centre crop, no flips or colour changes (original: augment)")
    data.add_argument("--crop-only", action="store_true",
                      help="augment by random crops and flips only, without the colour jitter "
                           "and grayscale (which hide the colours that tell the stages); with "
                           "a load size twice the input size, each crop has the pixel scale "
                           "of a U-Net trained at the load size; overrides --no-augment "
                           "(original: colour too)")
    data.add_argument("--shuffle-labels", action="store_true",
                      help="control run: the training pairs' classes are permuted among them "
                           "(seeded), so the pretext holds no prior and only its training "
                           "remains; validation and test pairs keep theirs (compare the "
                           "encoder's U-Net with a normal run's to see what the prior adds)")
    data.add_argument("--skip-bad-images", action="store_true",
                      help="leave out the pairs of unreadable images instead of stopping")
    data.add_argument("--cache-images", choices=("auto", "on", "off"), default="auto",
                      help="keep every image, resized to the load size, in memory (decoded "
                           "once instead of once per pair); auto = on when it fits in "
                           "--cache-mb (default auto)")
    data.add_argument("--cache-mb", type=int, default=4096,
                      help="largest image cache 'auto' builds, in MB (default 4096)")
    train = parser.add_argument_group("training")
    train.add_argument("--batch-size", type=int, default=72, help="pairs per step (original: 72)")
    train.add_argument("--test-batch-size", type=int, default=64,
                       help="pairs per step of the test evaluation (original: 64)")
    train.add_argument("--epochs", type=int, default=spec.epochs,
                       help=f"(original: {spec.epochs})")
    train.add_argument("--steps-per-epoch", type=int, default=None,
                       help="steps per epoch; fewer than one pass for quick runs, more for "
                            "several passes per epoch (original: one pass, n_train // batch "
                            "size)")
    train.add_argument("--validation-steps", type=int, default=None,
                       help="cap on validation steps per epoch (default: the whole split)")
    train.add_argument("--learning-rate", type=float, default=1e-3,
                       help="(peak) learning rate (original: the Keras default, 0.001)")
    train.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                       help="constant (original), or cosine: a linear warm-up from 1 %% of "
                            "the rate over --warmup-epochs, then a cosine down to "
                            "--min-learning-rate at the last step of --epochs")
    train.add_argument("--warmup-epochs", type=float, default=0.0,
                       help="cosine schedule's warm-up, in epochs; fractions allowed "
                            "(default 0)")
    train.add_argument("--min-learning-rate", type=float, default=0.0,
                       help="cosine schedule's last rate (default 0)")
    train.add_argument("--pool", choices=("flatten", "gap"), default="flatten",
                       help="how each tower reduces its last feature map: flatten (original) or "
                            "global average pooling (far fewer parameters at large inputs)")
    train.add_argument("--shared-towers", action="store_true",
                       help="one encoder for both images (original: two towers)")
    train.add_argument("--freeze-stages", nargs="+", default=[], metavar="STAGE",
                       choices=STAGE_NAMES,
                       help="keep the convolution kernels of these ResNet50 stages at their "
                            "initial values (batch norm still trains), e.g. conv1 res2 res3 "
                            "(default: none, as the original)")
    train.add_argument("--freeze-bn", action="store_true",
                       help="with --freeze-stages, keep those stages' batch-norm scale and "
                            "offset at 1 and 0 as well (they still normalise with each batch's "
                            "statistics): no gradient flows below the lowest trained stage, so "
                            "a step is faster")
    add_precise_bn_arg(train)
    train.add_argument("--keep-checkpoints", type=int, default=0, metavar="N",
                       help="keep only the N newest checkpoints this command wrote (0 = "
                            "all, as the original). A checkpoint holds the weights and the "
                            "optimizer state: about 4.2 GB at 288x512 with --pool flatten")
    add_resume_period(train, "an epoch's checkpoint (the resume point)", "the last epoch always "
                             "writes one (default 0: every epoch, as the original)")
    add_run_options(parser.add_argument_group("run: seed, logs, precision, strategy"),
                    may_change=RESUME_MAY_CHANGE)
    return parser


def _read_split(x_path, y_path, what):
    if (x_path is None) != (y_path is None):
        raise PairDataError(f"give both --{what}-pairs-x and --{what}-pairs-y, or neither")
    return load_pair_index(x_path, y_path)


def load_splits(args):
    """``{"train": (x, y), "val": ..., "test": ...}`` from the options."""
    explicit = [args.val_pairs_x, args.val_pairs_y, args.test_pairs_x, args.test_pairs_y]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise PairDataError("explicit splits need all of --val-pairs-x/-y and "
                                "--test-pairs-x/-y; otherwise use --split")
        splits = {"train": load_pair_index(args.pairs_x, args.pairs_y),
                  "val": _read_split(args.val_pairs_x, args.val_pairs_y, "val"),
                  "test": _read_split(args.test_pairs_x, args.test_pairs_y, "test")}
    else:
        x, y = load_pair_index(args.pairs_x, args.pairs_y)
        splits = split_by_fractions(x, y, *args.split)
    check_not_empty(splits)
    return splits


def split_sources(args):
    """``{split: where its names come from}``, for messages: its own file (explicit
    splits) or its share of ``--pairs-x``."""
    if args.val_pairs_x is not None:
        return {"train": args.pairs_x, "val": args.val_pairs_x, "test": args.test_pairs_x}
    return {s: f"{args.pairs_x} ({s} part of --split)" for s in SPLITS}


def check_not_empty(splits):
    for name in SPLITS:
        if len(splits[name][0]) == 0:
            sizes = ", ".join(f"{k} {len(v[0])}" for k, v in splits.items())
            raise PairDataError(f"the {name} split is empty ({sizes} pairs); give more pairs, "
                                f"change --split, or pass the split files")


def _all_names(splits):
    return np.concatenate([splits[s][0].reshape(-1) for s in SPLITS])


def _want_cache(args, n_images):
    if args.cache_images != "auto":
        return args.cache_images == "on"
    if args.strategy == "multiworker":
        return False  # untested across machines; each worker would hold a full copy
    size_mb = cache_bytes(n_images, args.load_size) / 2**20
    try:
        free_mb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        free_mb = float("inf")
    return size_mb <= min(args.cache_mb, free_mb / 2)


def prepare_data(args):
    """Read the splits, check every file, drop bad pairs (with --skip-bad-images),
    build the image cache. Returns ``(splits, cache or None)``."""
    splits = load_splits(args)
    names = _all_names(splits)
    args.image_dir = resolve_image_dir(names, args.image_dir, args.pairs_x)
    for split, source in split_sources(args).items():
        check_all_present(splits[split][0], args.image_dir, index_name=source)
    bad = find_bad_images(names, args.image_dir)
    if bad and not args.skip_bad_images:
        raise PairDataError(bad_images_message(bad, args.image_dir))
    n_images = len(np.unique(names))
    cache = None
    if _want_cache(args, n_images):
        size_mb = cache_bytes(n_images, args.load_size) / 2**20
        print(f"Caching {n_images} images at {args.load_size[0]}x{args.load_size[1]} "
              f"({size_mb:.0f} MB; --cache-images off to read files per pair)")
        good = np.setdiff1d(np.unique(names), list(bad))
        cache = build_image_cache(good, args.image_dir, args.load_size,
                                  skip_bad=args.skip_bad_images)
        bad.update(cache.bad)
    if bad:
        removed = 0
        for name in SPLITS:
            x, y, k = drop_pairs_with(*splits[name], bad)
            splits[name] = (x, y)
            removed += k
        print(f"--skip-bad-images: {len(bad)} unreadable image(s) left out, {removed} pairs "
              f"dropped; first: {', '.join(list(bad)[:5])}")
        check_not_empty(splits)
    if args.shuffle_labels:
        x, y = splits["train"]
        splits["train"] = (x, np.random.default_rng(args.seed).permutation(y))
        print("--shuffle-labels: the training pairs' classes are permuted (a control run)")
    print("Pairs: " + ", ".join(f"{s} {len(splits[s][0])}" for s in SPLITS))
    return splits, cache


def last_checkpoint(run_dir):
    """``(path, epoch)`` of the newest complete ``epNNN-*.keras`` in ``run_dir``; a file
    cut off by a kill is passed over."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume: run folder not found: {run_dir}")
    path, epoch = newest_checkpoint((p for p in run_dir.iterdir() if CHECKPOINT_RE.match(p.name)),
                                    legacy=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))
    if path is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint ep*.keras in {run_dir}")
    return path, epoch


def _callbacks(args, run):
    """(callbacks before the run's record, callbacks after it) of :func:`fit_in_run`."""
    import keras

    from utils.callbacks import Checkpoint, LearningRateLog, ResumableEarlyStopping

    class PairsPerSecond(keras.callbacks.Callback):
        """Adds ``pairs_per_s`` to the progress bar and the per-epoch log."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start = self.last = time.perf_counter()
            self.steps = 0

        def rate(self):
            return self.steps * args.batch_size / (time.perf_counter() - self.start)

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if logs is not None:
                logs["pairs_per_s"] = self.rate()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["pairs_per_s"] = self.rate()

    class PruneCheckpoints(keras.callbacks.Callback):
        """Deletes this command's older checkpoints beyond the ``keep`` newest; files
        that were in the folder before it started are never touched."""

        def __init__(self, keep):
            super().__init__()
            self.keep = keep
            self.before = set(run.dir.glob("ep*.keras"))

        def on_epoch_end(self, epoch, logs=None):
            ours = sorted((p for p in run.dir.glob("ep*.keras") if p not in self.before),
                          key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))
            for path in ours[:-self.keep]:
                path.unlink()

    after = [ResumableEarlyStopping(previous=logged(run.log(), "val_loss"), monitor="val_loss",
                                    mode="min", min_delta=0.001, patience=3, verbose=1),
             Checkpoint(run, CHECKPOINT_PATTERN, period_s=60 * args.resume_period_min)]
    if args.keep_checkpoints > 0:
        after.append(PruneCheckpoints(args.keep_checkpoints))
    return [PairsPerSecond(), LearningRateLog()], after


def _compile(model, spec, args, optimizer):
    model.compile(optimizer=optimizer, loss=spec.make_loss(args),
                  metrics=spec.make_metrics(), run_eagerly=args.run_eagerly,
                  jit_compile=False if args.run_eagerly else jit_compile_default())
    return model


def build_training_state(model, element_spec):
    """Create the optimizer's and the metrics' variables before the first step.

    Outside a distribution strategy Keras creates them inside the first traced train
    step, and TensorFlow then traces that step a second time: for a two-tower ResNet50
    that is a minute or more of CPU time saved per run.
    """
    model.optimizer.build(model.trainable_variables)
    symbolic_build = getattr(model, "_symbolic_build", None)  # Keras 3 internal
    if symbolic_build is not None:
        symbolic_build(data_batch=element_spec)


def run(spec, args):
    """Train one PDE variant as ``args`` say; see the scripts' ``main`` for the result."""
    import keras
    import tensorflow as tf

    from utils.callbacks import fit_in_run
    from utils.optimizers import learning_rate_schedule
    from utils.weights import save_encoder

    import pde_self_supervised.layers  # noqa: F401  (custom layers for checkpoints)
    import pde_self_supervised.losses  # noqa: F401
    import pde_self_supervised.metrics  # noqa: F401  (view_acc, stage_acc, in checkpoints)
    import utils.optimizers  # noqa: F401  (FusedAdam, in resume checkpoints)

    set_seed(args.seed)
    shape = (args.input_shape[0], args.input_shape[1], 3)
    with user_errors("--input-shape"):
        check_input_shape(shape, "resnet50")
    if args.input_shape[0] > args.load_size[0] or args.input_shape[1] > args.load_size[1]:
        raise UserError("--input-shape", f"{args.input_shape} is larger than --load-size "
                                         f"{args.load_size}; the input is a crop of the loaded "
                                         f"image", "lower it or raise --load-size")
    for option in ("batch_size", "test_batch_size", "epochs"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')}", "must be at least 1")
    if args.freeze_bn and not args.freeze_stages:
        raise UserError("--freeze-bn", "freezes the batch norm of the --freeze-stages, and "
                                       "none are given", "add --freeze-stages conv1 res2 ...")

    resume_from, initial_epoch = None, 0
    if args.resume:
        resume_from, initial_epoch = last_checkpoint(args.resume)
    splits, cache = prepare_data(args)

    args.precision_decision = set_precision(args.precision, args.input_shape, args.batch_size)
    policy = args.precision_decision["policy"]
    strategy = get_strategy(args.strategy)
    run = Run.start(spec.run_name, args, root=args.logs_dir)
    run_dir = run.dir
    if resume_from:
        run.truncate_log(initial_epoch)
        print(f"Resuming {run_dir} from {resume_from.name} (epoch {initial_epoch})")
    print(f"Run folder: {run_dir}  (precision {policy}, strategy {args.strategy}, "
          f"{strategy.num_replicas_in_sync} replica(s))")

    common = dict(kind=spec.kind, grades=getattr(args, "grades", None) or (1.0, 1.0, 0.0, 0.0),
                  load_size=tuple(args.load_size), input_size=tuple(args.input_shape),
                  seed=args.seed, augment=args.crop_only or not args.no_augment,
                  colour_augment=not args.crop_only, skip_errors=args.skip_bad_images,
                  cache=cache)
    n_train = len(splits["train"][0])
    steps = args.steps_per_epoch or n_train // args.batch_size
    if n_train < args.batch_size:
        raise PairDataError(f"the training split has {n_train} pairs, fewer than one batch of "
                            f"{args.batch_size}; lower --batch-size")
    train_ds = pair_dataset(*splits["train"], args.image_dir, args.batch_size, training=True,
                            steps_per_epoch=steps, first_epoch=initial_epoch, **common)
    val_ds = pair_dataset(*splits["val"], args.image_dir, args.batch_size, training=False, **common)
    test_ds = pair_dataset(*splits["test"], args.image_dir, args.test_batch_size,
                           training=False, **common)

    with strategy.scope():
        if resume_from:
            # compile=True restores the optimizer with its state; compile again for XLA
            # and metrics as this run asks, keeping that optimizer.
            # (The checkpoint keeps each layer's trainable flag: --freeze-stages holds.)
            model = keras.models.load_model(resume_from, safe_mode=False)
            if args.freeze_bn:      # variables' trainable flags are not saved
                freeze_conv_stages(model, args.freeze_stages, batch_norm=True)
            model = _compile(model, spec, args, optimizer=model.optimizer)
        else:
            model = spec.build_model(args)
            if args.freeze_stages:
                n = freeze_conv_stages(model, args.freeze_stages, batch_norm=args.freeze_bn)
                what = "convolution kernels and batch-norm scales and offsets" \
                    if args.freeze_bn else "convolution kernels"
                print(f"Froze the {what} of {n} layers ({', '.join(args.freeze_stages)}).")
            learning_rate = learning_rate_schedule(
                args.learning_rate, steps, args.epochs, args.lr_schedule,
                warmup_epochs=args.warmup_epochs, min_learning_rate=args.min_learning_rate)
            model = _compile(model, spec, args, spec.make_optimizer(learning_rate))
        build_training_state(model, train_ds.element_spec)
    model.summary(line_length=110)

    try:
        history = fit_in_run(run, model, train_ds, *_callbacks(args, run),
                             steps_per_epoch=steps, epochs=args.epochs,
                             initial_epoch=initial_epoch, validation_data=val_ds,
                             validation_steps=args.validation_steps)
        if args.precise_bn:
            used = recalibrate_batchnorm(model, train_ds, args.precise_bn)
            print(f"Precise BN: moving statistics re-estimated from {used} training batches; "
                  f"val after it: " + ", ".join(
                      f"{k} {v:.4f}" for k, v in model.evaluate(val_ds, return_dict=True,
                                                                steps=args.validation_steps,
                                                                verbose=0).items()))
        test_metrics = model.evaluate(test_ds, return_dict=True, verbose=progress_verbose())
    except tf.errors.InvalidArgumentError as exc:
        if cache is None:
            bad = find_undecodable(_all_names(splits), args.image_dir)
            if bad:
                raise PairDataError(bad_images_message(bad, args.image_dir)) from exc
        raise
    test_metrics = {k: float(v) for k, v in test_metrics.items()}
    print("Test split: " + ", ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()))
    run.write_json(fresh_path(run_dir / "test_metrics.json"), test_metrics)

    encoder_path = save_encoder(model.get_layer("resnet50"),
                                fresh_path(run_dir / "encoder.weights.h5"), backbone="resnet50",
                                pretraining=spec.run_name, pixel_scale="[-1, 1]",
                                input_shape=args.input_shape)
    print(f"Encoder (tower 1) saved to {encoder_path}")
    return {"run_dir": run_dir, "encoder_path": Path(encoder_path),
            "history": {k: vals[initial_epoch:] for k, vals in history.items()},  # this fit
            "test_metrics": test_metrics, "model": model}


def make_parser(spec, description):
    return add_arguments(argparse.ArgumentParser(description=description), spec)
