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
