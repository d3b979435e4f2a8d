"""ResNet50 backbone with the original PDE layer names.

Tower 1 uses the classic Keras names (``conv1``, ``bn_conv1``, ``res2a_branch2a``,
``bn2a_branch2a`` ... ``res5c_branch2c``), which are also the names in the legacy
ImageNet "notop" weight files, so weights move between the Siamese tower, the U-Net
encoder and those files by layer name. The original's second Siamese tower used
``conv1_2``, ``bn_conv1_2`` and stage numbers times ten (``res20a_branch2a``,
``bn50c_branch2c``); ``suffix="_2"`` reproduces those names.
"""
import re

import keras
from keras import layers

from nets.layers import BatchNormalization

# (filters, number of blocks) per stage; block letters are a, b, c, ...
STAGES = ((2, (64, 64, 256), 3), (3, (128, 128, 512), 4),
          (4, (256, 256, 1024), 6), (5, (512, 512, 2048), 3))


def _stage_label(stage, suffix):
    # The original's second tower renamed stage 2 to 20, 3 to 30, ...
    return f"{stage}0" if suffix else str(stage)


def _bottleneck(x, filters, stage_label, block, strides, shortcut_conv):
    """One bottleneck block: 1x1 reduce, 3x3, 1x1 expand, plus the shortcut."""
    f1, f2, f3 = filters
    conv = f"res{stage_label}{block}_branch"
    bn = f"bn{stage_label}{block}_branch"
    y = layers.Conv2D(f1, 1, strides=strides, name=conv + "2a")(x)
    y = BatchNormalization(name=bn + "2a")(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(f2, 3, padding="same", name=conv + "2b")(y)
    y = BatchNormalization(name=bn + "2b")(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(f3, 1, name=conv + "2c")(y)
    y = BatchNormalization(name=bn + "2c")(y)
    if shortcut_conv:
        x = layers.Conv2D(f3, 1, strides=strides, name=conv + "1")(x)
        x = BatchNormalization(name=bn + "1")(x)
    y = layers.add([y, x])
    return layers.Activation("relu")(y)


def resnet50_features(img_input, suffix=""):
    """Apply ResNet50 to ``img_input``; return the five feature maps.

    Shapes for an (H, W, 3) input: feat1 (H/2, W/2, 64), feat2 (H/4, W/4, 256),
    feat3 (H/8, W/8, 512), feat4 (H/16, W/16, 1024), feat5 (H/32, W/32, 2048).
    ``suffix`` is "" for the standard names or "_2" for the original's tower 2.
    """
    x = layers.ZeroPadding2D(3)(img_input)
    x = layers.Conv2D(64, 7, strides=2, name="conv1" + suffix)(x)
    x = BatchNormalization(name="bn_conv1" + suffix)(x)
    x = layers.Activation("relu")(x)
    features = [x]
    x = layers.ZeroPadding2D(1)(x)
    x = layers.MaxPooling2D(3, strides=2)(x)
    for stage, filters, blocks in STAGES:
        label = _stage_label(stage, suffix)
        for i in range(blocks):
            strides = 1 if (i > 0 or stage == 2) else 2
            x = _bottleneck(x, filters, label, "abcdefgh"[i], strides, shortcut_conv=(i == 0))
        features.append(x)
    return tuple(features)


def ResNet50(img_input):
    """The original's tower-1 builder: five features with the standard names."""
    return resnet50_features(img_input)


def ResNet50_2(img_input):
    """The original's tower-2 builder: ``conv1_2``, ``res20a_branch2a``, ..."""
    return resnet50_features(img_input, suffix="_2")


STAGE_NAMES = ("conv1", "res2", "res3", "res4", "res5")
# conv1, conv1_2; res2a_branch2a (tower 1) and res20a_branch2a (tower 2, stage x 10)
_CONV_STAGE = re.compile(r"^(?:(conv1)(?:_2)?|res([2-5])0?[a-h]_branch\w+)$")
# bn_conv1, bn_conv1_2; bn2a_branch2a and bn20a_branch2a
_BN_STAGE = re.compile(r"^(?:bn_(conv1)(?:_2)?|bn([2-5])0?[a-h]_branch\w+)$")


def freeze_conv_stages(model, stages, batch_norm=False):
    """Freeze the convolution kernels of the given ResNet50 ``stages`` (names of
    :data:`STAGE_NAMES`) in every tower of ``model``, nested models included. Batch norm
    stays trainable unless ``batch_norm``: then its scale and offset in those stages stay
    at their initial values too, while the layers still normalise with each batch's
    statistics in training (the layers stay trainable; their moving averages update), so
    no gradient has to flow below the lowest trained stage. The variables' flags are not
    saved in a checkpoint: apply this again after loading one. Returns the number of
    layers frozen."""
    unknown = set(stages) - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown ResNet50 stages {sorted(unknown)}; choose from {STAGE_NAMES}")
    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, layers.Conv2D):
            m = _CONV_STAGE.match(layer.name)
        elif batch_norm and isinstance(layer, layers.BatchNormalization):
            m = _BN_STAGE.match(layer.name)
        else:
            m = None
        if not (m and (m.group(1) or f"res{m.group(2)}") in stages):
            continue
        if isinstance(layer, layers.Conv2D):
            layer.trainable = False
        else:
            for variable in (layer.gamma, layer.beta):
                variable.trainable = False
        n += 1
    return n
