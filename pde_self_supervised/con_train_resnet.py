"""Step 4: PDE pretraining with the grading distance.

Trains the Siamese model of ``con_resnet.py``: the batch-normalised cosine distance
of two embeddings, read as a logit at temperature T, is fitted to a grade per pair
class (default the original's 1, 1, 0, 0: same view or not). Then saves tower 1's
encoder as ``encoder.weights.h5`` for the U-Net (step 6).

    python pde_self_supervised/con_train_resnet.py --image-dir out \\
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
    from pde_self_supervised.con_resnet import self_sup_resnet

    return self_sup_resnet((*args.input_shape, 3), pool=args.pool,
                           shared_towers=args.shared_towers, distance=args.distance)


def make_optimizer(learning_rate):
    import keras

    return keras.optimizers.RMSprop(learning_rate=learning_rate)


def make_loss(args):
    from pde_self_supervised.losses import ContrastiveLoss

    return ContrastiveLoss(temperature=args.temperature)


SPEC = train_common.MethodSpec(
    run_name="pde_grading", kind="grading", build_model=build_model,
    make_optimizer=make_optimizer, make_loss=make_loss, make_metrics=lambda: ["mse"], epochs=10,
    split=(0.425, 0.05), split_note="340,000 / 40,000 / the rest of 800,000 pairs")


def parse_args(argv=None):
    parser = train_common.make_parser(SPEC, __doc__.splitlines()[0])
    method = parser.add_argument_group("grading distance")
    method.add_argument("--temperature", "-T", type=float, default=0.5,
                        help="logits = output / T (original: 0.5)")
    method.add_argument("--grades", type=float, nargs=4, default=[1.0, 1.0, 0.0, 0.0],
                        metavar=("G0", "G1", "G2", "G3"),
                        help="target of pair classes 0..3 (same view same stage, same view, "
                             "same stage, neither) in [0, 1] (original: 1 1 0 0)")
    method.add_argument("--distance", choices=("cosine", "euclidean"), default="cosine",
                        help="merge of the two embeddings (original: cosine)")
    args = train_common.resume_args(parser, argv, train_common.RESUME_MAY_CHANGE,
                                    kind=SPEC.run_name)
    if not all(0.0 <= g <= 1.0 for g in args.grades):
        parser.error(f"--grades must be in [0, 1], got {args.grades}")
    if args.temperature <= 0:
        parser.error("--temperature must be positive")
    return args


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    """Train; returns {"run_dir", "encoder_path", "history", "test_metrics", "model"}."""
    return train_common.run(SPEC, args)


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
