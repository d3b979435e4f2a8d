"""The one augmentation every ``other_ssl`` method uses to make its two views.

In-graph and random per sample (flip, crop box, jitter strengths), as the original's
``contrastive_augmenter``: rescale 0..255 -> 0..1, horizontal flip, random resized
crop (scale 0.2-1, aspect ratio 3/4-4/3), colour jitter (brightness 0.7, contrast 0.6,
saturation 0.6, hue 0.1) with the four jitters in random order.
"""
import math

import keras
import tensorflow as tf

DEFAULTS = dict(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                brightness=0.7, contrast=0.6, saturation=0.6, hue=0.1)


def _per_sample(images, low, high):
    """A (batch, 1, 1, 1) uniform draw, one value per image."""
    return tf.random.uniform((tf.shape(images)[0], 1, 1, 1), low, high)


def _blend(images, other, factor):
    return tf.clip_by_value(factor * images + (1.0 - factor) * other, 0.0, 1.0)


def random_flip(images):
    flip = tf.random.uniform((tf.shape(images)[0], 1, 1, 1)) < 0.5
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def crop_and_resize(images, boxes):
    """Bilinear crop of each image to its box (y1, x1, y2, x2 in 0..1), resized back to
    the full image size; the same values as ``tf.image.crop_and_resize`` with one box
    per image, but built from gathers, which XLA compiles (CropAndResize it does not)."""
    shape = tf.shape(images)
    h, w = shape[1], shape[2]

    def coords(start, stop, n):
        # Sample positions in pixels of the source, (batch, n), and their neighbours.
        steps = tf.linspace(0.0, 1.0, n)[None, :]
        pos = (start[:, None] + (stop - start)[:, None] * steps) * tf.cast(n - 1, tf.float32)
        low = tf.clip_by_value(tf.floor(pos), 0.0, tf.cast(n - 1, tf.float32))
        high = tf.minimum(low + 1.0, tf.cast(n - 1, tf.float32))
        return tf.cast(low, tf.int32), tf.cast(high, tf.int32), (pos - low)

    y0, y1, wy = coords(boxes[:, 0], boxes[:, 2], h)
    x0, x1, wx = coords(boxes[:, 1], boxes[:, 3], w)
    rows = (tf.gather(images, y0, axis=1, batch_dims=1) * (1.0 - wy)[:, :, None, None]
            + tf.gather(images, y1, axis=1, batch_dims=1) * wy[:, :, None, None])
    return (tf.gather(rows, x0, axis=2, batch_dims=1) * (1.0 - wx)[:, None, :, None]
            + tf.gather(rows, x1, axis=2, batch_dims=1) * wx[:, None, :, None])


def random_resized_crop(images, scale=DEFAULTS["scale"], ratio=DEFAULTS["ratio"]):
    """Crop a box of random area fraction ``scale`` and log-uniform aspect ``ratio``
    (relative to the image's own aspect) from each image, resized back to full size."""
    n = tf.shape(images)[0]
    area = tf.random.uniform((n,), scale[0], scale[1])
    aspect = tf.exp(tf.random.uniform((n,), math.log(ratio[0]), math.log(ratio[1])))
    h = tf.clip_by_value(tf.sqrt(area / aspect), 0.0, 1.0)
    w = tf.clip_by_value(tf.sqrt(area * aspect), 0.0, 1.0)
    top = tf.random.uniform((n,)) * (1.0 - h)
    left = tf.random.uniform((n,)) * (1.0 - w)
    return crop_and_resize(images, tf.stack([top, left, top + h, left + w], axis=1))


def random_brightness(images, strength):
    return _blend(images, 0.0, _per_sample(images, 1.0 - strength, 1.0 + strength))


def random_contrast(images, strength):
    mean = tf.reduce_mean(tf.image.rgb_to_grayscale(images), axis=(1, 2), keepdims=True)
    return _blend(images, mean, _per_sample(images, 1.0 - strength, 1.0 + strength))


def random_saturation(images, strength):
    grey = tf.image.rgb_to_grayscale(images)
    return _blend(images, grey, _per_sample(images, 1.0 - strength, 1.0 + strength))


def random_hue(images, strength):
    hsv = tf.image.rgb_to_hsv(images)
    shift = _per_sample(images, -strength, strength)
    hue = tf.math.floormod(hsv[..., :1] + shift, 1.0)
    return tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1))


class SSLAugment(keras.layers.Layer):
    """Image batch (0..255) -> one randomly augmented view (0..1).

    Call it twice on the same batch for two views. ``training=False`` only rescales.
    """

    def __init__(self, scale=DEFAULTS["scale"], ratio=DEFAULTS["ratio"],
                 brightness=DEFAULTS["brightness"], contrast=DEFAULTS["contrast"],
                 saturation=DEFAULTS["saturation"], hue=DEFAULTS["hue"], **kwargs):
        # float32 always: the colour-space ops have no bfloat16 kernels.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.brightness, self.contrast = brightness, contrast
        self.saturation, self.hue = saturation, hue

    def _jitter(self, images):
        ops = [lambda x: random_brightness(x, self.brightness),
               lambda x: random_contrast(x, self.contrast),
               lambda x: random_saturation(x, self.saturation),
               lambda x: random_hue(x, self.hue)]
        # A fresh order every batch (the original drew one order when the graph was traced).
        order = tf.random.shuffle(tf.range(len(ops)))
        for i in range(len(ops)):
            images = tf.switch_case(order[i], [lambda f=f: f(images) for f in ops])
            images.set_shape([None, None, None, 3])
        return images

    def call(self, images, training=True):
        images = tf.cast(images, tf.float32) / 255.0
        if not training:
            return images
        images = random_flip(images)
        images = random_resized_crop(images, self.scale, self.ratio)
        return self._jitter(images)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "ratio": self.ratio,
                "brightness": self.brightness, "contrast": self.contrast,
                "saturation": self.saturation, "hue": self.hue}
