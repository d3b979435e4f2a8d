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


# CSCL (Tarasiou et al. 2022): supervised context-self contrastive pretraining. Unlike
# the functions above, these work on dense maps, not embedding batches.

def cscl_targets(labels, kernel_size=3, dilation=1):
    """Which neighbours of each pixel share its label.

    labels: int (B, H, W). Returns float32 (B, H, W, k, k): entry [b, h, w, i, j] is 1
    when ``labels[b, h, w] == labels[b, h + (i - k//2) * dilation, w + (j - k//2) *
    dilation]``, 0 otherwise and for offsets outside the image; the centre is 1.
    """
    labels = tf.cast(labels, tf.int32)
    h, w = tf.shape(labels)[1], tf.shape(labels)[2]
    pad = (kernel_size // 2) * dilation
    # -1 is no class, so an offset outside the image never matches.
    padded = tf.pad(labels, [[0, 0], [pad, pad], [pad, pad]], constant_values=-1)
    rows = []
    for i in range(kernel_size):
        cols = [padded[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w]
                for j in range(kernel_size)]
        rows.append(tf.stack(cols, axis=-1))
    return tf.cast(tf.equal(tf.stack(rows, axis=-2), labels[..., None, None]), tf.float32)


def cscl_loss(similarity, same, pos_weight=0.125):
    """CSCL: mean over every element of -pos_weight * y * s + (1 - y) * s.

    similarity: cosines s (B, H, W, k, k); same: targets y of the same shape (from
    :func:`cscl_targets`). Pulls same-label neighbours together, pushes the others apart.
    """
    s, y = _f32(similarity), _f32(same)
    return tf.reduce_mean(-pos_weight * y * s + (1.0 - y) * s)


# Multitask self-supervision (Li, Chen, Shi 2021).

def inpainting_loss(y_true, y_pred, corrupted):
    """L1 on the corrupted pixels only: sum |y_pred - y| * W / (sum W + 1e-6), with
    W = |y - corrupted| per pixel and channel (zero where the corruption left the pixel
    as it was). All three (B, H, W, C)."""
    y, p, c = _f32(y_true), _f32(y_pred), _f32(corrupted)
    weight = tf.abs(y - c)
    return tf.reduce_sum(tf.abs(p - y) * weight) / (tf.reduce_sum(weight) + 1e-6)


def exemplar_loss(z1, z2, temperature=1.0):
    """Exemplar contrast over the 2B x 2B cosine matrix of [z1; z2] / temperature, its
    diagonal set to 0 (not removed, as the authors); the mean over the 2B rows of
    -log softmax(row)[positive], row i's positive being the other view of image i."""
    z = _l2(tf.concat([z1, z2], axis=0))
    n = tf.shape(z1)[0]
    sim = tf.matmul(z, z, transpose_b=True) / temperature
    sim = sim * (1.0 - tf.eye(2 * n))
    positive = tf.concat([tf.range(n, 2 * n), tf.range(n)], axis=0)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=positive, logits=sim))


# CMID (Muhtar et al. 2023): masked reconstruction, global MoCo-v2, local DINO.

def focal_l1(y_true, y_pred, mask, alpha=0.2):
    """CMID's focal L1 on the masked pixels: l = |y_pred - y|, l * (2 sigmoid(alpha l) - 1)
    summed where mask is 1, / (sum mask + 1e-5) / channels.

    y_true, y_pred: (B, H, W, C); mask: (B, H, W), 1 = masked, broadcast over channels.
    """
    y, p, mask = _f32(y_true), _f32(y_pred), _f32(mask)
    l1 = tf.abs(p - y)
    focal = l1 * (2.0 * tf.sigmoid(alpha * l1) - 1.0)
    channels = tf.cast(tf.shape(y)[-1], tf.float32)
    # The mask is counted once per pixel, then the sum is divided by the channels.
    return (tf.reduce_sum(focal * mask[..., None]) / (tf.reduce_sum(mask) + 1e-5)
            / channels)


def focal_frequency_loss(y_true, y_pred, mask, unmask_weight=1e-3):
    """The focal frequency loss (Jiang et al. 2021) as CMID configures it.

    The unmasked pixels of the prediction are mostly replaced (weight
    ``1 - unmask_weight``) by the mean of the stop-gradient prediction and the target;
    both images go through an orthonormal 2-D FFT per channel, averaged over the batch;
    the squared spectrum distance d is weighted by log(1 + sqrt d), divided by its
    maximum, clipped to [0, 1] and held constant; the loss is the mean of weight * d.

    y_true, y_pred: (B, H, W, C); mask: (B, H, W), 1 = masked.
    """
    y, p = _f32(y_true), _f32(y_pred)
    keep = _f32(mask)[..., None]
    keep = keep + (1.0 - keep) * unmask_weight
    replacement = 0.5 * tf.stop_gradient(p) + 0.5 * y
    p = p * keep + replacement * (1.0 - keep)

    def spectrum(x):
        # (B, H, W, C) -> (C, H, W) complex, orthonormal, averaged over the batch.
        x = tf.transpose(x, [0, 3, 1, 2])
        n = tf.sqrt(tf.cast(tf.shape(x)[2] * tf.shape(x)[3], tf.float32))
        f = tf.signal.fft2d(tf.complex(x, tf.zeros_like(x))) / tf.complex(n, 0.0)
        return tf.reduce_mean(f, axis=0)

    diff = spectrum(p) - spectrum(y)
    distance = tf.square(tf.math.real(diff)) + tf.square(tf.math.imag(diff))
    weight = tf.math.log(tf.sqrt(distance) + 1.0)
    weight = tf.math.divide_no_nan(weight, tf.reduce_max(weight))
    weight = tf.stop_gradient(tf.clip_by_value(weight, 0.0, 1.0))
    return tf.reduce_mean(weight * distance)


def mocov2_loss(q1, q2, k1, k2, queue, temperature=0.2, valid=None):
    """MoCo-v2, symmetrised, as CMID: each query's logits are [its key of the other
    view, the queue] / temperature (the other keys of the batch are not negatives,
    unlike :func:`moco_loss`); cross-entropy with the key first, averaged over the two
    directions. Queries, keys (B, D) and queue (K, D) are L2-normalised here;
    ``valid`` (B, K) bool, if given, leaves out each query's negatives where False."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits
    queue = _l2(queue)

    def one_way(q, k):
        q, k = _l2(q), tf.stop_gradient(_l2(k))
        negative = tf.matmul(q, queue, transpose_b=True)
        if valid is not None:
            negative = tf.where(valid, negative, -1e4 * temperature)
        logits = tf.concat([tf.reduce_sum(q * k, axis=1, keepdims=True),
                            negative], axis=1) / temperature
        return tf.reduce_mean(ce(labels=tf.zeros(tf.shape(q)[0], tf.int32), logits=logits))

    return 0.5 * (one_way(q1, k2) + one_way(q2, k1))


def dino_local_loss(student, teacher, center, student_temperature=0.1,
                    teacher_temperature=0.04):
    """DINO's cross-entropy on matched cells: the teacher's output minus ``center``,
    sharpened by its temperature and held constant, against the student's log-softmax.

    student, teacher: logits (..., D) of matched cells; center: (D,). Returns the mean
    over every cell of -sum_d softmax((t - c) / T_t) log softmax(s / T_s).
    """
    target = tf.stop_gradient(tf.nn.softmax((_f32(teacher) - _f32(center))
                                            / teacher_temperature, axis=-1))
    log_pred = tf.nn.log_softmax(_f32(student) / student_temperature, axis=-1)
    return tf.reduce_mean(-tf.reduce_sum(target * log_pred, axis=-1))
