"""Reproduce the paper's comparison table on the synthetic orchard or your own data.

Every row pretrains an encoder its own way (or not at all), then goes through the
same downstream training twice, with the same seeds: encoder frozen throughout (the
"Frozen" columns, ``train.py --frozen-only``) and frozen-then-unfrozen (the
"Fine-tuned" columns). Each U-Net is evaluated on the test split by ``get_miou``.

    python benchmarks/paper_table.py --profile demo
    python benchmarks/paper_table.py --profile tiny --rows random,pde_class
    python benchmarks/paper_table.py --rows imagenet,pde_class --imagenet-weights notop.h5

Results go to a new run folder (``rows.json``, ``table.csv``, ``table.md``); a rerun
with ``--resume RUN_DIR`` continues row by row.
"""
import argparse
import csv
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from pipeline.pretrainers import LABELLED_PRETRAINERS, PAIR_PRETRAINERS, PRETRAINERS  # noqa: E402
from pipeline.profiles import PROFILES  # noqa: E402
from pipeline.published import PUBLISHED, markdown_table, row_label  # noqa: E402
from pipeline.steps import (make_data, make_pairs, mean_std, open_run,  # noqa: E402
                            pretrain_encoder, select_images, unet_inputs, unet_options)
from utils.options import add_logs_dir, add_seed  # noqa: E402
from utils.utils import set_seed  # noqa: E402
from utils.run import write_json  # noqa: E402

# Rows without pretraining; every other row is a PRETRAINERS entry.
BASE_ROWS = ("random", "scratch", "imagenet")
ROWS = (*BASE_ROWS, *PRETRAINERS)
# The rows run by default: the published table's, in its order.
DEFAULT_ROWS = ("random", "scratch", "simclr", "moco", "simsiam", "supervised", "pde_class",
                "pde_grading", "imagenet")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                   help="sizes and epochs, as run_pipeline.py (pipeline/profiles.py; default demo)")
    p.add_argument("--rows", default=None,
                   help=f"comma-separated rows from {','.join(ROWS)} (default: "
                        f"{','.join(DEFAULT_ROWS)}, imagenet only with --imagenet-weights)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help="train every row with each of these seeds and report mean ± std "
                        "(default: --seed alone; the data and pretext pairs use --seed)")
    p.add_argument("--imagenet-weights",
                   help="a legacy Keras ResNet50 'notop' .h5 file for the imagenet row")
    p.add_argument("--archive", help="your camera archive (default: the synthetic orchard)")
    p.add_argument("--phenology", help="phenology priors TOML for --archive")
    p.add_argument("--voc-path", "--voc", dest="voc", help="your labelled VOCdevkit folder")
    p.add_argument("--data-dir", help="where the synthetic orchard is generated or found "
                                      "(default demo_data/<profile>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a table run row by row")
    add_logs_dir(p)
    add_seed(p, help="first seed (default 11)")
    p.add_argument("--unet-args", default="", metavar="'OPTS'",
                   help="extra train.py options for every row")
    args = p.parse_args(argv)
    if args.rows is None:
        rows = [r for r in DEFAULT_ROWS if r != "imagenet" or args.imagenet_weights]
    else:
        rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}; known rows: {', '.join(ROWS)}")
    if "imagenet" in rows:
        if not args.imagenet_weights:
            p.error("the imagenet row needs --imagenet-weights (a ResNet50 'notop' .h5 file)")
        if not Path(args.imagenet_weights).is_file():
            p.error(f"--imagenet-weights: {args.imagenet_weights} does not exist")
    args.rows = rows
    return args


def pretrain(row, args, run, seed):
    """Return the encoder file a row starts from (None: random initialisation)."""
    if row in ("random", "scratch"):
        return None
    if row == "imagenet":
        return args.imagenet_weights
    return str(pretrain_encoder(row, run, PROFILES[args.profile], seed)["encoder_path"])


def downstream(row, encoder, args, run, seed):
    """Frozen-only and fine-tuned U-Nets from one encoder; their test metrics."""
    profile = PROFILES[args.profile]
    options = unet_options(profile, args.unet_args)

    def train(frozen_only, frozen_run=None, **extra):
        return options.run(**unet_inputs(run.result("orchard")["voc"], run.dir, seed,
                                         *profile.epochs(frozen_only), encoder, frozen_only,
                                         frozen_run=frozen_run), **extra)

    if row == "scratch":
        return None, train(False, from_scratch=True)["test_metrics"]
    frozen = train(True)
    tuned = train(False, frozen_run=frozen["run_dir"])["test_metrics"]
    return frozen["test_metrics"], tuned


def summarise(rows_done, seeds):
    """Per row: mean and std over seeds of the four table numbers."""
    keys = (("frozen", "mIoU"), ("frozen", "mPA"), ("tuned", "mIoU"), ("tuned", "mPA"))
    table = {}
    for row, runs in rows_done.items():
        table[row] = {f"{phase} {metric}": mean_std([(r[phase] or {}).get(metric)
                                                     for r in runs.values()])
                      for phase, metric in keys}
    return table


def _cell(stat):
    mean, std = stat
    if mean is None:
        return None
    return f"{mean:.4f}" if std is None or std == 0 else f"{mean:.4f} ± {std:.4f}"


def render(summary, data_label):
    lines, csv_rows = [], []
    for row, stats in summary.items():
        label = row_label(row)
        pub_data, *pub = PUBLISHED[row][1:] if row in PUBLISHED else ("—",) + (None,) * 4
        cells = [_cell(stats[k]) for k in ("frozen mIoU", "frozen mPA", "tuned mIoU", "tuned mPA")]
        lines.append((f"{label}, this run", data_label.get(row, "—"), *cells))
        lines.append((f"{label}, published", pub_data, *pub))
        csv_rows.append({"row": row, **{k: v[0] for k, v in stats.items()},
                         **{k + " std": v[1] for k, v in stats.items()}})
    return markdown_table(lines), csv_rows


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.timing import machine_line

    print(machine_line(), flush=True)
    set_seed(args.seed)
    run = open_run(args.resume, f"paper_table_{args.profile}", args, args.logs_dir,
                   "paper_table")
    profile = PROFILES[args.profile]
    data_steps = {"orchard": lambda: make_data(args.profile, profile, args.seed, args.archive,
                                               args.phenology, args.voc, args.data_dir),
                  "select": lambda: select_images(run, args.seed),
                  "pairs": lambda: make_pairs(run, profile, args.seed)}
    for step, make in data_steps.items():
        if not run.done(step):
            start = time.time()
            run.finish(step, make(), time.time() - start)
    rows_path = run.dir / "rows.json"
    done = json.loads(rows_path.read_text()) if rows_path.exists() else {}
    seeds = args.seeds or [args.seed]
    for row in args.rows:
        for seed in seeds:
            if str(seed) in done.get(row, {}):
                print(f"{row} (seed {seed}): done earlier, skipped")
                continue
            print(f"== {row} (seed {seed})", flush=True)
            start = time.time()
            set_seed(seed)
            encoder = pretrain(row, args, run, seed)
            frozen, tuned = downstream(row, encoder, args, run, seed)
            done.setdefault(row, {})[str(seed)] = {
                "encoder": encoder, "frozen": frozen and _metrics(frozen),
                "tuned": _metrics(tuned), "seconds": round(time.time() - start, 1)}
            write_json(rows_path, done)
            print(f"== {row} (seed {seed}) finished in {time.time() - start:.0f} s", flush=True)
    pairs = run.result("pairs")
    n_pairs = sum(pairs.get("counts", {}).values())
    n_images = pairs.get("n_images")
    pde_data = f"{n_pairs:,} pairs from {n_images:,} images" if n_images else "pairs"
    img_data = f"{n_images:,} stage images" if n_images else "stage images"
    data_label = {"random": "none", "scratch": "none", "imagenet": "ImageNet weights file",
                  **{r: pde_data if r in PAIR_PRETRAINERS else img_data for r in PRETRAINERS},
                  **{r: "labelled VOC train split" for r in LABELLED_PRETRAINERS}}
    summary = summarise({r: done[r] for r in args.rows if r in done}, seeds)
    table, csv_rows = render(summary, data_label)
    (run.dir / "table.md").write_text(table + "\n")
    with open(run.dir / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
    total = sum(s["seconds"] for r in done.values() for s in r.values())
    print("\n" + table + "\n")
    print(f"Rows took {total:.0f} s in all ({len(seeds)} seed(s)). Results: {run.dir}")
    return {"run_dir": run.dir, "table": table, "rows": done, "summary": summary}


def _metrics(m):
    return {k: m[k] for k in ("mIoU", "mPA", "accuracy") if k in m}


if __name__ == "__main__":
    main()
