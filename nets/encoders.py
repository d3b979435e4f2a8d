"""One encoder contract: a ``keras.Model`` from an image to its five skip features.

The Siamese towers, the ``other_ssl`` encoders and the U-Net encoder are all built
here, so their layer names agree and weights move between them by name or whole.
"""
import keras

from nets.resnet50 import resnet50_features
from nets.vgg16 import vgg16_features

BACKBONES = {"resnet50": resnet50_features, "vgg": vgg16_features}
# Input sides must be divisible by this so every decoder skip lines up.
STRIDE = {"resnet50": 32, "vgg": 16}


def build_encoder(input_shape=(576, 1024, 3), backbone="resnet50", suffix="", name=None):
    """Return ``keras.Model(image) -> [feat1, ..., feat5]``.

    ``suffix="_2"`` gives the original's second-tower layer names. The model is named
    ``backbone + suffix`` unless ``name`` is given.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"Unsupported backbone {backbone!r}; use one of {sorted(BACKBONES)}.")
    inputs = keras.Input(shape=tuple(input_shape), name="image" + suffix)
    features = BACKBONES[backbone](inputs, suffix=suffix)
    return keras.Model(inputs, list(features), name=name or backbone + suffix)


def check_input_shape(input_shape, backbone="resnet50"):
    """Raise a clear error when height or width is not a multiple of the backbone stride
    (``None``, any size, passes: the stride is then checked on the images)."""
    stride = STRIDE[backbone]
    h, w = input_shape[:2]
    if h is None or w is None:
        return
    if h % stride or w % stride:
        raise ValueError(f"input shape {h}x{w} is not divisible by {stride} "
                         f"(needed by the {backbone} encoder); try e.g. "
                         f"{max(stride, h // stride * stride)}x{max(stride, w // stride * stride)}.")


def weighted_layers(model):
    """All layers with weights, in order, descending into nested models."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found
