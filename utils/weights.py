"""Moving encoder weights between models and files, by layer name, with a report.

Files this reads (:func:`read_named_weights`):

* a legacy Keras HDF5 file (``.h5``) written by Keras 2 ``save_weights`` or ``save``:
  the original PDE checkpoints and the classic ResNet50 "notop" ImageNet files. Their
  groups are named after the layers (``conv1``, ``bn_conv1``, ``res2a_branch2a`` ...);
* a whole-model ``.keras`` file (a Siamese or U-Net checkpoint written by this project),
  read with its config, so nested layers keep their names;
* a Keras 3 ``.weights.h5`` file (an ``encoder.weights.h5`` written by
  :func:`save_encoder`). That format stores no layer names, so it is read by loading it
  into a fresh encoder of each known backbone until one fits.

:func:`load_weights_by_name` assigns every matching layer, reports loaded, skipped and
shape-mismatched layers, and raises when nothing matched (the original went on
silently with random weights).
"""
import dataclasses
import zipfile
from pathlib import Path

import h5py
import numpy as np

from nets.encoders import BACKBONES, build_encoder, weighted_layers
from utils.errors import MissingInput, UserError
from utils.model_card import UNET_PIXEL_SCALE, encoder_card, sidecar_path


BACKBONE_ATTR = "pde_encoder_backbone"


@dataclasses.dataclass
class TransferReport:
    """What :func:`load_weights_by_name` did, layer by layer."""
    path: str
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)      # in the model, not in the file
    mismatched: list = dataclasses.field(default_factory=list)   # (name, model shapes, file shapes)
    unused: int = 0                                              # layers in the file the model lacks

    @property
    def total(self):
        return len(self.loaded) + len(self.missing) + len(self.mismatched)

    def summary(self):
        lines = [f"Loaded weights from {self.path}: {len(self.loaded)}/{self.total} layers "
                 f"matched, {len(self.missing)} not in the file, {len(self.mismatched)} "
                 f"mismatched in shape, {self.unused} file layers unused."]
        if self.missing:
            lines.append("  not in the file: " + ", ".join(self.missing[:10])
                         + (" ..." if len(self.missing) > 10 else ""))
        for name, want, got in self.mismatched[:10]:
            lines.append(f"  shape mismatch {name}: model {want} vs file {got}")
        return "\n".join(lines)


def _decode(x):
    return x.decode("utf8") if isinstance(x, bytes) else str(x)


def _read_legacy_h5(f):
    group = f["model_weights"] if "model_weights" in f else f
    weights = {}
    for layer_name in (_decode(n) for n in group.attrs["layer_names"]):
        g = group[layer_name]
        names = [_decode(n) for n in g.attrs.get("weight_names", [])]
        if names:
            weights[layer_name] = [np.asarray(g[n]) for n in names]
    return weights


def _named_weights_of(model):
    return {layer.name: [np.asarray(w) for w in layer.get_weights()]
            for layer in weighted_layers(model)}


def _count_arrays(group):
    n = 0

    def visit(_, obj):
        nonlocal n
        n += isinstance(obj, h5py.Dataset)

    group.visititems(visit)
    return n


def _encoder_arrays(backbone):
    return sum(len(layer.weights) for layer in weighted_layers(build_encoder((32, 32, 3), backbone)))


def _read_keras3_weights(path, f):
    # The Keras 3 format names groups by class ("conv2d_12"), not by layer, so the
    # names come from a fresh encoder of the backbone recorded by save_encoder (or,
    # for files written otherwise, the one with the same number of arrays).
    backbone = _decode(f.attrs.get(BACKBONE_ATTR, b""))
    if not backbone:
        count = _count_arrays(f)
        backbone = next((b for b in BACKBONES if _encoder_arrays(b) == count), "")
    if backbone not in BACKBONES:
        raise UserError(f"{path}: a Keras 3 weights file that is not an encoder saved by "
                         f"this project (no backbone recorded, and its arrays fit no known "
                         f"encoder). Use an encoder.weights.h5, a .keras checkpoint or a "
                         f"legacy .h5 file.")
    encoder = build_encoder((32, 32, 3), backbone)
    encoder.load_weights(str(path))
    return _named_weights_of(encoder)


def read_named_weights(path):
    """Return ``{layer name: [arrays]}`` from any supported weights file."""
    path = check_weights_file(path)
    if zipfile.is_zipfile(path):
        import keras

        # Registers the Siamese distance layers a whole PDE checkpoint holds.
        import nets.distances  # noqa: F401
        model = keras.models.load_model(path, compile=False, safe_mode=False)
        return _named_weights_of(model)
    try:
        with h5py.File(path, "r") as f:
            legacy = "layer_names" in f.attrs or (
                "model_weights" in f and "layer_names" in f["model_weights"].attrs)
            if legacy:
                return _read_legacy_h5(f)
            return _read_keras3_weights(path, f)
    except OSError as exc:
        raise UserError(path, f"not a readable HDF5 or .keras file ({exc})") from exc


def check_weights_file(path, option="weights file"):
    """Before any model is built: ``path`` exists and is a ``.keras`` archive or an HDF5
    file (its layers are matched later). Returns it as a Path; raises a UserError."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(path, f"{option}: weights file not found",
                           "give an encoder.weights.h5, a .keras checkpoint or a legacy .h5")
    if zipfile.is_zipfile(path) or h5py.is_hdf5(path):
        return path
    raise UserError(path, f"{option}: not a .keras archive nor an HDF5 weights file "
                          f"(cut off, or another format)",
                    "give an encoder.weights.h5, a .keras checkpoint or a legacy .h5")


SEG_OUTPUT = "seg_output"     # the U-Net's last layer (nets.unet), one filter per class


def model_class_count(path):
    """The number of classes a saved U-Net predicts (filters of its ``seg_output``
    layer), read from the file without building the model; None when the file does not
    say (an encoder, or a file of another layout)."""
    import json

    def from_h5(f):
        found = []
        f.visititems(lambda name, obj: found.append(obj.shape[-1])
                     if SEG_OUTPUT in name and isinstance(obj, h5py.Dataset)
                     and len(obj.shape) == 4 else None)
        return int(found[0]) if found else None

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
            for layer in config.get("config", {}).get("layers", []):
                if layer.get("name") == SEG_OUTPUT or \
                        layer.get("config", {}).get("name") == SEG_OUTPUT:
                    return int(layer["config"]["filters"])
            return None
        with h5py.File(path, "r") as f:
            return from_h5(f)
    except (OSError, KeyError, ValueError, TypeError):
        return None


def check_class_count(path, num_classes, option="--num-classes"):
    """Refuse a class count the model file ``path`` does not predict, before any work."""
    found = model_class_count(path)
    if found is not None and found != int(num_classes):
        raise UserError(option, f"{num_classes} classes, but {path} predicts {found}",
                        f"give {option} {found}, or another model")


def load_weights_by_name(model, path, verbose=True):
    """Load every layer of ``model`` whose name and shapes match a layer in ``path``.

    Returns a :class:`TransferReport`; raises ``ValueError`` naming the file when no
    layer matched.
    """
    stored = read_named_weights(path)
    report = TransferReport(path=str(path))
    seen = set()
    for layer in weighted_layers(model):
        if layer.name not in stored:
            report.missing.append(layer.name)
            continue
        seen.add(layer.name)
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in stored[layer.name]]
        if want != got:
            report.mismatched.append((layer.name, want, got))
            continue
        layer.set_weights(stored[layer.name])
        report.loaded.append(layer.name)
    report.unused = len(set(stored) - seen)
    if verbose:
        print(report.summary())
    if not report.loaded:
        sample = ", ".join(list(stored)[:5]) or "none"
        raise UserError(path, f"no layer of {model.name!r} matched a layer in this file "
                              f"(file layers start with: {sample}); nothing was loaded",
                        "give weights of the same backbone (encoder layer names)")
    return report


def save_encoder(encoder, path, backbone="resnet50", pretraining="unknown",
                 pixel_scale=UNET_PIXEL_SCALE, input_shape=None):
    """Save an encoder as a Keras 3 ``.weights.h5`` file that :func:`load_weights_by_name`
    and ``build_encoder(...).load_weights`` both read, with its card
    (:func:`utils.model_card.encoder_card`: the pixel scale and input size it was
    pretrained at, how) in the sidecar ``<path>.json``. Refuses to overwrite a file."""
    from utils.run import write_json

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    card = encoder_card(input_shape, backbone, pixel_scale, pretraining)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder.save_weights(str(path))
    with h5py.File(path, "a") as f:
        f.attrs[BACKBONE_ATTR] = backbone
    write_json(sidecar_path(path), card)
    return path


def save_weights_by_name(model, path):
    """Write ``model``'s weights in the legacy Keras 2 HDF5 layout (groups named after
    layers), the layout of the original checkpoints and the ImageNet "notop" files."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    layers = weighted_layers(model)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [l.name.encode("utf8") for l in layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.6"
        for layer in layers:
            g = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            g.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for n, value in zip(names, layer.get_weights()):
                g.create_dataset(n, data=value)
    return path
