"""Distance layers that merge the two Siamese towers.

They replace the original's ``Lambda`` merges, which a ``.keras`` file cannot reload
without the Python function. Registered under the ``pde`` package so
``keras.models.load_model`` finds them once this module is imported; they live in
``nets`` so that ``utils.weights`` can load a whole Siamese ``.keras`` file.
"""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pde")
class SquaredDifference(keras.layers.Layer):
    """Element-wise ``(z1 - z2) ** 2``: (batch, d), (batch, d) -> (batch, d).

    The classification-distance merge; a Dense softmax reads the class from it.
    """

    def call(self, inputs):
        z1, z2 = inputs
        return ops.square(z1 - z2)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


class _ScalarDistance(keras.layers.Layer):
    """A distance of two embeddings, one value per pair: (batch, d), (batch, d) -> (batch, 1),
    with an ``epsilon`` that keeps it finite for degenerate embeddings."""

    def __init__(self, epsilon=1e-7, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="pde")
class CosineDistance(_ScalarDistance):
    """``(1 - cos(z1, z2)) / 2`` in [0, 1]."""

    def call(self, inputs):
        z1, z2 = inputs
        dot = ops.sum(z1 * z2, axis=1, keepdims=True)
        norms = ops.norm(z1, axis=1, keepdims=True) * ops.norm(z2, axis=1, keepdims=True)
        # The epsilon only matters for an all-zero embedding, where the original divided by 0.
        return (1.0 - dot / ops.maximum(norms, self.epsilon)) / 2.0


@keras.saving.register_keras_serializable(package="pde")
class EuclideanDistance(_ScalarDistance):
    """``sqrt(max(sum((z1 - z2) ** 2), eps))``."""

    def call(self, inputs):
        z1, z2 = inputs
        sum_square = ops.sum(ops.square(z1 - z2), axis=1, keepdims=True)
        return ops.sqrt(ops.maximum(sum_square, self.epsilon))


DISTANCES = {"cosine": CosineDistance, "euclidean": EuclideanDistance}
