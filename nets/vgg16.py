"""VGG16 backbone with the classic layer names (``block1_conv1`` ... ``block5_conv3``).

Five features at strides 1, 2, 4, 8 and 16 (the last block is not pooled), as in the
original U-Net. ``suffix="_2"`` gives the original's second-tower names.
"""
from keras import initializers, layers

BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def vgg16_features(img_input, suffix=""):
    """Apply VGG16 to ``img_input``; return five feature maps (64..512 channels)."""
    x = img_input
    features = []
    for b, (filters, convs) in enumerate(BLOCKS, start=1):
        for c in range(1, convs + 1):
            x = layers.Conv2D(filters, 3, activation="relu", padding="same",
                              kernel_initializer=initializers.RandomNormal(stddev=0.02),
                              name=f"block{b}_conv{c}{suffix}")(x)
        features.append(x)
        if b < len(BLOCKS):
            x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool{suffix}")(x)
    return tuple(features)


def VGG16(img_input):
    """The original's builder: five features with the standard names."""
    return vgg16_features(img_input)


def VGG16_2(img_input):
    """The original's second-tower builder (names end in ``_2``)."""
    return vgg16_features(img_input, suffix="_2")
