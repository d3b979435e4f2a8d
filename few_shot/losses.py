"""Metric-learning losses of the few-shot study, as pure functions on tensors.

Two families, as in the study (A. Uzhinskiy, Biology 14 (2025) 99):

* Siamese losses on an L2-normalised embedding: :func:`contrastive_loss`,
  :func:`triplet_loss`, :func:`quadruplet_loss` (Chen et al. 2017) and
  :func:`study_quadruplet_loss` (the study's variant). Their tuples are mined online
  inside a P x K batch by :func:`batch_pairs`, :func:`batch_hard_triplets` and
  :func:`batch_hard_quadruplets`.
* Angular-margin logits on a cosine head: :func:`sphereface_logits`,
  :func:`cosface_logits`, :func:`arcface_logits`, each followed by cross-entropy.

``METRIC_LOSSES`` maps the ``--loss`` names to a :class:`LossSpec`; the script and the
benchmark look losses up there and nowhere else.
"""
import dataclasses
import functools
import math
from typing import Callable

import tensorflow as tf

# Keeps arccos and sqrt differentiable at |cos| = 1.
_EPS = 1e-7


def squared_distance(a, b):
    """Squared Euclidean distance row by row: (B, D), (B, D) -> (B,)."""
    return tf.reduce_sum(tf.square(a - b), axis=-1)


def pairwise_squared_distance(x):
    """All squared Euclidean distances in a batch: (B, D) -> (B, B), exact zeros on the
    diagonal and no negative round-off."""
    sq = tf.reduce_sum(tf.square(x), axis=1)
    d = sq[:, None] - 2.0 * tf.matmul(x, x, transpose_b=True) + sq[None, :]
    d = tf.maximum(d, 0.0)
    return d * (1.0 - tf.eye(tf.shape(x)[0], dtype=d.dtype))


def contrastive_loss(distance, same, margin=1.0):
    """Mean of ½·same·d² + ½·(1 − same)·max(0, margin − d)² (Hadsell et al. 2006).

    ``distance`` (N,) is the Euclidean distance of each pair; ``same`` (N,) is 1 for a
    same-class pair and 0 otherwise (the study's slide swaps the roles of y)."""
    d = tf.convert_to_tensor(distance, tf.float32)
    same = tf.cast(same, d.dtype)
    return tf.reduce_mean(0.5 * same * tf.square(d)
                          + 0.5 * (1.0 - same) * tf.square(tf.nn.relu(margin - d)))


def triplet_loss(anchor, positive, negative, margin=1.0):
    """Mean of max(D(a, p) − D(a, n) + margin, 0), D the squared Euclidean distance.
    Each argument is (N, D)."""
    return tf.reduce_mean(tf.nn.relu(squared_distance(anchor, positive)
                                     - squared_distance(anchor, negative) + margin))


def quadruplet_loss(anchor, positive, negative1, negative2, margin1=1.0, margin2=0.5):
    """Chen et al. (CVPR 2017): mean of max(D(a,p) − D(a,n1) + margin1, 0)
    + max(D(a,p) − D(n1,n2) + margin2, 0), where n2's class differs from both a's and
    n1's. Each argument is (N, D)."""
    ap = squared_distance(anchor, positive)
    return tf.reduce_mean(tf.nn.relu(ap - squared_distance(anchor, negative1) + margin1)
                          + tf.nn.relu(ap - squared_distance(negative1, negative2) + margin2))


def study_quadruplet_loss(anchor, positive, negative1, negative2, margin1=1.0, margin2=0.5):
    """The study's variant of :func:`quadruplet_loss`: D(a, n2) instead of D(n1, n2) in
    the second term, so both terms push negatives away from the anchor."""
    ap = squared_distance(anchor, positive)
    return tf.reduce_mean(tf.nn.relu(ap - squared_distance(anchor, negative1) + margin1)
                          + tf.nn.relu(ap - squared_distance(anchor, negative2) + margin2))


def _theta(cosine):
    return tf.acos(tf.clip_by_value(cosine, -1.0 + _EPS, 1.0 - _EPS))


def sphereface_psi(theta, m=4):
    """ψ(θ) = (−1)^k·cos(mθ) − 2k with k = floor(mθ/π): monotonically decreasing on
    [0, π], equal to cos(mθ) on the first piece."""
    k = tf.floor(m * theta / math.pi)
    sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
    return sign * tf.cos(m * theta) - 2.0 * k


def sphereface_lambda(step, base=1500.0, gamma=0.1, minimum=5.0):
    """The annealed λ of SphereFace training: max(minimum, base / (1 + gamma·step))."""
    step = tf.cast(step, tf.float32)
    return tf.maximum(minimum, base / (1.0 + gamma * step))


def _onehot(labels, cosine):
    return tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), tf.shape(cosine)[-1],
                      dtype=cosine.dtype)


def sphereface_logits(cosine, feature_norm, labels, m=4, lam=0.0):
    """SphereFace (A-Softmax) logits: (B, C) cosines, (B,) or (B, 1) feature norms ‖x‖,
    (B,) integer labels -> (B, C).

    The target logit is ‖x‖·(λ·cos θ + ψ(θ)) / (1 + λ); every other logit ‖x‖·cos θ."""
    cosine = tf.convert_to_tensor(cosine, tf.float32)
    norm = tf.reshape(tf.cast(feature_norm, cosine.dtype), [-1, 1])
    target = (lam * cosine + sphereface_psi(_theta(cosine), m)) / (1.0 + lam)
    onehot = _onehot(labels, cosine)
    return norm * (onehot * target + (1.0 - onehot) * cosine)


def cosface_logits(cosine, labels, scale=32.0, margin=0.5):
    """CosFace (large-margin cosine) logits: scale·(cos θ − margin·onehot), (B, C)."""
    cosine = tf.convert_to_tensor(cosine, tf.float32)
    return scale * (cosine - margin * _onehot(labels, cosine))


def arcface_logits(cosine, labels, scale=32.0, margin=0.5, easy_margin=False):
    """ArcFace (additive angular margin) logits, (B, C).

    The target logit is scale·φ with φ = cos(θ + m). Past θ = π − m, cos(θ + m) would
    rise again, so there φ = cos θ − m·sin(π − m) (``cos θ ≤ cos(π − m)``); with
    ``easy_margin`` φ is used only where cos θ > 0 and cos θ elsewhere. Every other
    logit is scale·cos θ."""
    cosine = tf.convert_to_tensor(cosine, tf.float32)
    sine = tf.sqrt(tf.clip_by_value(1.0 - tf.square(cosine), _EPS, 1.0))
    phi = cosine * math.cos(margin) - sine * math.sin(margin)
    if easy_margin:
        phi = tf.where(cosine > 0.0, phi, cosine)
    else:
        phi = tf.where(cosine > math.cos(math.pi - margin), phi,
                       cosine - margin * math.sin(math.pi - margin))
    onehot = _onehot(labels, cosine)
    return scale * (onehot * phi + (1.0 - onehot) * cosine)


# Online mining inside a P x K batch.

def _class_masks(labels):
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    eye = tf.eye(tf.shape(labels)[0], dtype=tf.bool)
    return tf.logical_and(same, tf.logical_not(eye)), tf.logical_not(same)


def batch_pairs(embeddings, labels):
    """Every pair i < j of the batch: (distance (N,), same (N,)), N = B(B−1)/2."""
    b = tf.shape(embeddings)[0]
    d = tf.sqrt(pairwise_squared_distance(embeddings) + _EPS)
    labels = tf.reshape(labels, [-1])
    upper = tf.linalg.band_part(tf.ones((b, b)), 0, -1) - tf.eye(b)
    idx = tf.where(upper > 0)
    same = tf.cast(tf.equal(tf.gather(labels, idx[:, 0]), tf.gather(labels, idx[:, 1])),
                   tf.float32)
    return tf.gather_nd(d, idx), same


def batch_hard_triplets(embeddings, labels):
    """Batch-hard mining (Hermans et al. 2017): for every anchor, the farthest positive
    and the nearest negative. Returns index vectors (positive, negative), each (B,)."""
    d = pairwise_squared_distance(embeddings)
    pos_mask, neg_mask = _class_masks(labels)
    big = tf.reduce_max(d) + 1.0
    positive = tf.argmax(tf.where(pos_mask, d, -1.0), axis=1)
    negative = tf.argmin(tf.where(neg_mask, d, big), axis=1)
    return positive, negative


def batch_hard_quadruplets(embeddings, labels, anchor_term=False):
    """Batch-hard quadruplets: the triplet of :func:`batch_hard_triplets` and n2, the
    hardest image whose class differs from both the anchor's and n1's: nearest to n1
    (Chen et al.) or, with ``anchor_term``, nearest to the anchor (the study's variant).
    Needs at least three classes in the batch. Returns (positive, negative1, negative2)."""
    d = pairwise_squared_distance(embeddings)
    labels = tf.reshape(labels, [-1])
    positive, negative1 = batch_hard_triplets(embeddings, labels)
    n1_labels = tf.gather(labels, negative1)
    third = tf.logical_and(tf.not_equal(labels[None, :], labels[:, None]),
                           tf.not_equal(labels[None, :], n1_labels[:, None]))
    to_n2 = d if anchor_term else tf.gather(d, negative1)
    big = tf.reduce_max(d) + 1.0
    negative2 = tf.argmin(tf.where(third, to_n2, big), axis=1)
    return positive, negative1, negative2


# The registry: every loss as a function of the model's outputs on one batch.

def _contrastive_batch(embeddings, labels, margin=1.0, **_):
    return contrastive_loss(*batch_pairs(embeddings, labels), margin=margin)


def _triplet_batch(embeddings, labels, margin=1.0, **_):
    p, n = batch_hard_triplets(embeddings, labels)
    return triplet_loss(embeddings, tf.gather(embeddings, p), tf.gather(embeddings, n), margin)


def _quadruplet_batch(embeddings, labels, margin=1.0, margin2=0.5, study=False, **_):
    p, n1, n2 = batch_hard_quadruplets(embeddings, labels, anchor_term=study)
    fn = study_quadruplet_loss if study else quadruplet_loss
    g = lambda i: tf.gather(embeddings, i)  # noqa: E731
    return fn(embeddings, g(p), g(n1), g(n2), margin, margin2)


def _angular_ce(logits, labels):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(tf.reshape(labels, [-1]), tf.int32), logits=logits))


def _sphereface_batch(cosine, labels, feature_norm, step, m=4, **_):
    return _angular_ce(sphereface_logits(cosine, feature_norm, labels, m=m,
                                         lam=sphereface_lambda(step)), labels)


def _cosface_batch(cosine, labels, scale=32.0, margin=0.5, **_):
    return _angular_ce(cosface_logits(cosine, labels, scale, margin), labels)


def _arcface_batch(cosine, labels, scale=32.0, margin=0.5, easy_margin=False, **_):
    return _angular_ce(arcface_logits(cosine, labels, scale, margin, easy_margin), labels)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One ``--loss``. ``kind`` "siamese": ``batch_loss(embeddings, labels, **options)``
    on the L2-normalised embeddings (B, D), classified by the nearest class centroid;
    "angular": ``batch_loss(cosine, labels, feature_norm=, step=, **options)`` on the
    cosine head (B, C), classified by its largest cosine. ``min_classes``: how many
    classes a batch needs for the mining to find its tuples."""
    kind: str
    batch_loss: Callable
    min_classes: int = 2
    options: tuple = ()      # option names the loss reads: margin, margin2, scale, m


# Stage 2's metric-learning losses (--loss); nets.unet_training.LOSSES: segmentation's.
METRIC_LOSSES = {
    "contrastive": LossSpec("siamese", _contrastive_batch, options=("margin",)),
    "triplet": LossSpec("siamese", _triplet_batch, options=("margin",)),
    "quadruplet": LossSpec("siamese", _quadruplet_batch, 3, ("margin", "margin2")),
    "quadruplet_study": LossSpec("siamese", functools.partial(_quadruplet_batch, study=True),
                                 3, ("margin", "margin2")),
    "sphereface": LossSpec("angular", _sphereface_batch, options=("m",)),
    "cosface": LossSpec("angular", _cosface_batch, options=("scale", "margin")),
    "arcface": LossSpec("angular", _arcface_batch, options=("scale", "margin", "easy_margin")),
}

# The study's values (Uzhinskiy): each loss's options when not given.
STUDY_DEFAULTS = {
    "contrastive": {"margin": 1.0},
    "triplet": {"margin": 1.0},
    "quadruplet": {"margin": 2.0, "margin2": 1.0},
    "quadruplet_study": {"margin": 2.0, "margin2": 1.0},
    "sphereface": {"m": 4},
    "cosface": {"scale": 32.0, "margin": 0.4},
    "arcface": {"scale": 32.0, "margin": 0.5},
}
