"""Per-image augmentation of the PDE pair pipeline, as TensorFlow graph ops.

The original's steps and strengths, with every random choice a stateless op driven
by a seed tensor, so they are drawn per image inside ``tf.data`` (not once at trace
time) and a run is reproducible from ``--seed``:

resize bicubic to the load size (432x768) -> random crop to the input size (288x512)
-> random left-right and up-down flips -> with p=0.8 colour jitter (brightness delta
0.56 on the 0..255 scale, contrast and saturation factors 0.52..1.48, hue delta 0.1)
-> clip to 0..255 -> with p=0.2 grayscale -> scale to [-1, 1].

Two entry points: :func:`one_img` from the encoded file bytes, where the resize and
the crop are one ``ScaleAndTranslate`` op that computes only the crop window (the
same values as resizing the whole image and then cropping, at less than half the
cost), from only the part of a JPEG that the crop reads; and :func:`one_cached_img`
from an image already resized to the load size and kept in memory (:func:`load_image`
makes it, as uint8, like the original's PIL resize). Flipping the crop rather than
the whole image gives the same distribution of results.
"""
import tensorflow as tf

LOAD_SIZE = (432, 768)
INPUT_SIZE = (288, 512)
# The original's colour_jitter(strength=[0.7, 0.6, 0.6, 0.5]) scaled these by 0.8 and 0.2.
JITTER_STRENGTH = (0.7, 0.6, 0.6, 0.5)
JITTER_P = 0.8
GRAY_P = 0.2
# Random draws per image: flip lr, flip ud, crop, jitter gate, 4 jitter ops, gray gate.
NUM_DRAWS = 9


def _seeds(seed, n=NUM_DRAWS):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n))


def _check_sizes(load_size, input_size):
    if input_size[0] > load_size[0] or input_size[1] > load_size[1]:
        raise ValueError(f"input size {input_size[0]}x{input_size[1]} is larger than the "
                         f"load size {load_size[0]}x{load_size[1]}")


def crop_offset(load_size, input_size, seed=None):
    """(row, col) of the crop: uniform integers drawn from ``seed``, or centred."""
    lh, lw = load_size
    h, w = input_size
    if seed is None:
        return tf.constant([(lh - h) // 2, (lw - w) // 2], tf.int32)
    draw = tf.random.stateless_uniform([2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
    return draw % tf.constant([lh - h + 1, lw - w + 1])


def resize_crop(image, load_size=LOAD_SIZE, input_size=INPUT_SIZE, seed=None):
    """Bicubic (antialiased) resize of ``image`` to ``load_size`` and a crop of
    ``input_size`` from it, computed together; float32 (h, w, 3) out. A uint8 image goes
    to the resampling kernel as it is (casting it to float32 first cost 8 % of the
    from-file path's per-image time)."""
    _check_sizes(load_size, input_size)
    offset = crop_offset(load_size, input_size, seed)
    return _scale_crop(image, tf.zeros([2], tf.int32), tf.shape(image)[:2], load_size,
                       input_size, offset)


def decode_resize_crop(data, load_size=LOAD_SIZE, input_size=INPUT_SIZE, seed=None):
    """:func:`resize_crop` of encoded image bytes, decoding only the part of a JPEG that
    the crop reads (:func:`decode_window`); the same values as decoding it whole."""
    _check_sizes(load_size, input_size)
    offset = crop_offset(load_size, input_size, seed)
    window, start, size = decode_window(data, load_size, input_size, offset)
    return _scale_crop(window, start, size, load_size, input_size, offset)


def _scale_crop(window, start, size, load_size, input_size, offset):
    """The ``input_size`` crop at ``offset`` of an image of ``size`` resized to
    ``load_size``, computed from ``window``, the part of that image from ``start`` on."""
    scale = tf.constant(load_size, tf.float32) / tf.cast(size, tf.float32)
    # Output pixel i samples the source at (i + 0.5 - translation) / scale - 0.5.
    translation = tf.cast(start, tf.float32) * scale - tf.cast(offset, tf.float32)
    out = tf.raw_ops.ScaleAndTranslate(
        images=window[None], size=tf.constant(input_size, tf.int32), scale=scale,
        translation=translation, kernel_type="keyscubic", antialias=True)
    return tf.ensure_shape(out[0], (*input_size, 3))


# A JPEG decodes in blocks (MCUs) of up to 32x32 pixels, and smooth chroma upsampling
# reads across block edges: a window cut at block edges decodes to the whole image's
# pixels except next to its cuts, so it reaches one block beyond the pixels needed.
JPEG_BLOCK = 32


def decode_window(data, load_size, input_size, offset):
    """Decode the part of an image that the ``input_size`` crop at ``offset`` of its
    ``load_size`` resize reads, with the bicubic kernel's reach around it. A JPEG goes
    through ``decode_and_crop_jpeg`` (about half the decoding time for the original's
    288x512 crops of 432x768); other formats are decoded whole.
    Returns (uint8 window, its top-left (row, col) in the image, the image's (h, w))."""
    def jpeg():
        size = tf.io.extract_jpeg_shape(data)[:2]
        scale = tf.constant(load_size, tf.float32) / tf.cast(size, tf.float32)
        # keyscubic reaches 2 pixels, 2 / scale when antialiasing a downscale.
        reach = tf.cast(tf.math.ceil(2.0 / tf.minimum(scale, 1.0)), tf.int32) + 1
        first = tf.cast(tf.floor(tf.cast(offset, tf.float32) / scale), tf.int32) - reach
        last = tf.cast(tf.math.ceil(tf.cast(offset + input_size, tf.float32) / scale),
                       tf.int32) + reach
        b = JPEG_BLOCK
        start = tf.maximum(first // b - 1, 0) * b
        stop = tf.minimum((-(-last // b) + 1) * b, size)
        window = tf.io.decode_and_crop_jpeg(data, tf.concat([start, stop - start], 0),
                                            channels=3)
        return window, start, size

    def whole():
        image = decode_image(data)
        return image, tf.zeros([2], tf.int32), tf.shape(image)[:2]

    window, start, size = tf.cond(tf.io.is_jpeg(data), jpeg, whole)
    window.set_shape((None, None, 3))
    return window, start, size


def crop(image, input_size=INPUT_SIZE, seed=None):
    """A crop of ``input_size`` from a load-size image; float32 out."""
    load_size = image.shape[:2]
    _check_sizes(load_size, input_size)
    oy, ox = tf.unstack(crop_offset(load_size, input_size, seed))
    return tf.cast(image[oy:oy + input_size[0], ox:ox + input_size[1]], tf.float32)


def random_flips(image, seeds):
    """Random left-right and up-down flips."""
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    return tf.image.stateless_random_flip_up_down(image, seeds[1])


def color_jitter(x, seeds, strength=JITTER_STRENGTH):
    """Brightness, contrast, saturation and hue jitter of a 0..255 image, then clip.

    The brightness delta is on the 0..255 scale, as in the original (so at most
    0.56 grey levels); contrast, saturation and hue do not depend on the scale.
    """
    contrast, saturation = 0.8 * strength[1], 0.8 * strength[2]
    x = tf.image.stateless_random_brightness(x, 0.8 * strength[0], seeds[0])
    x = tf.image.stateless_random_contrast(x, 1 - contrast, 1 + contrast, seeds[1])
    x = tf.image.stateless_random_saturation(x, 1 - saturation, 1 + saturation, seeds[2])
    x = tf.image.stateless_random_hue(x, 0.2 * strength[3], seeds[3])
    return tf.clip_by_value(x, 0.0, 255.0)


def color_drop(x):
    """Grayscale, tiled back to three channels."""
    return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3])


def random_apply(func, x, p, seed):
    """``func(x)`` with probability ``p`` (drawn from ``seed``), else ``x``."""
    draw = tf.random.stateless_uniform([], seed, minval=0.0, maxval=1.0)
    return tf.cond(draw < p, lambda: func(x), lambda: x)


def custom_augment(image, seed, input_size=INPUT_SIZE, colour=True):
    """Crop, flip, jitter (p 0.8), clip and grayscale (p 0.2) one load-size image
    (H, W, 3), 0..255. ``seed`` is a shape-(2,) int tensor: the same seed, the same
    result. ``colour=False`` stops after the crop and flips (the crops and flips are the
    same as with it). Returns float32 0..255 of ``input_size``.
    """
    return augment_crop(lambda crop_seed: crop(image, input_size, seed=crop_seed), seed,
                        colour)


def augment_crop(take_crop, seed, colour=True):
    """:func:`custom_augment`'s steps with the crop made by ``take_crop(crop_seed)`` (the
    from-file path resizes and crops the encoded image there): every draw comes from
    ``seed``, the crop's included."""
    s = _seeds(seed)
    image = random_flips(take_crop(s[2]), s[0:2])
    if not colour:
        return tf.clip_by_value(image, 0.0, 255.0)
    image = random_apply(lambda x: color_jitter(x, s[4:8]), image, JITTER_P, s[3])
    # Bicubic resizing overshoots 0..255 a little; clip whether or not jitter ran.
    image = tf.clip_by_value(image, 0.0, 255.0)
    return random_apply(color_drop, image, GRAY_P, s[8])


def preprocess_input(image):
    """Scale 0..255 to [-1, 1]."""
    return image / 127.5 - 1.0


def decode_image(data):
    """Decode JPEG/PNG/BMP/GIF bytes to a (h, w, 3) uint8 tensor."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape((None, None, 3))
    return image


def load_image(data, load_size=LOAD_SIZE):
    """Encoded bytes -> uint8 (lh, lw, 3), resized bicubic with antialiasing (as PIL)."""
    image = tf.image.resize(decode_image(data), load_size, method="bicubic", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def one_img(data, seed, load_size=LOAD_SIZE, input_size=INPUT_SIZE, augment=True, colour=True):
    """Encoded image bytes -> a (h, w, 3) float32 network input in [-1, 1].

    Without ``augment`` the load-size image is centre-cropped to the input size;
    ``colour=False`` augments by crops and flips only.
    """
    if augment:
        image = augment_crop(lambda crop_seed: decode_resize_crop(data, load_size, input_size,
                                                                  seed=crop_seed), seed, colour)
    else:
        image = tf.clip_by_value(decode_resize_crop(data, load_size, input_size), 0.0, 255.0)
    return preprocess_input(image)


def one_cached_img(image, seed, input_size=INPUT_SIZE, augment=True, colour=True):
    """A load-size uint8 image (from :func:`load_image`) -> network input in [-1, 1]."""
    if augment:
        return preprocess_input(custom_augment(image, seed, input_size, colour=colour))
    return preprocess_input(crop(image, input_size))
