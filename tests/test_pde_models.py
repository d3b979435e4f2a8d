"""The PDE Siamese models: structure, names, tower initialisation, merges, loss."""
import math

import keras
import numpy as np
import pytest

from nets.encoders import weighted_layers
from pde_self_supervised import con_resnet, con_resnet_class
from nets.distances import CosineDistance, EuclideanDistance, SquaredDifference
from pde_self_supervised.losses import ContrastiveLoss, contrastive_loss

ENCODER_PARAMS = 23_587_712  # ResNet50 without top, any input size


def head_params(feature_size):
    return (feature_size * 512 + 512) + 4 * 512 + (512 * 256 + 256)


@pytest.fixture(scope="module")
def class_model():
    return con_resnet_class.self_sup_resnet((64, 64, 3))


@pytest.fixture(scope="module")
def grading_model():
    return con_resnet.self_sup_resnet((64, 64, 3))


def test_classification_model_structure(class_model):
    m = class_model
    assert [i.name for i in m.inputs] == ["self_input1", "self_input2"]
    names = [layer.name for layer in m.layers]
    for name in ("resnet50", "resnet50_2", "flatten", "dense", "batch_normalization", "dense_1",
                 "flatten_1", "dense_2", "batch_normalization_1", "dense_3",
                 "squared_difference", "self_output"):
        assert name in names
    assert m.get_layer("resnet50").get_layer("res2a_branch2a") is not None
    assert m.get_layer("resnet50_2").get_layer("res20a_branch2a") is not None
    # At 64x64 the last feature map is 2x2x2048 = 8192 values per tower.
    assert m.count_params() == 2 * (ENCODER_PARAMS + head_params(8192)) + (256 * 4 + 4)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    out = m({"self_input1": x, "self_input2": x[::-1]})["self_output"]
    assert out.shape == (2, 4)
    np.testing.assert_allclose(np.asarray(out).sum(axis=1), 1.0, rtol=1e-5)


def test_tower_2_starts_as_a_copy_of_tower_1(class_model):
    t1 = weighted_layers(class_model.get_layer("resnet50"))
    t2 = weighted_layers(class_model.get_layer("resnet50_2"))
    assert len(t1) == len(t2) == 106
    # The original names: tower 1 as the U-Net encoder and the ImageNet files, tower 2 "_2".
    assert [t1[i].name for i in (0, 1, 2, -1)] == ["conv1", "bn_conv1", "res2a_branch2a",
                                                   "bn5c_branch2c"]
    assert [t2[i].name for i in (0, 1, 2, -1)] == ["conv1_2", "bn_conv1_2", "res20a_branch2a",
                                                   "bn50c_branch2c"]
    for a, b in zip(t1, t2):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)


def test_grading_model_structure_and_own_tower_2(grading_model):
    m = grading_model
    assert m.get_layer("self_output").__class__.__name__ == "BatchNormalization"
    assert m.count_params() == 2 * (ENCODER_PARAMS + head_params(8192)) + 4
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    assert m({"self_input1": x, "self_input2": x})["self_output"].shape == (2, 1)
    k1 = m.get_layer("resnet50").get_layer("conv1").get_weights()[0]
    k2 = m.get_layer("resnet50_2").get_layer("conv1_2").get_weights()[0]
    assert not np.allclose(k1, k2)


def test_shared_towers_and_gap_and_euclidean():
    m = con_resnet.self_sup_resnet((32, 32, 3), pool="gap", shared_towers=True,
                                   distance="euclidean")
    names = [layer.name for layer in m.layers]
    assert "resnet50" in names and "resnet50_2" not in names
    assert "euclidean_distance" in names and "gap" in names
    assert m.count_params() == ENCODER_PARAMS + head_params(2048) + 4


def test_input_shape_must_be_divisible_by_32():
    with pytest.raises(ValueError, match="not divisible by 32"):
        con_resnet_class.self_sup_resnet((48, 64, 3))
    with pytest.raises(ValueError, match="distance"):
        con_resnet.self_sup_resnet((32, 32, 3), distance="manhattan")


def test_distance_layers_on_known_vectors():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 4.0]], "float32")
    b = np.array([[0.0, 1.0], [2.0, 0.0], [-1.0, 0.0], [0.0, 0.0]], "float32")
    np.testing.assert_allclose(np.asarray(CosineDistance()([a[:3], b[:3]])).ravel(),
                               [0.5, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(EuclideanDistance()([a[3:], b[3:]])).ravel(), [5.0],
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(SquaredDifference()([a, b]))[3], [9.0, 16.0])


def test_contrastive_loss_by_hand():
    y = np.array([[1.0], [0.0]], "float32")
    pred = np.array([[0.0], [0.5 * math.log(3.0)]], "float32")
    # logits = pred / 0.5 = [0, ln 3]: losses ln 2 and ln(1 + 3) = ln 4.
    want = (math.log(2.0) + math.log(4.0)) / 2
    assert float(contrastive_loss(y, pred, 0.5)) == pytest.approx(want, rel=1e-5)
    assert float(ContrastiveLoss(0.5)(y, pred)) == pytest.approx(want, rel=1e-5)
    assert ContrastiveLoss.from_config(ContrastiveLoss(0.25).get_config()).temperature == 0.25


def test_custom_layers_reload_from_a_keras_file(tmp_path):
    a, b = keras.Input((3,)), keras.Input((3,))
    out = {"cos": CosineDistance()([a, b]), "euc": EuclideanDistance()([a, b]),
           "sq": SquaredDifference()([a, b])}
    model = keras.Model([a, b], out)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=False)
    x = [np.ones((1, 3), "float32"), np.arange(3, dtype="float32")[None]]
    for key in out:
        np.testing.assert_allclose(np.asarray(again(x)[key]), np.asarray(model(x)[key]), rtol=1e-6)


@pytest.mark.slow
def test_original_structure_at_288x512():
    """The original's two Siamese models at their input size (about 10 s, 3 GB)."""
    for builder, extra in ((con_resnet_class.self_sup_resnet, 256 * 4 + 4),
                           (con_resnet.self_sup_resnet, 4)):
        m = builder((288, 512, 3))
        # Flatten(9 x 16 x 2048) -> Dense 512 dominates: 150,995,456 parameters per tower.
        assert m.count_params() == 2 * (ENCODER_PARAMS + head_params(9 * 16 * 2048)) + extra
        del m
    assert 2 * (ENCODER_PARAMS + head_params(9 * 16 * 2048)) + 256 * 4 + 4 == 349_434_116
    assert 2 * (ENCODER_PARAMS + head_params(9 * 16 * 2048)) + 4 == 349_433_092


def test_frozen_stages_keep_their_kernels_while_the_rest_trains():
    """--freeze-stages conv1 res2: those convolution kernels (both towers' names) stay as
    they were after a training step; res3 and batch norm train."""
    from nets.resnet50 import freeze_conv_stages

    two = con_resnet_class.self_sup_resnet((32, 32, 3), pool="gap")
    assert freeze_conv_stages(two, ["conv1", "res2"]) == 2 * (1 + 10)
    frozen = {l.name for l in two._flatten_layers(include_self=False, recursive=True)
              if isinstance(l, keras.layers.Conv2D) and not l.trainable}
    assert {"conv1", "conv1_2", "res2a_branch2a", "res20a_branch2a"} <= frozen
    assert not frozen & {"res3a_branch2a", "res30a_branch2a"}
    with pytest.raises(ValueError, match="unknown ResNet50 stages"):
        freeze_conv_stages(two, ["res6"])

    model = con_resnet_class.self_sup_resnet((32, 32, 3), pool="gap", shared_towers=True)
    assert freeze_conv_stages(model, ["conv1", "res2"]) == 11
    layers = {l.name: l for l in model._flatten_layers(include_self=False, recursive=True)}
    names = ("conv1", "res2a_branch2a", "res2c_branch2c", "res3a_branch2a", "bn_conv1")
    before = {n: [np.array(w) for w in layers[n].get_weights()] for n in names}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = [rng.random((4, 32, 32, 3), np.float32) for _ in range(2)]
    y = np.eye(4, dtype=np.float32)
    model.train_on_batch(x, y)

    def same(n):
        return all(np.array_equal(a, b) for a, b in zip(before[n], layers[n].get_weights()))

    assert same("conv1") and same("res2a_branch2a") and same("res2c_branch2c")
    assert not same("res3a_branch2a") and not same("bn_conv1")


def test_frozen_batch_norm_keeps_scale_and_offset_but_normalises_each_batch():
    """--freeze-bn: the frozen stages' batch-norm scale and offset stay at 1 and 0 after
    a step, their moving averages still follow the batches (training mode), and the
    first trained stage's batch norm trains."""
    from nets.resnet50 import freeze_conv_stages

    model = con_resnet_class.self_sup_resnet((32, 32, 3), pool="gap", shared_towers=True)
    # conv1 + 10 convolutions in res2, and as many batch-norm layers
    assert freeze_conv_stages(model, ["conv1", "res2"], batch_norm=True) == 2 * 11
    layers = {l.name: l for l in model._flatten_layers(include_self=False, recursive=True)}
    frozen_bn, trained_bn = layers["bn2c_branch2c"], layers["bn3a_branch2a"]
    assert frozen_bn.trainable and not frozen_bn.gamma.trainable
    trainable = {id(v) for v in model.trainable_variables}
    assert id(trained_bn.gamma) in trainable and id(frozen_bn.beta) not in trainable
    moving = np.array(frozen_bn.moving_mean)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = [rng.random((4, 32, 32, 3), np.float32) for _ in range(2)]
    y = np.eye(4, dtype=np.float32)
    model.train_on_batch(x, y)
    assert np.array_equal(frozen_bn.gamma, np.ones(256)) and np.array_equal(frozen_bn.beta,
                                                                           np.zeros(256))
    assert not np.array_equal(frozen_bn.moving_mean, moving)
    assert not np.allclose(trained_bn.gamma, 1.0)
