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

    run = run_pipeline.Run(tmp_path)
    with pytest.raises(UserError, match="step select: finished without its outputs"):
        run.finish("select", {"out_dir": str(tmp_path / "out"),
                              "manifest": str(tmp_path / "out/manifest.csv")}, 1.0)
    assert not (tmp_path / "steps.json").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out/manifest.csv").write_text("file\n")
    run.finish("select", {"out_dir": str(tmp_path / "out"),
                          "manifest": str(tmp_path / "out/manifest.csv")}, 1.0)
    assert run_pipeline.Run(tmp_path).done("select")
    (tmp_path / "out/manifest.csv").unlink()
    assert not run_pipeline.Run(tmp_path).done("select")     # outputs gone: run it again


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
    applied = run_pipeline.resume_options(args, argv, run_pipeline.Run(run_dir))
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
                                    run_pipeline.Run(run_dir))
