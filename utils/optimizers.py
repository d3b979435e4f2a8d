"""Adam with TensorFlow's fused update kernel.

Keras 3's ``Adam.update_step`` is written with backend ops: on TensorFlow each
variable's update is about ten element-wise ops, each a pass over memory with its own
temporary. On a CPU the update of ResNet50's 24 M weights (47 M for the two towers of
a Siamese) then costs a large share of a training step (``benchmarks/README.md``).
``ResourceApplyAdam`` does the same update in one kernel per variable. Same
hyperparameters, same formula (``epsilon`` added to the square root of ``v``, as
Keras), same slot variables and checkpoints; other backends, AMSGrad and
non-resource variables use Keras's own update.
"""
import keras


@keras.saving.register_keras_serializable(package="pde")
class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose per-variable update is one fused TensorFlow
    kernel (``tf.raw_ops.ResourceApplyAdam``)."""

    def __init__(self, learning_rate=0.001, name="adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        handle = getattr(variable, "handle", None)
        if self.amsgrad or keras.backend.backend() != "tensorflow" or handle is None:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        tf.raw_ops.ResourceApplyAdam(
            var=handle, m=m.value.handle, v=v.value.handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype), epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype), use_locking=False)
