"""Side-by-side timing: every configuration's step, interleaved round by round.

The machines these benchmarks run on are often shared; timing configuration A for a
minute and then B for a minute lets a neighbour's load land on one of them only.
Running one step of each in turn, for several rounds, exposes both to the same load,
so their ratio holds even when the absolute times do not.
"""
import os
import statistics
import time

# Side of the square matrices whose product measures the machine's rate.
GEMM_SIZE = 2048
# What a benchmark's --precision takes: the trainers' names, "mixed" (bfloat16 on a CPU,
# float16 on a GPU, whatever the probe says) and "both" (float32 and mixed).
BENCH_PRECISIONS = ("float32", "bfloat16", "float16", "auto", "mixed", "both")
# Batch-norm kernels and Adam updates the train-step benchmarks compare.
KINDS = ("fused", "keras")
# XLA settings the train-step benchmarks compare: what training uses (utils.utils.
# jit_compile_default: on a GPU only), off, on.
XLA = ("default", "off", "on")


def add_step_options(parser, input_shape, batch_size, warmup):
    """The options of both train-step benchmarks (bench_pde_step, bench_unet_step);
    each list option times one configuration per value."""
    from utils.options import add_input_shape, add_seed

    add_input_shape(parser, input_shape)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help=f"untimed first steps: tracing (default {warmup})")
    parser.add_argument("--precision", nargs="+", choices=BENCH_PRECISIONS, default=["both"],
                        help="precisions to time side by side: float32, bfloat16, float16, "
                             "auto (what --precision auto picks here), mixed (bfloat16 on a "
                             "CPU, float16 on a GPU), both (float32 and mixed; the default)")
    parser.add_argument("--bn", nargs="+", choices=KINDS, default=["fused"],
                        help="batch-norm kernel(s) of the encoder: fused (the default, what "
                             "training uses), keras (Keras 3's unfused layer)")
    parser.add_argument("--adam", nargs="+", choices=KINDS, default=["fused"],
                        help="Adam update(s): fused (utils/optimizers.FusedAdam, what training "
                             "uses), keras (Keras 3's Adam)")
    parser.add_argument("--xla", nargs="+", choices=XLA, default=["default"],
                        help="XLA compilation of the step: default (what training uses: on a "
                             "GPU only), off, on; several are timed side by side")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="float32 peak for the %% of peak column (default: the float32 "
                             "matrix-product rate measured on this machine in the same run)")
    return add_seed(parser, 0)


def machine_line():
    """The first line every benchmark prints: the CPU model, the flags that decide its
    fast paths, the cores, TensorFlow, whether oneDNN is on and why, any oneDNN cap."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    from utils.precision import cpu_info
    from utils.tf_env import onednn_state

    cpu = cpu_info()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
              "asimd", "sve", "bf16")
    flags = " ".join(f for f in wanted if f in cpu["flags"]) or "none of avx2/avx512/amx"
    try:
        tf_version = version("tensorflow")
    except PackageNotFoundError:
        tf_version = "not installed"
    # GPUs are counted only where TensorFlow is loaded already (its import takes seconds).
    tf = sys.modules.get("tensorflow")
    gpus = len(tf.config.list_physical_devices("GPU")) if tf else None
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    onednn, why = onednn_state(cpu["flags"])
    return (f"Machine: {cpu['model']}; flags {flags}; {os.cpu_count()} cores"
            + ("" if gpus is None else f"; {gpus} GPU(s)")
            + f"; TensorFlow {tf_version}; oneDNN {'on' if onednn else 'off'} ({why})"
            + (f"; ONEDNN_MAX_CPU_ISA={cap}" if cap else ""))


def jit_compile(xla):
    """The ``jit_compile`` value of an ``--xla`` choice."""
    from utils.utils import jit_compile_default

    return {"default": jit_compile_default(), "off": False, "on": True}[xla]


def xla_suffix(xla):
    """What an ``--xla`` choice adds to a configuration's name ("" for the default)."""
    return "" if xla == "default" else f"/xla-{xla}"


def xla_ratios(results):
    """Lines comparing each configuration named with ``xla_suffix("on")`` with the same
    one named with ``xla_suffix("off")`` or, failing that, the default's."""
    on, off = xla_suffix("on"), xla_suffix("off")
    lines = []
    for name, r in results.items():
        if name.endswith(on):
            base = name.removesuffix(on)
            other = next((o for o in (base + off, base) if o in results), None)
            if other:
                lines.append(f"  XLA on / {'off' if other.endswith(off) else 'default'}, "
                             f"{base}: {results[other]['s'] / r['s']:.2f}x")
    return lines


def bench_precisions(asked):
    """The precisions a benchmark's ``--precision`` list names ("both" = float32, mixed)."""
    names = []
    for name in asked:
        for one in (("float32", "mixed") if name == "both" else (name,)):
            if one not in names:
                names.append(one)
    return tuple(names)


def set_bench_precision(name, input_shape=None, batch_size=None):
    """Set the Keras policy for a benchmark's precision name; returns the policy."""
    import keras
    import tensorflow as tf

    from utils.precision import POLICIES, set_precision

    if name == "mixed":
        policy = POLICIES["float16" if tf.config.list_physical_devices("GPU") else "bfloat16"]
        keras.mixed_precision.set_global_policy(policy)
        return policy
    return set_precision(name, input_shape, batch_size)["policy"]


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
    from utils.precision import cpu_info, native_bf16

    f32 = gemm_gflops("float32")
    line = f"  matrix product {GEMM_SIZE}x{GEMM_SIZE} on this machine: float32 {f32:.0f} GFLOP/s"
    # Under a oneDNN cap below bfloat16 the product has no kernel and aborts the process.
    if native_bf16(cpu_info()["flags"]):
        bf16 = gemm_gflops("bfloat16")
        line += (f", bfloat16 {bf16:.0f} GFLOP/s ({bf16 / f32:.2f}x: the most bfloat16 can "
                 f"gain where the step is all products)")
    else:
        line += " (no native bfloat16 here: not timed)"
    if peak_gflops:
        return peak_gflops, line + f"; % of peak below is of the given {peak_gflops:.0f} GFLOP/s"
    return f32, line + "; % of peak below is of the float32 product's rate"
