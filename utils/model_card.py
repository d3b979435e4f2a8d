"""Model cards: how to feed a saved U-Net or encoder, kept with the file.

A card is a small JSON object:

* ``kind``: ``"unet"`` or ``"encoder"``;
* ``input_shape``: ``[H, W]`` the network was trained at (a U-Net: the letterbox size
  of its validation, test split and predictions; an encoder: its pretraining crop);
* ``class_names``: a U-Net's classes in label order (an encoder: null);
* ``backbone``: a name of ``nets.encoders.BACKBONES``;
* ``pixel_scale``: a key of :data:`PIXEL_SCALES`, how 0..255 pixels were scaled for it;
* ``pretraining``: how the encoder was made (``pde_class``, ``simclr``, ...; ``none``
  for a random start, ``unknown`` for an encoder file without a card); a U-Net also
  names its ``encoder_file``.

A ``.keras`` archive holds it as the entry :data:`CARD_ENTRY` beside ``epoch.json``;
any other weights file has it as a sidecar ``<file>.json`` (:func:`sidecar_path`).
:meth:`utils.run.Run.save_model` writes the card :func:`attach` gave a model,
:func:`utils.weights.save_encoder` an encoder's; :func:`read_card` reads both. Files
from before cards load with the defaults below and a one-line note.
"""
import json
import weakref
import zipfile
from pathlib import Path

from utils.options import add_input_shape
from utils.utils import NAME_CLASSES

CARD_ENTRY = "model_card.json"
PIXEL_SCALES = {
    "[0, 1]": "x / 255 (the U-Net, the other_ssl baselines)",
    "[-1, 1]": "x / 127.5 - 1 (PDE pretraining)",
    "standardised": "(x / 255 - mean) / std per channel (CMID)",
}
UNET_PIXEL_SCALE = "[0, 1]"
# What a file without a card is read as: the original's values.
DEFAULTS = {"input_shape": (576, 1024), "num_classes": 5, "backbone": "resnet50"}


def default_class_names(num_classes):
    """The five cherry classes for 5 classes, else ``class_0``, ``class_1`` ... (the one
    fallback every script uses)."""
    num_classes = int(num_classes)
    if num_classes == len(NAME_CLASSES):
        return list(NAME_CLASSES)
    return [f"class_{k}" for k in range(num_classes)]


def class_names(num_classes, given=None):
    """``given`` checked against ``num_classes``, or :func:`default_class_names`."""
    if given is None:
        return default_class_names(num_classes)
    if len(given) != int(num_classes):
        raise ValueError(f"{len(given)} class names given for {num_classes} classes")
    return list(given)


def unet_card(input_shape, class_names, backbone, pretraining="none", encoder_file=None):
    """The card of a U-Net fed ``[0, 1]`` pixels (``utils.utils.preprocess_input``)."""
    return {"kind": "unet", "input_shape": [int(s) for s in input_shape[:2]],
            "class_names": list(class_names), "backbone": backbone,
            "pixel_scale": UNET_PIXEL_SCALE, "pretraining": pretraining,
            "encoder_file": str(encoder_file) if encoder_file else None}


def encoder_card(input_shape, backbone, pixel_scale, pretraining):
    """The card of a pretrained encoder file."""
    if pixel_scale not in PIXEL_SCALES:
        raise ValueError(f"pixel scale {pixel_scale!r} is none of {sorted(PIXEL_SCALES)}")
    return {"kind": "encoder",
            "input_shape": [int(s) for s in input_shape[:2]] if input_shape else None,
            "class_names": None, "backbone": backbone, "pixel_scale": pixel_scale,
            "pretraining": pretraining}


def card_text(card):
    return json.dumps(card, indent=2) + "\n"


def sidecar_path(path):
    """``encoder.weights.h5`` -> ``encoder.weights.h5.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def is_keras_archive(path):
    return str(path).endswith(".keras") or zipfile.is_zipfile(path)


def read_card(path):
    """The card saved with ``path``, or None (a file from before cards, or another
    program's)."""
    path = Path(path)
    try:
        if is_keras_archive(path):
            with zipfile.ZipFile(path) as z:
                if CARD_ENTRY not in z.namelist():
                    return None
                return json.loads(z.read(CARD_ENTRY))
        side = sidecar_path(path)
        return json.loads(side.read_text()) if side.is_file() else None
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


# Beside the model, not on it: an attribute of a Keras model is tracked (and copied).
_ATTACHED = weakref.WeakKeyDictionary()


def attach(model, card):
    """Give ``model`` the card :meth:`utils.run.Run.save_model` writes with it."""
    _ATTACHED[model] = card
    return model


def card_of(model):
    """The card :func:`attach` gave ``model``, or None."""
    return _ATTACHED.get(model)


def no_card_note(path, what):
    """The one line a file from before cards gets: ``what`` it is read as."""
    return f"Note: {path} has no model card (saved before cards); {what}."


def add_card_options(parser, name_classes=False):
    """The options a U-Net's card answers, each an override (default None: the card's,
    else :data:`DEFAULTS`, the original's): ``--num-classes``, ``--name-classes`` (when
    asked), ``--backbone``, ``--input-shape``."""
    from nets.encoders import BACKBONES

    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes incl. background (default: the model file's, else 5; "
                             "original: 5)")
    if name_classes:
        parser.add_argument("--name-classes", nargs="+", default=None,
                            help="class names in label order (default: the model file's, "
                                 "else " + " ".join(NAME_CLASSES) + " for 5 classes, "
                                 "class_0 ... otherwise)")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default=None,
                        help="U-Net encoder when the model file holds weights only (default: "
                             "the model file's, else resnet50; original: resnet50)")
    add_input_shape(parser, None, help="network input (default: the model file's, else "
                                       "576 1024; original: 576 1024)")
    return parser


def pretraining_of(path):
    """How the encoder in ``path`` was made: its card's ``pretraining``, ``none`` for no
    file (a random start), ``unknown`` for a file without a card."""
    if not path:
        return "none"
    return (read_card(path) or {}).get("pretraining") or "unknown"


def transfer_note(path):
    """One line when the encoder file ``path`` was pretrained at another pixel scale
    than the U-Net feeds it, or has no card; None otherwise."""
    card = read_card(path)
    if card is None:
        return no_card_note(path, f"its pixel scale and pretraining are unknown; the U-Net "
                                  f"feeds it {UNET_PIXEL_SCALE} pixels")
    scale = card.get("pixel_scale")
    if scale in (None, UNET_PIXEL_SCALE):
        return None
    return (f"Note: {path} was pretrained ({card.get('pretraining')}) on pixels scaled to "
            f"{scale}; the U-Net feeds it {UNET_PIXEL_SCALE}, as the original did and the "
            f"published numbers were made (--encoder-bn-batches re-estimates its batch-norm "
            f"statistics at that scale).")


def resolve(path, card, given, what=("input_shape", "num_classes", "backbone")):
    """Each of ``what``: the option ``given`` (not None), else the card's, else
    :data:`DEFAULTS`. A file without a card gets one line saying what it is read as."""
    card = card or {}
    from_card = {"input_shape": card.get("input_shape"), "backbone": card.get("backbone"),
                 "num_classes": len(card["class_names"]) if card.get("class_names") else None}
    if card.get("kind") == "encoder":       # an encoder's crop is no U-Net input size
        from_card = {"backbone": card.get("backbone")}
    out = {}
    for key in what:
        value = given.get(key)
        out[key] = value if value is not None else (
            from_card.get(key) if from_card.get(key) is not None else DEFAULTS[key])
    if not card and path is not None:
        used = ", ".join(f"{k.replace('_', ' ')} {_show(out[k])}" for k in what
                         if given.get(k) is None)
        if used:
            print(no_card_note(path, f"reading it with {used}: give the options to override"))
    if "input_shape" in out:
        out["input_shape"] = tuple(int(s) for s in out["input_shape"][:2])
    return out


def _show(value):
    return "x".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
