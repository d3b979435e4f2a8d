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
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from pipeline.pretrainers import PAIR_PRETRAINERS, PRETRAINERS  # noqa: E402
from pipeline.profiles import PROFILES, typed_options, with_precision  # noqa: E402
from pipeline.published import PUBLISHED, markdown_table, row_label  # noqa: E402
from pipeline.steps import (STEPS, StepRecord, check_orchard_spec, kept_unet,  # noqa: E402, F401
                            open_run, plain, resumed_run)
from utils.errors import MissingInput, UserError, writable_dir  # noqa: E402
from utils.options import add_logs_dir, add_seed  # noqa: E402
from utils.precision import PRECISIONS  # noqa: E402
from utils.run import (ProcessLock, checkpoint_epoch,  # noqa: E402
                       die_with_parent, fresh_path, has_optimizer_state, write_json)
from utils.utils import set_seed  # noqa: E402

BASELINE_STEPS = tuple(name for name, step in STEPS.items() if step.baseline)
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
    add_logs_dir(output)
    output.add_argument("--growth-camera", help="camera for the growth curves (default: first test camera)")
    add_seed(run, help="random seed for every step (default 11)")
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


# Old spellings of options (their dest names): --voc-path is also --voc.
OPTION_ALIASES = {"voc_path": "voc"}


def validate_inputs(args, profile, steps, run=None):
    """Every input of the planned ``steps``, checked before step 1 and before a run
    folder is made: the archive, priors and camera folders, the labelled set and its
    splits (photos decoded once, cached), weights files, and each step's options.
    Returns the planned steps' parsed options, by :attr:`Step.options`."""
    from utils.weights import check_weights_file

    todo = [s for s in steps if run is None or not run.done(s)]
    for step in todo:
        for need in STEPS[step].requires:
            if step == "pretrain" and args.init != "pde":
                break
            if need == "pretrain" and args.init == "random":
                continue            # a random encoder: no pretraining to wait for
            options = need.split("|")
            if not any(n in todo or (run is not None and run.done(n)) for n in options):
                raise UserError("--steps", f"step {step} needs step {' or '.join(options)}, "
                                           f"which is neither planned nor done in this run",
                                "add it to --steps (or --resume a run that has it)")
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
    labelled = [s for s in todo if STEPS[s].labelled]
    if data is not None and labelled:
        if not data.get("voc"):
            raise UserError("--voc", f"needed by step(s) {', '.join(labelled)} "
                                     f"with your own --archive",
                            "give your labelled VOCdevkit folder, or leave those steps out "
                            "with --steps")
        from utils.dataloader import check_split

        for split in ("train", "val", "test"):
            check_split(data["voc"], split, num_classes=256, check_values=False)
    if args.init not in ("pde", "random") and args.init not in PRETRAINERS:
        check_weights_file(args.init, "--init")

    # Each planned step's script options, parsed once: a typo stops the run here.
    planned, parsed = [STEPS[s] for s in todo], {}
    if {"predict", "growth"} & set(todo):      # they feed the U-Net at its size
        planned.append(STEPS["unet_frozen"])
    for step in planned:
        key = step.options or step.name
        if step.parse and key not in parsed:
            parsed[key] = step.parse(args, profile)
    return parsed


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
    given = {OPTION_ALIASES.get(name, name) for name in typed_options(argv or [])}
    applied, refused = [], []
    for key, old in recorded.items():
        if key in ("resume", "logs_dir", "row_worker") or not hasattr(args, key):
            continue
        new = getattr(args, key)
        if key not in given:
            setattr(args, key, old)
        elif plain(new) != old:
            names = list(STEPS)
            first = next((n for n in names if key in STEPS[n].reads), None)
            used = [s for s in names[names.index(first):] if run.done(s)] if first else []
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

    from utils.model_card import attach, read_card
    from utils.run import Run

    model = keras.models.load_model(path, compile=False)
    attach(model, read_card(path))      # the rewritten file keeps its model card
    Run(path.parent).save_model(model, path.name, checkpoint_epoch(path) or 0)
    return path.stat().st_size


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


# The random row's process runs at this niceness: it is the shorter row (no pretraining),
# and at equal priority it left the PDE row alone on the machine (docs/pipeline.md).
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
        run = resumed_run(args.resume, RUN_KIND)
        applied = resume_options(args, sys.argv[1:] if argv is None else argv, run)
    set_seed(args.seed)
    profile = with_precision(PROFILES[args.profile], args.precision)
    planned = [s for s in STEPS if args.baseline or s not in BASELINE_STEPS]
    steps = [s for s in planned if s in args.steps]
    parsed = validate_inputs(args, profile, steps, run)
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
            result = STEPS[step].run(args, run, profile, parsed)
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
