"""Backbones for few-shot classification: ``keras.applications`` models and this
project's own encoder, each an image -> last feature map ``keras.Model``.

``--weights``:

* ``none``: random initialisation;
* ``imagenet``: Keras's ImageNet weights (``keras.applications`` backbones only).
  Keras reads them from its cache (``~/.keras/models``, or ``$KERAS_HOME/models``)
  and downloads them when they are missing; offline, a missing file is an error that
  names the cache folder;
* a file: any weights file :func:`utils.weights.load_weights_by_name` reads, loaded by
  layer name with its transfer report. For this project's encoder files (PDE
  ``encoder.weights.h5``, ``other_ssl`` and supervised encoders, legacy ``.h5``) use
  the ``encoder-resnet50`` / ``encoder-vgg`` backbones, built by
  :func:`nets.encoders.build_encoder` with the original's layer names.

Every backbone takes normalised pixels (see ``few_shot.data.normalization_stats``):
the ``keras.applications`` models are built without their own preprocessing where
Keras allows it; EfficientNet always rescales and normalises inside (Keras's build),
so our normalisation comes before its own.
"""
import dataclasses
import os
from pathlib import Path
from typing import Callable

import keras

from nets.encoders import build_encoder, check_input_shape
from utils.weights import load_weights_by_name


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """``build(input_shape, weights)`` returns image -> last feature map; ``min_side``:
    the smallest input side the architecture accepts."""
    build: Callable
    min_side: int = 32
    imagenet: bool = True


def _application(name, **extra):
    def build(input_shape, weights):
        cls = getattr(keras.applications, name)
        model = cls(include_top=False, weights=weights, input_shape=tuple(input_shape),
                    **extra)
        return keras.Model(model.inputs, model.outputs, name=name.lower())
    return build


def _project_encoder(backbone):
    def build(input_shape, weights):
        encoder = build_encoder(tuple(input_shape), backbone)
        return keras.Model(encoder.inputs, encoder.outputs[-1], name=f"encoder_{backbone}")
    return build


# Classifier trunks (last feature map) for --backbone; nets.encoders.BACKBONES: encoders.
CLASSIFIER_BACKBONES = {
    "mobilenetv2": BackboneSpec(_application("MobileNetV2")),
    "mobilenetv3large": BackboneSpec(_application("MobileNetV3Large",
                                                  include_preprocessing=False)),
    "efficientnetb3": BackboneSpec(_application("EfficientNetB3")),
    "convnextsmall": BackboneSpec(_application("ConvNeXtSmall", include_preprocessing=False)),
    "inceptionv3": BackboneSpec(_application("InceptionV3"), min_side=75),
    "resnet50": BackboneSpec(_application("ResNet50")),
    "resnet101": BackboneSpec(_application("ResNet101")),
    # This project's encoders (PDE, other_ssl, supervised): the original's layer names.
    "encoder-resnet50": BackboneSpec(_project_encoder("resnet50"), imagenet=False),
    "encoder-vgg": BackboneSpec(_project_encoder("vgg"), min_side=16, imagenet=False),
}


def keras_cache_dir():
    """Where Keras keeps downloaded weights."""
    base = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(base) / "models"


def check_backbone(name, input_shape, weights):
    """The option errors :func:`build_backbone` would meet, without building anything."""
    if name not in CLASSIFIER_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from "
                         f"{', '.join(CLASSIFIER_BACKBONES)}")
    spec = CLASSIFIER_BACKBONES[name]
    h, w = input_shape[:2]
    if min(h, w) < spec.min_side:
        raise ValueError(f"--input-shape {h} {w}: {name} needs sides of at least "
                         f"{spec.min_side} pixels")
    if name.startswith("encoder-"):
        check_input_shape((h, w), name.split("-", 1)[1])
    if weights == "imagenet" and not spec.imagenet:
        raise ValueError(f"{name} has no ImageNet weights in Keras; pass the encoder's "
                         f"weights file with --weights FILE, or --weights none")
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise ValueError(f"--weights {weights}: not 'imagenet', 'none' or an existing file")


def build_backbone(name, input_shape, weights="none", verbose=True):
    """Return ``(model, report)``: the backbone (image -> feature map) and the
    :class:`utils.weights.TransferReport` of a weights file (None otherwise).

    Raises ``ValueError`` with one clear line for an unknown name, a too-small input,
    ImageNet weights that are neither cached nor downloadable, or a weights file that
    matches no layer."""
    check_backbone(name, input_shape, weights)
    spec = CLASSIFIER_BACKBONES[name]
    h, w = input_shape[:2]
    input_shape = (h, w, 3)
    if weights == "none":
        return spec.build(input_shape, None), None
    if weights == "imagenet":
        try:
            return spec.build(input_shape, "imagenet"), None
        except Exception as exc:  # Keras raises a bare Exception on a failed download
            raise ValueError(f"ImageNet weights for {name} are not in Keras's cache "
                             f"({keras_cache_dir()}) and could not be downloaded ({exc}); "
                             f"copy the file there on an offline machine, or use "
                             f"--weights none or --weights FILE") from exc
    model = spec.build(input_shape, None)
    report = load_weights_by_name(model, Path(weights), verbose=verbose)
    return model, report
