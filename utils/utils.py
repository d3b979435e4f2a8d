"""Small helpers every entry point shares: seeding, run folders, image basics."""
import colorsys

import numpy as np
from PIL import Image

# The five classes of the cherry data set, in label order (pixel value = index).
NAME_CLASSES = ["_background_", "fruit", "leaf", "trunk", "flower"]

# The PASCAL VOC colour map: class k is drawn in VOC_PALETTE[k].
VOC_PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
               (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0),
               (192, 128, 0), (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128),
               (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0), (0, 64, 128)]


# Training augmentations (``train.py --augment``, ``utils.dataloader.get_random_data``
# keywords): the original's (get_random_data's defaults), and a light one for a short
# training on few photos, which keeps each photo near the scale and the colours it is
# evaluated at (on the demo orchard colour is much of what tells the classes apart).
AUGMENTATIONS = {
    "original": dict(jitter=0.3, scale=(0.25, 2.0), hue=0.1, sat=1.5, val=1.5),
    "light": dict(jitter=0.1, scale=(0.8, 1.25), hue=0.0, sat=1.2, val=1.2),
}


def describe_augmentation(name):
    """``AUGMENTATIONS[name]`` in words, e.g. for ``--help``."""
    a = AUGMENTATIONS[name]
    hue = f"hue +-{a['hue']:g}" if a["hue"] else "no hue shift"
    colour = (f"saturation and value x1/{a['sat']:g}-{a['sat']:g}" if a["sat"] == a["val"] else
              f"saturation x1/{a['sat']:g}-{a['sat']:g}, value x1/{a['val']:g}-{a['val']:g}")
    return (f"scale {a['scale'][0]:g}-{a['scale'][1]:g}, aspect ratio +-{100 * a['jitter']:g} %, "
            f"flip, {hue}, {colour}")


def class_colors(num_classes):
    """The VOC palette for up to 21 classes, evenly spaced hues beyond that."""
    if num_classes <= len(VOC_PALETTE):
        return VOC_PALETTE[:num_classes]
    hsv = [(k / num_classes, 1.0, 1.0) for k in range(num_classes)]
    return [tuple(int(c * 255) for c in colorsys.hsv_to_rgb(*x)) for x in hsv]


def set_seed(seed):
    """Seed Python, NumPy and the Keras/TensorFlow generators in one call."""
    import keras

    keras.utils.set_random_seed(int(seed))


def cvtColor(image):
    """Return an RGB PIL image; grayscale (16-bit scaled), palette and RGBA photos are
    converted (:func:`utils.image_check.rgb8`)."""
    from utils.image_check import rgb8

    return rgb8(image)


def preprocess_input(image):
    """Scale 0..255 pixels to 0..1, as the original U-Net input does."""
    return np.asarray(image, dtype=np.float32) / 255.0


def resize_image(image, size):
    """Letterbox ``image`` (PIL) into ``size`` = (w, h) on a grey (128) canvas.

    Returns the new image and the (new_w, new_h) of the pasted photo, so callers can
    crop the grey bars off predictions again.
    """
    iw, ih = image.size
    w, h = size
    scale = min(w / iw, h / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    image = image.resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", size, (128, 128, 128))
    canvas.paste(image, ((w - nw) // 2, (h - nh) // 2))
    return canvas, nw, nh


def jit_compile_default():
    """XLA pays off on a GPU; on a CPU its compile time dwarfs short runs."""
    import tensorflow as tf

    return "auto" if tf.config.list_physical_devices("GPU") else False

