"""The run profiles of ``run_pipeline.py`` and ``benchmarks/paper_table.py``: every size,
step count and option of every step, in one place.

Options are typed values keyed by the step script's option name (``batch_size`` is
``--batch-size``); :func:`parse_options` parses them once, with the user's overrides,
into the script's own ``Namespace`` (:class:`StepOptions`). ``True`` is a flag, a tuple
is several values. Options a profile leaves out keep the script's default, the
original's value.
"""
import argparse
import contextlib
import copy
import importlib
import io
import shlex
from dataclasses import dataclass, field, replace

from utils.errors import UserError, output_checks_off


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


def typed_options(tokens):
    """The dest names of the options in ``tokens``: ``--no-x=1`` and ``--x`` give "x"."""
    names = {t[2:].split("=", 1)[0] for t in tokens if t.startswith("--") and " " not in t}
    return {(n[3:] if n.startswith("no-") else n).replace("-", "_") for n in names}


@dataclass(frozen=True)
class StepOptions:
    """A step script's options, parsed once before any step runs."""
    script: str                  # the module: parse_args(argv) made ``args``, run(args) runs it
    args: argparse.Namespace
    typed: frozenset             # the options the user typed: inputs never replace them

    def with_inputs(self, **inputs):
        """A copy of ``args`` with the run's ``inputs`` (dest: value, as the parser would
        give them: earlier steps' paths, the seed), but those the user typed."""
        values = {k: v for k, v in inputs.items() if k not in self.typed}
        return argparse.Namespace(**{**copy.deepcopy(vars(self.args)), **values})

    def run(self, **inputs):
        """The script's ``run(args)`` on :meth:`with_inputs`; returns its result."""
        return importlib.import_module(self.script).run(self.with_inputs(**inputs))


def parse_options(where, script, options, user=""):
    """``script``'s ``parse_args`` of the typed ``options`` (a profile's, and placeholders
    for inputs it requires) then the user's ``user`` (a string, or a list of tokens),
    which override them. A typo stops the run here, as one line naming ``where``."""
    tokens = shlex.split(user) if isinstance(user, str) else [str(t) for t in user]
    argv = to_argv(options) + tokens
    buffer = io.StringIO()
    try:
        # Its output folders are the caller's inputs, checked by the caller.
        with contextlib.redirect_stderr(buffer), output_checks_off():
            args = importlib.import_module(script).parse_args(argv)
    except SystemExit:
        said = (buffer.getvalue().strip().splitlines() or ["rejected"])[-1].split("error: ", 1)[-1]
        raise UserError(where, f"{shlex.join(argv)}: {said}",
                        "fix the options (the step's script --help lists them)") from None
    return StepOptions(script, args, frozenset(typed_options(tokens)))


PROFILES = {
    # A wiring check of every step, in seconds: eager steps, since at 64x64 tracing a
    # ResNet50 graph costs more than the steps; the U-Nets on windows as the demo's.
    "tiny": Profile(
        orchard=dict(cameras=3, presets=(6,), times=("12",), image_size=(64, 64),
                     n_train=4, n_val=2, n_test=2),
        pairs=dict(per_class=24, drop_empty_classes=True),
        pretrain=dict(input_shape=(64, 64), load_size=(72, 72), batch_size=4, test_batch_size=4,
                      epochs=1, steps_per_epoch=2, run_eagerly=True, precise_bn=1,
                      precision="auto"),
        images_pretrain=dict(input_shape=(64, 64), batch_size=4, epochs=1, steps_per_epoch=2,
                             pool="gap", precision="auto"),
        unet=dict(input_shape=(64, 64), train_crop=(32, 64), augment="light",
                  freeze_batch_size=2, unfreeze_batch_size=2,
                  steps_per_epoch=2, run_eagerly=True, encoder_bn_batches=1, precision="auto"),
        unet_epochs=(1, 2),
        frozen_row_epochs=1,
        predict_images=2,
    ),
    # Both rows in about ten minutes on two CPU cores. Each value that departs from the
    # original's is explained in docs/pipeline.md ("Why the demo profile departs from
    # the original"); the measurements behind them are in docs/results.md.
    "demo": Profile(
        # Close-up presets: fruit and flowers cover several pixels at the U-Net's scale.
        orchard=dict(cameras=4, presets=(6, 7), times=("12",), image_size=(128, 224),
                     n_train=60, n_val=20, n_test=40),
        pairs=dict(per_class=2000),
        # CPU-sized PDE: 300 steps at 32x64, GAP head, one tower, shallow stages fixed;
        # float32: in bfloat16 it took as long inside the demo (226 s) and moved the
        # five-seed table within noise (docs/results.md, "The demo's PDE pretraining").
        pretrain=dict(input_shape=(32, 64), load_size=(32, 64), batch_size=32,
                      test_batch_size=64, epochs=3, steps_per_epoch=100, pool="gap",
                      shared_towers=True, no_augment=True, learning_rate=1e-3,
                      precise_bn=20, validation_steps=5, keep_checkpoints=1,
                      resume_period_min=10, freeze_stages=("conv1", "res2", "res3"),
                      precision="float32"),
        # The same input, batch, steps, learning rate and precise BN as the PDE demo.
        images_pretrain=dict(input_shape=(32, 64), batch_size=32, epochs=3, steps_per_epoch=100,
                             pool="gap", learning_rate=1e-3, precise_bn=20, precision="auto"),
        # 64x128 windows of the 128x224 photos, a warmed-up lr 1e-3, the encoder's batch
        # norm re-estimated on these photos, validation every 15 epochs.
        unet=dict(input_shape=(128, 224), train_crop=(64, 128), augment="light",
                  freeze_batch_size=8, unfreeze_batch_size=8,
                  freeze_lr=1e-3, warmup_steps=7, precision="auto", encoder_bn_batches=7,
                  val_period=15, resume_period_min=10),
        # The frozen row stops after its frozen phase.
        unet_epochs=(45, 50),
        frozen_row_epochs=45,
        predict_images=4,
    ),
    # The original's sizes and epochs; the scripts' defaults are its values.
    "paper": Profile(
        orchard=dict(cameras=4, presets=(1, 2, 3, 4, 5), times=("09", "12", "15"),
                     image_size=(576, 1024), n_train=60, n_val=20, n_test=40),
        pairs={}, pretrain=dict(precision="auto"), images_pretrain=dict(precision="auto"),
        unet=dict(precision="auto"),
        unet_epochs=(60, 120),
        predict_images=8,
    ),
}
