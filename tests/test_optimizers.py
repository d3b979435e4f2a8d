import keras
import numpy as np

from utils.optimizers import FusedAdam


def small_model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3)])


def train(optimizer, steps=5):
    model = small_model(0)
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")
    start = [w.copy() for w in model.get_weights()]
    for _ in range(steps):
        model.train_on_batch(x, y)
    return model, start


def test_fused_adam_takes_the_same_steps_as_keras_adam():
    keras_model, start = train(keras.optimizers.Adam(0.01, beta_1=0.8, epsilon=1e-4))
    fused_model, _ = train(FusedAdam(0.01, beta_1=0.8, epsilon=1e-4))
    for k, f, s in zip(keras_model.get_weights(), fused_model.get_weights(), start):
        assert not np.allclose(f, s)                      # it trained
        np.testing.assert_allclose(f, k, rtol=1e-5, atol=1e-6)
    for k, f in zip(keras_model.optimizer.variables, fused_model.optimizer.variables):
        np.testing.assert_allclose(np.asarray(f), np.asarray(k), rtol=1e-5, atol=1e-7)


def test_a_model_saved_with_fused_adam_resumes_with_its_state(tmp_path):
    model, _ = train(FusedAdam(0.01))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, FusedAdam)
    assert int(loaded.optimizer.iterations) == 5
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def adan_numpy(w, grads, lr, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, wd=0.0, no_prox=False):
    """The paper's Adan with the authors' bias correction, one weight per call: the
    weights after each gradient in ``grads``."""
    m, v, n, prev, out = 0 * w, 0 * w, 0 * w, None, []
    for k, g in enumerate(grads, start=1):
        diff = 0 * g if prev is None else g - prev
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g + b2 * diff) ** 2
        u = (m / (1 - b1 ** k) + b2 * v / (1 - b2 ** k)) / (np.sqrt(n / (1 - b3 ** k)) + eps)
        w = w * (1 - lr * wd) - lr * u if no_prox else (w - lr * u) / (1 + lr * wd)
        prev = g
        out.append(w)
    return out


def test_adan_matches_a_numpy_reference_step_by_step():
    from utils.optimizers import Adan

    rng = np.random.default_rng(3)
    for no_prox in (False, True):
        kernel = keras.Variable(rng.normal(size=(4, 3)).astype("float32"))
        bias = keras.Variable(rng.normal(size=(3,)).astype("float32"))
        opt = Adan(learning_rate=0.05, weight_decay=0.02, no_prox=no_prox)
        grads = [(rng.normal(size=(4, 3)).astype("float32"),
                  rng.normal(size=(3,)).astype("float32")) for _ in range(5)]
        want_k = adan_numpy(np.asarray(kernel), [g[0] for g in grads], 0.05, wd=0.02,
                            no_prox=no_prox)
        # A bias (rank 1) gets no weight decay.
        want_b = adan_numpy(np.asarray(bias), [g[1] for g in grads], 0.05)
        for step, (gk, gb) in enumerate(grads):
            opt.apply_gradients([(gk, kernel), (gb, bias)])
            np.testing.assert_allclose(np.asarray(kernel), want_k[step], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(bias), want_b[step], rtol=1e-5, atol=1e-6)
    # The reference's decay matters at this size: without it the kernel ends elsewhere.
    start = want_k[0] * 0 + rng.normal(size=(4, 3))
    with_wd = adan_numpy(start, [g[0] for g in grads], 0.05, wd=0.02)[-1]
    without = adan_numpy(start, [g[0] for g in grads], 0.05)[-1]
    assert np.abs(with_wd - without).max() > 1e-4

def test_adan_trains_and_round_trips_through_a_saved_model(tmp_path):
    from utils.optimizers import Adan

    model, start = train(Adan(0.01, weight_decay=0.02))
    assert all(not np.allclose(w, s) for w, s in zip(model.get_weights(), start))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, Adan)
    assert loaded.optimizer.get_config()["beta_3"] == 0.99
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
