"""Which pretraining saves labels: test mIoU against the number of labelled photos.

For every seed: the data (the synthetic orchard of that seed, or your own archive and
labelled set), the stage images and pair index, each encoder's pretraining once, then a
frozen U-Net for every label budget N of ``--labels`` and every encoder (``train.py
--train-count N``: the seed's nested draw of N train photos, the same number of
optimizer steps at every N; N = the whole split trains as ``run_pipeline.py`` does), and
the per-pixel colour classifier on the same photos (``benchmarks/colour_baseline.py
--train-count N``). Every U-Net is evaluated on the whole test split; the validation
split is unchanged.

    python benchmarks/label_efficiency.py                       # demo, seeds 11 12 13
    python benchmarks/label_efficiency.py --seeds 11 --labels 4 16 60 --encoders pde random
    python benchmarks/label_efficiency.py --archive A --phenology P.toml --voc VOCdevkit

Encoders: ``pde`` (PDE, classification distance), ``pde_shuffled`` (the same pretraining
with permuted pair labels, ``--shuffle-labels``: the control), ``random``, and every
``PRETRAINERS`` entry (``supervised`` is the phenological classification). One run
folder holds ``label_efficiency.csv``, ``summary.md`` and ``label_efficiency.png``, and a
``seed<S>/`` folder per seed; ``--resume RUN_DIR`` skips the finished seeds, encoders and
U-Nets. ``benchmarks/pde_vs_random.py`` adds the k-NN and per-pixel read-outs of the
two encoders at the whole split; its verdict rule is shared (``pipeline.steps.gap_verdict``).
"""
import argparse
import csv
import json
import shlex
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from pipeline.pretrainers import PAIR_PRETRAINERS, PRETRAINERS  # noqa: E402
from pipeline.profiles import PROFILES  # noqa: E402
from pipeline.steps import (StepRecord, gap_verdict, make_data, make_pairs,  # noqa: E402
                            mean_std, plain, pm, pretrain_encoder, select_images, unet_inputs,
                            unet_options)
from utils.errors import UserError  # noqa: E402
from utils.options import add_logs_dir  # noqa: E402
from utils.run import make_run_dir, resume_args, write_json  # noqa: E402
from utils.utils import NAME_CLASSES, set_seed  # noqa: E402
from utils.voc import read_split  # noqa: E402

# Encoder name -> (PRETRAINERS entry or None for a random encoder, its extra options).
ENCODERS = {"pde": ("pde_class", []),
            "pde_shuffled": ("pde_class", ["--shuffle-labels"]),
            "random": (None, []),
            **{name: (name, []) for name in PRETRAINERS}}
DEFAULT_ENCODERS = ("pde", "pde_shuffled", "random", "supervised")
LABELS = {"pde": "PDE (classification distance)",
          "pde_shuffled": "PDE, permuted pair labels (control)",
          "random": "random (Glorot uniform)",
          "supervised": "supervised phenological classification"}
# The paired comparisons of the summary: (first, second) encoder.
PAIRS = (("pde", "random"), ("pde", "pde_shuffled"))
# Options a --resume may change: more seeds, budgets or encoders add cells.
RESUME_MAY_CHANGE = ("seeds", "labels", "encoders", "fine_tuned", "workers")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                   help="sizes and steps, as run_pipeline.py (pipeline/profiles.py; default demo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13],
                   help="one orchard, pretraining and set of U-Nets per seed (default 11 12 13)")
    p.add_argument("--labels", type=int, nargs="+", default=[4, 8, 16, 60], metavar="N",
                   help="label budgets, increasing: labelled train photos per U-Net "
                        "(default 4 8 16 60; the demo orchard's train split has 60)")
    p.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS), metavar="E",
                   help=f"encoders (default {' '.join(DEFAULT_ENCODERS)}); known: "
                        f"{', '.join(ENCODERS)}")
    p.add_argument("--fine-tuned", action="store_true",
                   help="also fine-tune every frozen U-Net (the profile's unfrozen epochs, "
                        "from its frozen-phase checkpoint): the fine-tuned column")
    p.add_argument("--workers", type=int, default=None,
                   help="trainings run side by side in this many processes (default: 2 "
                        "where no GPU is visible and there are 2+ cores, else 1)")
    p.add_argument("--archive", help="your camera archive (default: the synthetic orchard)")
    p.add_argument("--phenology", help="phenology priors TOML for --archive")
    p.add_argument("--voc-path", "--voc", dest="voc",
                   help="your labelled set (a VOCdevkit folder with train, val and test splits)")
    p.add_argument("--data-dir", default=None,
                   help="where each seed's synthetic orchard is generated or found, in "
                        "seed<S>/ (default demo_data/label_efficiency_<profile>)")
    p.add_argument("--unet-args", default="", metavar="'OPTS'",
                   help="extra train.py options for every U-Net (override the profile's)")
    add_logs_dir(p)
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run folder, skipping its finished seeds, encoders and "
                        "U-Nets; of its options only " + ", ".join(
                            "--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE)
                        + " may change")
    return resume_args(p, argv, may_change=RESUME_MAY_CHANGE)


def check_inputs(args):
    """Every input, before any work: the budgets, the encoders, the data and each
    step's options (``run_pipeline.validate_inputs``, once per distinct pretraining)."""
    import run_pipeline

    unknown = [e for e in args.encoders if e not in ENCODERS]
    if unknown:
        raise UserError("--encoders", f"unknown encoder(s) {', '.join(unknown)}",
                        f"choose from {', '.join(ENCODERS)}")
    if any(n < 1 for n in args.labels) or any(b <= a for a, b in zip(args.labels,
                                                                      args.labels[1:])):
        raise UserError("--labels", f"{' '.join(map(str, args.labels))} is not an "
                                    f"increasing list of positive counts",
                        "give budgets such as 4 8 16 60")
    if bool(args.archive) != bool(args.phenology):
        raise UserError("--archive", "--archive and --phenology go together", "give both")
    if bool(args.archive) != bool(args.voc):
        raise UserError("--voc-path" if args.archive else "--archive",
                        "your own data needs --archive, --phenology and --voc together",
                        "give all three (or none, for the synthetic orchard)")
    profile = PROFILES[args.profile]
    for seed in args.seeds:
        for name, extra in {(ENCODERS[e][0], tuple(ENCODERS[e][1])) for e in args.encoders}:
            pipeline = SimpleNamespace(
                profile=args.profile, seed=seed, archive=args.archive, phenology=args.phenology,
                voc=args.voc, data_dir=seed_data_dir(args, seed), init=name or "random",
                method="class", select_args="", pairs_args="", pretrain_args=shlex.join(extra),
                unet_args=args.unet_args, growth_camera=None, growth_args="")
            steps = ["orchard", "select", "pairs", "pretrain", "unet_frozen"]
            run_pipeline.validate_inputs(pipeline, profile, steps)
        if args.archive:
            break                   # the same data for every seed
    if args.voc:
        split = len(read_split(args.voc, "train"))
    else:
        split = profile.orchard["n_train"]
    if args.labels[-1] > split:
        raise UserError("--labels", f"{args.labels[-1]} photos asked for, the train split "
                                    f"has {split}", f"give budgets of 1 to {split}")


def seed_data_dir(args, seed):
    if args.archive:
        return None
    return Path(args.data_dir or f"demo_data/label_efficiency_{args.profile}") / f"seed{seed}"


def default_workers():
    """2 where run_pipeline.py trains its two rows side by side (no GPU visible, 2+
    cores), else 1."""
    import run_pipeline

    return 2 if run_pipeline._parallel_rows(SimpleNamespace(row_worker=False,
                                                            parallel_rows=None)) else 1


class InlineExecutor:
    """``submit`` runs the job at once, here: one process, in order."""

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def timed(fn, *args):
    """``(fn(*args), seconds)``: a job run in a worker process."""
    start = time.time()
    return fn(*args), time.time() - start


def pretrain_job(name, run, profile_name, seed, extra):
    set_seed(seed)
    return pretrain_encoder(name, run, PROFILES[profile_name], seed, extra)


def unet_job(args, keep, drop):
    """One U-Net (``train.py``'s ``run(args)``); its checkpoints (unless ``keep``: a fine-tuned
    U-Net starts from them) and those of the ``drop`` run folders are deleted afterwards
    (180-300 MB each at ResNet50)."""
    import train

    result = train.run(args)
    for folder in ([] if keep else [result["run_dir"]]) + list(drop):
        for path in Path(folder).glob("*.keras"):
            path.unlink()
    return plain({"run_dir": result["run_dir"], "test_metrics": result["test_metrics"]})


def colour_job(voc, seed, budget):
    from threadpoolctl import threadpool_limits

    from benchmarks import colour_baseline

    # One OpenMP thread, as colour_baseline.py sets before its imports (too late here,
    # after TensorFlow's): with two, the fit crawled beside the trainings (74 s, not 5).
    with threadpool_limits(1):
        result = colour_baseline.main(["--voc", str(voc), "--seed", str(seed), *budget])
    return {"test_metrics": {"mIoU": result["mIoU"], "mPA": result["mPA"],
                             "IoU": [result["iou"][c] for c in NAME_CLASSES],
                             "classes": list(NAME_CLASSES)},
            "train_photos": result["train_photos"]}


def run_seed(args, seed, run, pool):
    """Every step of one seed, each recorded in ``run`` (``seed<S>/steps.json``) as it
    finishes; finished ones are skipped. Pretrainings and U-Nets go to ``pool``."""
    profile = PROFILES[args.profile]
    names = {ENCODERS[e][0] for e in args.encoders}

    def local(step, fn, *fn_args):
        if not run.done(step):
            print(f"[seed {seed}] {step} ...", flush=True)
            start = time.time()
            run.finish(step, fn(*fn_args), time.time() - start)

    local("orchard", make_data, args.profile, profile, seed, args.archive, args.phenology,
          args.voc, seed_data_dir(args, seed))
    if names - {None}:
        local("select", select_images, run, seed)
    if names & set(PAIR_PRETRAINERS):
        local("pairs", make_pairs, run, profile, seed)
    voc = run.result("orchard")["voc"]
    split = len(read_split(voc, "train"))

    def budget(count):
        # The whole split trains exactly as run_pipeline.py does (no draw, the split's
        # order), so that column is the pipeline's and pde_vs_random.py's row.
        return [] if count == split else ["--train-count", str(count)]

    def unet(count, frozen_only, path, frozen_run=None):
        # The --unet-args, the budget and (without fine-tuning) no frozen-phase checkpoint.
        user = shlex.split(args.unet_args) + budget(count) + (
            ["--save-period", "0"] if frozen_only and not args.fine_tuned else [])
        return unet_options(profile, user).with_inputs(**unet_inputs(
            voc, run.dir, seed, *profile.epochs(frozen_only), path, frozen_only, frozen_run))

    pending = {}                       # future -> (step, what to do when it is done)

    def submit(step, then, fn, *fn_args):
        if run.done(step):
            then()
            return
        print(f"[seed {seed}] {step} ...", flush=True)
        pending[pool.submit(timed, fn, *fn_args)] = (step, then)

    def frozen_cells(encoder):
        path = run.result(f"pretrain {encoder}").get("encoder_path")
        for count in args.labels:
            step = f"unet {encoder} {count}"
            submit(step, (lambda p=path, c=count: tuned_cell(encoder, p, c))
                   if args.fine_tuned else (lambda: None), unet_job, unet(count, True, path),
                   args.fine_tuned, [])

    def tuned_cell(encoder, path, count):
        # From the frozen U-Net's frozen-phase checkpoint; where it is gone (a resume),
        # both phases from the encoder file.
        frozen_dir = run.result(f"unet {encoder} {count}")["run_dir"]
        submit(f"fine-tuned {encoder} {count}", lambda: None, unet_job,
               unet(count, False, path, frozen_dir), False, [frozen_dir])

    for encoder in args.encoders:
        name, extra = ENCODERS[encoder]
        step = f"pretrain {encoder}"
        if name is None:
            if not run.done(step):
                run.finish(step, {"encoder_path": None}, 0.0)
            frozen_cells(encoder)
        else:
            submit(step, lambda e=encoder: frozen_cells(e), pretrain_job, name, run,
                   args.profile, seed, extra)
    # The colour classifier is cheap: it runs here while the pool trains.
    for count in args.labels:
        local(f"colour {count}", colour_job, voc, seed, budget(count))
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            step, then = pending.pop(future)
            result, seconds = future.result()
            run.finish(step, result, seconds)
            print(f"[seed {seed}] {step} finished in {seconds:.0f} s", flush=True)
            then()


def cells(args, runs):
    """CSV rows: one per seed, label budget, encoder and column (frozen, fine-tuned),
    and the colour classifier's; each with mIoU, mPA and per-class IoU."""
    rows = []
    for seed, run in runs.items():
        for count in args.labels:
            found = [(e, "frozen", f"unet {e} {count}") for e in args.encoders]
            found += [(e, "fine-tuned", f"fine-tuned {e} {count}") for e in args.encoders]
            found.append(("colour", "colour classifier", f"colour {count}"))
            for encoder, column, step in found:
                metrics = run.result(step).get("test_metrics")
                if not metrics:
                    continue
                row = {"seed": seed, "labels": count, "encoder": encoder, "column": column,
                       "mIoU": metrics["mIoU"], "mPA": metrics["mPA"]}
                row.update({f"IoU {c}": v for c, v in zip(metrics["classes"], metrics["IoU"])})
                rows.append(row)
    return rows


def _values(rows, encoder, count, column="frozen"):
    """mIoU by seed of one cell of the table."""
    return {r["seed"]: r["mIoU"] for r in rows
            if r["encoder"] == encoder and r["labels"] == count and r["column"] == column}


def summarise(args, rows, runs):
    """Markdown: mean ± std per budget and encoder, the paired differences with their
    verdicts, and each stage's time."""
    columns = [(e, "frozen") for e in args.encoders]
    if args.fine_tuned:
        columns += [(e, "fine-tuned") for e in args.encoders]
    columns.append(("colour", "colour classifier"))
    lines = [f"Test mIoU, mean ± std (population) over seeds {', '.join(map(str, runs))}; "
             f"profile {args.profile}; each U-Net trained for the same number of optimizer "
             f"steps at every budget.", "",
             "| Labelled photos | " + " | ".join(
                 f"{LABELS.get(e, e)}{', fine-tuned' if c == 'fine-tuned' else ''}"
                 if e != "colour" else "colour classifier" for e, c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for count in args.labels:
        lines.append(f"| {count} | " + " | ".join(
            pm(mean_std(list(_values(rows, e, count, c).values()))) for e, c in columns) + " |")
    for first, second in PAIRS:
        if first not in args.encoders or second not in args.encoders:
            continue
        lines += ["", f"Paired by seed, {first} - {second} (frozen):"]
        for count in args.labels:
            a, b = _values(rows, first, count), _values(rows, second, count)
            seeds = [s for s in a if s in b]
            if seeds:
                lines.append(f"- N = {count}: " + gap_verdict(
                    "test mIoU", [a[s] for s in seeds], [b[s] for s in seeds], (first, second)))
    lines += ["", "Time per stage, mean over seeds, in seconds (with --workers 2 two "
                  "trainings run at once, so the stages add up to more than the wall time):",
              "",
              "| Stage | Seconds |", "|---|---|"]
    stages = {}
    for run in runs.values():
        per_seed = {}
        for step, record in run.record.items():
            per_seed[stage_of(step)] = per_seed.get(stage_of(step), 0.0) + record["seconds"]
        per_seed["wall time of the seed"] = read_wall(run)
        for stage, seconds in per_seed.items():
            stages.setdefault(stage, []).append(seconds)
    for stage, seconds in stages.items():
        lines.append(f"| {stage} | {sum(seconds) / len(seconds):.0f} |")
    return "\n".join(lines)


def stage_of(step):
    """The summary's stage of a recorded step: "unet pde 4" -> "U-Nets pde"."""
    words = step.split()
    if words[0] == "unet":
        return f"U-Nets {words[1]}"
    if words[0] == "fine-tuned":
        return f"U-Nets {words[1]}, fine-tuned"
    if words[0] == "colour":
        return "colour classifier"
    return step


def read_wall(run):
    """Seconds the seed's steps took from start to end, over every session."""
    path = run.dir / "wall.json"
    return json.loads(path.read_text())["seconds"] if path.is_file() else 0.0


def plot(args, rows, path):
    """mIoU against labelled photos (log axis): a line and ±std band per encoder, and the
    colour classifier's line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = [(e, "frozen") for e in args.encoders] + [("colour", "colour classifier")]
    for encoder, column in curves:
        stats = [(n, *mean_std(list(_values(rows, encoder, n, column).values())))
                 for n in args.labels]
        stats = [s for s in stats if s[1] is not None]
        if not stats:
            continue
        x, mean, std = (list(v) for v in zip(*stats))
        label = "colour classifier" if encoder == "colour" else LABELS.get(encoder, encoder)
        line, = ax.plot(x, mean, "--" if encoder == "colour" else "-o", label=label)
        ax.fill_between(x, [m - s for m, s in zip(mean, std)],
                        [m + s for m, s in zip(mean, std)], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xticks(args.labels, [str(n) for n in args.labels])
    ax.minorticks_off()
    ax.set_xlabel("labelled training photos")
    ax.set_ylabel("test mIoU (frozen encoder)")
    ax.set_title(f"Label efficiency, {args.profile} profile, seed"
                 f"{'s' if len(args.seeds) > 1 else ''} {', '.join(map(str, args.seeds))} "
                 f"(mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.timing import machine_line

    print(machine_line(), flush=True)
    check_inputs(args)
    if args.workers is None:
        args.workers = default_workers()
    out_dir = Path(args.resume) if args.resume else \
        make_run_dir(f"label_efficiency_{args.profile}", args, root=args.logs_dir)
    print(f"Run folder: {out_dir}", flush=True)
    runs = {}
    # A fresh process per training: a worker reused for a seed's U-Nets grew to 7.2 GB
    # and was killed by the OOM killer beside other jobs; a new one costs seconds.
    pool = InlineExecutor() if args.workers < 2 else \
        ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), max_tasks_per_child=1)
    try:
        for seed in args.seeds:
            run = StepRecord(out_dir / f"seed{seed}")
            run.dir.mkdir(exist_ok=True)
            start = time.time()
            print(f"=== seed {seed} ===", flush=True)
            run_seed(args, seed, run, pool)
            write_json(run.dir / "wall.json", {"seconds": read_wall(run) + time.time() - start})
            runs[seed] = run
    except BrokenProcessPool as exc:
        raise UserError("--workers", "a training process ended abruptly (killed: out of memory? "
                        "see dmesg)", f"continue with --resume {out_dir}; --workers 1 needs "
                        "less memory") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    rows = cells(args, runs)
    with open(out_dir / "label_efficiency.csv", "w", newline="") as f:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(args, rows, runs)
    (out_dir / "summary.md").write_text(summary + "\n")
    plot(args, rows, out_dir / "label_efficiency.png")
    print("\n" + summary + f"\n\nEverything is in {out_dir}")
    return {"out_dir": out_dir, "rows": rows, "summary": summary}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
