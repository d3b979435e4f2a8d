"""Pretrain an encoder with one of the self-supervised baselines on an image folder.

    python other_ssl/train_ssl.py --method simsiam --image-dir out/

Writes a new run folder ``<logs>/ssl_<method>_<time>/`` with ``args.json``,
``training_log.csv`` (loss and the collapse monitor ``emb_std`` per epoch), checkpoints,
``epoch_loss.png``, ``results.json`` and ``encoder.weights.h5``: the five-feature backbone
(without the Flatten/Dense head), the file ``train.py`` loads.
"""

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from nets.encoders import BACKBONES, check_input_shape  # noqa: E402
from other_ssl.base import POOLS, CollapseMonitor  # noqa: E402
from other_ssl.dataset import (check_batch_size, check_images, image_statistics,  # noqa: E402
                               list_images, make_image_dataset, stage_labels)
from other_ssl.methods import METHODS, get_method  # noqa: E402
from other_ssl.training import (CHECKPOINT, MAY_CHANGE, OPTIMIZERS, SCHEDULE_DEFAULTS,  # noqa: E402
                                SCHEDULES, epoch_steps, learning_rate_schedule, make_optimizer,
                                resume)
from utils.callbacks import Checkpoint, LearningRateLog, fit_in_run  # noqa: E402
from utils.options import add_input_shape, add_run_options  # noqa: E402
from utils.run import Run, fresh_path, resume_args  # noqa: E402
from utils.utils import jit_compile_default, set_seed  # noqa: E402
from utils.distribute import get_strategy  # noqa: E402
from utils.precise_bn import add_precise_bn_arg, recalibrate_batchnorm  # noqa: E402
from utils.errors import UserError, user_errors  # noqa: E402
from utils.precision import set_precision  # noqa: E402
from utils.weights import save_encoder  # noqa: E402

# Method hyperparameters settable from the command line; None = the method's default.
HYPERPARAMETERS = {"temperature": float, "queue_size": int, "momentum_coeff": float,
                   "redundancy_reduction_weight": float, "sharpening": float,
                   "predictor_hidden": int,
                   # multitask
                   "inpainting_weight": float, "recognition_weight": float,
                   "exemplar_weight": float,
                   # cmid
                   "num_matches": int, "mask_ratio": float, "student_temperature": float,
                   "teacher_temperature": float, "final_teacher_temperature": float,
                   "teacher_warmup_epochs": int, "center_momentum": float,
                   "fft_weight": float}

# Schedule options (None: the method's own): type, and what they set.
SCHEDULE_OPTIONS = {"lr_decay": (float, "step schedule's factor"),
                    "lr_decay_epochs": (int, "step schedule's period in epochs"),
                    "warmup_epochs": (float, "cosine schedule's linear warm-up from 1 %% of the "
                                             "rate, at most 2.5 %% of the run"),
                    "min_learning_rate": (float, "cosine schedule's last rate")}

# What a method without its own ``run_defaults`` trains with: the original's values.
RUN_DEFAULTS = {"input_shape": [288, 512], "epochs": 100, "batch_size": 48,
                "optimizer": "adam", "weight_decay": 0.0}


def _defaults_of(key):
    found = [f"{name} {cls.defaults[key]}" for name, cls in METHODS.items()
             if key in cls.defaults]
    return "; ".join(found).replace("None", "width/4")


def _run_defaults_of(key):
    found = [f"{name} {cls.run_defaults[key]}" for name, cls in METHODS.items()
             if key in cls.run_defaults]
    return "; ".join([f"original {RUN_DEFAULTS[key]}"] + found)


def _schedule_defaults_of(key):
    found = [f"{name} {cls.schedule[key]}" for name, cls in METHODS.items()
             if key in cls.schedule]
    return "; ".join([f"original {SCHEDULE_DEFAULTS[key]}"] + found)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", default="moco",
                   help=f"one of: {', '.join(METHODS)} (original: MoCo, chosen by editing "
                        f"the script)")
    p.add_argument("--image-dir", default="out",
                   help="folder of training images, e.g. step 2's out/ (original: a "
                        "pre-made .npy array of all images)")
    add_input_shape(p, None, "resize images to H W (None: the method's own: "
                             f"{_run_defaults_of('input_shape')})")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet50",
                   help="encoder backbone (original: resnet50)")
    p.add_argument("--pool", choices=POOLS, default="flatten",
                   help="how the last feature map becomes a vector before Dense(width); "
                        "flatten at 288x512 gives a 75M-parameter Dense (original: flatten)")
    p.add_argument("--width", type=int, default=256,
                   help="encoder output and projection width (original: 256)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"(None: the method's own: {_run_defaults_of('epochs')})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"global batch (None: the method's own: {_run_defaults_of('batch_size')})")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="cap on steps per epoch (None: one pass over the folder)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="SimSiam's paper used sgd (None: the method's own: "
                        f"{_run_defaults_of('optimizer')})")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="peak learning rate (None: the method's own: "
                        f"{_schedule_defaults_of('learning_rate')}, the Keras Adam default; "
                        "cmid's is per 64 images: 1e-3 x batch / 64, the authors' rule)")
    p.add_argument("--lr-schedule", choices=SCHEDULES, default=None,
                   help="constant; step: x --lr-decay every --lr-decay-epochs epochs; cosine: "
                        "warm-up then a cosine to --min-learning-rate (None: the method's "
                        f"own: {_schedule_defaults_of('lr_schedule')})")
    for key, (kind, what) in SCHEDULE_OPTIONS.items():
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                       help=f"{what} (None: the method's own: {_schedule_defaults_of(key)})")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="decoupled weight decay (None: the method's own: "
                        f"{_run_defaults_of('weight_decay')})")
    for key, kind in HYPERPARAMETERS.items():
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                       help=f"method hyperparameter (None: the method's own: {_defaults_of(key)})")
    p.add_argument("--probe-labels", action="store_true",
                   help="train an online linear probe on the stage parsed from each file "
                        "name, to watch progress; off by default so no label reaches "
                        "pretraining (the probe's gradient never reaches the encoder)")
    p.add_argument("--collapse-ratio", type=float, default=0.1,
                   help="warn when the embedding std falls below this times 1/sqrt(width)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out images that do not decode, naming them (default: stop "
                        "with an error naming the first)")
    add_precise_bn_arg(p)
    p.add_argument("--save-period", type=int, default=10,
                   help="save a checkpoint every N epochs, and after the last")
    add_run_options(p, may_change=MAY_CHANGE)
    args = resume_args(p, argv, may_change=MAY_CHANGE, kind=lambda a: f"ssl_{a.method}")
    return method_run_options(args, METHODS.get(args.method))


def method_run_options(args, cls):
    """The options left at None set to the method's own (``run_defaults``: the
    authors'), else to the original's (``RUN_DEFAULTS``)."""
    own = getattr(cls, "run_defaults", {}) if cls is not None else {}
    for key, value in {**RUN_DEFAULTS, **own}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def method_hyperparameters(args, cls):
    """The hyperparameters given on the command line; an error for ones the method lacks."""
    given = {k: getattr(args, k) for k in HYPERPARAMETERS if getattr(args, k) is not None}
    extra = sorted(set(given) - set(cls.defaults))
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        takes = ", ".join("--" + k.replace("_", "-") for k in cls.defaults) or "none"
        raise UserError(flags, f"does not apply to {args.method} (it takes: {takes})",
                        "drop it or choose another --method")
    return given


def method_schedule(args, cls):
    """The learning rate and schedule: the options given, else the method's own, else
    the original's constant rate (``SCHEDULE_DEFAULTS``)."""
    given = {k: getattr(args, k) for k in SCHEDULE_DEFAULTS if getattr(args, k) is not None}
    schedule = {**SCHEDULE_DEFAULTS, **cls.schedule, **given}
    reference = getattr(cls, "lr_reference_batch", None)
    if reference and "learning_rate" not in given:
        # The authors' rate is per ``reference`` images; it grows with the global batch.
        schedule["learning_rate"] *= args.batch_size / reference
    return schedule


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    with user_errors("--method"):
        cls = get_method(args.method)
    hyper = method_hyperparameters(args, cls)
    schedule = method_schedule(args, cls)
    input_shape = (args.input_shape[0], args.input_shape[1], 3)
    with user_errors("--input-shape"):
        check_input_shape(input_shape, args.backbone)

    paths = check_images(list_images(args.image_dir), args.skip_bad_images)
    check_batch_size(len(paths), args.batch_size, args.image_dir)
    labels = stage_labels(paths) if args.probe_labels else None
    if labels is None and getattr(cls, "needs_image_index", False):
        labels = list(range(len(paths)))   # each key's image, for CMID's queue
    if "pixel_mean" in cls.defaults:
        # The authors normalise with their data set's statistics: the training images'.
        hyper["pixel_mean"], hyper["pixel_std"] = image_statistics(paths, input_shape[:2])
    steps, capped = epoch_steps(len(paths), args.batch_size, args.steps_per_epoch)

    set_seed(args.seed)
    args.precision_decision = set_precision(args.precision, input_shape[:2], args.batch_size)
    dataset = make_image_dataset(paths, input_shape, args.batch_size, labels=labels,
                                 seed=args.seed, repeat=capped)
    strategy = get_strategy(args.strategy)
    with strategy.scope():
        model = cls(input_shape=input_shape, width=args.width, pool=args.pool,
                    backbone_name=args.backbone,
                    probe_classes=(max(labels) + 1) if args.probe_labels else 0, **hyper)
        learning_rate = learning_rate_schedule(steps_per_epoch=steps, epochs=args.epochs,
                                               **schedule)
        model.compile(optimizer=make_optimizer(args.optimizer, learning_rate, args.weight_decay),
                      jit_compile=False if args.run_eagerly else jit_compile_default(),
                      run_eagerly=args.run_eagerly)

    run = Run.start(f"ssl_{args.method}", args, root=args.logs_dir)
    run_dir = run.dir
    initial_epoch = resume(run, model, dataset) if args.resume else 0
    print(f"{args.method}: {len(paths)} images from {args.image_dir}, {steps} steps of "
          f"{args.batch_size} per epoch, {args.epochs} epochs; hyperparameters "
          f"{model.hyperparameters}; learning rate {schedule}; run folder {run_dir}")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    monitor = CollapseMonitor(args.width, args.collapse_ratio)
    history = fit_in_run(run, model, dataset, [monitor, LearningRateLog()],
                         [Checkpoint(run, CHECKPOINT, args.save_period)], epochs=args.epochs,
                         initial_epoch=initial_epoch, steps_per_epoch=steps if capped else None,
                         shuffle=False)

    if args.precise_bn:
        def forward(batch):
            images = batch[0] if isinstance(batch, tuple) else batch
            return model.backbone(model.augmenter(images, training=True), training=True)

        used = recalibrate_batchnorm(model.backbone, dataset, args.precise_bn, forward)
        print(f"Precise BN: encoder statistics re-estimated from {used} training batches")
    encoder_path = save_encoder(model.backbone, fresh_path(run_dir / "encoder.weights.h5"),
                                backbone=args.backbone, pretraining=args.method,
                                pixel_scale="standardised" if "pixel_mean" in cls.defaults
                                else "[0, 1]", input_shape=input_shape)
    results = {"method": args.method, "hyperparameters": dict(model.hyperparameters),
               "learning_rate": schedule,
               "images": len(paths), "steps_per_epoch": steps,
               "final_loss": history["loss"][-1] if history.get("loss") else None,
               "final_emb_std": history["emb_std"][-1] if history.get("emb_std") else None,
               "healthy_emb_std": 1 / args.width ** 0.5,
               "collapsed_epochs": monitor.collapsed_epochs,
               "encoder_path": encoder_path}
    run.write_json("results.json", results)
    print(f"encoder saved to {encoder_path}")
    return {"run_dir": run_dir, "encoder_path": encoder_path, "history": history,
            "collapsed_epochs": monitor.collapsed_epochs}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
