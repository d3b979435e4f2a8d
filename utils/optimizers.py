"""Adam with TensorFlow's fused update kernel, and the learning-rate schedules the
training scripts share.

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


SCHEDULES = ("constant", "step", "cosine")


def learning_rate_schedule(learning_rate, steps_per_epoch, epochs, lr_schedule="constant",
                           lr_decay=1.0, lr_decay_epochs=1, warmup_epochs=0.0,
                           min_learning_rate=0.0, max_warmup_fraction=1.0):
    """What the optimiser's ``learning_rate`` is set to, per step:

    * ``constant``: ``learning_rate`` throughout;
    * ``step``: ``learning_rate * lr_decay ** (epoch // lr_decay_epochs)`` (CSCL: 0.975
      every epoch; multitask: 0.95 every 2);
    * ``cosine``: a linear warm-up from 1 % of ``learning_rate`` over ``warmup_epochs``
      (fractions allowed; at most ``max_warmup_fraction`` of the run), then a cosine down
      to ``min_learning_rate`` at the last step (CMID's authors; PDE's demo).

    Keras schedules read the optimiser's step count, which checkpoints keep, so a
    resumed run continues the schedule where it stopped.
    """
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {lr_schedule!r}; choose from "
                         f"{', '.join(SCHEDULES)}")
    steps_per_epoch = max(1, int(steps_per_epoch))
    if lr_schedule == "constant":
        return learning_rate
    if lr_schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            learning_rate, decay_steps=steps_per_epoch * max(1, int(lr_decay_epochs)),
            decay_rate=lr_decay, staircase=True)
    total = max(1, steps_per_epoch * int(epochs))
    warmup = int(min(warmup_epochs * steps_per_epoch, max_warmup_fraction * total))
    return keras.optimizers.schedules.CosineDecay(
        learning_rate * 0.01 if warmup else learning_rate, decay_steps=max(1, total - warmup),
        alpha=min_learning_rate / learning_rate, warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup)
