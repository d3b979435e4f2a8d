"""The numbered PDE steps end to end, on the built-in synthetic orchard or your own data.

    python run_pipeline.py                      # demo profile: the PDE row and the random row
    python run_pipeline.py --no-baseline        # the PDE row only
    python run_pipeline.py --profile tiny       # a smoke test of every step (minutes)
    python run_pipeline.py --archive A --phenology P.toml --voc VOCdevkit   # your data

Steps: orchard (generate the synthetic data if needed) -> priors (step 1) -> select
(step 2) -> pairs (step 3) -> pretrain (step 5, or step 4 with --method grading) ->
unet_frozen and unet_finetune (step 6, each evaluated on the test split) ->
random_frozen and random_finetune (the same U-Nets, seeds and settings from a random
encoder: the baseline row) -> predict (a few test images) -> growth (class shares over
the season for one view) -> table. Every step writes into one run folder;
``--resume RUN_DIR`` skips the finished ones.
"""
import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.published import PUBLISHED, markdown_table  # noqa: E402
from utils.errors import MissingInput, UserError  # noqa: E402
from utils.utils import make_run_dir, set_seed, write_json  # noqa: E402

STEPS = ("orchard", "priors", "select", "pairs", "pretrain", "unet_frozen",
         "unet_finetune", "random_frozen", "random_finetune", "predict", "growth")
BASELINE_STEPS = ("random_frozen", "random_finetune")

# Each profile: the synthetic orchard it generates and the options of every step.
# Step options are command-line fragments of the step's own script, so anything a
# profile sets can be overridden with --<step>-args "...".
PROFILES = {
    "tiny": {
        "orchard": dict(cameras=3, presets=(1,), times=("12",), image_size=(64, 64),
                        n_train=4, n_val=2, n_test=2),
        "pairs": "--per-class 24 --drop-empty-classes",
        "pretrain": "--input-shape 64 64 --load-size 72 72 --batch-size 4 --test-batch-size 4 "
                    "--epochs 1 --steps-per-epoch 2 --run-eagerly --precise-bn 1",
        # Eager steps: at this size tracing a ResNet50 graph costs more than the steps.
        "unet": "--input-shape 64 64 --freeze-batch-size 2 --unfreeze-batch-size 2 "
                "--steps-per-epoch 2 --run-eagerly",
        "unet_epochs": (1, 2),     # (frozen-phase epochs, total epochs)
        "predict_images": 2,
        "growth": "",
    },
    "demo": {
        "orchard": dict(cameras=4, presets=(1, 2), times=("12",), image_size=(128, 224),
                        n_train=60, n_val=20, n_test=40),
        "pairs": "--per-class 2000",
        # CPU-sized PDE: 300 steps of batch 32 at 32x64 (a quarter of the pixels of
        # 64x128, so twice the steps and batch in the same time: held-out pair accuracy
        # 0.665 where 150 steps of 16 at 64x128 gave 0.32). GAP instead of the original's
        # Flatten head (its tens of millions of Dense weights made Adam diverge here),
        # one shared tower and no augmentation (with either, the pair accuracy stayed at
        # chance for 180 steps in our runs), precise BN (the running averages are far
        # from converged after 300 steps), 5 validation batches a epoch.
        "pretrain": "--input-shape 32 64 --load-size 32 64 --batch-size 32 "
                    "--test-batch-size 64 --epochs 3 --steps-per-epoch 100 --pool gap "
                    "--shared-towers --no-augment --learning-rate 1e-3 --precise-bn 20 "
                    "--validation-steps 5 --keep-checkpoints 1",
        # The frozen decoder needs ~100 steps at 10x the original rate to learn more
        # than background and leaf. bfloat16 (its decoder has no batch norm, so AMX pays:
        # a frozen step 0.53 s instead of 0.93 s), and the test split is evaluated on the
        # epoch with the best val_mIoU (the original: the last epoch).
        # The unfrozen phase keeps the original's lr 1e-5: at 1e-4 both rows fell to
        # background only (test mIoU 0.156 PDE, 0.150 random); at 1e-5 0.267 and 0.246.
        "unet": "--input-shape 64 128 --freeze-batch-size 8 --unfreeze-batch-size 8 "
                "--freeze-lr 1e-3 --mixed-precision --eval-checkpoint best",
        "unet_epochs": (15, 20),
        "predict_images": 4,
        "growth": "",
    },
    "paper": {
        "orchard": dict(cameras=4, presets=(1, 2, 3, 4, 5), times=("09", "12", "15"),
                        image_size=(576, 1024), n_train=60, n_val=20, n_test=40),
        "pairs": "",          # the original's 200,000 pairs per class
        "pretrain": "",       # the original's 288x512, batch 72, 20 epochs
        "unet": "",           # the original's 576x1024, batch 18 / 8
        "unet_epochs": (60, 120),
        "predict_images": 8,
        "growth": "",
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                   help="sizes and epochs: tiny (a wiring check of every step), demo (default: "
                        "CPU-sized, both rows: 15 min on a 2-core CPU), paper (the "
                        "original's sizes and epochs, for a GPU)")
    p.add_argument("--method", choices=("class", "grading"), default="class",
                   help="PDE distance: class = step 5 (classification, the published row), "
                        "grading = step 4")
    p.add_argument("--init", default="pde",
                   help="encoder initialisation for the U-Net: pde (pretrain here, default), "
                        "random (Glorot uniform, the baseline row), or a weights file")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the same two U-Nets (same settings and seeds) from a "
                        "random encoder, and print both rows (default on; off with --init "
                        "random, which is that row already)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every checkpoint the steps write (default: at the end keep "
                        "the encoder and the U-Net used for the predictions, and delete the "
                        "other .keras files, about 180-300 MB each)")
    p.add_argument("--archive", help="your camera archive <root>/<camera>/<preset>_<date>_<HH>.jpg "
                                     "(default: the synthetic orchard)")
    p.add_argument("--phenology", help="phenology priors TOML for --archive")
    p.add_argument("--voc", help="your labelled set (a VOCdevkit folder)")
    p.add_argument("--data-dir", default=None,
                   help="where the synthetic orchard is generated or found "
                        "(default demo_data/<profile>)")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma-separated subset of: {','.join(STEPS)} (default all)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder, skipping "
                                                       "the steps it has finished")
    p.add_argument("--logs-dir", default="logs", help="parent of the run folder (default logs/)")
    p.add_argument("--growth-camera", help="camera for the growth curves (default: first test camera)")
    p.add_argument("--seed", type=int, default=11, help="random seed for every step (default 11)")
    for step in ("select", "pairs", "pretrain", "unet", "growth"):
        p.add_argument(f"--{step}-args", default="", metavar="'OPTS'",
                       help=f"extra options passed to the {step} step's script "
                            f"(override the profile's)")
    args = p.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if args.init == "random":
        args.baseline = False
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        p.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    # With --resume the recorded run may hold the other one (checked after merging).
    if bool(args.archive) != bool(args.phenology) and not args.resume:
        p.error("--archive and --phenology go together")
    return args


class Run:
    """The run folder and its record of finished steps (``steps.json``)."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.record_path = self.dir / "steps.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.exists() else {}

    def done(self, step):
        """Recorded as finished and its outputs still there."""
        return step in self.record and not missing_outputs(step, self.result(step))

    def finish(self, step, result, seconds):
        """Record ``step`` as done, once its outputs exist (else a UserError)."""
        missing = missing_outputs(step, result)
        if missing:
            raise UserError(f"step {step}", f"finished without its outputs ({', '.join(missing)})",
                            "check the step's messages above; it is not recorded as done")
        self.record[step] = {"seconds": round(seconds, 1), "result": result}
        write_json(self.record_path, self.record)

    def result(self, step):
        return self.record.get(step, {}).get("result", {})


def step_outputs(step, result):
    """The files and folders a finished step must have left (from its recorded result)."""
    result = result or {}
    if step == "orchard":
        paths = [result.get("archive"), result.get("phenology")]
        if result.get("voc"):
            paths.append(result["voc"])
        return paths
    if step == "select":
        return [result.get("out_dir"), result.get("manifest")]
    if step == "pairs":
        return [result.get("x"), result.get("y")] + [
            p for pair in result.get("splits", {}).values() for p in pair]
    if step == "pretrain":
        return [result["encoder_path"]] if result.get("encoder_path") else []
    if step in ("unet_frozen", "unet_finetune", *BASELINE_STEPS):
        return [result.get("run_dir"), result.get("model_path")]
    if step in ("predict", "growth"):
        key = "out_dir" if step == "predict" else "run_dir"
        return [result.get(key)] if result.get(key) else []
    return []


def missing_outputs(step, result):
    """Outputs of ``step`` that are not there (a None is a missing entry)."""
    return [str(p) for p in step_outputs(step, result) if p is None or not Path(p).exists()]


def _argv(*fragments):
    out = []
    for f in fragments:
        out += shlex.split(f) if isinstance(f, str) else [str(x) for x in f]
    return out


def _plain(d):
    """Paths to strings, so step results fit in steps.json."""
    return json.loads(json.dumps(d, default=str))


# Steps that read the labelled set; without the synthetic orchard they need --voc.
VOC_STEPS = ("unet_frozen", "unet_finetune", *BASELINE_STEPS, "predict")
# What each step reads from earlier steps' records.
REQUIRES = {"priors": ("orchard",), "select": ("orchard",), "pairs": ("select",),
            "pretrain": ("select", "pairs"), "unet_frozen": ("orchard", "pretrain"),
            "unet_finetune": ("orchard", "pretrain"), "random_frozen": ("orchard",),
            "random_finetune": ("orchard",), "predict": ("orchard", "unet_frozen|unet_finetune"),
            "growth": ("orchard", "unet_frozen|unet_finetune")}
# The first step that reads each option: on --resume a changed option is applied while
# no step from there on has finished, and refused after.
OPTION_STEPS = {"profile": "orchard", "seed": "orchard", "archive": "orchard",
                "phenology": "orchard", "voc": "orchard", "data_dir": "orchard",
                "select_args": "select", "pairs_args": "pairs", "method": "pretrain",
                "init": "pretrain", "pretrain_args": "pretrain", "unet_args": "unet_frozen",
                "growth_camera": "growth", "growth_args": "growth"}


def orchard_spec(args, profile):
    """Where the synthetic orchard lives and the settings it is generated with."""
    return Path(args.data_dir or Path("demo_data") / args.profile), dict(profile["orchard"],
                                                                         seed=args.seed)


def check_orchard_spec(args, profile):
    """A --data-dir that holds an orchard made with other settings is refused."""
    data_dir, spec = orchard_spec(args, profile)
    spec_path = data_dir / "orchard_spec.json"
    if spec_path.exists() and json.loads(spec_path.read_text()) != _plain(spec):
        raise UserError(spec_path, f"{data_dir} holds an orchard generated with other settings",
                        "pass another --data-dir")


def _check_step_options(step, parse, argv):
    """Parse a step's options as its script will, so a typo in --<step>-args stops the
    run before step 1 rather than when that step starts."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            parse(argv)
    except SystemExit:
        said = (buffer.getvalue().strip().splitlines() or ["rejected"])[-1].split("error: ", 1)[-1]
        raise UserError(f"--{step}-args", f"{shlex.join(argv)}: {said}",
                        "fix the options (the step's script --help lists them)") from None


def validate_inputs(args, profile, steps, run=None):
    """Every input of the planned ``steps``, checked before step 1 and before a run
    folder is made: the archive, priors and camera folders, the labelled set and its
    splits (photos decoded once, cached), weights files, and each step's options."""
    from utils.weights import check_weights_file

    todo = [s for s in steps if run is None or not run.done(s)]
    for step in todo:
        for need in REQUIRES.get(step, ()):
            if step == "pretrain" and args.init != "pde":
                break
            options = need.split("|")
            if not any(n in todo or (run is not None and run.done(n)) for n in options):
                raise UserError("--steps", f"step {step} needs step {' or '.join(options)}, "
                                           f"which is neither planned nor done in this run",
                                f"add it to --steps (or --resume a run that has it)")
    if run is not None and run.done("orchard"):
        data = run.result("orchard")
    elif args.archive:
        data = {"archive": args.archive, "phenology": args.phenology, "voc": args.voc}
    else:
        check_orchard_spec(args, profile)
        data = None                # generated by the orchard step
    if data is not None and set(todo) & {"orchard", "priors", "select", "growth"}:
        from data_processing.date_pro import camera_folder, load_phenology

        phenology = load_phenology(data["phenology"])
        for camera in phenology.cameras:
            camera_folder(data["archive"], camera)
        if args.growth_camera and "growth" in todo:
            folder = Path(data["archive"]) / args.growth_camera
            if not folder.is_dir():
                raise MissingInput(folder, "--growth-camera: camera folder not found",
                                   "give a camera of the archive")
    if data is not None and set(todo) & set(VOC_STEPS):
        if not data.get("voc"):
            raise UserError("--voc", f"needed by step(s) {', '.join(s for s in todo if s in VOC_STEPS)} "
                                     f"with your own --archive",
                            "give your labelled VOCdevkit folder, or leave those steps out "
                            "with --steps")
        from utils.dataloader import check_split

        for split in ("train", "val", "test"):
            check_split(data["voc"], split, num_classes=256, check_values=False)
    if args.init not in ("pde", "random"):
        check_weights_file(args.init, "--init")

    if "select" in todo:
        from data_processing import select_img

        _check_step_options("select", select_img.parse_args,
                            _argv(["--archive", "."], args.select_args))
    if "pairs" in todo:
        from data_processing import make_dataset

        _check_step_options("pairs", make_dataset.parse_args,
                            _argv(profile["pairs"], args.pairs_args))
    if "pretrain" in todo and args.init == "pde":
        if args.method == "class":
            from pde_self_supervised import con_train_resnet_class as script
        else:
            from pde_self_supervised import con_train_resnet as script
        _check_step_options("pretrain", script.parse_args,
                            _argv(profile["pretrain"], args.pretrain_args))
    if set(todo) & set(VOC_STEPS[:-1]):
        import train

        _check_step_options("unet", train.parse_args, _argv(profile["unet"], args.unet_args))
    if "growth" in todo:
        from growth_modeling import unet_gm

        _check_step_options("growth", unet_gm.parse_args,
                            _argv(["--archive", ".", "--camera", "."], profile["growth"],
                                  args.growth_args))


def given_options(argv):
    """The run_pipeline options typed in ``argv`` (dest names), e.g. {"archive"}."""
    given = set()
    for token in argv or []:
        if token.startswith("--") and " " not in token:
            name = token[2:].split("=", 1)[0]
            given.add((name[3:] if name.startswith("no-") else name).replace("-", "_"))
    return given


def resume_options(args, argv, run):
    """``--resume``: the recorded options stand for those not typed now; a typed one
    that differs is applied while no step that reads it has finished, and refused
    (an error naming it) after. Returns ``[(option, recorded, given)]`` applied."""
    recorded_path = run.dir / "args.json"
    if not recorded_path.is_file():
        raise MissingInput(recorded_path, "--resume: not a run folder of run_pipeline.py "
                                          "(no args.json)", "give the folder it printed as "
                                                            "'Run folder:'")
    recorded = json.loads(recorded_path.read_text())
    given = given_options(argv)
    applied, refused = [], []
    for key, old in recorded.items():
        if key in ("resume", "logs_dir") or not hasattr(args, key):
            continue
        new = getattr(args, key)
        if key not in given:
            setattr(args, key, old)
        elif _plain(new) != old:
            first = OPTION_STEPS.get(key)
            used = [s for s in STEPS[STEPS.index(first):] if run.done(s)] if first else []
            (refused if used else applied).append((key, old, new, used))
    if refused:
        key, old, new, used = refused[0]
        others = "".join(f", --{k.replace('_', '-')}" for k, *_ in refused[1:])
        raise UserError(f"--{key.replace('_', '-')}",
                        f"{new!r} differs from the recorded run's {old!r}, which finished "
                        f"step(s) {', '.join(used)} used" + (f" (also changed: {others[2:]})"
                                                             if others else ""),
                        f"resume without it to keep {old!r}, or start a new run (no --resume)")
    for key, old, new, _ in applied:
        print(f"--resume: applying --{key.replace('_', '-')} {new!r} (the run recorded "
              f"{old!r}; no step that reads it has finished)")
    if args.init == "random":
        args.baseline = False
    if bool(args.archive) != bool(args.phenology):
        raise UserError("--archive", "--archive and --phenology go together",
                        "give both (the recorded run has only one)")
    return [(key, old, new) for key, old, new, _ in applied]


def step_orchard(args, run, profile):
    if args.archive:
        return {"archive": args.archive, "phenology": args.phenology, "voc": args.voc}
    from data_processing.synthetic_orchard import generate_orchard

    data_dir, spec = orchard_spec(args, profile)
    spec_path = data_dir / "orchard_spec.json"
    if spec_path.exists():
        check_orchard_spec(args, profile)
        print(f"  reusing the synthetic orchard in {data_dir}")
        return {"archive": str(data_dir / "archive"), "phenology": str(data_dir / "phenology.toml"),
                "voc": str(data_dir / "VOCdevkit")}
    made = generate_orchard(data_dir, contact_sheet=data_dir / "contact_sheet.png", **spec)
    write_json(spec_path, spec)
    return _plain({k: made[k] for k in ("archive", "phenology", "voc")})


def step_priors(args, run, profile):
    from data_processing import date_pro

    data = run.result("orchard")
    return _plain(date_pro.main(["--phenology", data["phenology"], "--archive", data["archive"]]) or {})


def step_select(args, run, profile):
    from data_processing import select_img

    data = run.result("orchard")
    result = select_img.main(_argv(["--archive", data["archive"], "--phenology", data["phenology"],
                                    "--out", run.dir / "out", "--seed", args.seed],
                                   args.select_args))
    return _plain(result)


def step_pairs(args, run, profile):
    from data_processing import make_dataset

    out = run.result("select")["out_dir"]
    pairs = run.dir / "pairs"
    result = make_dataset.main(_argv(["--image-dir", out, "--out-x", pairs / "X.npy",
                                      "--out-y", pairs / "Y.npy", "--split", "0.8", "0.1", "0.1",
                                      "--split-by", "date",
                                      "--seed", args.seed],
                                     profile["pairs"], args.pairs_args))
    return _plain(result)


def step_pretrain(args, run, profile):
    if args.init != "pde":
        return {"encoder_path": None if args.init == "random" else args.init}
    if args.method == "class":
        from pde_self_supervised import con_train_resnet_class as script
    else:
        from pde_self_supervised import con_train_resnet as script
    out = run.result("select")["out_dir"]
    splits = run.result("pairs")["splits"]
    result = script.main(_argv(["--image-dir", out,
                                "--pairs-x", splits["train"][0], "--pairs-y", splits["train"][1],
                                "--val-pairs-x", splits["val"][0], "--val-pairs-y", splits["val"][1],
                                "--test-pairs-x", splits["test"][0], "--test-pairs-y", splits["test"][1],
                                "--logs-dir", run.dir, "--seed", args.seed],
                               profile["pretrain"], args.pretrain_args))
    return _plain({"run_dir": result["run_dir"], "encoder_path": result["encoder_path"],
                   "test_metrics": result.get("test_metrics", {})})


def frozen_phase_checkpoint(run_dir, freeze):
    """The ``epNNN-*.keras`` a frozen-only run saved at the end of its frozen phase
    (epoch ``freeze``), or None."""
    if not run_dir:
        return None
    found = sorted(Path(run_dir).glob(f"ep{int(freeze):03d}-*.keras"))
    return found[0] if found else None


def unet_argv(voc, logs_dir, seed, freeze, total, encoder, frozen_only, extra,
              frozen_run=None):
    """train.py options for one of the two U-Nets of a row.

    The frozen-only run keeps a checkpoint at the end of its frozen phase; the fine-tuned
    run starts from it (``--init-model``) instead of repeating that phase, which is the
    same training with the same seeds. Without such a checkpoint (an early stop, or a
    ``--save-period`` override) it trains both phases itself.
    """
    start = frozen_phase_checkpoint(frozen_run, freeze) if not frozen_only else None
    return _argv(["--voc-path", voc, "--logs-dir", logs_dir, "--seed", seed,
                  "--freeze-epoch", freeze, "--unfreeze-epoch", total,
                  "--save-period", freeze if frozen_only else 0],
                 ["--frozen-only"] if frozen_only else [],
                 ["--init-model", start, "--init-epoch", freeze] if start
                 else (["--model-path", encoder] if encoder else []),
                 extra)


def _train_unet(args, run, profile, frozen_only, row="unet"):
    """One U-Net of a row: ``row`` "unet" starts from the pretrain step's encoder,
    "random" from a random one; both rows use the same options and seeds."""
    import train

    data = run.result("orchard")
    freeze, total = profile["unet_epochs"]
    encoder = run.result("pretrain").get("encoder_path") if row == "unet" else None
    result = train.main(unet_argv(data["voc"], run.dir, args.seed, freeze, total,
                                  encoder, frozen_only, _argv(profile["unet"], args.unet_args),
                                  frozen_run=run.result(f"{row}_frozen").get("run_dir")))
    return _plain({"run_dir": result["run_dir"], "model_path": result["evaluated_model_path"],
                   "test_metrics": result["test_metrics"]})


def step_unet_frozen(args, run, profile):
    return _train_unet(args, run, profile, frozen_only=True)


def step_unet_finetune(args, run, profile):
    return _train_unet(args, run, profile, frozen_only=False)


def step_random_frozen(args, run, profile):
    return _train_unet(args, run, profile, frozen_only=True, row="random")


def step_random_finetune(args, run, profile):
    return _train_unet(args, run, profile, frozen_only=False, row="random")


def kept_unet(run):
    """The main row's U-Net the predictions and growth curves use: the fine-tuned one,
    or the frozen-only one when it has the higher best val_mIoU (or is the only one)."""
    best = None
    for step in ("unet_finetune", "unet_frozen"):
        result = run.result(step)
        if not result.get("model_path"):
            continue
        record = Path(result["run_dir"]) / "results.json"
        value = json.loads(record.read_text()).get("best_val_mIoU") if record.is_file() else None
        if best is None or (value is not None and (best[0] is None or value > best[0])):
            best = (value, result["model_path"])
    if best is None:
        raise UserError("--steps", "no U-Net step has finished in this run",
                        "run unet_frozen first")
    return best[1]


def prune_checkpoints(run):
    """Delete the run's model files nobody needs once every step is done: the PDE
    epoch checkpoints (the encoder file stays) and every U-Net .keras except the kept
    U-Net. Returns the MB freed."""
    keep = {Path(kept_unet(run)).resolve()}
    freed = 0
    for path in run.dir.rglob("*.keras"):
        if path.resolve() not in keep:
            freed += path.stat().st_size
            path.unlink()
    return freed / 2**20


def step_predict(args, run, profile):
    import predict
    from get_miou import image_path, read_split

    data = run.result("orchard")
    model = kept_unet(run)
    ids = read_split(data["voc"], "test")[: profile["predict_images"]]
    pick = run.dir / "predict_input"
    pick.mkdir(exist_ok=True)
    for image_id in ids:
        src = image_path(data["voc"], image_id)
        dst = pick / src.name
        if not dst.exists():
            try:
                os.link(src, dst)          # no copy where the data and run share a disk
            except OSError:
                shutil.copyfile(src, dst)
    out = run.dir / "predictions"
    result = predict.main(_argv(["--mode", "dir_predict", "--model-path", model,
                                 "--dir-origin-path", pick, "--dir-save-path", out],
                                _unet_shape_args(profile, args)))
    return _plain(result or {"out_dir": out})


def _unet_shape_args(profile, args):
    """Pass the U-Net's --input-shape on to inference scripts."""
    tokens = shlex.split(profile["unet"]) + shlex.split(args.unet_args)
    shape = []
    for i, t in enumerate(tokens):
        if t == "--input-shape":
            shape = ["--input-shape", tokens[i + 1], tokens[i + 2]]
    return shape


def step_growth(args, run, profile):
    from growth_modeling import unet_gm

    data = run.result("orchard")
    model = kept_unet(run)
    camera = args.growth_camera or sorted(p.name for p in Path(data["archive"]).iterdir()
                                          if p.is_dir())[-1]
    from data_processing.date_pro import archive_photos
    from data_processing.names import parse_archive_name

    photos = archive_photos(Path(data["archive"]) / camera)[0]
    if not photos:
        raise UserError(Path(data["archive"]) / camera, "no archive photo for the growth curves",
                        "give another --growth-camera")
    name = parse_archive_name(next(iter(photos.values())))
    result = unet_gm.main(_argv(["--archive", data["archive"], "--camera", camera,
                                 "--preset", name.preset, "--time", name.hour,
                                 "--model-path", model, "--phenology", data["phenology"],
                                 "--logs-dir", run.dir],
                                _unet_shape_args(profile, args), profile["growth"],
                                args.growth_args))
    return _plain(result)


STEP_FUNCS = {s: globals()[f"step_{s}"] for s in STEPS}


def _row_label(args, run):
    """The main row's published key and its "pretraining data" cell."""
    if args.init == "pde":
        pairs = run.result("pairs").get("counts", {})
        n_pairs = sum(pairs.values()) if isinstance(pairs, dict) else None
        n_images = run.result("pairs").get("n_images")
        data = f"{n_pairs:,} pairs" if n_pairs else "pairs"
        data += f" from {n_images:,} images" if n_images else ""
        return ("pde_class" if args.method == "class" else "pde_grading"), data
    if args.init == "random":
        return "random", "none"
    return None, f"weights {args.init}"


def results_table(args, run):
    """This run's row(s) beside the published ones, in the published layout."""
    key, data = _row_label(args, run)
    rows = []
    for prefix, row_key, row_data in (("unet", key, data), ("random", "random", "none")):
        frozen = run.result(f"{prefix}_frozen").get("test_metrics", {})
        tuned = run.result(f"{prefix}_finetune").get("test_metrics", {})
        if prefix == "random" and not (frozen or tuned):
            continue
        label = (PUBLISHED[row_key][0] if row_key else "Given encoder") + ", this run"
        rows.append((label, row_data, frozen.get("mIoU"), frozen.get("mPA"),
                     tuned.get("mIoU"), tuned.get("mPA")))
    for k in dict.fromkeys([key, "random", "pde_class"]):
        if k:
            rows.append((PUBLISHED[k][0] + ", published", *PUBLISHED[k][1:]))
    return markdown_table(rows)


def summary_lines(run, names):
    """What the table does not show: the pretext accuracy and the per-class IoU."""
    lines = []
    pretext = run.result("pretrain").get("test_metrics", {})
    if "acc" in pretext:
        lines.append(f"PDE pretext: held-out pair accuracy {pretext['acc']:.3f} on the test "
                     f"dates' pairs (chance 0.25)")
    for step in ("unet_frozen", "unet_finetune", *BASELINE_STEPS):
        iou = run.result(step).get("test_metrics", {}).get("IoU")
        if iou:
            lines.append(f"{step:16s} test IoU " + ", ".join(
                f"{n} {v:.3f}" for n, v in zip(names, iou)))
    return lines


def main(argv=None):
    args = parse_args(argv)
    run, applied = None, []
    if args.resume:
        run = Run(args.resume)
        if not run.dir.is_dir():
            raise MissingInput(run.dir, "--resume: run folder not found",
                               "give the folder it printed as 'Run folder:'")
        applied = resume_options(args, sys.argv[1:] if argv is None else argv, run)
    set_seed(args.seed)
    profile = PROFILES[args.profile]
    planned = [s for s in STEPS if args.baseline or s not in BASELINE_STEPS]
    steps = [s for s in planned if s in args.steps]
    validate_inputs(args, profile, steps, run)
    if run is None:
        run = Run(make_run_dir(f"pipeline_{args.profile}", args, root=args.logs_dir))
    elif applied:
        k = 1
        while (run.dir / f"args_resume{k}.json").exists():
            k += 1
        write_json(run.dir / f"args_resume{k}.json", vars(args))
    print(f"Run folder: {run.dir}")
    # Later steps read what earlier ones recorded; a subset needs those already done.
    for i, step in enumerate(steps, start=1):
        if run.done(step):
            print(f"[{i}/{len(steps)}] {step}: done earlier, skipped")
            continue
        print(f"[{i}/{len(steps)}] {step} ...", flush=True)
        start = time.time()
        result = STEP_FUNCS[step](args, run, profile)
        run.finish(step, result, time.time() - start)
        print(f"[{i}/{len(steps)}] {step} finished in {time.time() - start:.0f} s", flush=True)
    table = results_table(args, run)
    from utils.utils import NAME_CLASSES

    summary = summary_lines(run, NAME_CLASSES)
    (run.dir / "results.md").write_text(table + "\n\n" + "\n".join(summary) + "\n")
    total = sum(v["seconds"] for v in run.record.values())
    print("\n" + table + "\n\n" + "\n".join(summary) + "\n")
    if not args.keep_checkpoints and all(run.done(s) for s in planned):
        print(f"Deleted {prune_checkpoints(run):.0f} MB of checkpoints no step needs any "
              f"more (--keep-checkpoints keeps them).")
    print(f"Steps took {total:.0f} s in all. Everything is in {run.dir}")
    return {"run_dir": run.dir, "table": table, "steps": run.record}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
