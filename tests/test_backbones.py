"""Backbones: the original's layer names, parameter counts and feature shapes."""
import pytest

from nets.encoders import build_encoder, check_input_shape, weighted_layers
from nets.layers import BatchNormalization
from nets.unet import build_unet, get_encoder

BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}


def expected_resnet50_names(suffix=""):
    """The 106 weighted layers in model order, built from the stage/block structure.

    The order is by graph depth, as Keras 2 listed them too: in a first block the
    shortcut conv ``..._branch1`` sits at the depth of ``..._branch2c``, so the two
    convolutions come before the two batch norms.
    """
    names = [f"conv1{suffix}", f"bn_conv1{suffix}"]
    for stage, blocks in BLOCKS.items():
        label = f"{stage}0" if suffix else str(stage)
        for block in "abcdef"[:blocks]:
            res, bn = f"res{label}{block}_branch", f"bn{label}{block}_branch"
            names += [res + "2a", bn + "2a", res + "2b", bn + "2b"]
            if block == "a":
                names += [res + "2c", res + "1", bn + "2c", bn + "1"]
            else:
                names += [res + "2c", bn + "2c"]
    return names


@pytest.fixture(scope="module")
def unet_resnet():
    return build_unet((576, 1024, 3), 5, "resnet50")


@pytest.fixture(scope="module")
def tower2():
    return build_encoder((64, 64, 3), "resnet50", suffix="_2")


@pytest.fixture(scope="module")
def unet_vgg():
    return build_unet((576, 1024, 3), 5, "vgg")


def test_expected_list_itself():
    names = expected_resnet50_names()
    assert len(names) == 106 == len(set(names))
    assert expected_resnet50_names("_2")[2] == "res20a_branch2a"


def test_resnet50_tower1_names_and_params(unet_resnet):
    encoder = get_encoder(unet_resnet)
    assert encoder.name == "resnet50"
    names = [layer.name for layer in weighted_layers(encoder)]
    assert names[0] == "conv1" and names[1] == "bn_conv1"
    assert names[-1] == "bn5c_branch2c"
    assert names == expected_resnet50_names()
    assert encoder.count_params() == 23_587_712
    # Every batch norm runs the fused kernel, under Keras's class name and config.
    bns = [layer for layer in encoder.layers if "BatchNormalization" in type(layer).__name__]
    assert len(bns) == 53 and all(type(layer) is BatchNormalization for layer in bns)


def test_resnet50_tower2_names_and_params(tower2):
    names = [layer.name for layer in weighted_layers(tower2)]
    assert names[:3] == ["conv1_2", "bn_conv1_2", "res20a_branch2a"]
    assert names[-1] == "bn50c_branch2c"
    assert names == expected_resnet50_names("_2")
    # Parameters do not depend on the input size (convolutions and batch norms only).
    assert tower2.count_params() == 23_587_712


def test_resnet50_feature_shapes_64(tower2):
    shapes = [tuple(o.shape[1:]) for o in tower2.outputs]
    assert shapes == [(32, 32, 64), (16, 16, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)]


def test_unet_param_counts(unet_resnet, unet_vgg):
    assert unet_resnet.count_params() == 44_012_741
    assert unet_vgg.count_params() == 24_891_653
    assert tuple(unet_resnet.output.shape[1:]) == (576, 1024, 5)
    assert tuple(unet_vgg.output.shape[1:]) == (576, 1024, 5)


def test_vgg16_names_params_and_shapes(unet_vgg):
    encoder = get_encoder(unet_vgg)
    names = [layer.name for layer in weighted_layers(encoder)]
    convs = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
    assert names == [f"block{b}_conv{c}" for b, n in convs.items() for c in range(1, n + 1)]
    assert encoder.count_params() == 14_714_688
    small = build_encoder((64, 64, 3), "vgg")
    shapes = [tuple(o.shape[1:]) for o in small.outputs]
    assert shapes == [(64, 64, 64), (32, 32, 128), (16, 16, 256), (8, 8, 512), (4, 4, 512)]


def test_check_input_shape():
    check_input_shape((576, 1024, 3), "resnet50")
    check_input_shape((48, 48, 3), "vgg")
    with pytest.raises(ValueError, match="not divisible by 32"):
        check_input_shape((100, 64, 3), "resnet50")
    with pytest.raises(ValueError, match="not divisible by 16"):
        build_unet((40, 64, 3), 5, "vgg")
    with pytest.raises(ValueError, match="Unsupported backbone"):
        build_encoder((64, 64, 3), "resnet18")
