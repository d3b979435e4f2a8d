"""Side-by-side timing: every configuration's step, interleaved round by round.

The machines these benchmarks run on are often shared; timing configuration A for a
minute and then B for a minute lets a neighbour's load land on one of them only.
Running one step of each in turn, for several rounds, exposes both to the same load,
so their ratio holds even when the absolute times do not.
"""
import statistics
import time


def interleaved(steps, rounds, warmup=2, progress=True):
    """Time ``steps`` (name -> zero-argument callable) round-robin.

    Each callable runs ``warmup`` times untimed (tracing), then once per round for
    ``rounds`` rounds. Returns name -> dict with the median wall seconds per call
    (``s``), all wall times (``times``) and the process CPU seconds per wall second
    over its calls (``cpu``, 2.0 = two cores busy).
    """
    for name, step in steps.items():
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        if progress:
            print(f"  warm-up {name}: {time.perf_counter() - start:.0f} s", flush=True)
    walls = {name: [] for name in steps}
    cpus = {name: 0.0 for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            walls[name].append(time.perf_counter() - wall)
            cpus[name] += time.process_time() - cpu
    return {name: {"s": statistics.median(walls[name]), "times": walls[name],
                   "cpu": cpus[name] / sum(walls[name])} for name in steps}


def forward_flops(model, inputs):
    """Floating-point operations of one inference forward pass of ``model`` on
    ``inputs`` (NumPy arrays, batch included), counted by TensorFlow's profiler on the
    traced graph: convolutions, matrix products, bias adds. A training step is
    counted as three times this (the backward pass computes the gradients of both
    inputs and weights, each about a forward's cost)."""
    import tensorflow as tf

    specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, tf.float32), inputs)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(specs).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
