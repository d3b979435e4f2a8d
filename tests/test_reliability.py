"""Bad input is stopped up front with one readable line, nothing is skipped silently,
and a bad record never hangs a run (issue 16). Tiny hand-made files; no model is built
except in the one bounded subprocess that trains on a truncated photo."""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_processing import select_img
from data_processing.date_pro import Phenology, Stage, load_phenology, write_phenology
from utils import image_check
from utils.errors import MissingInput, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _script(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _jpeg(path, size=(32, 24), colour=(120, 80, 40)):
    Image.new("RGB", size, colour).save(path, quality=90)
    return path


def _truncate(path, keep=-200):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _corrupt_inside(path):
    """Start and end markers intact, scan data zeroed: only a full decode finds it."""
    data = path.read_bytes()
    path.write_bytes(data[:600] + bytes(200) + b"\xff\xd9")


# --- one line, exit status 2, traceback on request ------------------------------------

def test_user_error_is_one_line_with_status_2_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "priors.toml"
    plain = _script("data_processing/date_pro.py", "--phenology", missing)
    assert plain.returncode == 2
    lines = plain.stderr.strip().splitlines()
    assert lines == [f"error: {missing}: phenology file not found; give --phenology "
                     f"(data_processing/phenology.example.toml is a template)"]
    for extra, env in ((["--debug"], None), ([], {"PDE_DEBUG": "1"})):
        debug = _script("data_processing/date_pro.py", "--phenology", missing, *extra, env=env)
        assert debug.returncode == 1 and "Traceback" in debug.stderr
        assert "phenology file not found" in debug.stderr


def test_run_cli_keeps_bugs_as_tracebacks(capsys):
    def main(argv):
        raise KeyError("a bug, not a user error")

    with _exits(1):
        run_cli(main, [])
    assert "Traceback" in capsys.readouterr().err


class _exits:
    """run_cli leaves with os._exit; stand in for it to see the status."""

    def __init__(self, status):
        self.status = status

    def __enter__(self):
        import utils.errors as errors

        self.errors, self.real = errors, errors.os._exit

        def fake_exit(status):
            raise _Exit(status)

        errors.os._exit = fake_exit
        return self

    def __exit__(self, kind, exc, tb):
        self.errors.os._exit = self.real
        assert kind is _Exit and exc.status == self.status
        return True


class _Exit(Exception):
    def __init__(self, status):
        self.status = status


def test_user_error_format_and_file_types():
    error = UserError("--voc", "needed by step unet_frozen", "give your VOCdevkit")
    assert str(error) == "--voc: needed by step unet_frozen; give your VOCdevkit"
    assert isinstance(MissingInput("a", "b"), FileNotFoundError) and isinstance(error, ValueError)


# --- phenology file with a byte-order mark --------------------------------------------

def test_toml_with_byte_order_mark_is_read(tmp_path):
    toml = tmp_path / "p.toml"
    write_phenology(toml, Phenology("2021-03-01", "2021-03-31", 3, (Stage("a", 0),),
                                    {"CAM1": "2021-03-05"}))
    toml.write_bytes(b"\xef\xbb\xbf" + toml.read_bytes())
    assert load_phenology(toml).cameras == {"CAM1": "2021-03-05"}


# --- select_img: no silent skips -------------------------------------------------------

@pytest.fixture()
def odd_archive(tmp_path):
    """CAMJ: JPEGs 03-01..03-10 plus one photo whose name does not parse; CAMP: the same
    as PNGs; CAMX: photos but not in the priors; CAME: in the priors, no usable photo.
    Stage 'late' (bud + 25 days) starts after the archive's last photo."""
    root = tmp_path / "archive"
    for cam, suffix in (("CAMJ", ".jpg"), ("CAMP", ".png"), ("CAMX", ".jpg")):
        (root / cam).mkdir(parents=True)
        for day in range(1, 11):
            Image.new("RGB", (8, 6), (day * 20, 50, 50)).save(
                root / cam / f"1_2021-03-{day:02d}_12{suffix}")
    _jpeg(root / "CAMJ" / "IMG_0001.jpg", (8, 6))
    (root / "CAME").mkdir()
    _jpeg(root / "CAME" / "photo.jpg", (8, 6))
    toml = tmp_path / "p.toml"
    cams = {"CAMJ": "2021-03-03", "CAMP": "2021-03-03", "CAME": "2021-03-03"}
    write_phenology(toml, Phenology("2021-03-01", "2021-04-30", 3,
                                    (Stage("early", 0), Stage("late", 25),
                                     Stage("harvested", last=True)), cams))
    return root, toml


def _select(archive, out, *extra):
    root, toml = archive
    return select_img.main(["--archive", str(root), "--phenology", str(toml), "--presets", "1",
                            "--times", "12", "--out", str(out), "--workers", "1", *extra])


def test_select_names_every_skip_and_records_it(odd_archive, tmp_path):
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _select(odd_archive, out, "--cameras", "CAMJ", "CAMP")
    said = "\n".join(str(w.message) for w in caught)
    assert "CAMJ: 1 photo(s) whose names do not parse" in said and "IMG_0001.jpg" in said
    assert "camera 'CAMX' is in the archive (10 photos) but not in [cameras]" in said
    assert "stage 1 'late' of camera CAMJ selects 0 photos: its window 2021-03-28..2021-03-30 " \
           "starts after the archive's last photo (2021-03-10)" in said
    # The PNG camera is selected like the JPEG one, and keeps its suffix.
    assert result["counts"]["CAMP"] == result["counts"]["CAMJ"] == {0: 3, 1: 0, 2: 3}
    assert (out / "CAMPp1t12i0d2021-03-03_12.png").is_file()
    report = json.loads((out / select_img.REPORT_FILE).read_text())
    kinds = [w["kind"] for w in report["warnings"]]
    assert kinds.count("unparsed_names") == 1 and "camera_not_in_phenology" in kinds
    assert kinds.count("empty_stage") == 2      # 'late' of both cameras


def test_select_refuses_a_camera_that_selects_nothing_unless_asked(odd_archive, tmp_path):
    with pytest.raises(UserError, match=r"CAME: camera CAME selects no photo .*--allow-empty"):
        _select(odd_archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = _select(odd_archive, tmp_path / "out", "--allow-empty")
    assert sum(result["counts"]["CAME"].values()) == 0


# --- image checks: a full decode, cached -----------------------------------------------

def test_image_check_decodes_once_and_reuses_the_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv(image_check.CACHE_ENV, str(tmp_path / "cache"))
    good, inside, cut = (_jpeg(tmp_path / f"{n}.jpg") for n in ("good", "inside", "cut"))
    _corrupt_inside(inside)
    _truncate(cut)
    bad = image_check.find_bad_images([good, inside, cut], "pil")
    assert set(bad) == {str(inside), str(cut)}
    assert "truncated JPEG" in bad[str(cut)]
    calls = []
    monkeypatch.setattr(image_check, "decode_error", lambda *a: calls.append(a))
    assert image_check.find_bad_images([good, inside, cut], "pil") == bad
    assert calls == []                       # the re-run decoded nothing
    _jpeg(inside)                            # replaced: checked again
    assert set(image_check.find_bad_images([good, inside, cut], "pil")) == {str(cut)}
    assert len(calls) == 1


# --- U-Net: checked before the model, and no hang on a bad record ----------------------

def _voc(root, n_train=4, size=(64, 64)):
    voc = root / "VOCdevkit"
    jpg, png, sets = (voc / "VOC2007" / d for d in ("JPEGImages", "SegmentationClass",
                                                    "ImageSets/Segmentation"))
    for d in (jpg, png, sets):
        d.mkdir(parents=True)
    ids = {"train": [f"t{i}" for i in range(n_train)], "val": ["v0"], "test": ["s0"]}
    for split, names in ids.items():
        for name in names:
            _jpeg(jpg / f"{name}.jpg", size, (90, 140, 60))
            Image.fromarray(np.ones(size[::-1], np.uint8)).save(png / f"{name}.png")
        (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return voc


def test_train_opens_model_path_and_photos_before_any_run_folder(tmp_path):
    import train

    voc = _voc(tmp_path)
    logs = tmp_path / "logs"
    base = ["--voc-path", str(voc), "--logs-dir", str(logs), "--input-shape", "64", "64",
            "--freeze-batch-size", "2", "--unfreeze-batch-size", "2"]
    with pytest.raises(MissingInput, match=r"nope\.weights\.h5: --model-path: weights file not found"):
        train.main(base + ["--model-path", str(tmp_path / "nope.weights.h5")])
    (tmp_path / "text.h5").write_text("not weights")
    with pytest.raises(UserError, match=r"text\.h5: --model-path: not a \.keras archive"):
        train.main(base + ["--model-path", str(tmp_path / "text.h5")])
    _truncate(voc / "VOC2007/JPEGImages/t1.jpg")
    with pytest.raises(UserError, match=r"t1\.jpg: truncated JPEG.*--skip-bad-images"):
        train.main(base)
    assert not logs.exists()


HANG_SCRIPT = textwrap.dedent("""
    import keras
    from utils.dataloader import build_dataset
    from utils.errors import run_cli

    def main(argv):
        names = ["t0", "t1", "t2", "t3"]       # not checked first: the pipeline meets t1
        ds = build_dataset(argv[0], "train", (32, 32), 2, 5, True, names=names, num_workers=4)
        model = keras.Sequential([keras.Input((32, 32, 3)),
                                  keras.layers.Conv2D(6, 1, activation="softmax")])
        model.compile("adam", "categorical_crossentropy")
        model.fit(ds, steps_per_epoch=2, epochs=3, verbose=0)

    run_cli(main)
""")


def test_truncated_photo_in_the_voc_pipeline_fails_naming_it_without_hanging(tmp_path):
    """A bounded subprocess: before the fix it printed a traceback and never exited."""
    voc = _voc(tmp_path)
    _truncate(voc / "VOC2007/JPEGImages/t1.jpg")
    script = tmp_path / "hang.py"
    script.write_text(HANG_SCRIPT)
    try:
        done = _script(script, voc, env={"PYTHONPATH": str(ROOT)}, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("a truncated photo hung U-Net training")
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "t1.jpg" in last and "truncated" in last
    assert last.endswith("or pass --skip-bad-images")


def test_skip_bad_images_drops_the_record_by_name(tmp_path):
    from utils.dataloader import build_dataset

    voc = _voc(tmp_path)
    _truncate(voc / "VOC2007/JPEGImages/t1.jpg")
    ds = build_dataset(voc, "train", (32, 32), 1, 5, False, names=["t0", "t1", "t2", "t3"],
                       num_workers=2, skip_bad=True)
    with pytest.warns(UserWarning, match=r"--skip-bad-images: dropping .*t1\.jpg"):
        batches = list(ds)
    assert len(batches) == 3


# --- PDE pairs: corrupt photo found before training, and the right file named ----------

def _pair_files(folder):
    names = []
    for view in range(2):
        for stage in range(2):
            name = f"CAM{view}p1t12i{stage}d2021-03-0{stage + 1}_12.jpg"
            _jpeg(folder / name, (32, 32), (40 + 100 * view, 60, 40 + 150 * stage))
            names.append(name)
    x = np.array([[names[0], names[1]], [names[0], names[2]], [names[1], names[3]],
                  [names[2], names[3]]] * 2)
    y = np.array([1, 2, 2, 1] * 2)
    files = {}
    for split in ("train", "val", "test"):
        files[split] = (folder / f"X_{split}.npy", folder / f"Y_{split}.npy")
        np.save(files[split][0], x)
        np.save(files[split][1], y)
    return names, files


def _pair_args(folder, files, logs):
    return ["--image-dir", str(folder), "--pairs-x", str(files["train"][0]),
            "--pairs-y", str(files["train"][1]),
            "--val-pairs-x", str(files["val"][0]), "--val-pairs-y", str(files["val"][1]),
            "--test-pairs-x", str(files["test"][0]), "--test-pairs-y", str(files["test"][1]),
            "--logs-dir", str(logs), "--input-shape", "32", "32", "--load-size", "32", "32",
            "--batch-size", "4", "--cache-images", "off"]


def test_corrupt_pair_image_stops_pde_before_the_model_even_without_the_cache(tmp_path):
    from pde_self_supervised import con_train_resnet_class, train_common

    names, files = _pair_files(tmp_path)
    _corrupt_inside(tmp_path / names[3])
    args = _pair_args(tmp_path, files, tmp_path / "logs")
    with pytest.raises(UserError, match=rf"{names[3]}: .*--skip-bad-images"):
        con_train_resnet_class.main(args)
    assert not (tmp_path / "logs").exists()
    splits, _ = train_common.prepare_data(con_train_resnet_class.parse_args(
        args + ["--skip-bad-images"]))
    assert all(names[3] not in splits[s][0] for s in splits)


def test_missing_image_is_reported_against_the_split_file_that_names_it(tmp_path):
    from pde_self_supervised import con_train_resnet_class

    names, files = _pair_files(tmp_path)
    x_val = np.load(files["val"][0])
    x_val[0, 0] = "only_in_val.jpg"
    np.save(files["val"][0], x_val)
    with pytest.raises(UserError, match=r"X_val\.npy: 1 of 5 images .*only_in_val\.jpg"):
        con_train_resnet_class.main(_pair_args(tmp_path, files, tmp_path / "logs"))


# --- other_ssl: the single-image pipeline ---------------------------------------------

def test_ssl_images_are_checked_and_skipped_by_name(tmp_path):
    from other_ssl import train_ssl
    from other_ssl.dataset import check_images

    names, _ = _pair_files(tmp_path)
    _truncate(tmp_path / names[1])
    with pytest.raises(UserError, match=rf"{names[1]}: truncated JPEG.*--skip-bad-images"):
        train_ssl.main(["--method", "simsiam", "--image-dir", str(tmp_path), "--batch-size", "2",
                        "--logs-dir", str(tmp_path / "logs")])
    assert not (tmp_path / "logs").exists()
    paths = sorted(p for p in tmp_path.glob("*.jpg"))
    with pytest.warns(UserWarning, match=rf"1 unreadable image.*{names[1]}"):
        kept = check_images(paths, skip_bad=True)
    assert len(kept) == 3 and tmp_path / names[1] not in kept


# --- run_pipeline: everything checked before step 1; honest records; resume diffs -----

def test_pipeline_checks_inputs_before_making_a_run_folder(odd_archive, tmp_path):
    import run_pipeline

    root, toml = odd_archive
    logs = tmp_path / "logs"
    with pytest.raises(UserError, match=r"^--voc: needed by step\(s\) unet_frozen"):
        run_pipeline.main(["--archive", str(root), "--phenology", str(toml),
                           "--logs-dir", str(logs)])
    with pytest.raises(MissingInput, match=r"no_archive: archive folder not found"):
        run_pipeline.main(["--archive", str(tmp_path / "no_archive"), "--phenology", str(toml),
                           "--logs-dir", str(logs), "--steps", "orchard,priors,select"])
    voc = _voc(tmp_path)
    with pytest.raises(UserError, match=r"^--pairs-args: .*--per-klass 3: unrecognized arguments: --per-klass 3; fix"):
        run_pipeline.main(["--archive", str(root), "--phenology", str(toml), "--voc", str(voc),
                           "--logs-dir", str(logs), "--steps", "orchard,select,pairs",
                           "--pairs-args", "--per-klass 3"])
    with pytest.raises(UserError, match=r"^--steps: step pairs needs step select"):
        run_pipeline.main(["--archive", str(root), "--phenology", str(toml),
                           "--logs-dir", str(logs), "--steps", "pairs"])
    assert not logs.exists()


def test_pipeline_records_a_step_only_when_its_outputs_exist(tmp_path):
    import run_pipeline

    run = run_pipeline.StepRecord(tmp_path)
    with pytest.raises(UserError, match="step select: finished without its outputs"):
        run.finish("select", {"out_dir": str(tmp_path / "out"),
                              "manifest": str(tmp_path / "out/manifest.csv")}, 1.0)
    assert not (tmp_path / "steps.json").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out/manifest.csv").write_text("file\n")
    run.finish("select", {"out_dir": str(tmp_path / "out"),
                          "manifest": str(tmp_path / "out/manifest.csv")}, 1.0)
    assert run_pipeline.StepRecord(tmp_path).done("select")
    (tmp_path / "out/manifest.csv").unlink()
    assert not run_pipeline.StepRecord(tmp_path).done("select")     # outputs gone: run it again


def test_pipeline_resume_applies_or_refuses_a_changed_option(odd_archive, tmp_path):
    import run_pipeline

    root, toml = odd_archive
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorded = run_pipeline.parse_args(["--archive", "bad_archive", "--phenology", str(toml),
                                        "--profile", "tiny"])
    (run_dir / "args.json").write_text(json.dumps(vars(recorded)))
    # The recorded archive was never there, so orchard is not done: the new one applies.
    (run_dir / "steps.json").write_text(json.dumps(
        {"orchard": {"seconds": 0, "result": {"archive": "bad_archive", "phenology": str(toml),
                                              "voc": None}}}))
    argv = ["--resume", str(run_dir), "--archive", str(root), "--phenology", str(toml)]
    args = run_pipeline.parse_args(argv)
    applied = run_pipeline.resume_options(args, argv, run_pipeline.StepRecord(run_dir))
    assert applied == [("archive", "bad_archive", str(root))]
    assert args.profile == "tiny"               # not typed: the recorded value
    # Once a step has used it, a different value is refused by name.
    (run_dir / "steps.json").write_text(json.dumps(
        {"orchard": {"seconds": 0, "result": {"archive": str(root), "phenology": str(toml),
                                              "voc": None}}}))
    args = run_pipeline.parse_args(argv[:2] + ["--archive", str(tmp_path)])
    with pytest.raises(UserError, match=r"^--archive: .* differs from the recorded run's "
                                        r"'bad_archive', which finished step\(s\) orchard used"):
        run_pipeline.resume_options(args, argv[:2] + ["--archive", str(tmp_path)],
                                    run_pipeline.StepRecord(run_dir))


# --- issue 34: a diverging run stops and saves nothing non-finite ----------------------

def _tiny_fit(run, epochs, nan_at_batch, steps=2):
    """A 2-weight model fit through the run harness; batch ``nan_at_batch`` (0-based,
    over all epochs) holds a NaN input, so its loss is NaN."""
    import keras
    import tensorflow as tf

    from utils.callbacks import Checkpoint, record_callbacks

    x = np.ones((epochs * steps * 2, 1), np.float32)
    x[nan_at_batch * 2] = np.nan
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros_like(x))).batch(2)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0,
              callbacks=[*record_callbacks(run, tensorboard=False),
                         Checkpoint(run, "ep{epoch:03d}.weights.h5")])
    return model


def test_nan_loss_stops_at_its_epoch_and_step_and_keeps_the_finite_checkpoint(tmp_path):
    from utils.errors import NonFiniteLoss
    from utils.run import Run, checkpoint_epoch, make_run_dir, read_log

    run = Run(make_run_dir("unet", {"x": 1}, root=tmp_path))
    with pytest.raises(NonFiniteLoss, match=r"training stopped at epoch 2, step 1: loss is nan"):
        _tiny_fit(run, epochs=3, nan_at_batch=2)
    files = sorted(p.name for p in run.dir.iterdir())
    assert files == ["args.json", "ep001.weights.h5", "epoch_loss.txt", "run.json",
                     "training_log.csv"]
    assert checkpoint_epoch(run.dir / "ep001.weights.h5") == 1
    log = read_log(run.dir)
    assert log["epoch"] == [0] and np.isfinite(log["loss"]).all()
    assert ",," not in (run.dir / "training_log.csv").read_text()


def test_no_file_is_written_with_non_finite_weights(tmp_path):
    import keras

    from utils.errors import NonFiniteLoss
    from utils.run import Run

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.layers[0].kernel.assign([[np.inf]])
    with pytest.raises(NonFiniteLoss, match=r"not written: after epoch 4 1 weight array"):
        Run(tmp_path).save_model(model, "last.weights.h5", 4)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_loss_is_one_line_with_status_2(capsys):
    from utils.errors import NonFiniteLoss

    def main(argv):
        raise NonFiniteLoss("logs/run", "training stopped at epoch 1, step 3: loss is nan",
                            "start a new run with a lower learning rate")

    with _exits(2):
        run_cli(main, [])
    assert capsys.readouterr().err.count("\n") == 1


# --- issue 34: a run folder is only ever continued by the script that made it ---------

def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_resume_of_another_scripts_run_folder_is_refused_and_changes_nothing(tmp_path):
    import run_pipeline
    import train
    from other_ssl import train_ssl
    from pde_self_supervised import con_train_resnet, con_train_resnet_class
    from utils.run import make_run_dir, run_kind

    unet = make_run_dir("unet", train.parse_args(["--voc-path", str(tmp_path)]), root=tmp_path)
    (unet / "training_log.csv").write_text("epoch,loss\n0,1.0\n")
    (unet / "ep001-loss1.000-val_loss1.000.keras").write_bytes(b"not read")
    pde = make_run_dir("pde_class", {"epochs": 1}, root=tmp_path)
    (pde / "training_log.csv").write_text("epoch,loss\n0,1.0\n")
    pipe = make_run_dir("pipeline_tiny", {"profile": "tiny"}, root=tmp_path, kind="pipeline")
    assert (run_kind(unet), run_kind(pde), run_kind(pipe)) == ("unet", "pde_class", "pipeline")
    before = {d: _snapshot(d) for d in (unet, pde, pipe)}
    tries = [(con_train_resnet_class.main, unet, "unet"), (con_train_resnet.main, pde, "pde_class"),
             (train.main, pde, "pde_class"), (train_ssl.main, unet, "unet"),
             (run_pipeline.main, unet, "unet"), (train.main, pipe, "pipeline")]
    for main, folder, kind in tries:
        with pytest.raises(UserError, match=rf"^--resume {folder}: a run folder of kind "
                                            rf"'{kind}'.*nothing was written"):
            main(["--resume", str(folder)])
    assert {d: _snapshot(d) for d in (unet, pde, pipe)} == before
    # A folder from before run.json: its kind is read from its name.
    legacy = tmp_path / "unet_20250101-120000"
    legacy.mkdir()
    with pytest.raises(UserError, match="kind 'unet'"):
        con_train_resnet_class.main(["--resume", str(legacy)])


# --- issue 34: a pair index proves that its X, Y and images belong together ------------

def _make_index(folder, names_dir, seed, *extra):
    from data_processing import make_dataset

    return make_dataset.main(["--path", str(names_dir), "--x-out", str(folder / "X.npy"),
                              "--y-out", str(folder / "Y.npy"), "--per-class", "6",
                              "--seed", str(seed), "--drop-empty-classes", *extra])


def test_x_and_y_of_different_make_dataset_runs_are_refused(tmp_path):
    from data_processing.pair_index import PairIndexError, record_path
    from pde_self_supervised.dataloader_2img import load_pair_index

    names, _ = _pair_files(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _make_index(a, tmp_path, 0)
    _make_index(b, tmp_path, 1)
    x, y = load_pair_index(a / "X.npy", a / "Y.npy")
    assert len(x) == len(y) == 18       # classes 1, 2 and 3 (class 0 needs two dates)
    record = json.loads(record_path(a / "X.npy").read_text())
    assert record["image_dir"] == str(tmp_path) and record["pairs"] == 18
    with pytest.raises(PairIndexError, match=r"Y\.npy: not the classes of X\.npy"):
        load_pair_index(a / "X.npy", b / "Y.npy")
    # Without the record (an index from elsewhere), the names still decide the classes.
    record_path(a / "X.npy").unlink()
    with pytest.raises(PairIndexError, match=r"Y\.npy: \d+ of 18 classes contradict the names"):
        load_pair_index(a / "X.npy", b / "Y.npy")


def test_the_image_folder_used_is_said_and_absolute_paths_need_an_empty_image_dir(
        tmp_path, capsys):
    from pde_self_supervised.dataloader_2img import PairDataError, resolve_image_dir

    names = np.array([[str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]])
    assert resolve_image_dir(names, "", "X.npy") == ""
    assert "Images: the absolute paths in X.npy" in capsys.readouterr().out
    with pytest.raises(PairDataError, match=r"X\.npy: names absolute paths .*--image-dir ''"):
        resolve_image_dir(names, "out", "X.npy")
    with pytest.raises(PairDataError, match=r"^--image-dir: empty"):
        resolve_image_dir(np.array([["a.jpg", "b.jpg"]]), "", "X.npy")
    resolve_image_dir(np.array([["a.jpg", "b.jpg"]]), str(tmp_path), "X.npy")
    assert f"Images: {tmp_path}" in capsys.readouterr().out


# --- issue 34: 16-bit photos ------------------------------------------------------------

def test_16_bit_grey_photos_are_scaled_to_8_bits_in_every_reader(tmp_path):
    import cv2

    import predict
    from few_shot.data import load_images
    from utils.image_check import rgb8
    from utils.utils import cvtColor

    grey16 = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "grey16.png"
    cv2.imwrite(str(path), grey16)
    want = grey16.astype(float).mean() / 257
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")
        assert np.asarray(im.convert("RGB")).mean() > 250     # PIL's own conversion: white
        assert abs(np.asarray(rgb8(im)).mean() - want) < 1
        assert abs(np.asarray(cvtColor(im)).mean() - want) < 1
    assert abs(np.asarray(predict.open_image(path)).mean() - want) < 1
    assert abs(load_images([path], (32, 32)).mean() - want) < 1
    colour16 = np.stack([grey16] * 3, -1)
    cv2.imwrite(str(tmp_path / "rgb16.png"), colour16)
    assert abs(np.asarray(predict.open_image(tmp_path / "rgb16.png")).mean() - want) < 1
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tif")
    with Image.open(tmp_path / "float.tif") as im, \
            pytest.raises(UserError, match=r"float\.tif: F image .*8-bit or 16-bit"):
        rgb8(im)


# --- issue 34: the random-row worker never outlives its pipeline ----------------------

CHILD = ("import os, sys, time; sys.path.insert(0, {root!r}); "
         "from utils.run import ProcessLock, die_with_parent; "
         "die_with_parent(int(os.environ['PARENT'])); "
         "held = ProcessLock({lock!r}); assert held.acquire(); time.sleep(60)")
PARENT = ("import os, subprocess, sys, time; "
          "p = subprocess.Popen([sys.executable, '-c', {child!r}], "
          "env={{**os.environ, 'PARENT': str(os.getpid())}}); "
          "print(p.pid, flush=True); time.sleep(60)")


def test_worker_dies_with_its_parent_killed_and_its_lock_is_released(tmp_path):
    import signal
    import time

    from utils.run import ProcessLock

    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's; elsewhere the lock alone holds")
    lock = tmp_path / "random_row.pid"
    child = CHILD.format(root=str(ROOT), lock=str(lock))
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(child=child)],
                              stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    deadline = time.time() + 30
    while ProcessLock(lock).holder() != worker and time.time() < deadline:
        time.sleep(0.05)
    assert ProcessLock(lock).holder() == worker
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while ProcessLock(lock).holder() is not None and time.time() < deadline:
        time.sleep(0.05)
    assert ProcessLock(lock).holder() is None
    assert not Path(f"/proc/{worker}").exists() or \
        Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z"


def test_resume_adopts_a_running_row_worker_instead_of_starting_another(tmp_path):
    import run_pipeline

    holder = subprocess.Popen([sys.executable, "-c", CHILD.format(
        root=str(ROOT), lock=str(tmp_path / run_pipeline.ROW_LOCK))],
        env={**os.environ, "PARENT": str(os.getpid())})
    try:
        deadline = __import__("time").time() + 30
        lock = run_pipeline.ProcessLock(tmp_path / run_pipeline.ROW_LOCK)
        while lock.holder() != holder.pid and __import__("time").time() < deadline:
            __import__("time").sleep(0.05)
        (tmp_path / "random_row.log").write_text("earlier worker\n")
        row = run_pipeline.BackgroundRow(run_pipeline.StepRecord(tmp_path), ["random_frozen"])
        assert row.proc is None and row.log == tmp_path / "random_row.log"
        assert sorted(p.name for p in tmp_path.glob("random_row*.log")) == ["random_row.log"]
        with pytest.raises(UserError, match=rf"another random-row worker \(process {holder.pid}\)"):
            run_pipeline.row_worker_start(tmp_path)
        row.stop()                              # an adopted worker is stopped by its pid
        assert holder.wait(timeout=10) == -15
    finally:
        holder.kill()
        holder.wait()


# --- issue 34: full disk, read-only folder, Ctrl-C: one line --------------------------

@pytest.fixture()
def small_mounts(tmp_path):
    """A 64 KiB tmpfs (full after one photo) and a read-only tmpfs; skipped where this
    machine does not let the tests mount."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)],
                              capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here; the full-disk and read-only tests need one")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    f"the full-disk and read-only tests need root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], check=True)
    try:
        yield full, ro
    finally:
        subprocess.run(["umount", str(full)])
        subprocess.run(["umount", str(ro)])


def test_full_disk_is_one_line_naming_the_folder_and_leaves_no_partial_file(
        small_mounts, tmp_path, capsys):
    from utils.run import write_atomic

    full, _ = small_mounts
    archive = tmp_path / "archive"
    (archive / "CAM1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for day in range(1, 9):     # noise compresses badly: about 30 KB each
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), np.uint8)).save(
            archive / "CAM1" / f"1_2021-03-{day:02d}_12.png")
    toml = tmp_path / "p.toml"
    write_phenology(toml, Phenology("2021-03-01", "2021-04-30", 3,
                                    (Stage("early", 0), Stage("late", 4),
                                     Stage("harvested", last=True)), {"CAM1": "2021-03-01"}))
    out = full / "out"
    with _exits(2):
        run_cli(select_img.main, ["--archive", str(archive), "--phenology", str(toml),
                                  "--presets", "1", "--times", "12", "--out", str(out),
                                  "--workers", "1", "--allow-empty"])
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("select_img:")]       # the progress bar
    assert len(err) == 1 and err[0].startswith(f"error: {out}: no space left on device")
    assert not list(out.glob("*.part*"))
    with pytest.raises(OSError):
        write_atomic(full / "big.bin", lambda tmp: Path(tmp).write_bytes(bytes(1 << 20)))
    assert not list(full.glob("tmp-*"))


def test_read_only_output_folder_is_refused_before_any_work(small_mounts, tmp_path, capsys):
    import train
    from data_processing import make_dataset

    _, ro = small_mounts
    for main, argv in ((train.main, ["--voc-path", str(tmp_path / "none"),
                                     "--logs-dir", str(ro / "logs")]),
                       (make_dataset.main, ["--path", str(tmp_path / "none"),
                                            "--x-out", str(ro / "X.npy")])):
        with _exits(2):
            run_cli(main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {ro}: read-only file system; give a folder that can be written"]


def test_ctrl_c_is_one_line_with_the_run_folder_and_the_resume_command(tmp_path, capsys,
                                                                        monkeypatch):
    import utils.errors as errors

    monkeypatch.setattr(errors, "_RUN", {})

    def main(argv):
        errors.note_run(tmp_path, f"python train.py --resume {tmp_path}")
        errors.note_progress("epoch 3")
        raise KeyboardInterrupt

    with _exits(130):
        run_cli(main, [])
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path}: interrupted (Ctrl-C) at epoch 3; the files completed before it "
        f"are kept; continue with: python train.py --resume {tmp_path}"]


# --- issue 34: more mistakes that were tracebacks ---------------------------------------

def test_class_count_that_does_not_fit_the_model_is_refused_before_any_folder(tmp_path):
    import get_miou
    import predict
    import train
    from nets.unet import build_unet

    model = tmp_path / "three.keras"
    build_unet((32, 32, 3), 3).save(model)
    voc = _voc(tmp_path)
    logs = tmp_path / "logs"
    with pytest.raises(UserError, match=rf"^--num-classes: 5 classes, but {model} predicts 3; "
                                        rf"give --num-classes 3"):
        get_miou.main(["--voc-path", str(voc), "--model-path", str(model),
                       "--num-classes", "5", "--logs-dir", str(logs)])
    with pytest.raises(UserError, match=r"^--num-classes: 5 classes, but .* predicts 3"):
        predict.main(["--model-path", str(model), "--num-classes", "5",
                      str(voc / "VOC2007/JPEGImages/t0.jpg")])
    with pytest.raises(UserError, match=r"^--num-classes: 5 classes, but .* predicts 3"):
        train.main(["--voc-path", str(voc), "--init-model", str(model), "--logs-dir", str(logs)])
    assert not logs.exists()


def test_predict_video_on_a_file_that_is_not_a_video(tmp_path):
    import predict
    from nets.unet import build_unet

    model = tmp_path / "five.keras"
    build_unet((32, 32, 3), 5).save(model)
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(UserError, match=r"notes\.mp4: not a video OpenCV can read; "
                                        r"check --video-path"):
        predict.main(["--model-path", str(model), "--mode", "video",
                      "--video-path", str(tmp_path / "notes.mp4")])


def test_pipeline_messages_name_the_missing_voc_and_its_own_options(odd_archive, tmp_path):
    import run_pipeline
    from pipeline.profiles import PROFILES
    from pipeline.steps import make_data

    root, toml = odd_archive
    with pytest.raises(UserError, match=r"^--voc: needed by step\(s\) unet_frozen"):
        run_pipeline.main(["--archive", str(root), "--phenology", str(toml), "--init", "random",
                           "--steps", "orchard,unet_frozen", "--logs-dir", str(tmp_path / "l")])
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.txt").write_text("a user's file")
    with pytest.raises(UserError, match=r"exists and is not empty; give another --data-dir"):
        make_data("tiny", PROFILES["tiny"], 11, data_dir=data)
