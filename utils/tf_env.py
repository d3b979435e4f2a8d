"""TensorFlow's environment, set by each entry script before TensorFlow loads.

TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX; on any other x86-64 CPU (an AVX2-only Zen 3, most laptops
before 2021) it runs Eigen's kernels, which took the demo's PDE step 5.6x and its frozen
U-Net step 1.2x as long as oneDNN's AVX2 kernels. So oneDNN is on for every x86-64 CPU
unless the user sets ``TF_ENABLE_ONEDNN_OPTS`` (docs/pipeline.md, "oneDNN on every
x86-64 CPU").

This module imports nothing heavy: it must run before ``import tensorflow``.
"""
import os
import platform

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# CPU flags with which TensorFlow's Linux build turns oneDNN on by itself.
TF_ONEDNN_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
X86_64 = ("x86_64", "amd64")


def wants_onednn(machine=None):
    """Whether this project turns oneDNN on for a CPU of architecture ``machine``
    (``platform.machine()``): on x86-64, where TensorFlow's wheels carry it; elsewhere
    TensorFlow's own choice stands (on ARM its oneDNN is marked experimental)."""
    return (machine if machine is not None else platform.machine()).lower() in X86_64


def configure_tensorflow(environ=None, machine=None):
    """Quiet TensorFlow's C++ logs and turn oneDNN on (see the module's doc); values
    the user set in the environment are kept. Call before TensorFlow is imported."""
    environ = os.environ if environ is None else environ
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if ONEDNN_ENV not in environ and wants_onednn(machine):
        environ[ONEDNN_ENV] = "1"


def onednn_state(flags, environ=None, system=None):
    """``(on, why)``: whether TensorFlow runs oneDNN's kernels in this process, for a
    CPU with ``flags`` (``utils.precision.cpu_info()["flags"]``), and why."""
    environ = os.environ if environ is None else environ
    tf_default = ((system or platform.system()) == "Linux"
                  and bool(set(flags) & set(TF_ONEDNN_FLAGS)))
    value = environ.get(ONEDNN_ENV, "").strip().lower()
    if value in ("1", "true", "0", "false"):
        return value in ("1", "true"), (f"{ONEDNN_ENV}={environ[ONEDNN_ENV].strip()}; TensorFlow's "
                                        f"default here: {'on' if tf_default else 'off'}")
    return tf_default, "TensorFlow's default for this CPU"
