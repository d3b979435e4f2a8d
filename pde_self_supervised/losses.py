"""The grading-distance loss, as a pure function and as a serializable Keras loss."""
import keras
from keras import ops


def contrastive_loss(y_true, y_pred, temperature=0.5):
    """Mean sigmoid cross-entropy of ``y_pred / temperature`` against targets in [0, 1].

    ``y_pred`` is the Siamese output (a batch-normalised distance), read as a logit.
    Shapes: (batch, 1) or (batch,), both the same.
    """
    y_true = ops.cast(y_true, "float32")
    logits = ops.cast(y_pred, "float32") / temperature
    return ops.mean(ops.binary_crossentropy(y_true, logits, from_logits=True))


@keras.saving.register_keras_serializable(package="pde")
class ContrastiveLoss(keras.losses.Loss):
    """:func:`contrastive_loss` with its temperature ``T`` (original: 0.5)."""

    def __init__(self, temperature=0.5, name="contrastive_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1, 1))
        logits = ops.reshape(ops.cast(y_pred, "float32"), (-1, 1)) / self.temperature
        # Per-sample loss; the Loss base class takes the mean over the batch.
        return ops.binary_crossentropy(y_true, logits, from_logits=True)[:, 0]

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
