"""Shared test set-up: TensorFlow as the tools set it up, a headless matplotlib, the slow marker."""
import os
import sys
import tempfile

from utils.tf_env import configure_tensorflow

# The tests run TensorFlow's kernels as the tools do: oneDNN on every x86-64 CPU.
configure_tensorflow()
# The image-check verdicts of test files stay out of the user's ~/.cache.
os.environ.setdefault("PDE_CACHE_DIR", tempfile.mkdtemp(prefix="pde_test_cache_"))
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """A test that trains at --precision auto may leave Keras' global policy at
    mixed_bfloat16; the next test in the same worker must start in float32."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
