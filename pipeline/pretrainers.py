"""``PRETRAINERS``: every way this project makes an encoder, by name.

Each entry is a :class:`Pretrainer`: its own script, the profile's options for it and
the run's inputs it reads. ``parse`` checks the options (the user's last) against that
script's parser once; calling the entry runs the script on them with the inputs of
:class:`PretrainInputs` and returns its result, whose ``"encoder_path"`` is the encoder
file the U-Net starts from.

Every entry of ``other_ssl.methods.METHODS`` is registered here by its name, so a
method added there needs no code here; any other pretrainer is one more entry.
"""
from dataclasses import dataclass
from typing import Callable

from other_ssl.methods import METHODS
from pipeline.profiles import parse_options


@dataclass(frozen=True)
class PretrainInputs:
    image_dir: str       # the stage images (select_img.py's output)
    pairs: dict          # split -> (X.npy, Y.npy) of the pair index (PDE only)
    logs_dir: str        # parent of the pretraining run folder
    seed: int
    voc: str = None      # the labelled VOCdevkit (supervised pretrainers such as CSCL)


@dataclass(frozen=True)
class Pretrainer:
    script: str          # module with parse_args(argv) and run(args)
    options: Callable    # profile -> the script's options (typed values)
    inputs: Callable     # PretrainInputs -> the script's input options (dest: value)

    def parse(self, profile, extra=""):
        """The profile's options then ``extra`` (the user's), parsed by this script."""
        return parse_options("--pretrain-args", self.script, self.options(profile), extra)

    def __call__(self, inputs, profile, extra="", options=None):
        """Run on ``inputs`` with ``options`` (:meth:`parse`'s, made here when None)."""
        options = options or self.parse(profile, extra)
        return options.run(**self.inputs(inputs), logs_dir=str(inputs.logs_dir),
                           seed=int(inputs.seed))


def _pair_inputs(inputs):
    """The stage images and the three splits of the pair index."""
    found = {"image_dir": str(inputs.image_dir)}
    for prefix, split in (("", "train"), ("val_", "val"), ("test_", "test")):
        found[f"{prefix}pairs_x"], found[f"{prefix}pairs_y"] = map(str, inputs.pairs[split])
    return found


def pde(script):
    """PDE on the pair index: ``pde_self_supervised/<script>.py`` with the profile's
    ``pretrain`` options."""
    return Pretrainer(f"pde_self_supervised.{script}", lambda p: p.pretrain, _pair_inputs)


def single_images(script, method=None):
    """A method on the stage images: ``other_ssl/<script>.py [--method NAME]`` with the
    profile's ``images_pretrain`` options."""
    return Pretrainer(f"other_ssl.{script}",
                      lambda p: {**({"method": method} if method else {}), **p.images_pretrain},
                      lambda i: {"image_dir": str(i.image_dir)})


def labelled(script):
    """A supervised pretraining on the labelled VOC set: ``other_ssl/<script>.py`` at the
    U-Net's input size, with the batch, epochs and steps of the profile's
    ``images_pretrain`` options (the rest keep the script's defaults, the authors')."""
    def options(profile):
        keep = ("batch_size", "epochs", "steps_per_epoch")
        return {**{k: v for k, v in profile.images_pretrain.items() if k in keep},
                "input_shape": profile.unet.get("input_shape")}

    return Pretrainer(f"other_ssl.{script}", options, lambda i: {"voc_path": str(i.voc)})


PRETRAINERS = {"pde_class": pde("con_train_resnet_class"),        # step 5, the published row
               "pde_grading": pde("con_train_resnet"),            # step 4
               **{name: single_images("train_ssl", name) for name in METHODS},
               "supervised": single_images("train_supervised"),   # phenological stages
               "cscl": labelled("train_cscl")}                    # CSCL, on the VOC labels
PAIR_PRETRAINERS = ("pde_class", "pde_grading")     # they read the pair index
LABELLED_PRETRAINERS = ("cscl",)                    # they read the VOC labels
