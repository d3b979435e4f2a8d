"""Few-shot classification: every loss against hand-computed values, the P x K sampler,
learning in 20 steps, the data checks and a tiny end-to-end run."""
import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from few_shot import losses as L  # noqa: E402
from utils.errors import UserError  # noqa: E402
from few_shot.data import (FewShotDataError, PKSampler, normalization_stats,  # noqa: E402
                           read_class_folders, read_stage_images, split_shots)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# Siamese losses

def test_contrastive_loss_standard_form():
    # same pair at d=0.5: 0.5*0.25 = 0.125; different at d=0.3: 0.5*0.7^2 = 0.245;
    # different beyond the margin (d=1.5): 0.
    close(L.contrastive_loss([0.5, 0.3, 1.5], [1, 0, 0], margin=1.0), (0.125 + 0.245) / 3)


def test_triplet_loss_squared_distances():
    a = np.array([[0.0, 0.0], [0.0, 0.0]], np.float32)
    p = np.array([[1.0, 0.0], [0.0, 0.1]], np.float32)
    n = np.array([[0.0, 1.5], [3.0, 0.0]], np.float32)
    # row 1: 1 - 2.25 + 1 = -0.25 -> 0; row 2: 0.01 - 9 + 1 < 0 -> 0; margin 2: 0.75, 0
    close(L.triplet_loss(a, p, n, margin=1.0), 0.0)
    close(L.triplet_loss(a, p, n, margin=2.0), 0.75 / 2)


def test_quadruplet_losses_use_n1_n2_or_anchor_n2():
    a = np.array([[0.0, 0.0]], np.float32)
    p = np.array([[1.0, 0.0]], np.float32)      # D(a,p) = 1
    n1 = np.array([[0.0, 1.0]], np.float32)     # D(a,n1) = 1
    n2 = np.array([[0.0, 2.0]], np.float32)     # D(n1,n2) = 1, D(a,n2) = 4
    # Chen: (1 - 1 + 1) + (1 - 1 + 0.5) = 1.5; study: 1 + max(1 - 4 + 0.5, 0) = 1
    close(L.quadruplet_loss(a, p, n1, n2, 1.0, 0.5), 1.5)
    close(L.study_quadruplet_loss(a, p, n1, n2, 1.0, 0.5), 1.0)


def test_batch_hard_mining_and_quadruplet_class_condition():
    # Anchor 0 (class 0): its farthest positive is 1, its nearest negative n1 = 2 (class 1).
    # Nearest to n1 are 1 (the anchor's class) and 3 (n1's class): n2 must skip both and
    # be of class 2: image 4 is nearest to n1 (Chen), image 5 nearest to the anchor (study).
    x = np.array([[0.0, 0.0], [1.05, 0.0], [1.0, 0.0], [1.0, 0.1], [1.5, 0.0], [-1.2, 0.0]],
                 np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    pos, neg = L.batch_hard_triplets(tf.constant(x), tf.constant(y))
    assert int(pos[0]) == 1 and int(neg[0]) == 2
    for anchor_term, want in ((False, 4), (True, 5)):
        p, n1, n2 = L.batch_hard_quadruplets(tf.constant(x), tf.constant(y), anchor_term)
        assert int(n1[0]) == 2 and int(n2[0]) == want
        for i in range(len(y)):
            assert y[int(n2[i])] not in (y[i], y[int(n1[i])])


def test_batch_pairs_counts_and_same_flags():
    x = tf.constant([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    d, same = L.batch_pairs(x, tf.constant([0, 0, 1]))
    close(d, [5.0, 1.0, math.sqrt(9 + 9)], tol=1e-3)
    close(same, [1.0, 0.0, 0.0])


# Angular losses

def test_cosface_logits():
    cos = np.array([[0.8, 0.1, -0.2]], np.float32)
    close(L.cosface_logits(cos, [0], scale=32.0, margin=0.5), [[32 * 0.3, 3.2, -6.4]])


def test_arcface_logits_margin_fallback_and_easy_margin():
    m, s = 0.5, 32.0
    theta = 1.0
    cos = np.array([[math.cos(theta), 0.3]], np.float32)
    close(L.arcface_logits(cos, [0], s, m), [[s * math.cos(theta + m), s * 0.3]], tol=1e-4)
    # Near theta = pi: cos theta <= cos(pi - m), so phi = cos theta - m sin(pi - m).
    theta = math.pi - 0.1
    c = math.cos(theta)
    assert c <= math.cos(math.pi - m)
    close(L.arcface_logits(np.array([[c, 0.0]], np.float32), [0], s, m),
          [[s * (c - m * math.sin(math.pi - m)), 0.0]], tol=1e-4)
    # easy margin: only where cos > 0; a negative cosine is left as it is.
    close(L.arcface_logits(np.array([[-0.4, 0.6]], np.float32), [0], s, m, easy_margin=True),
          [[s * -0.4, s * 0.6]], tol=1e-4)
    close(L.arcface_logits(np.array([[0.6, 0.2]], np.float32), [0], s, m, easy_margin=True),
          [[s * math.cos(math.acos(0.6) + m), s * 0.2]], tol=1e-4)


@pytest.mark.parametrize("theta,k", [(0.3, 0), (1.0, 1), (2.0, 2), (3.0, 3)])
def test_sphereface_psi_each_piece(theta, k):
    # m = 4: pieces [k pi/4, (k+1) pi/4); psi = (-1)^k cos(4 theta) - 2k.
    assert math.floor(4 * theta / math.pi) == k
    want = (-1) ** k * math.cos(4 * theta) - 2 * k
    close(L.sphereface_psi(tf.constant(theta), 4), want, tol=1e-5)


def test_sphereface_psi_is_continuous_and_decreasing():
    theta = np.linspace(0.0, math.pi - 1e-3, 400, dtype=np.float32)
    psi = L.sphereface_psi(tf.constant(theta), 4).numpy()
    assert np.all(np.diff(psi) <= 1e-5)
    close(psi[0], 1.0)


def test_sphereface_logits_and_lambda():
    theta = 1.0
    cos = np.array([[math.cos(theta), 0.5]], np.float32)
    psi = -math.cos(4 * theta) - 2       # k = 1
    for lam in (0.0, 5.0):
        want_target = 2.0 * (lam * math.cos(theta) + psi) / (1 + lam)
        close(L.sphereface_logits(cos, [2.0], [0], m=4, lam=lam), [[want_target, 1.0]], tol=1e-4)
    close(L.sphereface_lambda(0), 1500.0)
    close(L.sphereface_lambda(10), 750.0)
    close(L.sphereface_lambda(10_000), 5.0)


def test_registry_losses_run_on_a_batch():
    rng = np.random.default_rng(0)
    emb = tf.math.l2_normalize(tf.constant(rng.normal(size=(12, 8)), tf.float32), axis=1)
    labels = tf.constant(np.repeat([0, 1, 2], 4))
    for name, spec in L.METRIC_LOSSES.items():
        if spec.kind == "siamese":
            value = spec.batch_loss(emb, labels)
        else:
            cos = tf.matmul(emb, tf.math.l2_normalize(tf.constant(rng.normal(size=(8, 3)),
                                                                  tf.float32), axis=0))
            value = spec.batch_loss(cos, labels, feature_norm=tf.ones(12), step=0)
        assert np.isfinite(float(value)) and float(value) >= 0, name


# Data

def test_pk_sampler_class_balance():
    labels = np.repeat(np.arange(6), [3, 5, 7, 2, 9, 4])
    sampler = PKSampler(labels, p=4, k=3, seed=1)
    seen = set()
    for _ in range(50):
        idx = sampler.batch()
        classes, counts = np.unique(labels[idx], return_counts=True)
        assert len(classes) == 4 and np.all(counts == 3)
        seen.update(classes.tolist())
    assert seen == set(range(6))
    with pytest.raises(FewShotDataError, match="7 classes"):
        PKSampler(labels, p=7, k=2)


def test_split_shots_stratified_seeded_and_checked():
    labels = np.repeat([0, 1, 2], [4, 6, 5])
    train, test = split_shots(labels, 3, seed=5)
    assert np.all(np.bincount(labels[train]) == 3)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
    again, _ = split_shots(labels, 3, seed=5)
    assert np.array_equal(train, again)
    with pytest.raises(FewShotDataError, match="class 'a' has 4 images, fewer than --shots 4"):
        split_shots(labels, 4, seed=0, where="f", classes=["a", "b", "c"])


def test_normalization_stats():
    imgs = np.zeros((2, 2, 2, 3), np.uint8)
    imgs[0] = 255
    mean, std = normalization_stats("computed", imgs)
    close(mean, [0.5] * 3)
    close(std, [0.5] * 3)
    close(normalization_stats("imagenet")[0], [0.485, 0.456, 0.406])
    # The study's own data set's fixed constants.
    close(normalization_stats("doctorp")[0], [0.4467, 0.4889, 0.3267])
    close(normalization_stats("doctorp")[1], [0.2299, 0.2224, 0.2289])


def test_defaults_are_the_studys():
    from few_shot.train_few_shot import loss_options, parse_args

    args = parse_args([])
    assert (args.epochs, args.batch_size, args.learning_rate) == ([50, 30], 64, 1e-4)
    assert (args.classifier_epochs, args.classifier_batch_size) == (30, 64)
    assert not args.freeze_backbone           # stage 2 retrains the backbone
    assert loss_options(args, "cosface") == {"margin": 0.4, "scale": 32.0}
    assert loss_options(args, "arcface") == {"margin": 0.5, "scale": 32.0, "easy_margin": False}
    assert loss_options(args, "quadruplet_study") == {"margin": 2.0, "margin2": 1.0}
    assert loss_options(args, "contrastive") == {"margin": 1.0}
    assert loss_options(args, "sphereface") == {"m": 4}
    given = parse_args(["--margin", "0.3", "--scale", "64", "--freeze-backbone"])
    assert loss_options(given, "cosface") == {"margin": 0.3, "scale": 64.0}
    assert given.freeze_backbone


def test_classification_part_layers():
    import keras

    from few_shot.train_few_shot import classification_part

    head = classification_part(16, 8, 5)
    dense = [l for l in head.layers if isinstance(l, keras.layers.Dense)]
    assert [(d.units, d.activation.__name__) for d in dense] == [(8, "relu"), (5, "softmax")]
    drop = [l for l in head.layers if isinstance(l, keras.layers.Dropout)]
    assert len(drop) == 1 and drop[0].rate == 0.2
    # Dense -> ReLU -> Dropout -> Dense, in that order.
    kinds = [type(l).__name__ for l in head.layers[1:]]
    assert kinds == ["Dense", "Dropout", "Dense"]
    assert head(np.zeros((2, 16), np.float32)).shape == (2, 5)


def write_class_folder(root, counts, size=32, seed=0):
    """One subfolder per class; each class has its own colour plus noise."""
    rng = np.random.default_rng(seed)
    for c, n in enumerate(counts):
        (root / f"class_{c}").mkdir(parents=True)
        base = np.zeros(3)
        base[c % 3] = 200
        for i in range(n):
            img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_data_errors_name_the_folder(tmp_path):
    root = write_class_folder(tmp_path / "d", [3, 3])
    (root / "empty").mkdir()
    with pytest.raises(FewShotDataError, match=r"empty: class 'empty' has no images"):
        read_class_folders(root)
    (root / "empty").rmdir()
    with pytest.raises(FewShotDataError, match="no class subfolders"):
        read_class_folders(root / "class_0")
    stage = tmp_path / "stages"
    stage.mkdir()
    Image.new("RGB", (8, 8)).save(stage / "E88570046p1t12i3d2021-04-01_12.jpg")
    Image.new("RGB", (8, 8)).save(stage / "E88570046p1t12i0d2021-01-02_12.jpg")
    data = read_stage_images(stage)
    assert data.classes == ["stage 0", "stage 3"] and list(data.labels) == [0, 1]
    (stage / "holiday.jpg").write_bytes(b"")
    with pytest.raises(FewShotDataError, match="holiday.jpg: not a stage image name"):
        read_stage_images(stage)


def test_unreadable_image_is_named_before_training(tmp_path):
    from few_shot import train_few_shot

    root = write_class_folder(tmp_path / "d", [3, 3])
    (root / "class_1" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"d: unreadable image broken.png"):
        train_few_shot.main(["--image-dir", str(root), "--shots", "1", "--weights", "none",
                             "--logs-dir", str(tmp_path / "logs")])
    assert not (tmp_path / "logs").exists()


# Learning

def _learning_case(loss, steps=20, seed=0):
    from few_shot.train_few_shot import SimilarityModel, loss_options, parse_args
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 16)).astype(np.float32)
    labels = np.repeat(np.arange(4), 8)
    x = centres[labels] + 0.6 * rng.normal(size=(32, 16)).astype(np.float32)
    args = parse_args(["--loss", loss])
    model = SimilarityModel(None, 8, 4, loss, loss_options(args, loss))
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model(x[:2])
    sampler = PKSampler(labels, 4, 4, seed=seed)
    batches = [sampler.batch() for _ in range(steps)]
    first = float(model.batch_loss(x[batches[0]], labels[batches[0]]))
    for idx in batches:
        model.train_on_batch(x[idx], labels[idx])
    last = np.mean([float(model.batch_loss(x[i], labels[i])) for i in batches[:5]])
    return first, last


@pytest.mark.parametrize("loss", ["arcface", "triplet"])
def test_loss_drops_in_20_steps(loss):
    first, last = _learning_case(loss)
    assert last < 0.7 * first, (first, last)


# End to end

def test_end_to_end_tiny_run(tmp_path):
    from few_shot import train_few_shot

    root = write_class_folder(tmp_path / "d", [5, 5, 5])
    out = train_few_shot.main(["--image-dir", str(root), "--shots", "2", "--input-shape", "32", "32",
                               "--backbone", "encoder-vgg", "--weights", "none",
                               "--normalize", "computed", "--epochs", "2", "2",
                               "--classifier-epochs", "2", "--freeze-backbone",
                               "--loss", "contrastive", "--batch-per-class", "2",
                               "--steps-per-epoch", "2", "--hidden", "8",
                               "--embedding-dim", "4", "--run-eagerly", "--logs-dir", str(tmp_path / "logs")])
    run = out["run_dir"]
    for stage, m in (("transfer", out["transfer"]),
                     ("similarity_contrastive", out["similarity"]["contrastive"])):
        for suffix in ("_report.csv", "_confusion.png", "_pca.png", "_tsne.png",
                       "_training_log.csv"):
            assert (run / f"{stage}{suffix}").is_file(), stage + suffix
        for key in ("accuracy", "precision", "recall", "f1"):
            assert 0.0 <= m[key] <= 1.0
        assert m["mean_epoch_seconds"] > 0
    assert out["test_images"] == 9
    assert out["similarity"]["contrastive"]["classified_by"] == "classification part"
    assert out["similarity"]["contrastive"]["by_metric"]["rule"] == "nearest class centroid"
    assert (run / "similarity_contrastive_classifier_log.csv").is_file()
    with open(run / "transfer_report.csv") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:4]] == ["class_0", "class_1", "class_2"]
    assert json.loads((run / "results.json").read_text())["normalize"] == "computed"


def test_missing_imagenet_weights_say_where_offline(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    from few_shot.backbones import build_backbone

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    # Never download in a test: any fetch fails as it would offline.
    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(ValueError, match=r"ImageNet weights for mobilenetv2 are not in "
                                         r"Keras's cache \(.*keras/models\)"):
        build_backbone("mobilenetv2", (32, 32, 3), "imagenet", verbose=False)
    with pytest.raises(ValueError, match="inceptionv3 needs sides of at least 75"):
        build_backbone("inceptionv3", (64, 64, 3), "none")


def test_fine_tuned_angular_run_from_a_project_encoder_file(tmp_path):
    from few_shot import train_few_shot
    from nets.encoders import build_encoder
    from utils.weights import save_encoder

    encoder_file = save_encoder(build_encoder((32, 32, 3), "vgg"), tmp_path / "encoder.weights.h5",
                                backbone="vgg")
    root = write_class_folder(tmp_path / "d", [4, 4, 4])
    out = train_few_shot.main(["--image-dir", str(root), "--shots", "2", "--input-shape", "32", "32",
                               "--backbone", "encoder-vgg", "--weights", str(encoder_file),
                               "--stages", "similarity", "--loss", "arcface",
                               "--epochs", "1", "1", "--batch-per-class", "2",
                               "--classifier-epochs", "1",
                               "--steps-per-epoch", "1", "--embedding-dim", "4", "--run-eagerly",
                               "--logs-dir", str(tmp_path / "logs")])
    assert "transfer" not in out
    assert out["similarity"]["arcface"]["by_metric"]["rule"] == "cosine head"
    assert out["transfer_report"].startswith(f"Loaded weights from {encoder_file}: 13/13 layers")
    assert 0.0 <= out["similarity"]["arcface"]["accuracy"] <= 1.0


def test_few_shot_table_rows_and_option_checks(capsys):
    from benchmarks import few_shot_table as table

    for bad in (["--rows", "pde=transfer;foo=arcface"], ["--rows", "nonet:none=transfer"],
                ["--rows", "pde=transfer,bogus"], ["--rows", "pde"],
                ["--rows", "ssl-simclr=transfer"]):
        with pytest.raises(SystemExit):
            table.parse_args(bad)
    # The default rows: the study's six losses on PDE, stage 1 on every encoder,
    # contrastive and ArcFace on random and supervised.
    rows = table.parse_args([]).rows
    assert rows["pde"] == ["transfer", *table.STUDY_LOSSES] and len(table.STUDY_LOSSES) == 6
    assert rows["random"] == rows["supervised"] == ["transfer", "contrastive", "arcface"]
    args = table.parse_args(["--rows", "random=transfer,cosface;mobilenetv2:none=arcface;"
                             "ssl-simclr=transfer", "--ssl-encoders", "simclr=README.md"])
    assert args.rows == {"random": ["transfer", "cosface"], "mobilenetv2:none": ["arcface"],
                         "ssl-simclr": ["transfer"]}
    assert table.row_backbone("mobilenetv2:none", {}) == ("mobilenetv2", "none", "mobilenetv2 (none)")
    assert table.row_backbone("pde", {"pde": "e.h5"})[:2] == ("encoder-resnet50", "e.h5")
    assert table.row_backbone("random", {})[:2] == ("encoder-resnet50", "none")
    assert table.row_backbone("ssl-simclr", {"ssl-simclr": "s.h5"})[:2] == ("encoder-resnet50", "s.h5")
    base = dict(shots=5, backbone="b", loss="triplet", chance=0.2, precision=0.25, recall=0.5,
                f1=1 / 3, mean_epoch_seconds=0.1234)
    # Three seeds of two rows: "b" at 0.5 ± 0.0408, "c" at chance.
    seeds = [dict(base, seed=s, accuracy=a) for s, a in zip((1, 2, 3), (0.45, 0.5, 0.55))]
    seeds += [dict(base, seed=s, backbone="c", accuracy=a) for s, a in zip((1, 2, 3), (0.2,) * 3)]
    summary = table.summarise(seeds + [dict(seeds[0], shots=10)])
    assert [(r["shots"], r["backbone"], r["seeds"]) for r in summary] == [(5, "b", 3), (5, "c", 3),
                                                                          (10, "b", 1)]
    assert summary[0]["accuracy"] == pytest.approx(0.5)
    assert summary[0]["accuracy_std"] == pytest.approx(np.std([0.45, 0.5, 0.55]))
    text = table.markdown(summary, 5)
    assert "| b | triplet | 0.5000 ± 0.0408 | 0.2500 ± 0.0000 |" in text
    assert text.count("| yes |") == 1 and text.count("| no |") == 1
    assert "b triplet > c triplet" in text and "c triplet > b" not in text
    # One seed has no spread: no verdicts.
    assert "| n/a |" in table.markdown(summary, 10) and "| yes |" not in table.markdown(summary, 10)


def test_normalize_encoder_reads_the_scale_from_the_model_card(tmp_path):
    # PDE encoders are pretrained on x / 127.5 - 1, the other_ssl ones on x / 255: a
    # few-shot head over a frozen encoder must feed it that scale, as the study fed its
    # ImageNet backbones ImageNet's.
    from utils.model_card import encoder_card, sidecar_path

    def close(a, b):
        np.testing.assert_allclose(a, b, atol=1e-6)

    pde, bare = tmp_path / "pde.weights.h5", tmp_path / "old.weights.h5"
    pde.write_bytes(b""), bare.write_bytes(b"")
    sidecar_path(pde).write_text(json.dumps(encoder_card((32, 64), "resnet50", "[-1, 1]", "pde")))
    mean, std = normalization_stats("encoder", weights=str(pde))
    close((np.array([0, 127.5, 255]) / 255 - mean[0]) / std[0], [-1, 0, 1])
    close(normalization_stats("encoder", weights="none"), [[0] * 3, [1] * 3])
    close(normalization_stats("encoder", weights="imagenet")[0], [0.485, 0.456, 0.406])
    with pytest.raises(FewShotDataError, match="old.weights.h5: --normalize encoder"):
        normalization_stats("encoder", weights=str(bare))


def test_few_shot_table_resume_keeps_the_runs_it_has(tmp_path, monkeypatch, capsys):
    # A killed table (the OOM killer ended one at its 30th run) continues from rows.json
    # with --resume; the finished (K, seed, backbone) runs are not run again.
    from benchmarks import few_shot_table as table

    monkeypatch.chdir(tmp_path)
    argv = ["--orchard", "2", "64", "96", "--rows", "random=transfer", "--shots", "2",
            "--seeds", "11", "12", "--input-shape", "32", "32", "--epochs", "1", "1",
            "--few-shot-args", "--no-plots --classifier-epochs 1 --run-eagerly"]
    first = table.main(argv)
    assert [(r["seed"], r["loss"]) for r in first["rows"]] == [(11, "transfer"), (12, "transfer")]
    kept = first["rows"][:1]
    (first["run_dir"] / "rows.json").write_text(json.dumps(kept))
    capsys.readouterr()
    again = table.main(argv + ["--resume", str(first["run_dir"])])
    out = capsys.readouterr().out
    assert "== K=2 seed 12" in out and "== K=2 seed 11" not in out
    assert again["rows"][0] == kept[0]
    assert [r["seed"] for r in again["rows"]] == [11, 12]
