"""The original's ``unet.py``: ``from unet import Unet`` gives the predictor.

The class lives in :mod:`utils.predictor` so that packages (``growth_modeling``) reach
it without importing a root script; this module keeps the original's import path.
"""
from utils.predictor import Unet  # noqa: F401
from utils.utils import VOC_PALETTE, class_colors  # noqa: F401
