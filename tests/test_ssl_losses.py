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
