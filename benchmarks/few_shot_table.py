"""The few-shot study's table on the synthetic orchard's stages, with this project's
own encoders as the backbones: does a PDE encoder help classify stages from K photos
per stage? Columns: accuracy, weighted precision, recall, F1 and the mean epoch time,
as mean ± std over ``--seeds``, at K = 5 and 10.

Rows (``--rows``, ``BACKBONE=LOSS,LOSS,...;...``): by default the six losses of the
study on the PDE encoder; stage 1 (``transfer``), contrastive and ArcFace on a random
and on a supervised (phenological stage classification) encoder; stage 1 on each.
Backbones: ``pde``, ``random``, ``supervised`` (this project's ResNet50 encoder
initialised from step 5's PDE pretraining, at random, or from
``other_ssl/train_supervised.py``), ``ssl-NAME`` for an encoder given with
``--ssl-encoders NAME=PATH`` (e.g. from ``other_ssl/train_ssl.py``), or
``BACKBONE:WEIGHTS`` for a ``keras.applications`` model. Each (K, seed, backbone) is
one ``few_shot/train_few_shot.py`` run with the study's protocol (stage 2 retrains the
backbone, then the classification part); the seed draws the K-shot split and seeds
the heads; the orchard and the encoders are made once (``--seed``).

    python benchmarks/few_shot_table.py                  # CPU-sized: tiny orchard, tiny encoders
    python benchmarks/few_shot_table.py --seeds 11 12 13 14 15 --image-dir out \
        --pde-encoder logs/pde_class_<time>/encoder.weights.h5 \
        --supervised-encoder logs/supervised_stage_<time>/encoder.weights.h5 --input-shape 256 256

Without ``--image-dir`` a small synthetic orchard is generated and its stage images
selected (steps 0-2); without ``--pde-encoder`` / ``--supervised-encoder`` tiny ones
are trained here through the scripts' own ``main(argv)``. Everything goes into one
new run folder: ``rows.json`` (every seed), ``summary.json`` and ``table.md`` (mean ±
std, which rows beat chance and which beat each other by more than twice the larger
std).
"""
import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from few_shot.backbones import CLASSIFIER_BACKBONES  # noqa: E402
from few_shot.data import NORMALIZATIONS  # noqa: E402
from few_shot.losses import METRIC_LOSSES  # noqa: E402
from pipeline.steps import mean_std  # noqa: E402
from utils.options import add_input_shape, add_logs_dir, add_seed  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.run import make_run_dir, write_json  # noqa: E402
from utils.utils import set_seed  # noqa: E402

# The encoder rows: this project's ResNet50 encoder and where its weights come from.
ENCODER_ROWS = ("pde", "random", "supervised")
METRICS = ("accuracy", "precision", "recall", "f1", "mean_epoch_seconds")
# The study's six losses (its quadruplet: both negatives against the anchor).
STUDY_LOSSES = ("contrastive", "triplet", "quadruplet_study", "sphereface", "cosface", "arcface")
DEFAULT_ROWS = (f"pde=transfer,{','.join(STUDY_LOSSES)};random=transfer,contrastive,arcface;"
                "supervised=transfer,contrastive,arcface")


def parse_rows(text, ssl_names=()):
    """``BACKBONE=LOSS,...;...`` -> {backbone: [losses]}; ValueError names a bad entry."""
    rows = {}
    for part in (x.strip() for x in text.split(";") if x.strip()):
        if "=" not in part:
            raise ValueError(f"{part!r} has no '=': write BACKBONE=LOSS,LOSS")
        backbone, losses = (x.strip() for x in part.split("=", 1))
        name = backbone.split(":")[0]
        ok = (backbone in ENCODER_ROWS
              or (backbone.startswith("ssl-") and backbone[4:] in ssl_names)
              or (":" in backbone and name in CLASSIFIER_BACKBONES))
        if not ok:
            raise ValueError(f"{backbone!r} is none of {', '.join(ENCODER_ROWS)}, ssl-NAME "
                             f"with NAME from --ssl-encoders, or BACKBONE:WEIGHTS with a "
                             f"backbone from {', '.join(CLASSIFIER_BACKBONES)}")
        losses = [x.strip() for x in losses.split(",") if x.strip()]
        unknown = [x for x in losses if x != "transfer" and x not in METRIC_LOSSES]
        if unknown or not losses:
            raise ValueError(f"{backbone}: unknown loss {', '.join(unknown) or '(none)'}; "
                             f"choose from transfer, {', '.join(METRIC_LOSSES)}")
        rows[backbone] = rows.get(backbone, []) + [x for x in losses
                                                   if x not in rows.get(backbone, [])]
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-dir", default=None,
                   help="step 2's stage images (default: generate a small synthetic orchard "
                        "and select them here)")
    p.add_argument("--orchard", type=int, nargs=3, default=[3, 64, 96],
                   metavar=("CAMERAS", "H", "W"),
                   help="the generated orchard: cameras (one preset, noon) and photo size "
                        "(default 3 64 96)")
    p.add_argument("--rows", default=DEFAULT_ROWS,
                   help=f"BACKBONE=LOSS,LOSS;... (default {DEFAULT_ROWS})")
    p.add_argument("--ssl-encoders", nargs="*", default=[], metavar="NAME=PATH",
                   help="self-supervised encoder files for ssl-NAME rows")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10], help="K values (default 5 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13],
                   help="one K-shot split and head initialisation per seed (default 11 12 13; "
                        "the study used 5 runs)")
    add_input_shape(p, [32, 32], "few-shot input size (the study: 256 256; default 32 32, the "
                                 "tiny encoders' own)")
    p.add_argument("--epochs", type=int, nargs=2, default=[300, 30], metavar=("S1", "S2"),
                   help="epochs of stage 1 and of stage 2's metric learning (default 300 30; "
                        "the study: 50 30, but at K <= 10 the stage-1 head sees one batch per "
                        "epoch, and 50 steps at 1e-4 leave it near chance)")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="encoder",
                   help="pixel normalisation (train_few_shot.py's): default encoder, the scale "
                        "each encoder was pretrained on (its model card; [0, 1] for random), "
                        "as the study fed its ImageNet backbones ImageNet's; imagenet feeds "
                        "every row ImageNet's")
    p.add_argument("--pde-encoder", default=None,
                   help="a PDE encoder.weights.h5 (default: pretrain a tiny one here)")
    p.add_argument("--supervised-encoder", default=None,
                   help="a supervised encoder.weights.h5 (default: train a tiny one here)")
    p.add_argument("--pairs-args", default="--per-class 500",
                   help="make_dataset.py options for the tiny PDE run (default '--per-class 500')")
    p.add_argument("--pde-args", default="--input-shape 32 32 --load-size 32 32 --batch-size 16 "
                                         "--test-batch-size 16 --epochs 2 --steps-per-epoch 4 "
                                         "--pool gap --shared-towers --no-augment "
                                         "--learning-rate 1e-3 --precise-bn 2 "
                                         "--validation-steps 2 --keep-checkpoints 1 --run-eagerly",
                   help="con_train_resnet_class.py options for the tiny PDE encoder")
    p.add_argument("--supervised-args", default="--input-shape 32 32 --batch-size 16 --epochs 2 "
                                                "--steps-per-epoch 3 --precise-bn 2 --run-eagerly",
                   help="train_supervised.py options for the tiny supervised encoder")
    p.add_argument("--few-shot-args", default="--no-plots --classifier-epochs 300",
                   help="extra train_few_shot.py options for every run (default '--no-plots "
                        "--classifier-epochs 300': the table needs the metrics only, and the "
                        "classification part, one batch per epoch at K <= 10, stays near "
                        "chance after the study's 30; graph mode: 300 eager epochs cost more "
                        "than tracing)")
    add_seed(p, help="seeds the orchard and the encoders trained here (default 11)")
    add_logs_dir(p)
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the table in RUN_DIR (give the same options): the (K, seed, "
                        "backbone) runs its rows.json holds are kept, the others run")
    args = p.parse_args(argv)
    ssl = {}
    for item in args.ssl_encoders:
        name, _, path = item.partition("=")
        if not name or not path:
            p.error(f"--ssl-encoders: {item!r}: write NAME=PATH")
        ssl[name] = path
    args.ssl_encoders = ssl
    try:
        args.rows = parse_rows(args.rows, tuple(ssl))
    except ValueError as exc:
        p.error(f"--rows: {exc}")
    if args.resume and not (Path(args.resume) / "rows.json").is_file():
        p.error(f"--resume {args.resume}: no rows.json there")
    for path in (args.pde_encoder, args.supervised_encoder, args.image_dir, *ssl.values()):
        if path and not Path(path).exists():
            p.error(f"{path}: not found")
    return args


def make_stage_images(args, run_dir):
    """Steps 0-2 on a small synthetic orchard: returns step 2's output folder."""
    from data_processing import date_pro, select_img
    from data_processing.synthetic_orchard import generate_orchard

    cameras, h, w = args.orchard
    made = generate_orchard(run_dir / "orchard", cameras=cameras, presets=(1,), times=("12",),
                            image_size=(h, w), n_train=2, n_val=1, n_test=1, seed=args.seed)
    date_pro.main(["--phenology", str(made["phenology"]), "--archive", str(made["archive"])])
    return select_img.main(["--archive", str(made["archive"]), "--phenology",
                            str(made["phenology"]), "--out", str(run_dir / "out"),
                            "--seed", str(args.seed)])["out_dir"]


def train_pde_encoder(args, run_dir, image_dir):
    """Steps 3 and 5 at the tiny settings: a pair index, then PDE pretraining."""
    from data_processing import make_dataset
    from pde_self_supervised import con_train_resnet_class

    pairs = run_dir / "pairs"
    splits = make_dataset.main(["--image-dir", str(image_dir), "--out-x", str(pairs / "X.npy"),
                                "--out-y", str(pairs / "Y.npy"), "--split", "0.8", "0.1", "0.1",
                                "--split-by", "date", "--seed", str(args.seed)]
                               + shlex.split(args.pairs_args))["splits"]
    result = con_train_resnet_class.main(
        ["--image-dir", str(image_dir),
         "--pairs-x", str(splits["train"][0]), "--pairs-y", str(splits["train"][1]),
         "--val-pairs-x", str(splits["val"][0]), "--val-pairs-y", str(splits["val"][1]),
         "--test-pairs-x", str(splits["test"][0]), "--test-pairs-y", str(splits["test"][1]),
         "--logs-dir", str(run_dir), "--seed", str(args.seed)] + shlex.split(args.pde_args))
    return str(result["encoder_path"])


def train_supervised_encoder(args, run_dir, image_dir):
    from other_ssl import train_supervised

    result = train_supervised.main(["--image-dir", str(image_dir), "--logs-dir", str(run_dir),
                                    "--seed", str(args.seed)] + shlex.split(args.supervised_args))
    return str(result["encoder_path"])


def row_backbone(row, encoders):
    """(backbone name, --weights value, row label) of one backbone entry."""
    if row in ENCODER_ROWS or row.startswith("ssl-"):
        weights = "none" if row == "random" else encoders[row]
        return "encoder-resnet50", weights, f"ResNet50 encoder, {row}"
    name, weights = row.split(":", 1)
    return name, weights, f"{name} ({weights})"


def _pm(mean, std, digits=4):
    return "n/a" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(rows):
    """Mean ± std over seeds per (K, backbone, loss), in the order first seen."""
    groups = {}
    for r in rows:
        groups.setdefault((r["shots"], r["backbone"], r["loss"]), []).append(r)
    out = []
    for (shots, backbone, loss), found in groups.items():
        entry = {"shots": shots, "backbone": backbone, "loss": loss, "seeds": len(found),
                 "chance": found[0]["chance"]}
        for m in METRICS:
            entry[m], entry[m + "_std"] = mean_std([r[m] for r in found])
        out.append(entry)
    return out


def beats(a, b, key="accuracy"):
    """Whether ``a``'s mean is above ``b``'s (a summary row, or a number) by more than
    twice the larger std; never with fewer than 2 seeds (no spread to compare with)."""
    if a["seeds"] < 2 or (isinstance(b, dict) and b["seeds"] < 2):
        return False
    if isinstance(b, (int, float)):
        return a[key] - b > 2 * a[key + "_std"]
    return a[key] - b[key] > 2 * max(a[key + "_std"], b[key + "_std"])


def markdown(summary, shots):
    found = [r for r in summary if r["shots"] == shots]
    if not found:
        return ""
    chance = found[0]["chance"]
    lines = [f"K = {shots} training images per class; mean ± std over "
             f"{found[0]['seeds']} seed(s); chance accuracy {chance:.3f}",
             "",
             "| Backbone | Loss | Accuracy | Precision | Recall | F1 | Epoch time (s) | "
             "Above chance |",
             "|---|---|---|---|---|---|---|---|"]
    for r in found:
        cells = [_pm(r[m], r[m + "_std"]) for m in METRICS[:4]]
        cells.append(_pm(r["mean_epoch_seconds"], r["mean_epoch_seconds_std"], 3))
        verdict = "n/a" if r["seeds"] < 2 else ("yes" if beats(r, chance) else "no")
        lines.append(f"| {r['backbone']} | {r['loss']} | " + " | ".join(cells)
                     + f" | {verdict} |")
    pairs = [f"{a['backbone']} {a['loss']} > {b['backbone']} {b['loss']}"
             for a in found for b in found if a is not b and beats(a, b)]
    lines += ["", "Rows above others by more than twice the larger std (accuracy): "
              + ("; ".join(pairs) if pairs else "none")]
    return "\n".join(lines)


def main(argv=None):
    from benchmarks.timing import machine_line
    from few_shot import train_few_shot

    args = parse_args(argv)
    print(machine_line(), flush=True)
    set_seed(args.seed)
    run_dir = Path(args.resume) if args.resume else \
        make_run_dir("few_shot_table", args, root=args.logs_dir)
    start = time.perf_counter()
    timings = {}
    inputs = run_dir / "inputs.json"    # the images and encoders used: a resume reuses them
    if args.resume and inputs.is_file():
        made = json.loads(inputs.read_text())
        args.image_dir = args.image_dir or made["image_dir"]
        args.pde_encoder = args.pde_encoder or made["encoders"].get("pde")
        args.supervised_encoder = args.supervised_encoder or made["encoders"].get("supervised")
    image_dir = args.image_dir
    if image_dir is None:
        t = time.perf_counter()
        image_dir = make_stage_images(args, run_dir)
        timings["orchard_and_selection"] = time.perf_counter() - t
    encoders = {"pde": args.pde_encoder, "supervised": args.supervised_encoder,
                **{f"ssl-{k}": v for k, v in args.ssl_encoders.items()}}
    if "pde" in args.rows and not encoders["pde"]:
        t = time.perf_counter()
        encoders["pde"] = train_pde_encoder(args, run_dir, image_dir)
        timings["pde_pretraining"] = time.perf_counter() - t
    if "supervised" in args.rows and not encoders["supervised"]:
        t = time.perf_counter()
        encoders["supervised"] = train_supervised_encoder(args, run_dir, image_dir)
        timings["supervised_training"] = time.perf_counter() - t
    write_json(inputs, {"image_dir": str(image_dir), "encoders": encoders})

    rows = json.loads((run_dir / "rows.json").read_text()) if args.resume else []
    done = {(r["shots"], r["seed"], r["backbone"]) for r in rows}
    # A fresh process per run: one process that ran them all grew to 24 GB (Keras keeps
    # every model's graphs) and was killed by the OOM killer at the 30th.
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1)
    for shots in args.shots:
        for seed in args.seeds:
            for row, losses in args.rows.items():
                backbone, weights, label = row_backbone(row, encoders)
                if (shots, seed, label) in done:
                    continue
                similarity = [x for x in losses if x != "transfer"]
                stages = (["transfer"] if "transfer" in losses else []) + (
                    ["similarity", "--loss", *similarity] if similarity else [])
                argv = ["--image-dir", str(image_dir), "--stages-from-names",
                        "--shots", str(shots), "--input-shape", *map(str, args.input_shape),
                        "--backbone", backbone, "--weights", str(weights),
                        "--normalize", args.normalize, "--epochs", *map(str, args.epochs),
                        "--seed", str(seed), "--logs-dir", str(run_dir / "runs"),
                        "--stages", *stages] + shlex.split(args.few_shot_args)
                print(f"\n== K={shots} seed {seed} {label}: {', '.join(losses)}")
                t = time.perf_counter()
                try:
                    out = pool.submit(train_few_shot.main, argv).result()
                except BrokenProcessPool as exc:
                    raise UserError(run_dir, f"the K={shots} seed {seed} {label} run ended "
                                    "abruptly (killed: out of memory? see dmesg)",
                                    f"continue with the same options and --resume {run_dir}"
                                    ) from exc
                seconds = time.perf_counter() - t
                found = ([("transfer", out["transfer"])] if "transfer" in losses else [])
                found += [(loss, out["similarity"][loss]) for loss in similarity]
                for loss, metrics in found:
                    rows.append({"shots": shots, "seed": seed, "backbone": label, "loss": loss,
                                 "chance": 1 / len(out["classes"]),
                                 **{m: metrics[m] for m in METRICS},
                                 "run_dir": str(out["run_dir"]), "run_seconds": seconds})
                write_json(run_dir / "rows.json", rows)
    pool.shutdown()
    timings["total"] = time.perf_counter() - start
    summary = summarise(rows)
    write_json(run_dir / "summary.json", summary)
    tables = "\n\n".join(markdown(summary, k) for k in args.shots)
    (run_dir / "table.md").write_text(tables + "\n")
    write_json(run_dir / "timings.json", timings)
    print("\n" + tables)
    print(f"\nencoders: {encoders}\nwall time {timings['total']:.0f} s "
          + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
          + f"; run folder {run_dir}")
    return {"run_dir": run_dir, "rows": rows, "summary": summary, "timings": timings,
            "encoders": encoders}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
