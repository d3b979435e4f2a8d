"""Batch normalisation on TensorFlow's fused kernel.

Keras 3's ``BatchNormalization`` on the TensorFlow backend computes the moments and the
normalisation as separate element-wise ops. On a CPU that costs more than the
convolutions it sits between once those run in bfloat16 on AMX: in a 10-layer
Conv3x3-BN-ReLU stack it was 62 % of a bfloat16 step (121 of 194 ms), the fused kernel
13 ms (``shared/reference/perf_notes.md``). ``FusedBatchNormalization`` is that layer on
``FusedBatchNormV3`` with Keras's weights, names, config and update rule, so checkpoints
and transfers by layer name are unchanged. It keeps Keras's class name too: Keras 3's
``.weights.h5`` and ``.keras`` files address layers by their snake-cased class name
(``batch_normalization_3``), so a class named otherwise would not read older files.
"""
import contextlib

import keras
from keras import layers

# FusedBatchNormV3 raises epsilon to this floor (TensorFlow's Python wrapper);
# a smaller epsilon takes the Keras path so the arithmetic stays Keras's.
_MIN_FUSED_EPSILON = 1.001e-5
_FUSED_DTYPES = ("float32", "bfloat16", "float16")
_use_fused = True


@keras.saving.register_keras_serializable(package="nets")
class BatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Same weights (gamma, beta, moving_mean, moving_variance), config and semantics:
    in training mode (``training=True`` and ``trainable``) the output is normalised
    with the batch mean and biased batch variance, and the moving statistics move by
    ``momentum`` towards the batch mean and the *biased* batch variance, as Keras 3
    does (the fused kernel returns the Bessel-corrected variance; it is scaled back).
    Otherwise (inference, or a frozen layer) the moving statistics are used.
    bfloat16/float16 inputs stay in their dtype; the kernel accumulates in float32.

    Where the kernel does not apply (not the TensorFlow backend, input not 4-D, axis
    not the last, ``synchronized``, ``renorm``, a mask, float64, epsilon below
    1.001e-5) the layer runs Keras's own code, as it does everywhere when built inside
    :func:`keras_batch_norm`.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fused = _use_fused

    def add_weight(self, *args, **kwargs):
        # Under a distribution strategy each replica updates the moving statistics from
        # its own share of the batch; Keras 3 leaves them unaggregated, so replicas (and
        # machines) drift apart and the chief saves only its own. "mean" keeps every
        # copy at the replicas' average, as tf.keras 2 did; without a strategy it is a
        # no-op.
        if kwargs.get("name") in ("moving_mean", "moving_variance"):
            kwargs.setdefault("aggregation", "mean")
        return super().add_weight(*args, **kwargs)

    def _fusable(self, inputs, mask):
        return (self.fused and keras.backend.backend() == "tensorflow"
                and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and mask is None and not self.synchronized and not self.renorm
                and self.epsilon >= _MIN_FUSED_EPSILON
                and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = (tf.convert_to_tensor(self.gamma, tf.float32) if self.scale
                 else tf.ones((channels,), tf.float32))
        offset = (tf.convert_to_tensor(self.beta, tf.float32) if self.center
                  else tf.zeros((channels,), tf.float32))
        moving_mean = tf.convert_to_tensor(self.moving_mean, tf.float32)
        moving_variance = tf.convert_to_tensor(self.moving_variance, tf.float32)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, is_training=True)
            # The kernel returns variance * n / (n - 1) (n - 1 floored at 1); Keras
            # updates with the biased variance it normalised with.
            n = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, tf.float32)
            variance = variance * (tf.maximum(n - 1.0, 1.0) / n)
            self.moving_mean.assign(moving_mean * self.momentum
                                    + mean * (1.0 - self.momentum))
            self.moving_variance.assign(moving_variance * self.momentum
                                        + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, mean=moving_mean, variance=moving_variance,
                epsilon=self.epsilon, is_training=False)
        return tf.cast(outputs, self.compute_dtype)


@contextlib.contextmanager
def keras_batch_norm():
    """Layers built inside this block run Keras's unfused code (for benchmarks and
    tests that compare the two; weights, names and config are the same)."""
    global _use_fused
    before, _use_fused = _use_fused, False
    try:
        yield
    finally:
        _use_fused = before
