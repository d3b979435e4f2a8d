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

``Adan`` is the optimiser CMID's authors pretrain with (Xie et al. 2022).
"""
import keras
from keras import ops


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


@keras.saving.register_keras_serializable(package="pde")
class Adan(keras.optimizers.Optimizer):
    """Adan, adaptive Nesterov momentum (Xie et al. 2022), as the authors' code
    ``sail-sg/Adan`` (which timm and CMID's authors use), per step k with gradient g:

        m = b1 m + (1 - b1) g                    (b1 0.98)
        v = b2 v + (1 - b2) (g - g_prev)         (b2 0.92; g_prev = g at the first step)
        n = b3 n + (1 - b3) (g + b2 (g - g_prev))^2        (b3 0.99)
        u = (m / (1 - b1^k) + b2 v / (1 - b2^k)) / (sqrt(n / (1 - b3^k)) + eps)
        w = (w - lr u) / (1 + lr wd)             (``no_prox``: w (1 - lr wd) - lr u)

    The betas are in the code's convention (the paper writes 1 - beta: 0.02, 0.08,
    0.01). Weight decay skips tensors of rank <= 1 (biases, BN scales and offsets), as
    timm's ``filter_bias_and_bn``, and any excluded with ``exclude_from_weight_decay``.
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.98, beta_2=0.92, beta_3=0.99,
                 epsilon=1e-8, weight_decay=0.0, no_prox=False, name="adan", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name,
                         weight_decay=weight_decay or None, **kwargs)
        self.beta_1, self.beta_2, self.beta_3 = beta_1, beta_2, beta_3
        self.epsilon, self.no_prox = epsilon, bool(no_prox)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._m = self.add_optimizer_variables(var_list, "exp_avg")
        self._v = self.add_optimizer_variables(var_list, "exp_avg_diff")
        self._n = self.add_optimizer_variables(var_list, "exp_avg_sq")
        self._prev = self.add_optimizer_variables(var_list, "pre_grad")

    def _apply_weight_decay(self, variables):
        # Applied inside update_step, where the proximal form needs the update first.
        return None

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        b1, b2, b3 = (ops.cast(b, dtype) for b in (self.beta_1, self.beta_2, self.beta_3))
        step = ops.cast(self.iterations + 1, dtype)
        i = self._get_variable_index(variable)
        m, v, n, prev = self._m[i], self._v[i], self._n[i], self._prev[i]
        diff = ops.where(ops.equal(step, 1.0), ops.zeros_like(g), ops.subtract(g, prev))
        self.assign(m, ops.add(ops.multiply(b1, m), ops.multiply(1.0 - b1, g)))
        self.assign(v, ops.add(ops.multiply(b2, v), ops.multiply(1.0 - b2, diff)))
        nesterov = ops.add(g, ops.multiply(b2, diff))
        self.assign(n, ops.add(ops.multiply(b3, n), ops.multiply(1.0 - b3, ops.square(nesterov))))
        self.assign(prev, g)
        denom = ops.add(ops.sqrt(ops.divide(n, 1.0 - ops.power(b3, step))),
                        ops.cast(self.epsilon, dtype))
        update = ops.divide(ops.add(ops.divide(m, 1.0 - ops.power(b1, step)),
                                    ops.multiply(b2, ops.divide(v, 1.0 - ops.power(b2, step)))),
                            denom)
        decay = (self.weight_decay and len(variable.shape) > 1
                 and self._use_weight_decay(variable))
        if not decay:
            self.assign_sub(variable, ops.multiply(lr, update))
            return
        wd = ops.cast(self.weight_decay, dtype)
        if self.no_prox:
            self.assign(variable, ops.subtract(ops.multiply(variable, 1.0 - lr * wd),
                                               ops.multiply(lr, update)))
        else:
            self.assign(variable, ops.divide(ops.subtract(variable, ops.multiply(lr, update)),
                                             1.0 + lr * wd))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "beta_3": self.beta_3, "epsilon": self.epsilon, "no_prox": self.no_prox}


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
