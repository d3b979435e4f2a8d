"""Which compute precision a run uses: chosen by measurement, not assumed.

``--precision auto`` takes bfloat16 on a CPU only where the CPU computes it natively
(AMX or AVX-512 BF16 on x86, the BF16 extension on ARM, and oneDNN not capped below
them) *and* a short probe at the run's sizes shows it faster; float16 on a GPU with
tensor cores (compute capability 7.0 or more); float32 everywhere else. Without native
bfloat16, TensorFlow's fallback kernels were 0.12x float32 on an AVX2-only CPU
(docs/pipeline.md, "Precision").

The decision is printed once per process, returned as a record for the run's
``args.json``/``results.json``, and the probe's figures are cached per machine (CPU
model, TensorFlow version, oneDNN cap, probe sizes) under ``$PDE_CACHE_DIR``.
"""
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

# CACHE_ENV is re-exported: callers and tests name the cache variable through this module.
from utils.cache import CACHE_ENV, cache_root, read_cache, write_cache  # noqa: F401
from utils.tf_env import onednn_state

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# Keras global policies: variables stay float32, compute runs in the named dtype.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# CPU flags (/proc/cpuinfo) of instructions that compute bfloat16 products natively.
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which no native bfloat16 kernel runs.
NO_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")
# bfloat16 must beat float32 by this much in the probe: the probe's conv and product are
# the part of a step that gains most, batch norm and element-wise ops gain less.
MIN_SPEEDUP = 1.15
CACHE_FILE = "precision_probe.json"

_decided = {}   # (requested, sizes) -> record: print and probe once per process


def cpu_info():
    """``{"model": str, "flags": sorted list}`` of this machine's CPU, from
    /proc/cpuinfo on Linux, sysctl on macOS, ``platform`` elsewhere."""
    model, flags = "", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    elif platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
        if _sysctl("hw.optional.arm.FEAT_BF16") == "1":
            flags.add("bf16")
    return {"model": model or platform.processor() or platform.machine(),
            "flags": sorted(flags)}


def _sysctl(name):
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def bf16_capped(onednn_isa=None):
    """Whether ``onednn_isa`` (default: ``ONEDNN_MAX_CPU_ISA``) caps oneDNN below its
    bfloat16 kernels."""
    isa = onednn_isa if onednn_isa is not None else os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return isa.strip().upper() in NO_BF16_ISAS


def native_bf16(flags, onednn_isa=None):
    """Whether bfloat16 products run on native instructions: a bfloat16 CPU flag, and
    oneDNN not capped (``ONEDNN_MAX_CPU_ISA``) to an ISA without them."""
    return not bf16_capped(onednn_isa) and bool(set(flags) & set(BF16_FLAGS))


def gpu_compute_capability():
    """``(major, minor)`` of the first visible GPU, ``None`` without one, ``(0, 0)``
    where TensorFlow does not say."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return tuple(details.get("compute_capability") or (0, 0))


def probe_sizes(input_shape=None, batch_size=None):
    """The probe's shapes at a run's input and batch: a 3x3 convolution of 64 channels
    at a ResNet's stride-4 maps, and a product as wide as its stride-16 maps; clipped so
    the probe stays near two seconds on a 2-core CPU."""
    h, w = input_shape or (64, 128)
    b = max(1, min(int(batch_size or 8), 16))
    conv = (b, max(8, min(h // 4, 48)), max(8, min(w // 4, 64)), 64)
    rows = max(256, min(b * max(1, h // 16) * max(1, w // 16), 2048))
    return {"conv": conv, "matmul": (rows, 1024, 256)}


def probe(sizes, budget_s=2.0):
    """Median milliseconds of a convolution step (forward and both gradients) and a
    matrix product in float32 and bfloat16, timed in alternating rounds so a busy
    neighbour slows both alike. Returns ``{"ms": {op: {dtype: ms}}, "speedup": x}``;
    where bfloat16 has no kernel here (oneDNN capped below it) the speedup is 0."""
    import tensorflow as tf

    def conv_step(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME"))
            s = tf.reduce_sum(tf.cast(y, tf.float32))
        return tape.gradient(s, [x, k])

    def product(a, b):
        return tf.matmul(a, b)

    b, h, w, c = sizes["conv"]
    m, k, n = sizes["matmul"]
    ops = {}
    for dtype in ("float32", "bfloat16"):
        x = tf.cast(tf.random.stateless_uniform((b, h, w, c), (1, 2)), dtype)
        kernel = tf.cast(tf.random.stateless_normal((3, 3, c, c), (3, 4)) * 0.05, dtype)
        a = tf.cast(tf.random.stateless_uniform((m, k), (5, 6)), dtype)
        bm = tf.cast(tf.random.stateless_uniform((k, n), (7, 8)), dtype)
        ops[("conv", dtype)] = (tf.function(conv_step), (x, kernel))
        ops[("matmul", dtype)] = (tf.function(product), (a, bm))

    def once(key):
        fn, args = ops[key]
        start = time.perf_counter()
        out = fn(*args)
        tf.nest.map_structure(lambda t: t.numpy(), out)
        return time.perf_counter() - start

    for key in ops:            # trace and warm up
        try:
            once(key)
        except tf.errors.OpError as exc:
            if key[1] == "float32":
                raise
            first_line = str(exc).strip().splitlines()[0]
            return {"ms": {}, "rounds": 0, "speedup": 0.0,
                    "error": f"bfloat16 {key[0]}: {first_line[:200]}"}
    first = sum(once(key) for key in ops)
    rounds = max(3, min(15, int(budget_s / max(first, 1e-3))))
    times = {key: [] for key in ops}
    for _ in range(rounds):
        for key in ops:
            times[key].append(once(key))
    ms = {}
    for (op, dtype), values in times.items():
        ms.setdefault(op, {})[dtype] = round(1e3 * statistics.median(values), 3)
    f32 = sum(v["float32"] for v in ms.values())
    bf16 = sum(v["bfloat16"] for v in ms.values())
    return {"ms": ms, "rounds": rounds, "speedup": round(f32 / bf16, 3)}


def decide(requested, *, gpu_cc=None, native=False, run_probe=None):
    """The precision for ``requested`` on a machine described by the arguments (pure,
    so tests can fake the machine): ``gpu_cc`` the GPU's compute capability or None,
    ``native`` whether the CPU computes bfloat16 natively, ``run_probe()`` the probe
    (called only where it decides). Returns ``(precision, reason, probe or None)``."""
    if requested != "auto":
        return requested, "asked for", None
    if gpu_cc is not None:
        if tuple(gpu_cc) >= (7, 0):
            return "float16", f"GPU compute capability {gpu_cc[0]}.{gpu_cc[1]}: tensor cores", None
        return "float32", f"GPU compute capability {gpu_cc[0]}.{gpu_cc[1]}: no tensor cores", None
    if not native:
        return "float32", "this CPU has no native bfloat16", None
    result = run_probe()
    if result["speedup"] >= MIN_SPEEDUP:
        return "bfloat16", f"native bfloat16, {result['speedup']:.2f}x float32 in the probe", result
    return "float32", (f"native bfloat16 but only {result['speedup']:.2f}x float32 in the "
                       f"probe (needs {MIN_SPEEDUP}x)"), result


def _cache_path():
    return cache_root() / CACHE_FILE


def _cached_probe(key, sizes):
    """The probe's result for ``key`` from the cache, or measured now and cached."""
    path = _cache_path()
    cache = read_cache(path)
    if key in cache:
        return {**cache[key], "cached": True}
    result = probe(sizes)
    write_cache(path, {**cache, key: result})
    return {**result, "cached": False}


def resolve_precision(requested="float32", input_shape=None, batch_size=None, quiet=False):
    """The precision a run uses for ``requested`` (one of :data:`PRECISIONS`) at its
    input size and batch; prints the decision once and returns its record."""
    import tensorflow as tf

    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose from {', '.join(PRECISIONS)}")
    sizes = probe_sizes(input_shape, batch_size)
    memo = (requested, json.dumps(sizes))
    if memo in _decided:
        return _decided[memo]
    cpu = cpu_info()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    onednn, onednn_why = onednn_state(cpu["flags"])
    # Without oneDNN, TensorFlow's bfloat16 kernels are Eigen's: not native anywhere.
    native = onednn and native_bf16(cpu["flags"], isa)
    gpu_cc = gpu_compute_capability()
    key = "|".join([cpu["model"], tf.__version__, isa or "-", "onednn" if onednn else "eigen",
                    json.dumps(sizes)])
    precision, reason, measured = decide(requested, gpu_cc=gpu_cc, native=native,
                                         run_probe=lambda: _cached_probe(key, sizes))
    if not native and native_bf16(cpu["flags"], onednn_isa=""):
        reason = reason.replace("this CPU has", f"oneDNN capped at {isa}:" if onednn
                                else f"oneDNN off ({onednn_why}):")
    record = {"requested": requested, "precision": precision, "policy": POLICIES[precision],
              "reason": reason, "device": "gpu" if gpu_cc is not None else "cpu",
              "cpu": cpu["model"],
              "cpu_flags": [f for f in cpu["flags"] if f in BF16_FLAGS or f.startswith("avx")],
              "onednn": onednn, "onednn_why": onednn_why,
              "onednn_max_cpu_isa": isa or None, "native_bf16": native,
              "tensorflow": tf.__version__}
    if measured is not None:
        record["probe"] = {**measured, "sizes": sizes}
    _decided[memo] = record
    if not quiet:
        print(describe(record))
    return record


def describe(record):
    """One line: the precision, why, and the probe's figures."""
    notes = [record["cpu"]] + (["native bfloat16"] if record["native_bf16"] else []) + (
        ["oneDNN off"] if record.get("onednn") is False else [])
    line = f"Precision: {record['precision']} ({record['reason']}; {', '.join(notes)})"
    measured = record.get("probe")
    if measured:
        parts = ", ".join(f"{op} {v['float32']:.1f} / {v['bfloat16']:.1f} ms"
                          for op, v in measured["ms"].items())
        line += (f"; probe float32 / bfloat16: {parts}"
                 + (" (cached)" if measured.get("cached") else ""))
    return line


def set_precision(requested="float32", input_shape=None, batch_size=None):
    """Resolve ``requested`` (see :func:`resolve_precision`), set Keras's global
    policy to it and return the decision's record."""
    import keras

    record = resolve_precision(requested, input_shape, batch_size)
    keras.mixed_precision.set_global_policy(record["policy"])
    return record
