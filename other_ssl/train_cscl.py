"""Pretrain the U-Net with CSCL (context-self contrastive loss) on the labelled VOC set.

    python other_ssl/train_cscl.py --voc-path VOCdevkit

CSCL (Tarasiou et al., IEEE TGRS 2022) is supervised: each pixel of the last decoder
feature map learns to be similar to its same-label neighbours. The defaults are the
authors' (Adam 1e-4, lr x 0.975 per epoch, 300 epochs, batch 32, 3x3 windows, 128
attention channels, positive weight 0.125), on the U-Net and input size of train.py.

Writes a new run folder ``<logs>/cscl_<time>/`` with ``args.json``, ``training_log.csv``,
``epoch_loss.png``, ``tensorboard/``, checkpoints (``--resume RUN_DIR`` continues from the
newest), ``results.json`` and two files for ``train.py``:

* ``unet.weights.h5``: the whole U-Net, its classifier still at initialisation
  (``train.py --init-model .../unet.weights.h5 --loss ce``: the authors' transfer);
* ``encoder.weights.h5``: the encoder alone (``train.py --model-path``), for the
  paper table's frozen column.
"""

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from nets import unet as unet_net  # noqa: E402
from nets.encoders import BACKBONES, check_input_shape  # noqa: E402
from other_ssl.cscl import CSCL  # noqa: E402
from other_ssl.training import (CHECKPOINT, MAY_CHANGE, epoch_steps,  # noqa: E402
                                learning_rate_schedule, resume)
from utils.callbacks import Checkpoint, LearningRateLog, fit_in_run  # noqa: E402
from utils.options import add_input_shape, add_run_options  # noqa: E402
from utils.optimizers import FusedAdam  # noqa: E402
from utils.dataloader import build_dataset, check_split, split_path  # noqa: E402
from utils.run import Run, fresh_path, resume_args  # noqa: E402
from utils.precision import set_precision  # noqa: E402
from utils.utils import jit_compile_default, set_seed  # noqa: E402
from utils.distribute import get_strategy  # noqa: E402
from utils.model_card import attach, class_names, unet_card  # noqa: E402
from utils.weights import save_encoder  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--voc-path", default="VOCdevkit",
                   help="labelled VOCdevkit folder, as train.py (its train split; val "
                        "too when present)")
    p.add_argument("--num-classes", type=int, default=5,
                   help="classes including the background, as train.py")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet50",
                   help="U-Net encoder, as train.py")
    add_input_shape(p, [576, 1024], "as train.py (the original U-Net's 576 1024)")
    p.add_argument("--epochs", type=int, default=300, help="(authors: 300)")
    p.add_argument("--batch-size", type=int, default=32, help="(authors: 32)")
    p.add_argument("--learning-rate", type=float, default=1e-4, help="Adam (authors: 1e-4)")
    p.add_argument("--lr-decay", type=float, default=0.975,
                   help="learning rate factor after every epoch (authors: 0.975)")
    p.add_argument("--kernel-size", type=int, default=3,
                   help="side k of each pixel's window of neighbours (authors: 3)")
    p.add_argument("--dilation", type=int, default=1, help="window dilation (authors: 1)")
    p.add_argument("--attn-channels", type=int, default=128,
                   help="query/key channels (authors: 128)")
    p.add_argument("--pos-weight", type=float, default=0.125,
                   help="weight of the same-label term of the loss (authors: 0.125)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="cap on steps per epoch (None: one pass over the train split)")
    p.add_argument("--num-workers", type=int, default=7,
                   help="parallel image loaders; 0 = let tf.data choose (as train.py)")
    p.add_argument("--save-period", type=int, default=10,
                   help="save a checkpoint every N epochs, and after the last")
    add_run_options(p, may_change=MAY_CHANGE)
    return resume_args(p, argv, may_change=MAY_CHANGE, kind="cscl")


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    input_shape = (args.input_shape[0], args.input_shape[1], 3)
    check_input_shape(input_shape, args.backbone)
    if args.kernel_size < 1 or args.kernel_size % 2 == 0:
        raise ValueError(f"--kernel-size {args.kernel_size}: use an odd window side (3, 5, ...)")
    nc = args.num_classes
    train_names = check_split(args.voc_path, "train", nc)
    if len(train_names) < args.batch_size:
        raise ValueError(f"{args.voc_path}: the train split has {len(train_names)} images, "
                         f"fewer than --batch-size {args.batch_size}")
    val_names = (check_split(args.voc_path, "val", nc)
                 if split_path(args.voc_path, "val").is_file() else [])
    steps = epoch_steps(len(train_names), args.batch_size, args.steps_per_epoch)[0]

    set_seed(args.seed)
    args.precision_decision = set_precision(args.precision, input_shape[:2], args.batch_size)
    workers = args.num_workers or None
    train_ds = build_dataset(args.voc_path, "train", input_shape[:2], args.batch_size, nc,
                             train=True, names=train_names, num_workers=workers, seed=args.seed)
    val_ds = (build_dataset(args.voc_path, "val", input_shape[:2], args.batch_size, nc,
                            train=False, names=val_names, num_workers=workers)
              if val_names else None)
    with get_strategy(args.strategy).scope():
        unet = unet_net.build_unet(input_shape, nc, args.backbone)
        model = CSCL(unet, args.attn_channels, args.kernel_size, args.dilation, args.pos_weight)
        # The authors' x 0.975 after every epoch.
        learning_rate = learning_rate_schedule(args.learning_rate, steps, args.epochs, "step",
                                               lr_decay=args.lr_decay)
        model.compile(optimizer=FusedAdam(learning_rate),
                      jit_compile=False if args.run_eagerly else jit_compile_default(),
                      run_eagerly=args.run_eagerly)

    run = Run.start("cscl", args, root=args.logs_dir)
    run_dir = run.dir
    initial_epoch = resume(run, model, train_ds) if args.resume else 0
    print(f"CSCL: {len(train_names)} training / {len(val_names)} validation images from "
          f"{args.voc_path}, {steps} steps of {args.batch_size} per epoch, {args.epochs} "
          f"epochs; run folder {run_dir}")
    history = fit_in_run(run, model, train_ds, [LearningRateLog()],
                         [Checkpoint(run, CHECKPOINT, args.save_period)], validation_data=val_ds,
                         epochs=args.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps)

    attach(unet, unet_card(input_shape, class_names(nc), args.backbone, "cscl"))
    unet_path = run.save_model(unet, fresh_path(run_dir / "unet.weights.h5"), args.epochs)
    encoder_path = save_encoder(unet_net.get_encoder(unet),
                                fresh_path(run_dir / "encoder.weights.h5"), backbone=args.backbone,
                                pretraining="cscl", input_shape=input_shape)
    results = {"train_images": len(train_names), "val_images": len(val_names),
               "steps_per_epoch": steps,
               "final_loss": history["loss"][-1] if history.get("loss") else None,
               "final_val_loss": (history.get("val_loss") or [None])[-1],
               "unet_path": unet_path, "encoder_path": encoder_path}
    run.write_json("results.json", results)
    print(f"U-Net (classifier untrained) saved to {unet_path}; encoder to {encoder_path}")
    return {"run_dir": run_dir, "unet_path": unet_path, "encoder_path": encoder_path,
            "history": history}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
