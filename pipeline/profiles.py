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
        # Close-up presets 6 and 7: fruit and flowers cover several pixels at the U-Net's
        # scale (docs/pipeline.md, "Why the demo profile departs from the original").
        orchard=dict(cameras=4, presets=(6, 7), times=("12",), image_size=(128, 224),
                     n_train=60, n_val=20, n_test=40),
        pairs=dict(per_class=2000),
        # CPU-sized PDE: 300 steps of 32 at 32x64, GAP head, one tower, no augmentation,
        # conv1-res3 kernels fixed; each value measured in docs/pipeline.md ("Why the demo
        # profile departs from the original"), with the tables in docs/results.md.
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
        # U-Nets on 64x128 windows of the 128x224 photos, light augmentation, lr 1e-3 after
        # a warm-up, encoder batch norm re-estimated, no class weights, the fastest precision
        # this machine runs natively (--precision auto): docs/pipeline.md.
        unet=dict(input_shape=(128, 224), train_crop=(64, 128), augment="light",
                  freeze_batch_size=8, unfreeze_batch_size=8,
                  freeze_lr=1e-3, warmup_steps=7, precision="auto", encoder_bn_batches=7,
                  val_period=15, resume_period_min=10),
        # 45 frozen epochs (the decoder was still learning at 30); the frozen row stops
        # after its frozen phase (docs/pipeline.md).
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
