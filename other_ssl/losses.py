"""Self-supervised losses as pure functions of embedding batches.

Every function takes float tensors of shape (batch, dim) and returns a scalar. Each
method's state (queues, momentum networks) lives in ``other_ssl.methods``; here are
only the formulas, so they can be checked on hand-made tensors.

The contrastive and twin losses follow the variants the original ``other_ssl`` used
(the keras-io / contrastive-classification-keras ones); SimSiam and BYOL follow their
papers.
"""
import tensorflow as tf

# Keeps per-dimension standardisation finite when a feature is constant in the batch
# (a collapsed embedding); far below any real batch spread.
STD_EPS = 1e-6
# Probabilities are clipped before log, as keras.losses.categorical_crossentropy does.
PROB_EPS = 1e-7


def _f32(x):
    # Losses in float32 even under a mixed-precision policy.
    return tf.cast(x, tf.float32)


def _l2(x):
    return tf.math.l2_normalize(_f32(x), axis=1)


def _standardise(x):
    """Zero mean, unit (population) std per dimension over the batch."""
    x = _f32(x)
    return (x - tf.reduce_mean(x, axis=0)) / (tf.math.reduce_std(x, axis=0) + STD_EPS)


def _symmetric_ce(logits_12, logits_21):
    """Mean cross-entropy where row i's positive is column i, in both directions."""
    labels = tf.range(tf.shape(logits_12)[0])
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits
    return tf.reduce_mean(tf.concat([ce(labels=labels, logits=logits_12),
                                     ce(labels=labels, logits=logits_21)], axis=0))


def _cross_entropy(target, prediction):
    """Per-row H(target, prediction) on probability vectors."""
    prediction = tf.clip_by_value(prediction, PROB_EPS, 1.0 - PROB_EPS)
    return -tf.reduce_sum(target * tf.math.log(prediction), axis=-1)


def nt_xent_loss(z1, z2, temperature=0.1):
    """SimCLR's InfoNCE as the original ran it: cosine similarities between the two
    views' batches only (B candidates per row, not 2B-1), cross-entropy both ways."""
    z1, z2 = _l2(z1), _l2(z2)
    sim = tf.matmul(z1, z2, transpose_b=True) / temperature
    return _symmetric_ce(sim, tf.transpose(sim))


def nearest_neighbour(z, support):
    """The support row most cosine-similar to each row of ``z`` (both L2-normalised).

    Straight-through: the value is the neighbour, the gradient flows to ``z``, as the
    original NNCLR did (the paper stops it)."""
    nn = tf.gather(support, tf.argmax(tf.matmul(z, support, transpose_b=True), axis=1))
    return z + tf.stop_gradient(nn - z)


def nnclr_loss(z1, z2, support, temperature=0.1):
    """NNCLR: InfoNCE where each view is replaced by its nearest neighbour in the queue."""
    z1, z2, support = _l2(z1), _l2(z2), _f32(support)
    sim_12 = tf.matmul(nearest_neighbour(z1, support), z2, transpose_b=True) / temperature
    sim_21 = tf.matmul(nearest_neighbour(z2, support), z1, transpose_b=True) / temperature
    return _symmetric_ce(sim_12, sim_21)


def dcclr_loss(z1, z2, temperature=0.1):
    """Decoupled contrastive loss: the positive is left out of the denominator; rows and
    columns share one log-sum (as the original, not two as in the paper)."""
    z1, z2 = _l2(z1), _l2(z2)
    sim = tf.matmul(z1, z2, transpose_b=True) / temperature
    off_diag = 1.0 - tf.eye(tf.shape(sim)[0])
    neg = off_diag * tf.exp(sim)
    return tf.reduce_mean(-tf.linalg.diag_part(sim)
                          + tf.math.log(tf.reduce_sum(neg, axis=0) + tf.reduce_sum(neg, axis=1)))


def _twin_loss(z1, z2, target_off_diagonal, weight):
    z1, z2 = _standardise(z1), _standardise(z2)
    n = tf.cast(tf.shape(z1)[0], tf.float32)
    d = tf.shape(z1)[1]
    eye = tf.eye(d)
    corr = tf.matmul(z1, z2, transpose_a=True) / n
    target = eye + target_off_diagonal * (1.0 - eye)
    err = tf.square(target - corr)
    d = tf.cast(d, tf.float32)
    on = tf.reduce_sum(err * eye) / d
    off = tf.reduce_sum(err * (1.0 - eye)) / (d * (d - 1.0))
    return on + weight * off


def barlow_twins_loss(z1, z2, redundancy_reduction_weight=10.0):
    """Barlow Twins with both terms averaged (the original's dimension-free variant):
    mean (1 - C_ii)^2 + weight * mean_{i!=j} C_ij^2, C the batch cross-correlation."""
    return _twin_loss(z1, z2, 0.0, redundancy_reduction_weight)


def hsic_twins_loss(z1, z2, redundancy_reduction_weight=3.0):
    """HSIC variant of Barlow Twins: off-diagonal correlations are pushed to -1."""
    return _twin_loss(z1, z2, -1.0, redundancy_reduction_weight)


def twist_loss(z1, z2):
    """TWIST: consistency + sharpness of the per-sample softmaxes, minus the entropies
    of the two views' batch-mean distributions (diversity), on batch-standardised
    embeddings. As the original: mean_i H(p1_i, p2_i) (both ways) - H(m1) - H(m2)."""
    p1 = tf.nn.softmax(_standardise(z1))
    p2 = tf.nn.softmax(_standardise(z2))
    m1, m2 = tf.reduce_mean(p1, axis=0), tf.reduce_mean(p2, axis=0)
    per_sample = _cross_entropy(tf.concat([p1, p2], 0), tf.concat([p2, p1], 0))
    # The original computed the diversity term as one cross-entropy over the
    # concatenated [m1, m2], which Keras renormalises to sum 1: H(m1) + H(m2) + 2 log 2.
    # The constant is dropped here; the gradient is the same.
    return tf.reduce_mean(per_sample) - _cross_entropy(m1, m1) - _cross_entropy(m2, m2)


def moco_loss(q1, q2, k1, k2, queue, temperature=0.1):
    """MoCo, symmetric: each query's positive is the momentum key of the other view;
    the negatives are the other keys of the batch and the queue."""
    q1, q2, k1, k2, queue = _l2(q1), _l2(q2), _l2(k1), _l2(k2), _f32(queue)
    logits_12 = tf.matmul(q1, tf.concat([k2, queue], 0), transpose_b=True) / temperature
    logits_21 = tf.matmul(q2, tf.concat([k1, queue], 0), transpose_b=True) / temperature
    return _symmetric_ce(logits_12, logits_21)


def dino_loss(s1, s2, t1, t2, temperature=0.1, sharpening=0.5):
    """DINO as the original: teacher outputs centred on their batch mean and sharpened
    (temperature * sharpening); each student view predicts the other view's teacher."""
    s1, s2, t1, t2 = _l2(s1), _l2(s2), _l2(t1), _l2(t2)
    center = tf.reduce_mean(tf.concat([t1, t2], 0), axis=0, keepdims=True)
    target_1 = tf.nn.softmax((t1 - center) / (sharpening * temperature))
    target_2 = tf.nn.softmax((t2 - center) / (sharpening * temperature))
    pred_1 = tf.nn.softmax(s1 / temperature)
    pred_2 = tf.nn.softmax(s2 / temperature)
    return tf.reduce_mean(_cross_entropy(tf.concat([target_1, target_2], 0),
                                         tf.concat([pred_2, pred_1], 0)))


def negative_cosine(p, z):
    """-cos(p, z) averaged over the batch, with no gradient through ``z``."""
    z = tf.stop_gradient(_l2(z))
    return -tf.reduce_mean(tf.reduce_sum(_l2(p) * z, axis=1))


def simsiam_loss(p1, p2, z1, z2):
    """SimSiam (Chen & He 2021): D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2, D = -cosine.
    Ranges from -1 (views agree) to 1."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def byol_loss(p1, p2, t1, t2):
    """BYOL (Grill et al. 2020): 2 - 2 cos between each online prediction and the other
    view's target projection, summed over the two directions (0 .. 8)."""
    return (2.0 + 2.0 * negative_cosine(p1, t2)) + (2.0 + 2.0 * negative_cosine(p2, t1))


def embedding_std(z):
    """Collapse monitor: the std over the batch of the L2-normalised embeddings,
    averaged over dimensions. About 1/sqrt(dim) for spread-out embeddings, 0 when every
    sample maps to the same point (SimSiam paper, section 4.1)."""
    return tf.reduce_mean(tf.math.reduce_std(_l2(z), axis=0))


def collapse_threshold(dim, ratio=0.1):
    """The std below which embeddings of ``dim`` dimensions count as collapsed:
    ``ratio`` times the healthy 1/sqrt(dim)."""
    return ratio / float(dim) ** 0.5


def is_collapsed(std, dim, ratio=0.1):
    return float(std) < collapse_threshold(dim, ratio)
