"""``PRETRAINERS``: every way this project makes an encoder, by name.

Each entry is ``pretrain(inputs, profile, extra=()) -> result``: it runs the method's
own script (its ``main(argv)``) on :class:`PretrainInputs` with the profile's options
and then ``extra`` (command-line options that override them), and returns the
script's result, whose ``"encoder_path"`` is the encoder file the U-Net starts from.

The single-image methods are every entry of ``other_ssl.methods.METHODS``, so a method
added there is registered here too; any other pretrainer is one line:
``PRETRAINERS["name"] = function``.
"""
from dataclasses import dataclass

from other_ssl.methods import METHODS
from pipeline.profiles import to_argv


@dataclass(frozen=True)
class PretrainInputs:
    image_dir: str       # the stage images (select_img.py's output)
    pairs: dict          # split -> (X.npy, Y.npy) of the pair index (PDE only)
    logs_dir: str        # parent of the pretraining run folder
    seed: int


def _pde_argv(inputs):
    return ["--image-dir", str(inputs.image_dir),
            "--pairs-x", str(inputs.pairs["train"][0]), "--pairs-y", str(inputs.pairs["train"][1]),
            "--val-pairs-x", str(inputs.pairs["val"][0]), "--val-pairs-y", str(inputs.pairs["val"][1]),
            "--test-pairs-x", str(inputs.pairs["test"][0]),
            "--test-pairs-y", str(inputs.pairs["test"][1]),
            "--logs-dir", str(inputs.logs_dir), "--seed", str(inputs.seed)]


def _images_argv(inputs):
    return ["--image-dir", str(inputs.image_dir), "--logs-dir", str(inputs.logs_dir),
            "--seed", str(inputs.seed)]


def pde_class(inputs, profile, extra=()):
    """PDE with the classification distance (step 5, the published row)."""
    from pde_self_supervised import con_train_resnet_class

    return con_train_resnet_class.main(_pde_argv(inputs) + to_argv(profile.pretrain) + list(extra))


def pde_grading(inputs, profile, extra=()):
    """PDE with the grading distance (step 4)."""
    from pde_self_supervised import con_train_resnet

    return con_train_resnet.main(_pde_argv(inputs) + to_argv(profile.pretrain) + list(extra))


def supervised(inputs, profile, extra=()):
    """Supervised phenological classification of the stage images."""
    from other_ssl import train_supervised

    return train_supervised.main(_images_argv(inputs) + to_argv(profile.images_pretrain)
                                 + list(extra))


def ssl_method(name):
    """The pretrainer of ``other_ssl`` method ``name`` (``train_ssl.py --method name``)."""
    def pretrain(inputs, profile, extra=()):
        from other_ssl import train_ssl

        return train_ssl.main(["--method", name] + _images_argv(inputs)
                              + to_argv(profile.images_pretrain) + list(extra))

    pretrain.__doc__ = f"{METHODS[name].__name__} on the stage images (other_ssl)."
    return pretrain


PRETRAINERS = {"pde_class": pde_class, "pde_grading": pde_grading,
               **{name: ssl_method(name) for name in METHODS}, "supervised": supervised}
PAIR_PRETRAINERS = ("pde_class", "pde_grading")     # they read the pair index
