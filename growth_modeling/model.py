"""The original's growth-modeling script name; it runs :mod:`growth_modeling.unet_gm`.

``python growth_modeling/model.py`` takes the same options as ``unet_gm.py``.
``Kalman1D`` (the original's smoother) lives in :mod:`growth_modeling.smoothing`.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from growth_modeling.smoothing import Kalman1D  # noqa: E402,F401
from growth_modeling.unet_gm import main, parse_args  # noqa: E402,F401

if __name__ == "__main__":
    main()
