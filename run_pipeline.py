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
``--resume RUN_DIR`` skips the finished ones. Without a GPU the random row trains in a
second process beside the pretraining and the PDE row (``--no-parallel-rows``: one
after the other).
"""
import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.pretrainers import PAIR_PRETRAINERS, PRETRAINERS  # noqa: E402
from pipeline.profiles import PROFILES, to_argv, with_precision  # noqa: E402
from pipeline.published import PUBLISHED, markdown_table, row_label  # noqa: E402
from pipeline.steps import (StepRecord, check_orchard_spec, join_argv, make_data,  # noqa: E402
                            make_pairs, open_run, plain, preset_args, pretrain_encoder,
                            select_images, unet_argv)
from utils.errors import MissingInput, UserError, output_checks_off, writable_dir  # noqa: E402
from utils.precision import PRECISIONS  # noqa: E402
from utils.run import (ProcessLock, check_run_kind, checkpoint_epoch,  # noqa: E402
                       die_with_parent, fresh_path, has_optimizer_state, write_json)
from utils.utils import set_seed  # noqa: E402
from utils.voc import image_path, read_split  # noqa: E402

STEPS = ("orchard", "priors", "select", "pairs", "pretrain", "unet_frozen",
         "unet_finetune", "random_frozen", "random_finetune", "predict", "growth")
BASELINE_STEPS = ("random_frozen", "random_finetune")
RUN_KIND = "pipeline"      # run.json's kind: --resume refuses other scripts' folders
OTHER_PRETRAINERS = [n for n in PRETRAINERS if n not in PAIR_PRETRAINERS]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data (default: the built-in synthetic orchard)")
    model = p.add_argument_group("model: which encoder the U-Nets start from")
    run = p.add_argument_group("run: profile, steps, seed, resume")
    output = p.add_argument_group("output")
    per_step = p.add_argument_group("per-step options, passed to each step's script")
    run.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                   help="sizes and epochs (pipeline/profiles.py): tiny (a wiring check of "
                        "every step), demo (default: CPU-sized, both rows; its time per CPU is "
                        "in docs/pipeline.md), paper (the original's sizes and epochs, for a GPU)")
    model.add_argument("--method", choices=[n.removeprefix("pde_") for n in PAIR_PRETRAINERS],
                   default="class",
                   help="PDE distance: class = step 5 (classification, the published row), "
                        "grading = step 4")
    model.add_argument("--init", default="pde",
                   help="encoder initialisation for the U-Net: pde (pretrain here with "
                        "--method, default), random (Glorot uniform, the baseline row), "
                        f"another pretrainer ({', '.join(OTHER_PRETRAINERS)}), or a weights file")
    model.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the same two U-Nets (same settings and seeds) from a "
                        "random encoder, and print both rows (default on; off with --init "
                        "random, which is that row already)")
    run.add_argument("--parallel-rows", action=argparse.BooleanOptionalAction, default=None,
                   help="train the random row in a second process while this one pretrains "
                        "and trains the PDE row; its messages go to random_row.log in the "
                        "run folder (default: on where no GPU is visible and there are 2+ "
                        "cores, since one process leaves part of the CPU idle)")
    run.add_argument("--row-worker", action="store_true", help=argparse.SUPPRESS)
    output.add_argument("--keep-all-checkpoints", "--keep-checkpoints", dest="keep_checkpoints",
                        action="store_true",
                        help="keep every checkpoint the steps write (default: at the end keep "
                             "the encoder and the U-Net used for the predictions, and delete "
                             "the other .keras files, about 180-300 MB each; the PDE scripts' "
                             "--keep-checkpoints N is another option: the N newest)")
    data.add_argument("--archive", help="your camera archive <root>/<camera>/<preset>_<date>_<HH>.jpg "
                                     "(default: the synthetic orchard)")
    data.add_argument("--phenology", help="phenology priors TOML for --archive")
    data.add_argument("--voc-path", "--voc", dest="voc", help="your labelled set (a VOCdevkit folder)")
    data.add_argument("--data-dir", default=None, type=writable_dir,
                   help="where the synthetic orchard is generated or found "
                        "(default demo_data/<profile>)")
    run.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma-separated subset of: {','.join(STEPS)} (default all)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder, skipping "
                                                       "the steps it has finished")
    output.add_argument("--logs-dir", default="logs", type=writable_dir,
                        help="parent of the run folder (default logs/)")
    output.add_argument("--growth-camera", help="camera for the growth curves (default: first test camera)")
    run.add_argument("--seed", type=int, default=11, help="random seed for every step (default 11)")
    run.add_argument("--precision", choices=PRECISIONS, default=None,
                     help="compute precision of every training step (default: the profile's, "
                          "auto in every profile but the demo's PDE pretraining: bfloat16 only "
                          "where the CPU computes it natively and a start-up probe shows it "
                          "faster, float16 on a GPU with tensor cores, else float32)")
    # A lone flag each step's script accepts, for the help's example.
    flags = {"select": "--allow-empty", "pairs": "--drop-empty-classes",
             "pretrain": "--shuffle-labels", "unet": "--skip-bad-images", "growth": "--no-overlays"}
    for step in ("select", "pairs", "pretrain", "unet", "growth"):
        per_step.add_argument(f"--{step}-args", default="", metavar="'OPTS'",
                       help=f"extra options passed to the {step} step's script "
                            f"(override the profile's); a lone flag needs '=', as in "
                            f"--{step}-args={flags[step]}")
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


# Steps that read the labelled set; without the synthetic orchard they need --voc.
VOC_STEPS = ("unet_frozen", "unet_finetune", *BASELINE_STEPS, "predict")
# What each step reads from earlier steps' records.
REQUIRES = {"priors": ("orchard",), "select": ("orchard",), "pairs": ("select",),
            "pretrain": ("select", "pairs"), "unet_frozen": ("orchard", "pretrain"),
            "unet_finetune": ("orchard", "pretrain"), "random_frozen": ("orchard",),
            "random_finetune": ("orchard",), "predict": ("orchard", "unet_frozen|unet_finetune"),
            "growth": ("orchard", "unet_frozen|unet_finetune")}
# Old spellings of options (their dest names): --voc-path is also --voc.
OPTION_ALIASES = {"voc_path": "voc"}
# The first step that reads each option: on --resume a changed option is applied while
# no step from there on has finished, and refused after.
OPTION_STEPS = {"profile": "orchard", "seed": "orchard", "archive": "orchard",
                "phenology": "orchard", "voc": "orchard", "data_dir": "orchard",
                "precision": "pretrain",
                "select_args": "select", "pairs_args": "pairs", "method": "pretrain",
                "init": "pretrain", "pretrain_args": "pretrain", "unet_args": "unet_frozen",
                "growth_camera": "growth", "growth_args": "growth"}


def _check_step_options(step, parse, argv):
    """Parse a step's options as its script will, so a typo in --<step>-args stops the
    run before step 1 rather than when that step starts."""
    buffer = io.StringIO()
    try:
        # Its output options are the pipeline's, checked with --logs-dir.
        with contextlib.redirect_stderr(buffer), output_checks_off():
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
            if need == "pretrain" and args.init == "random":
                continue            # a random encoder: no pretraining to wait for
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
        check_orchard_spec(args.profile, profile, args.seed, args.data_dir)
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
    if args.init not in ("pde", "random") and args.init not in PRETRAINERS:
        check_weights_file(args.init, "--init")

    if "select" in todo:
        from data_processing import select_img

        _check_step_options("select", select_img.parse_args,
                            join_argv(["--archive", "."], args.select_args))
    if "pairs" in todo:
        from data_processing import make_dataset

        _check_step_options("pairs", make_dataset.parse_args,
                            join_argv(to_argv(profile.pairs), args.pairs_args))
    name = f"pde_{args.method}" if args.init == "pde" else args.init
    if "pretrain" in todo and name in PRETRAINERS:
        import importlib

        if name in PAIR_PRETRAINERS:
            script = "pde_self_supervised." + ("con_train_resnet_class" if name == "pde_class"
                                               else "con_train_resnet")
            base = to_argv(profile.pretrain)
        else:
            script = "other_ssl." + ("train_supervised" if name == "supervised" else "train_ssl")
            base = (["--method", name] if name != "supervised" else []) + \
                to_argv(profile.images_pretrain)
        _check_step_options("pretrain", importlib.import_module(script).parse_args,
                            join_argv(base, args.pretrain_args))
    if set(todo) & set(VOC_STEPS[:-1]):
        import train

        _check_step_options("unet", train.parse_args,
                            join_argv(to_argv(profile.unet), args.unet_args))
    if "growth" in todo:
        from growth_modeling import unet_gm

        _check_step_options("growth", unet_gm.parse_args,
                            join_argv(["--archive", ".", "--camera", "."], to_argv(profile.growth),
                                      args.growth_args))


def given_options(argv):
    """The run_pipeline options typed in ``argv`` (dest names), e.g. {"archive"}."""
    given = set()
    for token in argv or []:
        if token.startswith("--") and " " not in token:
            name = token[2:].split("=", 1)[0]
            given.add((name[3:] if name.startswith("no-") else name).replace("-", "_"))
    return {OPTION_ALIASES.get(name, name) for name in given}


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
        if key in ("resume", "logs_dir", "row_worker") or not hasattr(args, key):
            continue
        new = getattr(args, key)
        if key not in given:
            setattr(args, key, old)
        elif plain(new) != old:
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
    return make_data(args.profile, profile, args.seed, args.archive, args.phenology, args.voc,
                     args.data_dir)


def step_priors(args, run, profile):
    from data_processing import date_pro

    data = run.result("orchard")
    return plain(date_pro.main(join_argv(["--phenology", data["phenology"], "--archive",
                                          data["archive"]], preset_args(data))) or {})


def step_select(args, run, profile):
    return select_images(run, args.seed, args.select_args)


def step_pairs(args, run, profile):
    return make_pairs(run, profile, args.seed, args.pairs_args)


def step_pretrain(args, run, profile):
    if args.init == "random":
        return {"encoder_path": None}
    if args.init != "pde" and args.init not in PRETRAINERS:
        return {"encoder_path": args.init}         # a weights file
    name = f"pde_{args.method}" if args.init == "pde" else args.init
    return pretrain_encoder(name, run, profile, args.seed, args.pretrain_args)


def _train_unet(args, run, profile, frozen_only, row="unet"):
    """One U-Net of a row: ``row`` "unet" starts from the pretrain step's encoder,
    "random" from a random one; both rows use the same options and seeds."""
    import train

    data = run.result("orchard")
    freeze, total = profile.epochs(frozen_only)
    encoder = run.result("pretrain").get("encoder_path") if row == "unet" else None
    result = train.main(unet_argv(data["voc"], run.dir, args.seed, freeze, total,
                                  encoder, frozen_only, join_argv(to_argv(profile.unet),
                                                                  args.unet_args),
                                  frozen_run=run.result(f"{row}_frozen").get("run_dir")))
    return plain({"run_dir": result["run_dir"], "model_path": result["evaluated_model_path"],
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
    kept = Path(kept_unet(run)).resolve()
    freed = 0
    if kept.name == "last_epoch.keras":
        freed = _strip_resume_state(kept)
    for path in run.dir.rglob("*.keras"):
        if path.resolve() != kept:
            stat = path.stat()
            freed += stat.st_size if stat.st_nlink == 1 else 0   # else a hard link goes
            path.unlink()
    return freed / 2**20


def _strip_resume_state(path):
    """Leave ``path`` (a U-Net's last_epoch.keras that kept Adam's moments: an early
    stop, or a run folder of an older version) without its optimizer state: nothing
    resumes the pipeline's finished U-Nets. A named or best copy of the same epoch holds the same weights without it and
    takes its place; else it is rewritten. Returns the bytes freed."""
    if not has_optimizer_state(path):
        return 0
    epoch = checkpoint_epoch(path)
    twin = next((p for p in sorted(path.parent.glob("*.keras")) if p != path
                 and checkpoint_epoch(p) == epoch and not has_optimizer_state(p)), None)
    size = path.stat().st_size
    if twin is None:
        return size - _drop_optimizer_state(path)
    os.replace(twin, path)
    return size


def _drop_optimizer_state(path):
    """Rewrite a U-Net checkpoint without the optimizer state a resume point carries
    (two thirds of ``last_epoch.keras``). Returns its size."""
    import keras

    from utils.run import Run

    model = keras.models.load_model(path, compile=False)
    Run(path.parent).save_model(model, path.name, checkpoint_epoch(path) or 0)
    return path.stat().st_size


def step_predict(args, run, profile):
    import predict

    data = run.result("orchard")
    model = kept_unet(run)
    ids = read_split(data["voc"], "test")[: profile.predict_images]
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
    result = predict.main(join_argv(["--mode", "dir_predict", "--model-path", model,
                                     "--dir-origin-path", pick, "--dir-save-path", out],
                                    _unet_shape_args(profile, args)))
    return plain(result or {"out_dir": out})


def _unet_shape_args(profile, args):
    """Pass the U-Net's --input-shape (the profile's, or the user's --unet-args) on to
    inference scripts."""
    shape = to_argv({"input_shape": profile.unet.get("input_shape")})
    tokens = shlex.split(args.unet_args)
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
    result = unet_gm.main(join_argv(["--archive", data["archive"], "--camera", camera,
                                     "--preset", name.preset, "--time", name.hour,
                                     "--model-path", model, "--phenology", data["phenology"],
                                     "--logs-dir", run.dir],
                                    _unet_shape_args(profile, args), to_argv(profile.growth),
                                    args.growth_args))
    return plain(result)


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
    if args.init in PRETRAINERS:
        return args.init, "stage images"
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
        label = (row_label(row_key) if row_key else "Given encoder") + ", this run"
        rows.append((label, row_data, frozen.get("mIoU"), frozen.get("mPA"),
                     tuned.get("mIoU"), tuned.get("mPA")))
    for k in dict.fromkeys([key, "random", "pde_class"]):
        if k in PUBLISHED:
            rows.append((PUBLISHED[k][0] + ", published", *PUBLISHED[k][1:]))
    return markdown_table(rows)


def summary_lines(run, names):
    """What the table does not show: the pretext accuracy and the per-class IoU."""
    lines = []
    pretext = run.result("pretrain").get("test_metrics", {})
    if "acc" in pretext:
        lines.append(f"PDE pretext: held-out pair accuracy {pretext['acc']:.3f} on the test "
                     f"dates' pairs (chance 0.25)")
        if "stage_acc" in pretext:
            lines.append(f"  of its two halves: same view or not {pretext['view_acc']:.3f}, "
                         f"same stage or not {pretext['stage_acc']:.3f} (chance 0.5 each)")
    for step in ("unet_frozen", "unet_finetune", *BASELINE_STEPS):
        iou = run.result(step).get("test_metrics", {}).get("IoU")
        if iou:
            lines.append(f"{step:16s} test IoU " + ", ".join(
                f"{n} {v:.3f}" for n, v in zip(names, iou)))
    return lines


def _parallel_rows(args):
    if args.row_worker:
        return False
    if args.parallel_rows is not None:
        return args.parallel_rows
    if (os.cpu_count() or 1) < 2:
        return False
    import tensorflow as tf

    # Two processes on one GPU would each reserve all of its memory.
    return not tf.config.list_physical_devices("GPU")


# The random row's process runs at this niceness. The random row is the shorter one (no
# pretraining): at equal priority it finished first and left the PDE row alone on the
# machine for its last 5 minutes. Measured on the demo, 2 cores, wall of the steps, with
# U-Net validation every 5 epochs: equal priority 733 s, niceness 10 721 s (the PDE row
# 40 s ahead); every 10 epochs: niceness 5 788 s, niceness 10 during PDE pretraining and
# then the main process at 10 too, 713 s (the random row 150 s ahead).
ROW_WORKER_NICENESS = 10


def lower_priority(niceness):
    """Run this process at ``niceness`` or lower priority: every thread it has now (on
    Linux each thread has its own niceness, and an import may already have started a
    pool) and, through them, the threads they start later."""
    if not hasattr(os, "setpriority"):
        return
    tasks = Path("/proc/self/task")
    for tid in ([int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]):
        with contextlib.suppress(OSError):      # a thread that ended meanwhile
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)


# The random-row worker holds this lock (its pid inside) while it runs, and dies with
# the process that started it (utils.run.die_with_parent, given that pid in the env).
ROW_LOCK = "random_row.pid"
ROW_PARENT_ENV = "PDE_ROW_PARENT"


class BackgroundRow:
    """The random row's U-Nets trained by a second ``run_pipeline.py --resume`` process.

    The two rows share nothing but the labelled set, and a single training process
    leaves part of a CPU idle (tracing, checkpoints, data loading, Python), so the
    second process fills those gaps at a lower priority (``ROW_WORKER_NICENESS``). It
    records its steps in the same ``steps.json``. It dies with this process (also by
    ``kill -9``); a worker still alive when a resume starts (where the parent-death
    signal does not exist) is adopted, waited for, never started twice.
    """

    def __init__(self, run, steps):
        self.steps = steps
        self.start = time.time()
        self.lock = ProcessLock(run.dir / ROW_LOCK)
        self.proc = None
        holder = self.lock.holder()
        if holder:
            logs = sorted(run.dir.glob("random_row*.log"), key=lambda p: p.stat().st_mtime)
            self.log = logs[-1] if logs else run.dir / "random_row.log"
            print(f"The random row is already training in process {holder} (log {self.log}); "
                  f"waiting for it instead of starting another", flush=True)
            return
        self.log = fresh_path(run.dir / "random_row.log")
        command = [sys.executable, str(Path(__file__).resolve()), "--resume", str(run.dir),
                   "--steps", ",".join(steps), "--row-worker"]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, ROW_PARENT_ENV: str(os.getpid())})

    def wait(self, run):
        """Wait for the row; returns None, or the UserError saying why it failed."""
        print(f"Waiting for the random row ({', '.join(self.steps)}; log {self.log}) ...",
              flush=True)
        if self.proc is not None:
            code = self.proc.wait()
        else:
            self.lock.wait()
            code = 0
        run.reload()
        for step in self.steps:
            if run.done(step):
                print(f"{step} finished in {run.record[step]['seconds']:.0f} s "
                      f"(second process)")
        if code == 0 and all(run.done(s) for s in self.steps):
            return None
        said = [line for line in self.log.read_text(errors="replace").splitlines()
                if line.startswith("error:")] if self.log.is_file() else []
        return UserError(self.log, f"the random row stopped (exit status {code})"
                         + (f": {said[-1]}" if said else ""),
                         f"read the log, then 'python run_pipeline.py --resume {run.dir}' "
                         f"trains what is missing")

    def stop(self):
        if self.proc is None:
            holder = self.lock.holder()
            if holder and holder > 0:
                with contextlib.suppress(OSError):
                    os.kill(holder, signal.SIGTERM)
        elif self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def row_worker_start(run_dir):
    """In the worker: die with the pipeline that started it, and hold the row's lock
    (a second worker of the same run is refused)."""
    parent = os.environ.get(ROW_PARENT_ENV)
    if parent:
        die_with_parent(int(parent))
    lock = ProcessLock(Path(run_dir) / ROW_LOCK)
    if not lock.acquire():
        raise UserError(lock.path, f"another random-row worker (process {lock.holder()}) "
                                   f"trains this run", "wait for it to finish")
    return lock


def main(argv=None):
    args = parse_args(argv)
    if args.row_worker:
        lower_priority(ROW_WORKER_NICENESS)
        row_lock = row_worker_start(args.resume)  # noqa: F841  (held until this process ends)
    run, applied = None, []
    if args.resume:
        run = StepRecord(args.resume)
        if not run.dir.is_dir():
            raise MissingInput(run.dir, "--resume: run folder not found",
                               "give the folder it printed as 'Run folder:'")
        check_run_kind(run.dir, RUN_KIND)
        applied = resume_options(args, sys.argv[1:] if argv is None else argv, run)
    set_seed(args.seed)
    profile = with_precision(PROFILES[args.profile], args.precision)
    planned = [s for s in STEPS if args.baseline or s not in BASELINE_STEPS]
    steps = [s for s in planned if s in args.steps]
    validate_inputs(args, profile, steps, run)
    run = open_run(args.resume, f"pipeline_{args.profile}", args, args.logs_dir, RUN_KIND)
    if applied and not args.row_worker:
        write_json(fresh_path(run.dir / "args_resume.json"), vars(args))
    began = time.time()
    background, failed = None, None
    try:
        # Later steps read what earlier ones recorded; a subset needs those already done.
        for i, step in enumerate(steps, start=1):
            if background is None and step not in BASELINE_STEPS and run.done("orchard"):
                todo = [s for s in steps if s in BASELINE_STEPS and not run.done(s)]
                if todo and _parallel_rows(args):
                    background = BackgroundRow(run, todo)
            if background is not None and step in background.steps:
                print(f"[{i}/{len(steps)}] {step}: training in a second process "
                      f"(log {background.log})", flush=True)
                continue
            if run.done(step):
                print(f"[{i}/{len(steps)}] {step}: done earlier, skipped")
                continue
            print(f"[{i}/{len(steps)}] {step} ...", flush=True)
            start = time.time()
            result = STEP_FUNCS[step](args, run, profile)
            run.finish(step, result, time.time() - start)
            print(f"[{i}/{len(steps)}] {step} finished in {time.time() - start:.0f} s",
                  flush=True)
        if background is not None:
            failed = background.wait(run)
    finally:
        if background is not None:
            background.stop()
    if args.row_worker:
        return {"run_dir": run.dir, "steps": run.record}
    table = results_table(args, run)
    from utils.utils import NAME_CLASSES

    summary = summary_lines(run, NAME_CLASSES)
    (run.dir / "results.md").write_text(table + "\n\n" + "\n".join(summary) + "\n")
    total = sum(v["seconds"] for v in run.record.values())
    print("\n" + table + "\n\n" + "\n".join(summary) + "\n")
    if failed is not None:
        raise failed
    if not args.keep_checkpoints and all(run.done(s) for s in planned):
        print(f"Deleted {prune_checkpoints(run):.0f} MB of checkpoints no step needs any "
              f"more (--keep-all-checkpoints keeps them).")
    both = " (the two rows in parallel)" if background is not None else ""
    print(f"Steps took {total:.0f} s in all, {time.time() - began:.0f} s wall{both}. "
          f"Everything is in {run.dir}")
    from pipeline.report import write_report

    report = write_report(run, table, NAME_CLASSES)
    print(f"Report (table, curves, confusion matrices, overlays, growth): {report}")
    return {"run_dir": run.dir, "table": table, "steps": run.record, "report": report}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
