"""PDE Siamese model, classification distance: which of the four prior pair classes.

Two ResNet50 towers that do not share weights but start equal (tower 2 receives
tower 1's initial weights), each with the original's projection head; the squared
difference of the embeddings feeds a 4-way softmax named ``self_output``.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

import keras  # noqa: E402
from keras import layers  # noqa: E402

from nets.encoders import weighted_layers  # noqa: E402
from pde_self_supervised.con_resnet import build_towers  # noqa: E402
from nets.distances import SquaredDifference  # noqa: E402

NUM_PAIR_CLASSES = 4


def copy_encoder_weights(source, target):
    """Give every weighted layer of ``target`` the weights of its counterpart in
    ``source`` (same structure, layers paired in order)."""
    src, dst = weighted_layers(source), weighted_layers(target)
    if len(src) != len(dst):
        raise ValueError(f"{source.name} has {len(src)} weighted layers, {target.name} {len(dst)}")
    for a, b in zip(src, dst):
        b.set_weights(a.get_weights())


def self_sup_resnet(shape=(288, 512, 3), pool="flatten", shared_towers=False):
    """The classification-distance Siamese model: two images ->
    ``{"self_output": (batch, 4)}`` class probabilities.

    As in the original, tower 2's encoder starts from tower 1's weights (the heads
    keep their own initialisation); with ``shared_towers`` both inputs go through one
    tower.
    """
    input_1, input_2, z1, z2, encoder_1, encoder_2 = build_towers(shape, pool, shared_towers)
    merged = SquaredDifference(name="squared_difference")([z1, z2])
    output = layers.Dense(NUM_PAIR_CLASSES, activation="softmax", name="self_output",
                          dtype="float32")(merged)
    # A dict output so Keras 3 matches the {"self_output": y} targets by name.
    model = keras.Model([input_1, input_2], {"self_output": output}, name="pde_class")
    if encoder_2 is not encoder_1:
        copy_encoder_weights(encoder_1, encoder_2)
    return model


if __name__ == "__main__":
    self_sup_resnet().summary()
