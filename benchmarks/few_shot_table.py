"""The few-shot study's table on the synthetic orchard's stages: rows = backbone x loss,
columns = accuracy, weighted precision, recall, F1 and mean epoch time, at K = 5 and 10.

The backbones are this project's ResNet50 encoder initialised three ways: from a PDE
encoder (step 5), at random (Glorot uniform), and from the supervised stage classifier
(``other_ssl/train_supervised.py``); ``keras.applications`` models can be added as
``BACKBONE:WEIGHTS`` rows (e.g. ``mobilenetv2:imagenet`` when the file is in Keras's
cache). Each backbone and K is one ``few_shot/train_few_shot.py`` run (the same K-shot
split for every backbone): its "transfer" row is stage 1, its loss rows stage 2.

    python benchmarks/few_shot_table.py                       # CPU-sized: tiny orchard, tiny encoders
    python benchmarks/few_shot_table.py --pde-encoder logs/pde_class_<time>/encoder.weights.h5 \\
        --supervised-encoder logs/supervised_stage_<time>/encoder.weights.h5 \\
        --image-dir out --input-shape 256 256 --epochs 20 20   # the study's sizes

Without ``--image-dir`` a small synthetic orchard is generated and its stage images
selected (steps 0-2); without ``--pde-encoder`` / ``--supervised-encoder`` tiny ones
are trained here through the scripts' own ``main(argv)`` (steps 3 and 5, and the
supervised baseline). Everything goes into one new run folder (``rows.json``,
``table.md``). The default sizes are for a 2-core CPU: their numbers show the
protocol runs, not what the encoders can do.
"""
import argparse
import os
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from few_shot.backbones import BACKBONES  # noqa: E402
from few_shot.losses import LOSSES  # noqa: E402
from utils.errors import writable_dir  # noqa: E402
from utils.run import make_run_dir, write_json  # noqa: E402
from utils.utils import set_seed  # noqa: E402

# The encoder rows: this project's ResNet50 encoder and where its weights come from.
ENCODER_ROWS = ("pde", "random", "supervised")
METRICS = ("accuracy", "precision", "recall", "f1", "mean_epoch_seconds")


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
    p.add_argument("--backbones", default="pde,random,supervised",
                   help="comma-separated rows: pde, random, supervised (this project's "
                        "ResNet50 encoder) and/or BACKBONE:WEIGHTS with a keras.applications "
                        f"backbone ({', '.join(b for b in BACKBONES if not b.startswith('encoder'))}) "
                        "(default pde,random,supervised)")
    p.add_argument("--losses", default="transfer,triplet,arcface",
                   help="comma-separated: transfer (stage 1) and any of "
                        f"{', '.join(LOSSES)} (default transfer,triplet,arcface)")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10], help="K values (default 5 10)")
    p.add_argument("--input-shape", type=int, nargs=2, default=[32, 32], metavar=("H", "W"),
                   help="few-shot input size (the study: 256 256; default 32 32, the tiny "
                        "encoders' own)")
    p.add_argument("--epochs", type=int, nargs=2, default=[10, 10], metavar=("S1", "S2"),
                   help="epochs of stage 1 and stage 2 (default 10 10)")
    p.add_argument("--normalize", default="imagenet", help="(default imagenet, the study's)")
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
    p.add_argument("--few-shot-args", default="--run-eagerly --no-plots",
                   help="extra train_few_shot.py options for every row (default '--run-eagerly "
                        "--no-plots': the heads on cached features are too small to repay "
                        "graph tracing, and the table needs the metrics only)")
    p.add_argument("--seed", type=int, default=11, help="(default 11)")
    p.add_argument("--logs-dir", default="logs", type=writable_dir,
                   help="parent of the run folder (default logs/)")
    args = p.parse_args(argv)
    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    args.losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    for row in args.backbones:
        name = row.split(":")[0]
        if row not in ENCODER_ROWS and (":" not in row or name not in BACKBONES):
            p.error(f"--backbones: {row!r} is neither one of {', '.join(ENCODER_ROWS)} nor "
                    f"BACKBONE:WEIGHTS with a backbone from {', '.join(BACKBONES)}")
    unknown = [x for x in args.losses if x != "transfer" and x not in LOSSES]
    if unknown:
        p.error(f"--losses: unknown {', '.join(unknown)}; choose from transfer, {', '.join(LOSSES)}")
    for path in (args.pde_encoder, args.supervised_encoder, args.image_dir):
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
    """(backbone name, --weights value, row label) of one --backbones entry."""
    if row in ENCODER_ROWS:
        weights = "none" if row == "random" else encoders[row]
        return "encoder-resnet50", weights, f"ResNet50 encoder, {row}"
    name, weights = row.split(":", 1)
    return name, weights, f"{name} ({weights})"


def markdown(rows, shots):
    lines = [f"K = {shots} training images per class",
             "",
             "| Backbone | Loss | Accuracy | Precision | Recall | F1 | Epoch time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["shots"] != shots:
            continue
        lines.append(f"| {r['backbone']} | {r['loss']} | {r['accuracy']:.4f} | "
                     f"{r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | "
                     f"{r['mean_epoch_seconds']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    from few_shot import train_few_shot

    args = parse_args(argv)
    set_seed(args.seed)
    run_dir = make_run_dir("few_shot_table", args, root=args.logs_dir)
    start = time.perf_counter()
    timings = {}
    image_dir = args.image_dir
    if image_dir is None:
        t = time.perf_counter()
        image_dir = make_stage_images(args, run_dir)
        timings["orchard_and_selection"] = time.perf_counter() - t
    encoders = {"pde": args.pde_encoder, "supervised": args.supervised_encoder}
    if "pde" in args.backbones and not encoders["pde"]:
        t = time.perf_counter()
        encoders["pde"] = train_pde_encoder(args, run_dir, image_dir)
        timings["pde_pretraining"] = time.perf_counter() - t
    if "supervised" in args.backbones and not encoders["supervised"]:
        t = time.perf_counter()
        encoders["supervised"] = train_supervised_encoder(args, run_dir, image_dir)
        timings["supervised_training"] = time.perf_counter() - t

    rows = []
    similarity = [x for x in args.losses if x != "transfer"]
    for shots in args.shots:
        for row in args.backbones:
            backbone, weights, label = row_backbone(row, encoders)
            common = ["--image-dir", str(image_dir), "--stages-from-names", "--shots", str(shots),
                      "--input-shape", *map(str, args.input_shape), "--backbone", backbone,
                      "--weights", str(weights), "--normalize", args.normalize,
                      "--epochs", *map(str, args.epochs), "--seed", str(args.seed),
                      "--logs-dir", str(run_dir / "runs")] + shlex.split(args.few_shot_args)
            stages = (["transfer"] if "transfer" in args.losses else []) + (
                ["similarity", "--loss", *similarity] if similarity else [])
            print(f"\n== K={shots} {label}: {', '.join(args.losses)}")
            t = time.perf_counter()
            out = train_few_shot.main(common + ["--stages", *stages])
            seconds = time.perf_counter() - t
            results = ([("transfer", out["transfer"])] if "transfer" in args.losses else [])
            results += [(loss, out["similarity"][loss]) for loss in similarity]
            for loss, metrics in results:
                rows.append({"shots": shots, "backbone": label, "loss": loss,
                             **{m: metrics[m] for m in METRICS},
                             "run_dir": str(out["run_dir"]), "run_seconds": seconds})
            write_json(run_dir / "rows.json", rows)
    timings["total"] = time.perf_counter() - start
    tables = "\n\n".join(markdown(rows, k) for k in args.shots)
    (run_dir / "table.md").write_text(tables + "\n")
    write_json(run_dir / "timings.json", timings)
    print("\n" + tables)
    print(f"\nencoders: {encoders}\nwall time {timings['total']:.0f} s "
          + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
          + f"; run folder {run_dir}")
    return {"run_dir": run_dir, "rows": rows, "timings": timings, "encoders": encoders}


if __name__ == "__main__":
    main()
