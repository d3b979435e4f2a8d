"""PDE Siamese model, grading distance: a scalar distance between two embeddings.

Two ResNet50 towers (tower 2 with its own initialisation), each followed by the
original's projection head, merged by a cosine (or Euclidean) distance and a
BatchNormalization named ``self_output`` whose output the loss reads as a logit.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

import keras  # noqa: E402
from keras import layers  # noqa: E402

from nets.encoders import build_encoder, check_input_shape  # noqa: E402
from nets.distances import DISTANCES  # noqa: E402

POOLS = ("flatten", "gap")
# Names the original's unnamed head layers got in a fresh Keras session, so a
# checkpoint of the original matches these layers by name as well.
HEAD_NAMES = ({"pool": "flatten", "dense1": "dense", "bn": "batch_normalization",
               "relu": "head_relu", "dense2": "dense_1"},
              {"pool": "flatten_1", "dense1": "dense_2", "bn": "batch_normalization_1",
               "relu": "head_relu_1", "dense2": "dense_3"})


def projection_head(pool="flatten", tower=0):
    """The original's head: pool(feat5) -> Dense 512 -> BN -> ReLU -> Dense 256.

    Returns a callable from the last feature map (batch, h, w, 2048) to (batch, 256).
    ``pool="gap"`` averages the map instead of flattening it, which keeps the first
    Dense small for large inputs.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, not {pool!r}")
    names = HEAD_NAMES[tower]
    if pool == "flatten":
        pooling = layers.Flatten(name=names["pool"])
    else:
        pooling = layers.GlobalAveragePooling2D(name=names["pool"].replace("flatten", "gap"))
    stack = [pooling, layers.Dense(512, name=names["dense1"]),
             layers.BatchNormalization(name=names["bn"]),
             layers.Activation("relu", name=names["relu"]),
             layers.Dense(256, name=names["dense2"])]

    def apply(x):
        for layer in stack:
            x = layer(x)
        return x

    return apply


def build_towers(shape, pool="flatten", shared_towers=False):
    """Inputs ``self_input1``/``self_input2`` and their 256-d embeddings.

    Returns ``(input_1, input_2, z1, z2, encoder_1, encoder_2)``. Tower 1's encoder is
    ``build_encoder(shape, "resnet50")`` (original layer names); tower 2's uses the
    original's ``_2`` names, or is tower 1 itself when ``shared_towers``.
    """
    shape = tuple(shape)
    check_input_shape(shape, "resnet50")
    input_1 = keras.Input(shape, name="self_input1")
    input_2 = keras.Input(shape, name="self_input2")
    encoder_1 = build_encoder(shape, "resnet50")
    head_1 = projection_head(pool, tower=0)
    if shared_towers:
        encoder_2, head_2 = encoder_1, head_1
    else:
        encoder_2 = build_encoder(shape, "resnet50", suffix="_2")
        head_2 = projection_head(pool, tower=1)
    z1 = head_1(encoder_1(input_1)[-1])
    z2 = head_2(encoder_2(input_2)[-1])
    return input_1, input_2, z1, z2, encoder_1, encoder_2


def self_sup_resnet(shape=(288, 512, 3), pool="flatten", shared_towers=False,
                    distance="cosine"):
    """The grading-distance Siamese model: two images -> ``{"self_output": (batch, 1)}``,
    the batch-normalised distance.

    ``distance`` is ``"cosine"`` ((1 - cos) / 2, the original's choice) or
    ``"euclidean"``. The output layer ``self_output`` is a BatchNormalization kept in
    float32 under mixed precision.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {sorted(DISTANCES)}, not {distance!r}")
    input_1, input_2, z1, z2, _, _ = build_towers(shape, pool, shared_towers)
    merged = DISTANCES[distance](name=f"{distance}_distance", dtype="float32")([z1, z2])
    output = layers.BatchNormalization(name="self_output", dtype="float32")(merged)
    # A dict output so Keras 3 matches the {"self_output": y} targets by name.
    return keras.Model([input_1, input_2], {"self_output": output}, name="pde_grading")


if __name__ == "__main__":
    self_sup_resnet().summary()
