"""Side-by-side timing: every configuration's step, interleaved round by round.

The machines these benchmarks run on are often shared; timing configuration A for a
minute and then B for a minute lets a neighbour's load land on one of them only.
Running one step of each in turn, for several rounds, exposes both to the same load,
so their ratio holds even when the absolute times do not.
"""
import statistics
import time

# Side of the square matrices whose product measures the machine's rate.
GEMM_SIZE = 2048


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


def gemm_gflops(dtype="float32", n=GEMM_SIZE, rounds=10):
    """GFLOP/s of an ``n`` x ``n`` matrix product in ``dtype`` on this machine (best of
    ``rounds``, all threads): the rate a convolution network's step can at best
    approach, measured instead of taken from a data sheet (a virtual machine's CPU
    model, clock and instruction sets are not always what its name suggests; bfloat16
    products run on AMX only where the CPU exposes it)."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_uniform((n, n), (0, 1)), dtype)
    b = tf.cast(tf.random.stateless_uniform((n, n), (0, 2)), dtype)
    product = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    product(a, b).numpy()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def peak_report(peak_gflops=None):
    """(fp32 peak used for "% of peak", text line): the measured fp32 and bfloat16
    matrix-product rates, or ``peak_gflops`` when given."""
    f32, bf16 = gemm_gflops("float32"), gemm_gflops("bfloat16")
    line = (f"  matrix product {GEMM_SIZE}x{GEMM_SIZE} on this machine: float32 {f32:.0f} GFLOP/s, "
            f"bfloat16 {bf16:.0f} GFLOP/s ({bf16 / f32:.2f}x: the most --mixed-precision "
            f"can gain where the step is all products)")
    if peak_gflops:
        return peak_gflops, line + f"; % of peak below is of the given {peak_gflops:.0f} GFLOP/s"
    return f32, line + "; % of peak below is of the float32 product's rate"
