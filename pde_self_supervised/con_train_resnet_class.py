"""Step 5: PDE pretraining with the classification distance.

Trains the Siamese model of ``con_resnet_class.py`` to tell the four prior pair
classes apart (same/different view x same/different stage), then saves tower 1's
encoder as ``encoder.weights.h5`` for the U-Net (step 6).

    python pde_self_supervised/con_train_resnet_class.py --image-dir out \\
        --pairs-x x_out_inx200000.npy --pairs-y y_out_inx200000.npy
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from pde_self_supervised import train_common  # noqa: E402


def build_model(args):
    from pde_self_supervised.con_resnet_class import self_sup_resnet

    return self_sup_resnet((*args.input_shape, 3), pool=args.pool, shared_towers=args.shared_towers)


def make_optimizer(learning_rate):
    from utils.optimizers import FusedAdam

    return FusedAdam(learning_rate=learning_rate)


def _metrics():
    from pde_self_supervised.metrics import stage_acc, view_acc

    return ["mse", "acc", view_acc, stage_acc]


SPEC = train_common.MethodSpec(
    run_name="pde_class", kind="class", build_model=build_model, make_optimizer=make_optimizer,
    make_loss=lambda args: "categorical_crossentropy", make_metrics=_metrics, epochs=20,
    split=(0.9, 0.05), split_note="720,000 / 40,000 / 40,000 of 800,000 pairs")


def parse_args(argv=None):
    parser = train_common.make_parser(SPEC, __doc__.splitlines()[0])
    return train_common.resume_args(parser, argv, train_common.RESUME_MAY_CHANGE,
                                    kind=SPEC.run_name)


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    """Train; returns {"run_dir", "encoder_path", "history", "test_metrics", "model"}."""
    return train_common.run(SPEC, args)


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
