"""Precise batch-norm statistics: re-estimate every BatchNormalization's moving mean and
variance from a few batches after training.

Keras keeps running averages with momentum 0.99, so after a short pretraining (a few
hundred steps on a CPU) they still hold a good part of their initial values (mean 0,
variance 1) and describe neither the data nor the trained weights. Every later use of
the encoder in inference mode reads them: the validation metrics, and the frozen
encoder of the U-Net. Averaging the batch statistics of ``steps`` training batches,
with the weights fixed, replaces them with what the network actually computes ("precise
BN", Wu & Johnson 2021). On the original's 20-epoch schedules the running averages
have long converged, so this matters only for short runs.
"""
import numpy as np
import tensorflow as tf
import keras

from nets.encoders import weighted_layers


def add_precise_bn_arg(parser):
    """The ``--precise-bn N`` option every pretraining script takes."""
    parser.add_argument("--precise-bn", type=int, default=0, metavar="N",
                        help="after training, re-estimate every batch-norm moving mean and "
                             "variance of the exported encoder from N training batches (0 = "
                             "keep the running averages, as the original; short runs need "
                             "it: theirs still hold much of the initial mean 0 / variance 1)")
    return parser


def batchnorm_layers(model):
    """Every BatchNormalization inside ``model``, nested models included, in order."""
    return [layer for layer in weighted_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_batchnorm(model, batches, steps, forward=None):
    """Set the moving statistics of ``model``'s BatchNormalization layers to the mean of
    their batch statistics over ``steps`` batches of ``batches`` (any iterable of model
    inputs, or of ``(inputs, targets)`` tuples). Weights are not changed.

    ``forward(batch)`` runs the model in training mode on one batch (default
    ``model(inputs, training=True)``); pass one when the model's inputs need the same
    preparation as in its train step. Returns the number of batches used.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if forward is None:
        def forward(batch):
            inputs = batch[0] if isinstance(batch, tuple) else batch
            return model(inputs, training=True)
    momenta = [layer.momentum for layer in layers]
    sums = [[np.zeros(layer.moving_mean.shape, np.float64),
             np.zeros(layer.moving_variance.shape, np.float64)] for layer in layers]
    before = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
    used = 0
    try:
        # Momentum 0: after a call each moving statistic is that batch's statistic.
        # (A layer called twice per batch, as a shared Siamese tower, keeps the second.)
        for layer in layers:
            layer.momentum = 0.0
        step = tf.function(forward)
        for batch in batches:
            if used == steps:
                break
            step(batch)
            for (mean, var), layer in zip(sums, layers):
                mean += np.asarray(layer.moving_mean, np.float64)
                var += np.asarray(layer.moving_variance, np.float64)
            used += 1
    except BaseException:
        _restore(layers, before)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if used == 0:
        _restore(layers, before)
        raise ValueError("no batch to re-estimate the batch-norm statistics from")
    for (mean, var), layer in zip(sums, layers):
        layer.moving_mean.assign((mean / used).astype(layer.moving_mean.dtype))
        layer.moving_variance.assign((var / used).astype(layer.moving_variance.dtype))
    return used


def _restore(layers, values):
    for layer, (mean, var) in zip(layers, values):
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(var)
