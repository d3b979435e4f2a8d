"""The ``Unet`` predictor: a trained segmentation model wrapped for inference.

Used by ``predict.py``, ``get_miou.py`` and ``growth_modeling``; ``unet.py`` exports it
under the original's ``from unet import Unet``. Every prediction
follows the original: letterbox the photo onto a grey canvas of the input size, run
the network, crop the grey bars off the class probabilities, resize them bilinearly
back to the photo's size, then take the arg-max.
"""
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.model_card import card_of, class_names, is_keras_archive, read_card, resolve
from utils.utils import class_colors, cvtColor, preprocess_input, resize_image


class Unet:
    """Load a segmentation model and predict class maps and overlays.

    ``model_path`` is a whole model saved by ``train.py`` (``best_epoch.keras``), a
    Keras 3 ``.weights.h5`` of the whole U-Net, or any weights file that
    :func:`utils.weights.load_weights_by_name` reads (a legacy Keras 2 ``.h5`` U-Net
    checkpoint, or only an encoder: the decoder then stays random, with a warning).
    ``model`` takes an already built ``keras.Model`` instead. A loaded or given model
    fixes ``num_classes`` (and ``input_shape`` when its input has a fixed size); what
    the options leave None comes from the model's card (:mod:`utils.model_card`: input
    size, class names, backbone), else from ``_defaults``, with a one-line note.
    """

    _defaults = {
        "model_path": None,        # original: a checkpoint path on the authors' machine
        "num_classes": 5,
        "backbone": "resnet50",
        "input_shape": (576, 1024),
        "blend": True,
    }

    def __init__(self, model=None, name_classes=None, verbose=True, **kwargs):
        unknown = set(kwargs) - set(self._defaults)
        if unknown:
            raise TypeError(f"Unet() got unknown options {sorted(unknown)}; "
                            f"known: {sorted(self._defaults)}")
        # Options left out (or None) come from the model's card, else the defaults.
        self._given = {k: v for k, v in kwargs.items() if v is not None}
        self.__dict__.update(self._defaults)
        self.__dict__.update(self._given)
        self.verbose = verbose
        self.model = model
        self.card = None
        self.generate()
        if name_classes is None and self.card and \
                len(self.card.get("class_names") or ()) == self.num_classes:
            name_classes = self.card["class_names"]
        self.name_classes = class_names(self.num_classes, name_classes)
        self.colors = class_colors(self.num_classes)
        self._palette = np.array(self.colors, dtype=np.uint8)

    def generate(self):
        """Build or load ``self.model``; the input size, classes and backbone the options
        leave open come from the file's card (:mod:`utils.model_card`)."""
        import keras

        path = None
        if self.model is None:
            if self.model_path is None:
                raise ValueError("Unet needs model_path= (a .keras model or a weights file) "
                                 "or model= (a keras.Model)")
            path = Path(self.model_path)
            if not path.is_file():
                raise FileNotFoundError(f"model file not found: {path}")
            self.card = read_card(path)
            if is_keras_archive(path):
                self.model = keras.models.load_model(path, compile=False)
            else:
                self._settle(path, ("input_shape", "num_classes", "backbone"))
                self.model = self._build_and_load(path)
            if self.verbose:
                print(f"{path} model loaded.")
        else:
            self.card = card_of(self.model)
        shape = self.model.input_shape
        out = self.model.output_shape
        if shape[1] is not None and shape[2] is not None:
            wanted = self._given.get("input_shape")
            if wanted is not None and (shape[1], shape[2]) != tuple(wanted[:2]) and self.verbose:
                print(f"Note: the model's input is {shape[1]}x{shape[2]}, not the requested "
                      f"{wanted[0]}x{wanted[1]}; using the model's.")
            self.input_shape = (int(shape[1]), int(shape[2]))
        elif path is None or is_keras_archive(path):
            # A U-Net trained on windows takes any size: it is fed at its card's.
            self._settle(path, ("input_shape",))
        self.num_classes = int(out[-1])

    def _settle(self, path, what):
        self.__dict__.update(resolve(path, self.card, self._given, what))

    def _build_and_load(self, path):
        from nets.unet import build_unet
        from utils.weights import load_weights_by_name, read_named_weights

        model = build_unet((*self.input_shape, 3), self.num_classes, self.backbone)
        if _is_whole_model_weights(path, model):
            model.load_weights(str(path))
            return model
        report = load_weights_by_name(model, path, verbose=self.verbose)
        filled = 0
        if report.missing and report.unused:
            # Keras 2 checkpoints name decoder layers by a global counter ("conv2d_7"),
            # which never matches ours: give the unused file layers to the still-empty
            # model layers in order where the shapes agree, as a topological load would.
            stored = read_named_weights(path)
            filled = _fill_in_order(model, stored, report)
            if filled and self.verbose:
                print(f"Loaded {filled} more layers by order (decoder of a legacy checkpoint).")
        still = len(report.missing) - filled
        if still:
            warnings.warn(f"{path}: {still} layers of the U-Net were not in the file and "
                          f"keep their random initial weights (an encoder-only file "
                          f"leaves the decoder untrained).", stacklevel=3)
        return model

    def _letterbox(self, image):
        h, w = self.input_shape
        data, nw, nh = resize_image(image, (w, h))
        return preprocess_input(data), nw, nh

    def _to_classes(self, probs, nw, nh, size):
        h, w = self.input_shape
        top, left = (h - nh) // 2, (w - nw) // 2
        probs = np.asarray(probs[top:top + nh, left:left + nw], dtype=np.float32)
        probs = cv2.resize(probs, size, interpolation=cv2.INTER_LINEAR)
        if probs.ndim == 2:       # cv2 drops a single channel
            probs = probs[..., None]
        return probs.argmax(axis=-1).astype(np.uint8)

    def predict_masks(self, images, batch_size=8):
        """Class maps (H x W uint8, each photo's own size) for a list of PIL images."""
        masks = []
        for start in range(0, len(images), batch_size):
            chunk = [cvtColor(im) for im in images[start:start + batch_size]]
            boxes = [self._letterbox(im) for im in chunk]
            batch = np.stack([b[0] for b in boxes])
            probs = np.asarray(self.model.predict_on_batch(batch))
            for im, (_, nw, nh), p in zip(chunk, boxes, probs):
                masks.append(self._to_classes(p, nw, nh, im.size))
        return masks

    def colorize(self, mask):
        """An RGB image of a class map in the palette."""
        return Image.fromarray(self._palette[np.clip(mask, 0, self.num_classes - 1)])

    def detect_image(self, image, count=False, name_classes=None):
        """The coloured class map, blended 70 % over the photo when ``blend``.

        With ``count=True`` also print each class's pixel share and return
        ``(image, {class name: share})``.
        """
        image = cvtColor(image)
        mask = self.predict_masks([image], batch_size=1)[0]
        out = self.overlay(image, mask)
        if not count:
            return out
        return out, self.print_shares(mask, name_classes)

    def overlay(self, image, mask):
        """The coloured class map, blended 70 % over ``image`` when ``blend`` is on."""
        seg = self.colorize(mask)
        return Image.blend(cvtColor(image), seg, 0.7) if self.blend else seg

    def print_shares(self, mask, name_classes=None):
        """Print a table of each class's pixels and share; return ``{name: share}``."""
        names = list(name_classes) if name_classes is not None else self.name_classes
        counts = np.bincount(mask.ravel(), minlength=self.num_classes)[:self.num_classes]
        total = max(int(mask.size), 1)
        print(f"{'class':>15s} | {'pixels':>10s} | {'share':>8s}")
        for n, c in zip(names, counts):
            print(f"{n:>15s} | {int(c):>10d} | {100.0 * c / total:7.3f}%")
        return {n: float(c) / total for n, c in zip(names, counts)}

    def get_miou_png(self, image):
        """The class-index map as a single-channel PNG image (pixel value = class)."""
        return Image.fromarray(self.predict_masks([cvtColor(image)], batch_size=1)[0])

    def get_FPS(self, image, test_interval):
        """Seconds per image for ``test_interval`` predictions of ``image`` (batch 1)."""
        image = cvtColor(image)
        data, nw, nh = self._letterbox(image)
        batch = data[None]
        h, w = self.input_shape
        top, left = (h - nh) // 2, (w - nw) // 2

        def once():
            probs = np.asarray(self.model.predict_on_batch(batch))[0]
            return probs[top:top + nh, left:left + nw].argmax(axis=-1)

        once()  # the first call builds the graph; keep it out of the timing
        t0 = time.perf_counter()
        for _ in range(int(test_interval)):
            once()
        return (time.perf_counter() - t0) / max(int(test_interval), 1)


def _is_whole_model_weights(path, model):
    """A Keras 3 ``save_weights`` file of a model with exactly ``model``'s arrays
    (not an encoder saved by ``save_encoder``, which records its backbone)."""
    import h5py

    from utils.weights import BACKBONE_ATTR

    if not str(path).endswith(".weights.h5"):
        return False
    with h5py.File(path, "r") as f:
        if BACKBONE_ATTR in f.attrs or "layer_names" in f.attrs:
            return False
        count = 0

        def visit(_, obj):
            nonlocal count
            count += isinstance(obj, h5py.Dataset)

        f.visititems(visit)
    return count == len(model.weights)


def _fill_in_order(model, stored, report):
    from nets.encoders import weighted_layers

    missing = set(report.missing)
    loaded = set(report.loaded) | {m[0] for m in report.mismatched}
    free = [(name, arrays) for name, arrays in stored.items() if name not in loaded]
    filled = 0
    for layer in weighted_layers(model):
        if layer.name not in missing or not free:
            continue
        want = [tuple(w.shape) for w in layer.weights]
        while free:
            name, arrays = free.pop(0)
            if [tuple(a.shape) for a in arrays] == want:
                layer.set_weights(arrays)
                filled += 1
                break
    return filled
