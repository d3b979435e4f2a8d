"""Where a run computes: the ``tf.distribute`` strategy of ``--strategy`` and which
process writes the run's files."""


STRATEGIES = ("default", "mirrored", "multiworker")


def get_strategy(name="default"):
    """A ``tf.distribute`` strategy: ``mirrored`` spans the local GPUs (the logical CPU
    devices on a machine without one), ``multiworker`` the machines named in
    ``TF_CONFIG``; ``default`` is the plain single-device one."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # No GPU: every logical CPU device, one unless the CPU was split with
        # tf.config.set_logical_device_configuration (as the tests do).
        return tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multiworker":
        return _multi_worker_strategy()
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def _multi_worker_strategy():
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3 gives it.

    Keras 3.15's ``fit`` and ``evaluate`` fail under this strategy with two workers or
    more (keras-team/keras#20585): they reduce a whole ``(x, y)`` batch in one call,
    where the strategy reduces one tensor at a time, and they reduce scalar metrics
    along ``axis=0``. Reducing each tensor, and a scalar across replicas only, is what
    both calls mean; every other call is left to the strategy.
    """
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            def one(v):
                scalar = self.experimental_local_results(v)[0].shape.rank == 0
                return super(MultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, v, None if scalar else axis)

            return tf.nest.map_structure(one, value)

    return MultiWorkerMirroredStrategy()


def is_chief(strategy=None):
    """Whether this process writes the run's files (checkpoints, logs, plots).

    Under ``multiworker`` every worker runs the same script and computes the same
    weights; only one may write: the task ``chief``, or worker 0 when the cluster in
    ``TF_CONFIG`` names no chief. Every other strategy has one process: always True.
    ``strategy``: a ``tf.distribute`` strategy, or a ``--strategy`` name (for
    ``multiworker`` the task is read from ``TF_CONFIG``, before any strategy exists).
    """
    if isinstance(strategy, str):
        if strategy != "multiworker":
            return True
        import tensorflow as tf

        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    else:
        resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())
