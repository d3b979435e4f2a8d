"""Model cards: a U-Net saved by train.py says how to feed it, and get_miou and predict
read it with no size, class or backbone options; files from before cards still load."""
import contextlib
import io
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

import get_miou
import predict
import train
from nets.encoders import build_encoder
from tests.test_train import make_voc
from utils.model_card import (CARD_ENTRY, class_names, default_class_names, read_card,
                              sidecar_path, transfer_note)
from utils.weights import save_encoder

NAMES = ["bg", "red", "green"]
# Trained on 32x32 windows, the U-Net takes any size: only its card knows 64x64.
SIZE = ["--input-shape", "64", "64"]
OPTIONS = [*SIZE, "--num-classes", "3", "--name-classes", *NAMES, "--backbone", "vgg"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    voc = make_voc(root)
    encoder = root / "pde" / "encoder.weights.h5"
    save_encoder(build_encoder((64, 64, 3), "vgg"), encoder, backbone="vgg",
                 pretraining="pde_class", pixel_scale="[-1, 1]", input_shape=(64, 64))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train.main(["--voc-path", str(voc), *OPTIONS, "--train-crop", "32", "32",
                             "--model-path", str(encoder), "--freeze-epoch", "1",
                             "--unfreeze-epoch", "1", "--freeze-batch-size", "2",
                             "--steps-per-epoch", "1", "--num-workers", "1", "--save-period",
                             "0", "--logs-dir", str(root / "logs"), "--seed", "3"])
    return voc, encoder, result, out.getvalue()


def _matrix(folder):
    rows = (folder / "confusion_matrix.csv").read_text().splitlines()
    return rows[0], np.array([[int(x) for x in r.split(",")[1:]] for r in rows[1:]])


def test_train_writes_the_card_and_notes_the_encoders_pixel_scale(trained):
    _, encoder, result, printed = trained
    assert read_card(encoder) == {"kind": "encoder", "input_shape": [64, 64],
                                  "class_names": None, "backbone": "vgg",
                                  "pixel_scale": "[-1, 1]", "pretraining": "pde_class"}
    assert sidecar_path(encoder).name == "encoder.weights.h5.json"
    # One line: which scale the U-Net feeds the [-1, 1] encoder, and why.
    notes = [line for line in printed.splitlines() if "pretrained (pde_class)" in line]
    assert len(notes) == 1 and "feeds it [0, 1]" in notes[0]
    card = read_card(result["model_path"])
    assert card == {"kind": "unet", "input_shape": [64, 64], "class_names": NAMES,
                    "backbone": "vgg", "pixel_scale": "[0, 1]", "pretraining": "pde_class",
                    "encoder_file": str(encoder)}
    with zipfile.ZipFile(result["model_path"]) as z:
        assert {"epoch.json", CARD_ENTRY} <= set(z.namelist())


def test_get_miou_reads_the_card_and_agrees_with_the_options_and_train(trained, tmp_path):
    voc, _, result, _ = trained
    model = str(result["model_path"])
    bare = get_miou.main(["--voc-path", str(voc), "--model-path", model,
                          "--out-dir", str(tmp_path / "bare"), "--no-write-pngs"])
    given = get_miou.main(["--voc-path", str(voc), "--model-path", model, *OPTIONS,
                           "--out-dir", str(tmp_path / "given")])
    assert bare["classes"] == NAMES
    assert not (tmp_path / "bare/detection-results").exists()
    assert len(list((tmp_path / "given/detection-results").glob("*.png"))) == 2
    header, matrix = _matrix(tmp_path / "bare")
    given_header, given_matrix = _matrix(tmp_path / "given")
    assert header == given_header and matrix.tolist() == given_matrix.tolist()
    # train.py evaluated the same weights in memory: the same matrix.
    assert matrix.tolist() == _matrix(result["run_dir"] / "miou_test")[1].tolist()
    assert bare["mIoU"] == given["mIoU"] == result["test_metrics"]["mIoU"]
    assert matrix.sum() == 2 * 80 * 64


def test_predict_reads_the_card_and_agrees_with_the_options(trained, tmp_path):
    voc, _, result, _ = trained
    photos = sorted(str(p) for p in (voc / "VOC2007/JPEGImages").glob("*.jpg"))[:2]
    model = str(result["model_path"])
    given = predict.main([*photos, "--model-path", model, *SIZE, "--num-classes", "3",
                          "--backbone", "vgg", "--out-dir", str(tmp_path / "b")])
    bare = predict.main([*photos, "--model-path", model, "--count",
                         "--out-dir", str(tmp_path / "c")])
    assert [list(s) for s in bare["shares"].values()] == [NAMES, NAMES]
    for b, c in zip(given["saved"], bare["saved"]):
        np.testing.assert_array_equal(np.asarray(Image.open(b)), np.asarray(Image.open(c)))


def test_a_file_without_a_card_loads_with_the_defaults_and_one_note(trained, tmp_path, capsys):
    from utils.predictor import Unet

    voc, encoder, result, _ = trained
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(result["model_path"]) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            if item.filename != CARD_ENTRY:
                dst.writestr(item, src.read(item.filename))
    assert read_card(old) is None
    capsys.readouterr()
    unet = Unet(model_path=old)
    notes = [line for line in capsys.readouterr().out.splitlines() if "no model card" in line]
    assert len(notes) == 1 and "input shape 576x1024" in notes[0]
    assert unet.input_shape == (576, 1024) and unet.name_classes == default_class_names(3)
    # With the options it gives what the card gave.
    get_miou.main(["--voc-path", str(voc), "--model-path", str(old), *SIZE,
                   "--out-dir", str(tmp_path / "old"), "--no-write-pngs"])
    assert _matrix(tmp_path / "old")[1].tolist() == \
        _matrix(result["run_dir"] / "miou_test")[1].tolist()
    # An encoder file without its sidecar: train.py says so in one line.
    bare = tmp_path / "encoder.weights.h5"
    shutil.copy(encoder, bare)
    assert "no model card" in transfer_note(bare) and transfer_note(encoder).count("\n") == 0


def test_weights_file_carries_its_card_in_a_sidecar(trained, tmp_path):
    import keras

    from utils.model_card import attach
    from utils.predictor import Unet
    from utils.run import Run

    voc, _, result, _ = trained
    model = keras.models.load_model(result["model_path"], compile=False)
    attach(model, read_card(result["model_path"]))
    path = Run(tmp_path).save_model(model, "unet.weights.h5", 1)
    assert sidecar_path(path).is_file()
    assert read_card(path)["class_names"] == NAMES
    photos = [Image.open(p) for p in sorted((voc / "VOC2007/JPEGImages").glob("*.jpg"))[:2]]
    want = Unet(model_path=result["model_path"]).predict_masks(photos)
    got = Unet(model_path=path)
    assert (got.input_shape, got.backbone, got.name_classes) == ((64, 64), "vgg", NAMES)
    for a, b in zip(want, got.predict_masks(photos)):
        np.testing.assert_array_equal(a, b)


def test_one_class_name_fallback():
    assert default_class_names(5) == ["_background_", "fruit", "leaf", "trunk", "flower"]
    assert default_class_names(3) == ["class_0", "class_1", "class_2"]
    assert class_names(2, ["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        class_names(3, ["a", "b"])


def test_growth_and_visualize_take_the_card(trained, tmp_path, capsys):
    import argparse

    import visualize
    from growth_modeling.unet_gm import unet_segmenter

    _, encoder, result, _ = trained
    assert unet_segmenter(result["model_path"]).name_classes == NAMES
    args = argparse.Namespace(mode="embeddings", model_path=str(encoder), backbone=None,
                              input_size=None, scale=None)
    visualize.settle_from_card(args)
    assert (args.backbone, list(args.input_size), args.scale) == ("vgg", [64, 64], "pde")
    bare = tmp_path / "old.weights.h5"
    shutil.copy(encoder, bare)
    args = argparse.Namespace(mode="embeddings", model_path=str(bare), backbone=None,
                              input_size=None, scale=None)
    visualize.settle_from_card(args)
    assert (args.backbone, tuple(args.input_size), args.scale) == ("resnet50", (288, 512), "pde")
    assert capsys.readouterr().out.count("no model card") == 1
