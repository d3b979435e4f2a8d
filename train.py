"""Step 6: train the U-Net on a VOCdevkit data set, starting from a pretrained encoder.

As the original: a frozen phase (encoder fixed, epochs 0-60, batch 18, lr 1e-4) and an
unfrozen phase (everything trained, epochs 60-120, batch 8, lr 1e-5), Adam, learning
rate x0.96 per epoch, early stopping on val_loss, Dice + Focal loss, then an evaluation
on the test split. Every run writes into a new folder under ``--logs-dir``.

    python train.py --model-path logs/pde_class_.../encoder.weights.h5
    python train.py --model-path encoder.weights.h5 --frozen-only     # "Frozen" column
    python train.py --from-scratch                                    # random, no freezing
"""
from utils.tf_env import configure_tensorflow

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

import argparse  # noqa: E402
import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from nets.encoders import BACKBONES  # noqa: E402
from nets.unet_training import LOSSES, get_loss  # noqa: E402
from utils.errors import MissingInput, UserError, user_errors  # noqa: E402
from utils.precision import set_precision  # noqa: E402
from utils.run import (Run, checkpoint_epoch, fresh_path, has_optimizer_state, logged,  # noqa: E402
                       read_log, resume_args)
from utils.options import add_input_shape, add_resume_period, add_run_options  # noqa: E402
from utils.utils import (AUGMENTATIONS,  # noqa: E402
                         describe_augmentation, jit_compile_default, set_seed)
from utils.distribute import get_strategy  # noqa: E402

# Options a resumed run may change: when it stops, what it evaluates, how it reports.
RESUME_MAY_CHANGE = ("unfreeze_epoch", "early_stopping_patience", "save_period", "val_period",
                     "resume_period_min", "final_optimizer_state", "eval_split",
                     "eval_checkpoint")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = p.add_argument_group("data")
    model = p.add_argument_group("model")
    training = p.add_argument_group("training")
    output = p.add_argument_group("output and resuming")
    data.add_argument("--num-classes", type=int, default=5,
                      help="number of classes including the background (original: 5)")
    data.add_argument("--name-classes", nargs="+", default=None,
                      help="class names for the evaluation report (default: the five cherry "
                           "classes when --num-classes is 5, else class_0 ...)")
    model.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet50",
                       help="encoder (original: resnet50)")
    add_input_shape(model, [576, 1024], "network input height and width (original: 576 1024)")
    data.add_argument("--train-crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                      help="train on random HxW windows of the augmented photos, sized as for "
                           "--input-shape (default: the whole --input-shape, as the original): "
                           "a step costs what an HxW input costs, while validation, the test "
                           "evaluation and predictions see whole photos at --input-shape, so "
                           "small objects keep that resolution")
    data.add_argument("--augment", choices=sorted(AUGMENTATIONS), default="original",
                      help="training augmentation: " + " or ".join(
                          f"'{name}' ({describe_augmentation(name)})".replace("%", "%%")
                          for name in AUGMENTATIONS)
                      + ", the light one for a short training on few photos (default: original)")
    data.add_argument("--voc-path", default="VOCdevkit",
                      help="VOCdevkit folder (original: VOCdevkit)")
    model.add_argument("--model-path", "--backbone-weights", dest="model_path", default="",
                       help="pretrained encoder weights: an encoder.weights.h5 from steps 4-5 or "
                            "other_ssl, a whole Siamese/U-Net .keras checkpoint, or a legacy .h5 "
                            "matched by layer name (e.g. ImageNet 'notop'); empty = random "
                            "(Glorot uniform) encoder")
    model.add_argument("--init-model", default=None, metavar="KERAS",
                       help="start from a whole U-Net checkpoint, decoder included (e.g. the "
                            "epNNN-....keras a frozen-only run saved at the end of its frozen "
                            "phase, with --init-epoch NNN: the fine-tuned run then skips the "
                            "frozen phase both runs share)")
    training.add_argument("--init-epoch", type=int, default=0, help="first epoch (original: 0)")
    training.add_argument("--freeze-epoch", type=int, default=60,
                          help="end of the frozen phase (original: 60)")
    training.add_argument("--unfreeze-epoch", type=int, default=120,
                          help="end of the unfrozen phase, the last epoch (original: 120)")
    training.add_argument("--freeze-batch-size", type=int, default=18,
                          help="batch size of the frozen phase (original: 18)")
    training.add_argument("--unfreeze-batch-size", type=int, default=8,
                          help="batch size of the unfrozen phase (original: 8)")
    training.add_argument("--freeze-lr", type=float, default=1e-4,
                          help="Adam learning rate of the frozen phase (original: 1e-4)")
    training.add_argument("--unfreeze-lr", type=float, default=1e-5,
                          help="Adam learning rate of the unfrozen phase (original: 1e-5)")
    training.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                          help="raise the learning rate of the phase that starts at epoch 0 "
                               "linearly over its first N steps (original: 0, none). At lr "
                               "1e-3 one full Adam step can saturate a new decoder's softmax "
                               "for good")
    training.add_argument("--lr-decay", type=float, default=0.96,
                          help="learning rate factor applied after every epoch (original: 0.96)")
    training.add_argument("--freeze-train", action=argparse.BooleanOptionalAction, default=True,
                          help="freeze the encoder during the first phase (original: on); "
                               "--no-freeze-train trains everything in both phases")
    training.add_argument("--frozen-only", action="store_true",
                          help="the encoder never unfreezes: both phases run with it frozen "
                               "(the paper's 'Frozen' column)")
    training.add_argument("--from-scratch", action="store_true",
                          help="random encoder and no frozen phase (the paper's 'from scratch' "
                               "row; the original's model_path='' with Freeze_Train=False)")
    model.add_argument("--loss", choices=sorted(LOSSES), default="dice_focal",
                       help="dice_focal = Dice + Focal (original), focal, dice_ce, ce")
    model.add_argument("--cls-weights", type=float, nargs="+", default=None,
                       help="one loss weight per class (original: all ones)")
    training.add_argument("--early-stopping-patience", type=int, default=8,
                          help="epochs without a lower val_loss before a phase stops (original: 8)")
    output.add_argument("--save-period", type=int, default=1, metavar="N",
                        help="also keep a named checkpoint epNNN-....keras every N epochs "
                             "(original: 1, every epoch; about 176 MB each at ResNet50); 0 = only "
                             "last_epoch.keras and best_epoch.keras")
    output.add_argument("--val-period", type=int, default=1, metavar="N",
                        help="validation loss, val_mIoU and last_epoch.keras every N epochs and "
                             "on the last epoch of each phase (original: 1, every epoch); early "
                             "stopping then counts validated epochs")
    add_resume_period(output, "the resume point last_epoch.keras (with the optimizer state) at "
                              "a validated epoch", "the end of each phase always writes it "
                              "(default 0: at every validated epoch)")
    output.add_argument("--final-optimizer-state", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="keep Adam's moments in the last epoch's last_epoch.keras, so a "
                             "--resume with a larger --unfreeze-epoch continues exactly (about "
                             "500 MB at ResNet50 where the weights alone are 176 MB); with "
                             "--no-final-optimizer-state it holds the weights only, and such a "
                             "resume continues with a fresh optimizer (default: keep)")
    data.add_argument("--num-workers", type=int, default=7,
                      help="parallel image loaders; 0 = let tf.data choose (original: 7)")
    training.add_argument("--steps-per-epoch", type=int, default=None,
                          help="cap on training (and validation) batches per epoch, for quick runs "
                               "(default: the whole split, len(train) // batch size)")
    data.add_argument("--train-count", type=int, default=None, metavar="N",
                      help="train on N photos of the train split: a seeded, nested draw (the 4 "
                           "are among the 8; the first photos hold every class of the split), "
                           "listed in args.json, with the same steps per epoch as the whole "
                           "split, so every N gets the same number of updates (default: the "
                           "whole split)")
    output.add_argument("--eval-split", default="test",
                        help="split evaluated with get_miou after training ('none' to skip; "
                             "original: test)")
    output.add_argument("--eval-checkpoint", choices=("last", "best"), default="last",
                        help="weights evaluated at the end: the last epoch (as the original) or "
                             "the epoch with the best val_mIoU")
    data.add_argument("--skip-bad-images", action="store_true",
                      help="leave out train/val photos that do not decode, naming them "
                           "(default: stop with an error naming the first)")
    model.add_argument("--encoder-bn-batches", type=int, default=0, metavar="N",
                       help="before the first phase, re-estimate the encoder's batch-norm "
                            "statistics from N batches of the U-Net's own training images "
                            "(0 = keep those of the weights file, default). A frozen encoder "
                            "normalises with them for the whole frozen phase; Keras 2.1.6, which "
                            "the original ran on, normalised a frozen encoder with each batch's "
                            "own statistics, and the U-Net's 0..1 input scale is not the [-1, 1] "
                            "of PDE pretraining")
    add_run_options(p.add_argument_group("run: seed, logs, precision, strategy, resuming"),
                    may_change=RESUME_MAY_CHANGE, checkpoint="its last complete last_epoch.keras")
    return resume_args(p, argv, may_change=RESUME_MAY_CHANGE, kind="unet")


@dataclasses.dataclass
class Phase:
    name: str
    start: int
    end: int
    batch_size: int
    lr: float
    frozen: bool


def plan_phases(args):
    """The two training phases as the original runs them (empty ones dropped).

    ``--frozen-only`` keeps the whole schedule but the encoder never unfreezes, so the
    "Frozen" and "Fine-tuning" results differ only by unfreezing.
    """
    freeze = args.freeze_train and not args.from_scratch
    return [ph for ph in (
        Phase("frozen" if freeze else "first", args.init_epoch, args.freeze_epoch,
              args.freeze_batch_size, args.freeze_lr, freeze),
        Phase("second (frozen)" if args.frozen_only else "unfrozen",
              max(args.init_epoch, args.freeze_epoch), args.unfreeze_epoch,
              args.unfreeze_batch_size, args.unfreeze_lr, args.frozen_only),
    ) if ph.end > ph.start]


def check_args(args):
    """Options that contradict each other or name missing files: before any work."""
    from nets.encoders import check_input_shape
    from utils.weights import check_class_count, check_weights_file

    with user_errors("--input-shape"):
        check_input_shape(args.input_shape, args.backbone)
    if args.train_crop:
        with user_errors("--train-crop"):
            check_input_shape(args.train_crop, args.backbone)
        if any(c > s for c, s in zip(args.train_crop, args.input_shape)):
            raise UserError("--train-crop", f"{args.train_crop[0]}x{args.train_crop[1]} is "
                                            f"larger than --input-shape "
                                            f"{args.input_shape[0]}x{args.input_shape[1]}",
                            "give a window no larger than the input")
    if args.val_period < 1:
        raise UserError("--val-period", f"must be at least 1, not {args.val_period}")
    if args.frozen_only and (args.from_scratch or not args.freeze_train):
        raise UserError("--frozen-only", "needs the frozen phase",
                        "drop --from-scratch / --no-freeze-train")
    if args.init_model and args.model_path:
        raise UserError("--init-model", "already holds the encoder", "drop --model-path")
    if args.from_scratch and args.model_path:
        raise UserError("--from-scratch", "trains a random encoder", "drop --model-path")
    if args.cls_weights is not None and len(args.cls_weights) != args.num_classes:
        raise UserError("--cls-weights", f"--cls-weights has {len(args.cls_weights)} values "
                                         f"for {args.num_classes} classes",
                        "give one weight per class")
    if args.name_classes is not None and len(args.name_classes) != args.num_classes:
        raise UserError("--name-classes", f"--name-classes has {len(args.name_classes)} names "
                                          f"for {args.num_classes} classes",
                        "give one name per class")
    # A resumed run starts from its own last_epoch.keras, whatever it started from.
    if args.init_model and not args.resume:
        check_weights_file(args.init_model, "--init-model")
        check_class_count(args.init_model, args.num_classes)
    if args.model_path:
        check_weights_file(args.model_path, "--model-path")
    if not Path(args.voc_path).is_dir():
        raise MissingInput(args.voc_path, "--voc-path: VOCdevkit folder not found",
                           "give the folder that holds VOC2007/")


def class_names(args):
    from utils.model_card import class_names as names

    return names(args.num_classes, args.name_classes)


def load_pretrained(model, path):
    """Load ``path`` into the U-Net's encoder by layer name; returns the TransferReport.

    Prints loaded / missing / mismatched counts; raises when no layer matched.
    """
    from nets.unet import get_encoder
    from utils.model_card import transfer_note
    from utils.weights import load_weights_by_name

    encoder = get_encoder(model)
    report = load_weights_by_name(encoder, path)
    if note := transfer_note(path):
        print(note)
    if report.missing or report.mismatched:
        print(f"WARNING: only {len(report.loaded)} of {report.total} encoder layers were "
              f"loaded from {path}; the others keep their random initialisation.")
    return report


def label_budget(args, train_names):
    """The photos ``--train-count`` trains on (all ``train_names`` without it), recorded
    in ``args.train_photos`` (args.json). The epoch keeps the whole split's steps, so a
    budget of N photos gets as many updates as the whole split, each photo seen more
    often."""
    if args.train_count is None:
        return train_names
    from utils.voc import draw_labelled

    args.train_photos = draw_labelled(args.voc_path, train_names, args.train_count,
                                      args.num_classes, args.seed)
    shown = ", ".join(args.train_photos[:8]) + (", ..." if args.train_count > 8 else "")
    print(f"--train-count {args.train_count}: training on {shown} (all in args.json)")
    return args.train_photos


def _logged_best(log):
    """(best val_mIoU, its 1-based epoch) of a training log, or (None, None)."""
    values = logged(log, "val_mIoU")
    if not values:
        return None, None
    best = max(values)
    return best, log["epoch"][log["val_mIoU"].index(best)] + 1


def main(argv=None):
    return run(parse_args(argv))


@dataclasses.dataclass
class Plan:
    """What a run trains on and how, decided before any training."""
    shape: tuple          # (h, w): validation, the test split and predictions
    crop: tuple           # training windows, or None for whole photos
    loss: object
    strategy: object
    train_names: list     # the labelled photos (a label budget's draw)
    val_names: list
    split_size: int       # photos in the whole train split: a budget's steps per epoch
    phases: list


def prepare(args):
    """Seed, precision, strategy, loss and the checked splits and phases."""
    from utils.dataloader import check_split, split_path

    set_seed(args.seed)
    # Decided at the size and batch the steps train on (windows where --train-crop).
    args.precision_decision = set_precision(args.precision, args.train_crop or args.input_shape,
                                            args.freeze_batch_size)
    shape = tuple(args.input_shape)
    # Trained on smaller windows, the U-Net takes any size (a multiple of the stride):
    # whole photos at --input-shape for validation, the test split and predictions.
    crop = tuple(args.train_crop) if args.train_crop and tuple(args.train_crop) != shape \
        else None
    nc = args.num_classes
    loss = get_loss(args.loss, np.asarray(args.cls_weights or np.ones(nc), np.float32))
    train_names = check_split(args.voc_path, "train", nc, skip_bad=args.skip_bad_images)
    val_names = check_split(args.voc_path, "val", nc, skip_bad=args.skip_bad_images)
    if args.eval_split.lower() != "none":
        # Found missing before hours of training, not after.
        check_split(args.voc_path, args.eval_split, nc)
    phases = plan_phases(args)
    split_size = len(train_names)
    for phase in phases:
        if split_size < phase.batch_size:
            raise UserError(split_path(args.voc_path, "train"),
                            f"the train split has {split_size} images, fewer than the "
                            f"{phase.name} phase's batch size {phase.batch_size}",
                            "lower --freeze-batch-size / --unfreeze-batch-size")
    return Plan(shape, crop, loss, get_strategy(args.strategy), label_budget(args, train_names),
                val_names, split_size, phases)


def resume_point(args):
    """(epoch a resume starts at or None, its last_epoch.keras); sets ``args.init_epoch``.

    A resume starts after the newest complete last_epoch.keras (a cut-off one never
    lands: checkpoints are renamed into place).
    """
    last = Path(args.resume or ".") / "last_epoch.keras"
    if not args.resume:
        return None, last
    # (A last_epoch.keras from before checkpoints held their epoch: the logged epochs.)
    epochs = read_log(args.resume).get("epoch")
    resume_epoch = checkpoint_epoch(last, max(epochs) + 1 if epochs else None)
    if resume_epoch is not None:
        args.init_epoch = resume_epoch
    else:
        print(f"{last}: no complete checkpoint; the run starts again at epoch "
              f"{args.init_epoch + 1}.")
    return resume_epoch, last


def build_model(args, plan, resume_epoch, last):
    """The U-Net with its model card, from the checkpoint, a U-Net, an encoder or random;
    then the encoder's batch-norm re-estimation where asked. Returns (model, encoder)."""
    from nets.unet import build_unet, get_encoder
    from utils.model_card import attach, pretraining_of, unet_card

    nc = args.num_classes
    with plan.strategy.scope():
        model = build_unet((None, None, 3) if plan.crop else (*plan.shape, 3), nc, args.backbone)
        source = args.model_path or args.init_model
        attach(model, unet_card(plan.shape, class_names(args), args.backbone,
                                pretraining_of(source), source))
        encoder = get_encoder(model)
        if resume_epoch is not None:
            model.load_weights(str(last))
            print(f"Loaded {last}.")
        elif args.init_model:
            try:
                model.load_weights(str(args.init_model))
            except ValueError as exc:
                raise UserError("--init-model", f"{args.init_model} does not fit this U-Net "
                                f"({args.backbone}, {nc} classes): {exc}",
                                "give a U-Net of the same --backbone and --num-classes") from exc
            print(f"Loaded the whole U-Net from {args.init_model}; starting at epoch "
                  f"{args.init_epoch + 1}.")
        elif args.model_path:
            load_pretrained(model, args.model_path)
        else:
            print("No --model-path: the encoder starts from random (Glorot uniform) weights.")

    # A resume that found no complete checkpoint starts again, from the encoder file.
    if args.encoder_bn_batches and resume_epoch is None and not args.init_model:
        from utils.dataloader import build_dataset
        from utils.precise_bn import recalibrate_batchnorm

        bn_ds = build_dataset(args.voc_path, "train", plan.shape, plan.phases[0].batch_size, nc,
                              True, names=plan.train_names, num_workers=args.num_workers or None,
                              seed=args.seed, skip_bad=args.skip_bad_images, crop=plan.crop,
                              augment=args.augment)
        used = recalibrate_batchnorm(encoder, bn_ds, args.encoder_bn_batches)
        print(f"Re-estimated the encoder's batch-norm statistics from {used} training batches.")
    return model, encoder


def train_phases(args, plan, run, model, encoder, resume_epoch, last):
    """Fit every phase not yet done. Returns (checkpoint, timer, optimizer steps made)."""
    import keras

    from utils.callbacks import (EpochCheckpoint, EpochTimer, ExponentDecayScheduler, PerClassIoU,
                                 ResumableEarlyStopping, fit_in_run, record_callbacks,
                                 validation_epochs)
    from utils.dataloader import build_dataset
    from utils.optimizers import FusedAdam
    from utils.utils_metrics import MeanIoU, f_score

    nc, crop, log = args.num_classes, plan.crop, run.log()
    logged_best, best_epoch = _logged_best(log)
    checkpoint = EpochCheckpoint(run, best=logged_best, save_period=args.save_period,
                                 resume_period_s=60 * args.resume_period_min,
                                 final_optimizer_state=args.final_optimizer_state)
    # The last file is written while the test split is evaluated (one device only: a
    # distributed model's variables are read by every worker's save).
    checkpoint.background_final_write = args.strategy == "default"
    # The best epoch may be the one last_epoch.keras holds and best_epoch.keras never
    # got (it is written lazily): the weights just loaded are then the best.
    if (resume_epoch is not None and best_epoch == resume_epoch
            and checkpoint_epoch(run.dir / "best_epoch.keras") != best_epoch):
        checkpoint.keep_best(model, best_epoch)
    record = record_callbacks(run)
    timer = EpochTimer()
    updates = 0         # optimizer steps of this process (a label budget's equal footing)
    for phase in plan.phases:
        start = max(phase.start, args.init_epoch)
        if start >= phase.end:
            continue
        # A label budget repeats its photos for a whole split's steps (label_budget).
        steps, val_steps = plan.split_size // phase.batch_size, None
        if args.steps_per_epoch:
            steps = min(steps, args.steps_per_epoch)
            val_steps = args.steps_per_epoch
        workers = args.num_workers or None
        # The phase's own sample stream, skipped to where a resumed run stopped, so a
        # resume trains on the batches an uninterrupted run would.
        train_ds = build_dataset(args.voc_path, "train", plan.shape, phase.batch_size, nc, True,
                                 names=plan.train_names, num_workers=workers,
                                 seed=args.seed + phase.start,
                                 skip=(start - phase.start) * steps * phase.batch_size,
                                 skip_bad=args.skip_bad_images, crop=crop,
                                 augment=args.augment)
        # One validation pass gives val_loss and val_mIoU: the mIoU leaves the letterbox
        # bars out, val_loss keeps them as background, as the original.
        val_ds = build_dataset(args.voc_path, "val", plan.shape, phase.batch_size, nc, False,
                               names=plan.val_names, num_workers=workers, mark_bars=True,
                               skip_bad=args.skip_bad_images)
        if val_steps:
            val_ds = val_ds.take(val_steps)

        with plan.strategy.scope():
            encoder.trainable = not phase.frozen
            miou = MeanIoU(nc)
            model.compile(optimizer=FusedAdam(phase.lr), loss=plan.loss,
                          metrics=[f_score(), miou], run_eagerly=args.run_eagerly,
                          jit_compile=False if args.run_eagerly else jit_compile_default())
            optimizer = model.optimizer     # (a checkpoint written beside unsets it a while)
        n_frozen = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
        print(f"{phase.name[0].upper() + phase.name[1:]} phase: epochs {start + 1}-{phase.end}, batch "
              f"{phase.batch_size}, lr {phase.lr:g}, encoder {'frozen' if phase.frozen else 'trained'} "
              f"({n_frozen:,} non-trainable parameters). Train on {len(plan.train_names)} images "
              f"({steps} steps{f', random {crop[0]}x{crop[1]} windows' if crop else ''}), "
              f"val on {len(plan.val_names)}.")
        if resume_epoch is not None and resume_epoch > phase.start:
            # Mid-phase: the checkpoint's optimizer state (Adam moments, step) belongs
            # to this phase's optimizer.
            if has_optimizer_state(last):
                model.optimizer.build(model.trainable_variables)
                model.load_weights(str(last))
            else:
                print(f"{last} holds no optimizer state (--no-final-optimizer-state): the "
                      f"{phase.name} phase goes on with a fresh Adam.")
        checkpoint.last_phase = phase is plan.phases[-1]
        callbacks = [
            ExponentDecayScheduler(args.lr_decay, initial_lr=phase.lr, start_epoch=phase.start,
                                   verbose=1,
                                   warmup_steps=args.warmup_steps if phase.start == 0 else 0),
            PerClassIoU(miou),
        ]
        after = [
            ResumableEarlyStopping(previous=logged(log, "val_loss", phase.start, start),
                                   monitor="val_loss", min_delta=0,
                                   patience=args.early_stopping_patience, verbose=1),
            checkpoint,
            timer,
        ]
        fit_in_run(run, model, train_ds, callbacks, after, record, steps_per_epoch=steps,
                   epochs=phase.end, initial_epoch=start, validation_data=val_ds,
                   validation_freq=validation_epochs(start, phase.end, args.val_period),
                   shuffle=False)
        updates += int(keras.ops.convert_to_numpy(optimizer.iterations))
    checkpoint.write_best()     # (a resume after the last epoch runs no fit to do it)
    return checkpoint, timer, updates


def evaluate(args, plan, run, model, checkpoint, history):
    """The ``--eval-split`` metrics of the ``--eval-checkpoint`` epoch. Returns (the file
    evaluated, metrics, seconds spent waiting for the last checkpoint's write)."""
    best_path = run.dir / "best_epoch.keras"
    best_value, best_epoch = _logged_best(history)
    if best_value is not None:
        print(f"Best epoch {best_epoch}: val_mIoU {best_value:.4f} ({best_path})")
    # What the evaluation did not hide of the last checkpoint's write counts as overhead.
    write_wait_s = 0.0
    if args.eval_checkpoint == "best" or args.eval_split.lower() == "none":
        write_wait_s += checkpoint.wait()
    evaluated = best_path if args.eval_checkpoint == "best" and best_path.is_file() else \
        run.dir / "last_epoch.keras"
    test_metrics = {}
    if args.eval_split.lower() != "none":
        from utils.evaluate import evaluate_split

        if evaluated == best_path:
            model.load_weights(str(best_path))
        # A resumed run evaluates again beside, not over, the earlier evaluation.
        out_dir = fresh_path(run.dir / f"miou_{args.eval_split}")
        test_metrics = evaluate_split(model, args.voc_path, split=args.eval_split,
                                      num_classes=args.num_classes,
                                      name_classes=class_names(args), input_shape=plan.shape,
                                      out_dir=out_dir)
        print(f"{args.eval_split} split ({args.eval_checkpoint} epoch): "
              + ", ".join(f"{k} {test_metrics[k]:.4f}" for k in ("mIoU", "mPA", "accuracy")
                          if k in test_metrics))
    return evaluated, test_metrics, write_wait_s + checkpoint.wait()


def report(args, plan, run, history, timer, updates, test_metrics, write_wait_s):
    """Print the time the epochs took and write ``results.json``."""
    best_value, best_epoch = _logged_best(history)
    steps_s, other_s = sum(timer.steps_s), sum(timer.other_s) + write_wait_s
    build = timer.build_s
    if timer.steps_s:
        print(f"Epoch time: training steps {steps_s:.0f} s; validation, val_mIoU, logs, plots "
              f"and checkpoints {other_s:.0f} s ({100 * other_s / max(steps_s, 1e-9):.1f} % of "
              f"the steps' time; {write_wait_s:.1f} s of it waiting for the last checkpoint "
              f"after the evaluation), over {len(timer.steps_s)} epochs. Building the graphs "
              f"(the first batch of each compiled function, less a steady one) took "
              f"{build['training']:.1f} s for training and {build['validation']:.1f} s for "
              f"validation, counted in neither.")
    run.write_json("results.json", {
        "best_epoch": best_epoch, "best_val_mIoU": best_value,
        "eval_split": args.eval_split, "eval_checkpoint": args.eval_checkpoint,
        "test_metrics": test_metrics, "train_photos": plan.train_names,
        "optimizer_steps": updates, "train_steps_s": round(steps_s, 2),
        "epoch_overhead_s": round(other_s, 2),
        "graph_build_s": {k: round(v, 2) for k, v in build.items()},
        "precision": args.precision_decision})


def run(args):
    check_args(args)
    plan = prepare(args)
    resume_epoch, last = resume_point(args)
    run = Run.start("unet", args, root=args.logs_dir)
    if args.resume:
        # The log forgets the rows after the checkpoint the run goes on from.
        run.truncate_log(args.init_epoch)
        print(f"Resuming {run.dir} at epoch {args.init_epoch + 1}.")
    print(f"Run folder: {run.dir} (precision {args.precision_decision['policy']})")
    model, encoder = build_model(args, plan, resume_epoch, last)
    checkpoint, timer, updates = train_phases(args, plan, run, model, encoder, resume_epoch, last)
    history = run.log()     # read once: the best epoch for evaluate, the row for report
    evaluated, test_metrics, write_wait_s = evaluate(args, plan, run, model, checkpoint, history)
    report(args, plan, run, history, timer, updates, test_metrics, write_wait_s)
    return {"run_dir": run.dir, "initial_epoch": args.init_epoch,
            "model_path": run.dir / "last_epoch.keras", "evaluated_model_path": evaluated,
            "best_model_path": run.dir / "best_epoch.keras", "history": history,
            "test_metrics": test_metrics}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
