"""The original's U-Net: a ResNet50 or VGG16 encoder and a four-stage decoder.

The encoder is one sub-model (``model.get_layer("resnet50")`` or ``"vgg"``), so freezing
it is ``encoder.trainable = False`` and its layers keep the original names.
"""
import keras
from keras import initializers, layers

from nets.encoders import build_encoder, check_input_shape
from nets.layers import BatchNormalization

DECODER_FILTERS = (512, 256, 128, 64)


def _conv(filters):
    return layers.Conv2D(filters, 3, activation="relu", padding="same",
                         kernel_initializer=initializers.RandomNormal(stddev=0.02))


def build_unet(input_shape=(576, 1024, 3), num_classes=5, backbone="resnet50"):
    """Build the segmentation model; output (H, W, num_classes) softmax.

    The original named this builder ``Unet``, like the predictor class in ``unet.py``;
    here ``Unet`` is only the predictor.
    """
    check_input_shape(input_shape, backbone)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    encoder = build_encoder(input_shape, backbone)
    outputs = unet_decoder(encoder(inputs), num_classes, backbone)
    return keras.Model(inputs, outputs, name=f"unet_{backbone}")


def unet_decoder(features, num_classes=5, backbone="resnet50"):
    """The decoder on the encoder's five feature maps (strides low to high); returns
    the (H, W, num_classes) softmax tensor."""
    feat1, feat2, feat3, feat4, feat5 = features
    x = feat5
    for skip, filters in zip((feat4, feat3, feat2, feat1), DECODER_FILTERS):
        x = layers.UpSampling2D(2)(x)
        x = layers.Concatenate(axis=3)([skip, x])
        x = _conv(filters)(x)
        x = _conv(filters)(x)
    if backbone == "vgg":
        x = BatchNormalization()(x)
    else:
        # ResNet50's first feature is at stride 2: one more upsampling stage.
        x = layers.UpSampling2D(2)(x)
        x = _conv(DECODER_FILTERS[-1])(x)
        x = _conv(DECODER_FILTERS[-1])(x)
    return layers.Conv2D(num_classes, 1, activation="softmax", name="seg_output")(x)


def get_encoder(model):
    """The encoder sub-model of a U-Net built by :func:`build_unet`."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(f"model {model.name!r} has no encoder sub-model")
