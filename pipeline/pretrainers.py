"""``PRETRAINERS``: every way this project makes an encoder, by name.

Each entry is ``pretrain(inputs, profile, extra=()) -> result``: it runs the method's
own script (its ``main(argv)``) on :class:`PretrainInputs` with the profile's options,
then ``extra`` (options that override them), and returns the script's result, whose
``"encoder_path"`` is the encoder file the U-Net starts from.

Every entry of ``other_ssl.methods.METHODS`` is registered here by its name, so a
method added there needs no code here; any other pretrainer is one line,
``PRETRAINERS["name"] = function``.
"""
import importlib
from dataclasses import dataclass

from other_ssl.methods import METHODS
from pipeline.profiles import to_argv


@dataclass(frozen=True)
class PretrainInputs:
    image_dir: str       # the stage images (select_img.py's output)
    pairs: dict          # split -> (X.npy, Y.npy) of the pair index (PDE only)
    logs_dir: str        # parent of the pretraining run folder
    seed: int
    voc: str = None      # the labelled VOCdevkit (supervised pretrainers such as CSCL)


def pde(script):
    """PDE on the pair index: ``pde_self_supervised/<script>.py`` with the profile's
    ``pretrain`` options."""
    def pretrain(inputs, profile, extra=()):
        argv = ["--image-dir", inputs.image_dir, "--logs-dir", inputs.logs_dir, "--seed", inputs.seed]
        for prefix, split in (("", "train"), ("val-", "val"), ("test-", "test")):
            x, y = inputs.pairs[split]
            argv += [f"--{prefix}pairs-x", x, f"--{prefix}pairs-y", y]
        main = importlib.import_module(f"pde_self_supervised.{script}").main
        return main([str(a) for a in argv] + to_argv(profile.pretrain) + list(extra))

    return pretrain


def single_images(script, *method):
    """A method on the stage images: ``other_ssl/<script>.py [--method NAME]`` with the
    profile's ``images_pretrain`` options."""
    def pretrain(inputs, profile, extra=()):
        argv = [*method, "--image-dir", inputs.image_dir, "--logs-dir", inputs.logs_dir,
                "--seed", inputs.seed]
        main = importlib.import_module(f"other_ssl.{script}").main
        return main([str(a) for a in argv] + to_argv(profile.images_pretrain) + list(extra))

    return pretrain


PRETRAINERS = {"pde_class": pde("con_train_resnet_class"),        # step 5, the published row
               "pde_grading": pde("con_train_resnet"),            # step 4
               **{name: single_images("train_ssl", "--method", name) for name in METHODS},
               "supervised": single_images("train_supervised")}   # phenological stages


def labelled(script):
    """A supervised pretraining on the labelled VOC set: ``other_ssl/<script>.py`` at the
    U-Net's input size, with the batch, epochs and steps of the profile's
    ``images_pretrain`` options (the rest keep the script's defaults, the authors')."""
    def pretrain(inputs, profile, extra=()):
        options = {k: v for k, v in profile.images_pretrain.items()
                   if k in ("batch_size", "epochs", "steps_per_epoch")}
        options["input_shape"] = profile.unet["input_shape"]
        argv = ["--voc-path", inputs.voc, "--logs-dir", inputs.logs_dir, "--seed", inputs.seed]
        main = importlib.import_module(f"other_ssl.{script}").main
        return main([str(a) for a in argv] + to_argv(options) + list(extra))

    return pretrain


PRETRAINERS["cscl"] = labelled("train_cscl")                      # CSCL, on the VOC labels
PAIR_PRETRAINERS = ("pde_class", "pde_grading")     # they read the pair index
LABELLED_PRETRAINERS = ("cscl",)                    # they read the VOC labels
