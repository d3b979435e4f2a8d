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
    return crop_and_resize(images, random_boxes(tf.shape(images)[0], scale, ratio))


def random_boxes(n, scale=DEFAULTS["scale"], ratio=DEFAULTS["ratio"]):
    """``n`` crop boxes (y1, x1, y2, x2 in 0..1) of random area fraction ``scale`` and
    log-uniform aspect ``ratio`` relative to the image's own, at random places."""
    area = tf.random.uniform((n,), scale[0], scale[1])
    aspect = tf.exp(tf.random.uniform((n,), math.log(ratio[0]), math.log(ratio[1])))
    h = tf.clip_by_value(tf.sqrt(area / aspect), 0.0, 1.0)
    w = tf.clip_by_value(tf.sqrt(area * aspect), 0.0, 1.0)
    top = tf.random.uniform((n,)) * (1.0 - h)
    left = tf.random.uniform((n,)) * (1.0 - w)
    return tf.stack([top, left, top + h, left + w], axis=1)


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


def in_random_order(images, ops):
    """Apply every op of ``ops`` (images -> images, same shape) in an order drawn anew
    at every call, in a graph too (not frozen when it is traced)."""
    order = tf.random.shuffle(tf.range(len(ops)))
    for i in range(len(ops)):
        images = tf.switch_case(order[i], [lambda f=f: f(images) for f in ops])
        images.set_shape([None, None, None, 3])
    return images


def color_jitter(images, brightness, contrast, saturation, hue):
    """torchvision's ColorJitter per sample: factors U[1 - s, 1 + s] (hue shift
    U[-hue, hue]), the four jitters in random order."""
    return in_random_order(images, [lambda x: random_brightness(x, brightness),
                                    lambda x: random_contrast(x, contrast),
                                    lambda x: random_saturation(x, saturation),
                                    lambda x: random_hue(x, hue)])


def random_grayscale(images, p):
    """Each image turned grey (three equal channels) with probability ``p``."""
    return random_apply(images, p,
                        lambda x: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)))


def rotate90(images, k):
    """Rotate the whole batch by ``k`` quarter turns (a Python int) anticlockwise; a
    non-square batch is resized back to its own height and width."""
    size = tf.shape(images)[1:3]
    turned = tf.image.rot90(images, k)
    if k % 2 and images.shape[1] != images.shape[2]:
        turned = tf.image.resize(turned, size)
    return turned


# Multitask self-supervision's six transforms, in the authors' class order.
DIHEDRAL = (lambda x: tf.reverse(x, axis=[2]), lambda x: tf.reverse(x, axis=[1]),
            lambda x: x, lambda x: rotate90(x, 1), lambda x: rotate90(x, 2),
            lambda x: rotate90(x, 3))


def apply_per_sample(images, index, ops):
    """``ops[index[b]](images[b])`` for every image b: every op runs on the whole batch
    and each image keeps its own (cheap next to the network)."""
    out = tf.zeros_like(images)
    for i, op in enumerate(ops):
        out = tf.where(tf.reshape(tf.equal(index, i), (-1, 1, 1, 1)), op(images), out)
    return out


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
        return color_jitter(images, self.brightness, self.contrast, self.saturation, self.hue)

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


# The authors' block transforms and their chances: flip left-right, flip up-down
# (1/4 each), a quarter, half and three-quarter turn (1/6 each); DIHEDRAL's order.
BLOCK_TRANSFORMS = (0, 1, 3, 4, 5)
BLOCK_PROBABILITIES = (1 / 4, 1 / 4, 1 / 6, 1 / 6, 1 / 6)


def block_transform(u):
    """The position in ``BLOCK_TRANSFORMS`` each uniform draw in ``u`` (any shape,
    values in [0, 1)) selects."""
    edges = tf.constant([sum(BLOCK_PROBABILITIES[:i + 1]) for i in range(4)], tf.float32)
    return tf.reduce_sum(tf.cast(u[..., None] >= edges, tf.int32), axis=-1)


def corrupt_block(images, min_ratio=0.2, max_ratio=1 / 3, brightness=0.3, contrast=0.5,
                  saturation=0.5, hue=0.3):
    """Multitask self-supervision's inpainting input: in each image one square block of
    side r * min(H, W), r ~ U[min_ratio, max_ratio], at a random place, replaced by
    itself colour-jittered and flipped or turned (``BLOCK_PROBABILITIES``).

    images: (B, H, W, 3) in 0..1. Returns the corrupted batch, same shape.
    """
    def one(image):
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        r = tf.random.uniform((), min_ratio, max_ratio)
        side = tf.maximum(1, tf.cast(r * tf.cast(tf.minimum(h, w), tf.float32), tf.int32))
        top = tf.random.uniform((), 0, h - side + 1, dtype=tf.int32)
        left = tf.random.uniform((), 0, w - side + 1, dtype=tf.int32)
        block = image[None, top:top + side, left:left + side]
        block = color_jitter(block, brightness, contrast, saturation, hue)
        turn = block_transform(tf.random.uniform(()))
        # A block is square, so every turn keeps its shape.
        block = tf.switch_case(turn, [lambda i=i: DIHEDRAL[i](block)
                                      for i in BLOCK_TRANSFORMS])[0]
        pads = [[top, h - top - side], [left, w - left - side], [0, 0]]
        inside = tf.pad(tf.ones_like(block[..., :1], tf.bool), pads, constant_values=False)
        return tf.where(inside, tf.pad(block, pads), image)

    return tf.map_fn(one, images, fn_output_signature=tf.float32)


def random_crop_ratio(images, low, high):
    """Crop each image to a random ``r`` of its height and width, r ~ U[low, high], at a
    random place, resized back to the full size (the authors' RandomCrop + Resize)."""
    n = tf.shape(images)[0]
    r = tf.random.uniform((n,), low, high)
    top = tf.random.uniform((n,)) * (1.0 - r)
    left = tf.random.uniform((n,)) * (1.0 - r)
    return crop_and_resize(images, tf.stack([top, left, top + r, left + r], axis=1))


def gaussian_blur(images, sigma_range=(0.1, 2.0), kernel_sizes=(3, 5, 7)):
    """Blur each image with a Gaussian of random sigma and odd kernel side (the batch
    shares one side, drawn per call), depthwise and separable."""
    sigma = tf.random.uniform((tf.shape(images)[0],), *sigma_range)

    def blur(k):
        offsets = tf.range(k, dtype=tf.float32) - (k - 1) / 2
        # One 1-D kernel per image: (B, k), applied along rows, then columns.
        kernel = tf.exp(-0.5 * tf.square(offsets[None, :] / sigma[:, None]))
        kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)
        pad = k // 2
        x = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        h, w = tf.shape(images)[1], tf.shape(images)[2]
        rows = sum(x[:, i:i + h] * kernel[:, i, None, None, None] for i in range(k))
        return sum(rows[:, :, i:i + w] * kernel[:, i, None, None, None] for i in range(k))

    side = tf.random.uniform((), 0, len(kernel_sizes), dtype=tf.int32)
    return tf.switch_case(side, [lambda k=k: blur(k) for k in kernel_sizes])


def random_noise(images, p, std_range=(10 ** 0.5 / 255, 50 ** 0.5 / 255)):
    """Gaussian noise (std drawn per image; albumentations' variance 10-50 on 0..255)
    on each image with probability ``p``."""
    std = _per_sample(images, *std_range)
    return random_apply(images, p, lambda x: tf.clip_by_value(
        x + std * tf.random.normal(tf.shape(x)), 0.0, 1.0))


def random_solarize(images, p, threshold=0.5):
    """Invert the pixels at or above ``threshold`` in each image with probability ``p``."""
    return random_apply(images, p, lambda x: tf.where(x >= threshold, 1.0 - x, x))


def random_apply(images, p, op):
    """``op(images)`` for each image with probability ``p``, else the image."""
    return tf.where(_per_sample(images, 0.0, 1.0) < p, op(images), images)
