"""The run profiles of ``run_pipeline.py`` and ``benchmarks/paper_table.py``: every size,
step count and option of every step, in one place.

Options are typed values keyed by the step script's option name (``batch_size`` is
``--batch-size``); :func:`to_argv` is the one place they become command-line
arguments. ``True`` is a flag, a tuple is several values. Options a profile leaves
out keep the script's default, the original's value.
"""
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Profile:
    orchard: dict        # data_processing.synthetic_orchard.generate_orchard keywords
    pairs: dict          # data_processing/make_dataset.py options
    pretrain: dict       # PDE pretraining options (pde_self_supervised/con_train_resnet*.py)
    images_pretrain: dict  # single-image pretraining (other_ssl train_ssl.py, train_supervised.py)
    unet: dict           # train.py options of every U-Net
    unet_epochs: tuple   # (frozen-phase epochs, total epochs)
    predict_images: int  # test images predict.py draws
    growth: dict = field(default_factory=dict)   # growth_modeling/unet_gm.py options
    # Epochs of the frozen-only U-Net; 0 = as many as the fine-tuned one (the published
    # table's frozen column: the encoder frozen for all of training).
    frozen_row_epochs: int = 0

    def epochs(self, frozen_only):
        """(frozen-phase epochs, total epochs) of the frozen-only or fine-tuned U-Net."""
        freeze, total = self.unet_epochs
        return freeze, (self.frozen_row_epochs or total) if frozen_only else total


def with_precision(profile, precision=None):
    """``profile`` with every training step's ``--precision`` set to ``precision``
    (``run_pipeline.py --precision``); unchanged when it is None."""
    if precision is None:
        return profile
    return replace(profile, **{step: dict(getattr(profile, step), precision=precision)
                               for step in ("pretrain", "images_pretrain", "unet")})


def to_argv(options):
    """``{"input_shape": (64, 64), "run_eagerly": True}`` -> ``["--input-shape", "64",
    "64", "--run-eagerly"]``; ``False`` and ``None`` leave the option out."""
    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (tuple, list)):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


PROFILES = {
    "tiny": Profile(
        orchard=dict(cameras=3, presets=(6,), times=("12",), image_size=(64, 64),
                     n_train=4, n_val=2, n_test=2),
        pairs=dict(per_class=24, drop_empty_classes=True),
        pretrain=dict(input_shape=(64, 64), load_size=(72, 72), batch_size=4, test_batch_size=4,
                      epochs=1, steps_per_epoch=2, run_eagerly=True, precise_bn=1,
                      precision="auto"),
        images_pretrain=dict(input_shape=(64, 64), batch_size=4, epochs=1, steps_per_epoch=2,
                             pool="gap", precision="auto"),
        # Eager steps: at this size tracing a ResNet50 graph costs more than the steps.
        # On windows as the demo, so the tests run the demo's any-size U-Net through
        # evaluation, predictions and growth curves.
        unet=dict(input_shape=(64, 64), train_crop=(32, 64), augment="light",
                  freeze_batch_size=2, unfreeze_batch_size=2,
                  steps_per_epoch=2, run_eagerly=True, encoder_bn_batches=1, precision="auto"),
        unet_epochs=(1, 2),
        frozen_row_epochs=1,
        predict_images=2,
    ),
    "demo": Profile(
        # Close-up presets 6 and 7: at the U-Net's 64x128 a fruit or flower then covers
        # several pixels, as in the original's 576x1024 whole-tree photos; in the wide
        # presets 1 and 2 they were under a pixel and stayed at IoU 0 in every run.
        orchard=dict(cameras=4, presets=(6, 7), times=("12",), image_size=(128, 224),
                     n_train=60, n_val=20, n_test=40),
        pairs=dict(per_class=2000),
        # CPU-sized PDE: 300 steps of batch 32 at 32x64 (a quarter of the pixels of
        # 64x128, so twice the steps and batch in the same time: held-out pair accuracy
        # 0.665 where 150 steps of 16 at 64x128 gave 0.32). 600 steps (--pretrain-args
        # "--epochs 6") learn the pretext better, held-out pair accuracy 0.709 / 0.668 /
        # 0.640 / 0.616 / 0.479 on seeds 11-15 (mean 0.622) against 0.590 / 0.625 /
        # 0.576 / 0.423 / 0.369 (mean 0.517), but the frozen PDE U-Nets fell with it, to
        # 0.5259 +- 0.0314 from 0.5388 +- 0.0328 (below random's 0.5430 on every seed),
        # fruit IoU on the demo's seed to 0.005 from 0.194 (its growth curve flat at
        # zero), and the demo took 11 min 38 s against 7 min 14 s (README, "Status").
        # GAP instead of the original's Flatten head (its tens of millions of Dense
        # weights made Adam diverge here), one shared tower and no augmentation (with
        # either, the pair accuracy stayed at chance for 180 steps in our runs), precise
        # BN (the running averages are far from converged after 300 steps), 5 validation
        # batches a epoch.
        # The convolution kernels of conv1-res3 stay at their initial values (batch norm
        # and res4-res5 train): PDE's training at 32x64 changed the shallow features the
        # U-Net reads through its skip connections for the worse. Over seeds 11-13 the
        # frozen PDE U-Net went from 0.3234 +- 0.0241 to 0.3744 +- 0.0124 test mIoU, at
        # the same held-out pair accuracy (0.608 -> 0.597) and 20 % faster steps.
        # Adam at a constant 1e-3, as the original: a cosine from 1e-3 to 0 after a
        # 10-step warm-up (--lr-schedule cosine --warmup-epochs 0.1) gave held-out pair
        # accuracy 0.644 / 0.548 / 0.480 / 0.477 / 0.404 on seeds 11-15 against 0.590 /
        # 0.625 / 0.576 / 0.423 / 0.369 (mean 0.511 against 0.517), and frozen U-Nets
        # 0.3528 / 0.3738 / 0.3613 against 0.3781 / 0.3873 / 0.3577 on seeds 11-13.
        # Their batch-norm scales and offsets keep training: fixing them too (--freeze-bn)
        # gave held-out pair accuracy 0.606 / 0.559 / 0.655 / 0.527 / 0.436 on seeds 11-15
        # (mean 0.557, against 0.517) and 1.21x faster steps, but frozen PDE U-Nets of
        # 0.3582 / 0.3931 / 0.3449 / 0.3702 / 0.2951 (mean 0.3523, against 0.3632; lower on
        # 4 of 5 seeds; random 0.3622).
        pretrain=dict(input_shape=(32, 64), load_size=(32, 64), batch_size=32,
                      test_batch_size=64, epochs=3, steps_per_epoch=100, pool="gap",
                      shared_towers=True, no_augment=True, learning_rate=1e-3,
                      precise_bn=20, validation_steps=5, keep_checkpoints=1,
                      resume_period_min=10, freeze_stages=("conv1", "res2", "res3"),
                      # float32, as the five-seed table was measured (docs/pipeline.md,
                      # "Precision"); --precision auto runs it in bfloat16 where that pays.
                      precision="float32"),
        # The PDE demo's input, batch, steps, learning rate and precise BN.
        images_pretrain=dict(input_shape=(32, 64), batch_size=32, epochs=3, steps_per_epoch=100,
                             pool="gap", learning_rate=1e-3, precise_bn=20, precision="auto"),
        # The frozen decoder learns slowly from 60 photos: background and leaf after ~40
        # steps at 10x the original's rate, trunk only after ~200 (at 15 epochs both rows
        # stopped at background and leaf). Before the first phase the encoder's batch-norm
        # statistics are re-estimated on the U-Net's own photos, for both rows: Keras 2.1.6
        # normalised the original's frozen encoder with batch statistics, while here it
        # reads its moving averages, which for the random row are the initial mean 0 /
        # variance 1 (frozen random U-Net 0.276 without, 0.354 with; PDE 0.315 / 0.320).
        # The fastest precision this machine runs natively (--precision auto: bfloat16 on
        # AMX / AVX-512 BF16 CPUs, where the decoder pays; docs/pipeline.md), validation and val_mIoU
        # every 15 epochs (a validated epoch took 9 s against 4 s at 64x128, most of the
        # difference the two checkpoints it writes, 1.1-2.1 s each; on whole 128x224
        # photos the validation pass itself costs 3.5x; validation does not change the
        # training), the last epoch evaluated as the original. The unfrozen phase keeps
        # the original's lr 1e-5: at 1e-4 both rows fell to background only.
        # A linear warm-up over the first epoch's 7 steps: on seed 13 one full Adam step
        # at 1e-3 saturated the softmax (probabilities 0 and 1, where the losses' clip
        # passes no gradient) and both rows stayed at background only for 30 epochs.
        # Resume points (last_epoch.keras with Adam's moments, 2-3 s each) at most every
        # 10 minutes, here and in the pretraining: a demo model trains for 1-5 minutes, so
        # a kill costs at most that model (run_pipeline.py --resume skips the finished
        # steps), and none writes a mid-run resume point.
        # No class weights (the original's all ones). On whole 64x128 photos the frozen
        # U-Nets never predicted flower without them (test IoU 0, seed 11), and the demo
        # used 1 6 1.5 3 7 (square roots of the inverse pixel shares: background 62 %,
        # fruit 1.7 %, leaf 29 %, trunk 6 %, flower 1.2 %). On the windows, frozen-only
        # U-Nets of seeds 11-15 (benchmarks/pde_vs_random.py's encoders and orchards),
        # mean val_mIoU of both rows: those weights 0.536, their square roots
        # (1 2.5 1.2 1.8 2.7) 0.543, none 0.551; test mIoU PDE / random 0.5237 / 0.5233,
        # 0.5220 / 0.5336, 0.5388 / 0.5430 (colour classifier 0.5318). None is higher on
        # every seed for both rows, but fruit stays at 0 on seed 15 (0.18 with weights).
        # Random 64x128 windows of the photos at their own 128x224 (--train-crop 64 128),
        # evaluated and used on whole 128x224 photos: a step costs what a 64x128 photo
        # did, and thin branches, fruit and flowers keep their pixels. The light
        # augmentation keeps each photo near its scale and colours (the original's scale
        # 0.25-2 and hue shift suit 60 epochs on hundreds of photos, not 30 on 60).
        # Seed 11, frozen U-Nets at 64x128 with the original's augmentation: PDE 0.3781,
        # random 0.3612; light: 0.4098 / 0.4007; 64x128 windows at 128x224, light:
        # 0.4873 / 0.5004, in the demo 0.4979 / 0.4707 (colour classifier 0.524; all with
        # the class weights 1 6 1.5 3 7). Seeds 11-15 (benchmarks/pde_vs_random.py):
        # 0.5237 +- 0.0269 / 0.5233 +- 0.0301, where whole 64x128 photos gave 0.3632 /
        # 0.3622 (colour classifier 0.5318).
        unet=dict(input_shape=(128, 224), train_crop=(64, 128), augment="light",
                  freeze_batch_size=8, unfreeze_batch_size=8,
                  freeze_lr=1e-3, warmup_steps=7, precision="auto", encoder_bn_batches=7,
                  val_period=15, resume_period_min=10),
        # 45 frozen epochs: after 30 the decoder was still learning (training mIoU up
        # from 0.52 to 0.56 over the last five epochs, seed 11). Frozen-only U-Nets of
        # seeds 11-15 (README, "Status"): PDE 0.5683 +- 0.0376 at 45 epochs against
        # 0.5388 +- 0.0328 at 30, random 0.5829 +- 0.0285 against 0.5430 +- 0.0250, both
        # higher on every seed; the per-pixel colour classifier 0.5318 +- 0.0330, now
        # below both rows on every seed. The demo took 9 min 10 s (7 min 14 s at 30).
        # The frozen row stops after its frozen phase: 5 more frozen epochs at the
        # unfrozen phase's lr 1e-5 moved its val_mIoU by less than 0.003 (0.3436 -> 0.3415)
        # and cost 40 s a row.
        unet_epochs=(45, 50),
        frozen_row_epochs=45,
        predict_images=4,
    ),
    # The original's sizes and epochs: 200,000 pairs per class; PDE at 288x512, batch 72,
    # 20 epochs; U-Net at 576x1024, batch 18 / 8.
    "paper": Profile(
        orchard=dict(cameras=4, presets=(1, 2, 3, 4, 5), times=("09", "12", "15"),
                     image_size=(576, 1024), n_train=60, n_val=20, n_test=40),
        pairs={}, pretrain=dict(precision="auto"), images_pretrain=dict(precision="auto"),
        unet=dict(precision="auto"),
        unet_epochs=(60, 120),
        predict_images=8,
    ),
}
