"""other_ssl.losses against values worked out by hand on 2x2 / 4x2 tensors."""
import math

import numpy as np
import pytest
import tensorflow as tf

from other_ssl import losses

I2 = np.eye(2, dtype="float32")
E = math.e


def value(x):
    return float(np.asarray(x))


def test_nt_xent_identity_views():
    # sim = I / T; every row: logits [1/T, 0] with the positive first -> log(1 + e^(-1/T)).
    assert value(losses.nt_xent_loss(I2, I2, 1.0)) == pytest.approx(math.log(1 + 1 / E), abs=1e-6)
    assert value(losses.nt_xent_loss(I2, I2, 0.5)) == pytest.approx(math.log(1 + E ** -2), abs=1e-6)
    # Swapped partners: the positive has logit 0, the negative 1 -> log(1 + e).
    assert value(losses.nt_xent_loss(I2, I2[::-1], 1.0)) == pytest.approx(math.log(1 + E), abs=1e-6)


def test_nt_xent_ignores_scale():
    assert value(losses.nt_xent_loss(3 * I2, 0.5 * I2, 1.0)) == pytest.approx(
        math.log(1 + 1 / E), abs=1e-6)


def test_dcclr_identity_views():
    # Positives left out: each denominator is e^0 (column) + e^0 (row) = 2; -1 + log 2.
    assert value(losses.dcclr_loss(I2, I2, 1.0)) == pytest.approx(-1 + math.log(2), abs=1e-6)


def test_nnclr_neighbour_replaces_view():
    # Support holding the views themselves: the neighbour is the view, as SimCLR.
    assert value(losses.nnclr_loss(I2, I2, I2, 1.0)) == pytest.approx(math.log(1 + 1 / E), abs=1e-6)
    # One support row [0, 1]: both neighbours are [0, 1]; rows give log(1+e), log(1+1/e).
    got = value(losses.nnclr_loss(I2, I2, np.array([[0.0, 1.0]], "float32"), 1.0))
    assert got == pytest.approx((math.log(1 + E) + math.log(1 + 1 / E)) / 2, abs=1e-6)


def test_nnclr_gradient_is_straight_through():
    z1 = tf.Variable(I2)
    with tf.GradientTape() as tape:
        loss = losses.nnclr_loss(z1, I2, np.array([[0.0, 1.0]], "float32"), 1.0)
    grad = tape.gradient(loss, z1)
    assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0


def test_moco_queue_adds_negatives():
    queue = np.array([[1.0, 0.0]], "float32")
    # Row 0: logits [1, 0, 1] (positive first) -> log(2 + 1/e); row 1: [0, 1, 0] -> log(1 + 2/e).
    want = (math.log(2 + 1 / E) + math.log(1 + 2 / E)) / 2
    assert value(losses.moco_loss(I2, I2, I2, I2, queue, 1.0)) == pytest.approx(want, abs=1e-6)


def test_barlow_and_hsic_twins():
    z = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], "float32")
    # Cross-correlation = I: Barlow Twins is 0; HSIC wants -1 off the diagonal: 3 * 1.
    assert value(losses.barlow_twins_loss(z, z, 10.0)) == pytest.approx(0, abs=1e-5)
    assert value(losses.hsic_twins_loss(z, z, 3.0)) == pytest.approx(3.0, abs=1e-5)
    anti = np.array([[1, -1], [-1, 1]], "float32")
    # Cross-correlation [[1, -1], [-1, 1]]: off-diagonal error 1 for Barlow, 0 for HSIC
    # (up to the 1e-6 added to each std).
    assert value(losses.barlow_twins_loss(anti, anti, 10.0)) == pytest.approx(10.0, abs=1e-4)
    assert value(losses.hsic_twins_loss(anti, anti, 3.0)) == pytest.approx(0.0, abs=1e-5)


def test_twist_on_constant_embeddings_is_minus_log_dim():
    # Constant features standardise to 0: uniform softmaxes; log d - 2 log d.
    z = np.ones((3, 4), "float32")
    assert value(losses.twist_loss(z, z)) == pytest.approx(-math.log(4), abs=1e-5)


def _twist_reference(z1, z2):
    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def std(x):
        return (x - x.mean(0)) / (x.std(0) + losses.STD_EPS)

    p1, p2 = softmax(std(z1)), softmax(std(z2))
    per = [-(a * np.log(b)).sum() for a, b in zip(np.vstack([p1, p2]), np.vstack([p2, p1]))]
    m1, m2 = p1.mean(0), p2.mean(0)
    return np.mean(per) + (m1 * np.log(m1)).sum() + (m2 * np.log(m2)).sum()


def test_twist_matches_reference_on_random_batch():
    rng = np.random.RandomState(0)
    z1, z2 = rng.randn(5, 3).astype("float32"), rng.randn(5, 3).astype("float32")
    assert value(losses.twist_loss(z1, z2)) == pytest.approx(_twist_reference(z1, z2), abs=1e-4)


def test_dino_uniform_teacher():
    teacher = np.array([[1.0, 0.0], [1.0, 0.0]], "float32")
    # Centred teacher -> uniform targets; student rows softmax([1, 0]) at T = 1.
    p = E / (1 + E)
    want = -0.5 * (math.log(p) + math.log(1 - p))
    got = value(losses.dino_loss(I2, I2, teacher, teacher, 1.0, 0.5))
    assert got == pytest.approx(want, abs=1e-6)


def test_simsiam_values_and_stop_gradient():
    assert value(losses.simsiam_loss(I2, I2, I2, I2)) == pytest.approx(-1.0, abs=1e-6)
    p1, z2 = np.array([[1.0, 0.0]], "float32"), np.array([[1.0, 1.0]], "float32")
    p2, z1 = np.array([[0.0, 1.0]], "float32"), np.array([[0.0, -1.0]], "float32")
    # -cos 45 deg / 2 + -cos 180 deg / 2.
    want = 0.5 * -math.sqrt(0.5) + 0.5 * 1.0
    assert value(losses.simsiam_loss(p1, p2, z1, z2)) == pytest.approx(want, abs=1e-6)
    z = tf.Variable(z2)
    with tf.GradientTape() as tape:
        loss = losses.simsiam_loss(p1, p1, z, z)
    grad = tape.gradient(loss, z)
    assert grad is None or float(tf.reduce_sum(tf.abs(grad))) == 0


def test_byol_values():
    assert value(losses.byol_loss(I2, I2, I2, I2)) == pytest.approx(0.0, abs=1e-6)
    assert value(losses.byol_loss(I2, I2, I2[::-1], I2[::-1])) == pytest.approx(4.0, abs=1e-6)
    assert value(losses.byol_loss(I2, I2, -I2, -I2)) == pytest.approx(8.0, abs=1e-6)


def test_embedding_std_and_collapse_flag():
    assert value(losses.embedding_std(np.ones((4, 8), "float32"))) == pytest.approx(0.0, abs=1e-7)
    # Rows [1, 0], [0, 1]: each dimension is {1, 0}, population std 0.5.
    assert value(losses.embedding_std(5 * I2)) == pytest.approx(0.5, abs=1e-6)
    assert losses.collapse_threshold(256) == pytest.approx(0.1 / 16)
    assert losses.is_collapsed(0.0, 256)
    healthy = np.random.RandomState(0).randn(512, 256).astype("float32")
    std = value(losses.embedding_std(healthy))
    assert std == pytest.approx(1 / 16, rel=0.05)
    assert not losses.is_collapsed(std, 256)


# CSCL, multitask and CMID losses.

LABELS_4X4 = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 1, 1],
                       [2, 2, 2, 2]], "int32")


def _cscl_reference(labels, k, d):
    b, h, w = labels.shape
    out = np.zeros((b, h, w, k, k), "float32")
    for n, y, x, i, j in np.ndindex(b, h, w, k, k):
        yy, xx = y + (i - k // 2) * d, x + (j - k // 2) * d
        if 0 <= yy < h and 0 <= xx < w:
            out[n, y, x, i, j] = labels[n, y, x] == labels[n, yy, xx]
    return out


def test_cscl_targets_at_the_border():
    y = np.asarray(losses.cscl_targets(LABELS_4X4[None], 3, 1))[0]
    assert y.shape == (4, 4, 3, 3)
    # Corner (0, 0): five offsets fall outside (0); the three inside neighbours are 0s.
    np.testing.assert_array_equal(y[0, 0], [[0, 0, 0], [0, 1, 1], [0, 1, 1]])
    # Corner (3, 3), label 2: only its left neighbour shares the label.
    np.testing.assert_array_equal(y[3, 3], [[0, 0, 0], [1, 1, 0], [0, 0, 0]])
    # Top edge (0, 2), label 1 beside a 0 on its left.
    np.testing.assert_array_equal(y[0, 2], [[0, 0, 0], [0, 1, 1], [0, 1, 1]])
    assert (y[:, :, 1, 1] == 1).all()  # the centre always counts
    # Dilation 2 looks two pixels away: (2, 2) sees (0, 2) above, the rest is out or differs.
    y2 = np.asarray(losses.cscl_targets(LABELS_4X4[None], 3, 2))[0]
    np.testing.assert_array_equal(y2[2, 2], [[0, 1, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(y2[0, 0], [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("k,d", [(3, 1), (5, 2)])
def test_cscl_targets_match_a_loop(k, d):
    labels = np.random.RandomState(k).randint(0, 3, (2, 5, 6)).astype("int32")
    np.testing.assert_array_equal(losses.cscl_targets(labels, k, d), _cscl_reference(labels, k, d))


def test_cscl_loss_by_hand():
    s = np.array([0.5, -0.2], "float32").reshape(1, 1, 1, 1, 2)
    y = np.array([1.0, 0.0], "float32").reshape(1, 1, 1, 1, 2)
    # (-0.125 * 0.5 + (1 - 0) * -0.2) / 2
    assert value(losses.cscl_loss(s, y)) == pytest.approx((-0.0625 - 0.2) / 2, abs=1e-7)
    assert value(losses.cscl_loss(s, y, pos_weight=1.0)) == pytest.approx(-0.35, abs=1e-7)


def test_inpainting_loss_counts_only_changed_pixels():
    y = np.array([0.0, 1.0], "float32").reshape(1, 1, 2, 1)
    corrupted = np.array([1.0, 1.0], "float32").reshape(1, 1, 2, 1)
    pred = np.array([0.5, 5.0], "float32").reshape(1, 1, 2, 1)
    # W = [1, 0]: the second pixel's error of 4 does not count.
    assert value(losses.inpainting_loss(y, pred, corrupted)) == pytest.approx(0.5, abs=1e-5)
    # Nothing corrupted: 0, not a division by zero.
    assert value(losses.inpainting_loss(y, pred, y)) == pytest.approx(0.0)


def test_exemplar_loss_by_hand():
    # Rows of the 4x4 cosine matrix with the diagonal zeroed: [0, 0, 1, 0] etc.;
    # -log(e / (e + 3)) for every row.
    assert value(losses.exemplar_loss(I2, I2, 1.0)) == pytest.approx(math.log(1 + 3 / E), abs=1e-6)
    assert value(losses.exemplar_loss(I2, I2, 0.5)) == pytest.approx(math.log(1 + 3 * E ** -2),
                                                                     abs=1e-6)


def test_focal_l1_by_hand():
    f = lambda l: l * (2 / (1 + math.exp(-0.2 * l)) - 1)  # noqa: E731
    y = np.zeros((1, 1, 2, 2), "float32")
    pred = np.array([[[[2.0, 4.0], [7.0, 7.0]]]], "float32")
    mask = np.array([[[1.0, 0.0]]], "float32")
    # One masked pixel, two channels: (f(2) + f(4)) / 1 / 2; the unmasked 7s do not count.
    want = (f(2) + f(4)) / (1 + 1e-5) / 2
    assert value(losses.focal_l1(y, pred, mask)) == pytest.approx(want, rel=1e-5)


def _ffl_reference(y, p, mask, unmask_weight=1e-3):
    keep = mask[..., None] + (1 - mask[..., None]) * unmask_weight
    p = p * keep + (0.5 * p + 0.5 * y) * (1 - keep)
    fp = np.fft.fft2(p, axes=(1, 2), norm="ortho").mean(0)
    fy = np.fft.fft2(y, axes=(1, 2), norm="ortho").mean(0)
    d = np.abs(fp - fy) ** 2
    w = np.log(np.sqrt(d) + 1)
    return (np.clip(w / w.max(), 0, 1) * d).mean()


def test_focal_frequency_loss_by_hand_and_numpy():
    y = np.zeros((1, 1, 2, 1), "float32")
    p = np.array([3.0, 1.0], "float32").reshape(1, 1, 2, 1)
    # Orthonormal FFT of [3, 1]: [4, 2] / sqrt 2 -> d = [8, 2]; weights log(1 + sqrt d),
    # the larger scaled to 1.
    w2 = math.log(1 + math.sqrt(2)) / math.log(1 + math.sqrt(8))
    got = value(losses.focal_frequency_loss(y, p, np.ones((1, 1, 2), "float32")))
    assert got == pytest.approx((8 + 2 * w2) / 2, rel=1e-5)
    rng = np.random.RandomState(0)
    y, p = rng.rand(2, 4, 6, 3).astype("float32"), rng.rand(2, 4, 6, 3).astype("float32")
    mask = (rng.rand(2, 4, 6) > 0.5).astype("float32")
    assert value(losses.focal_frequency_loss(y, p, mask)) == pytest.approx(
        _ffl_reference(y, p, mask), rel=1e-4)


def test_mocov2_loss_by_hand():
    queue = np.array([[1.0, 0.0]], "float32")
    # Row 0: logits [1 (key), 1 (queue)] -> log 2; row 1: [1, 0] -> log(1 + 1/e). The
    # batch's other key is no negative (moco_loss would add it).
    want = (math.log(2) + math.log(1 + 1 / E)) / 2
    assert value(losses.mocov2_loss(I2, I2, I2, I2, queue, 1.0)) == pytest.approx(want, abs=1e-6)


def test_dino_local_loss_centres_and_sharpens():
    t_s = 0.1
    student = np.array([[0.0, math.log(3) * t_s]], "float32")
    # Teacher [1, 0] minus centre [1, 0]: a uniform target against softmax [1/4, 3/4].
    want = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    got = losses.dino_local_loss(student, np.array([[1.0, 0.0]], "float32"),
                                 np.array([1.0, 0.0], "float32"), t_s, 0.04)
    assert value(got) == pytest.approx(want, abs=1e-5)
    # Without the centre the teacher is sharp (1 / 0.04): nearly all mass on class 0.
    sharp = losses.dino_local_loss(student, np.array([[1.0, 0.0]], "float32"),
                                   np.zeros(2, "float32"), t_s, 0.04)
    assert value(sharp) == pytest.approx(-math.log(0.25), abs=1e-5)
