"""The main job's claim over several seeds: PDE against a random encoder.

Each seed runs ``run_pipeline.py`` up to the random row with every option of the
profile unchanged (``--seed`` changes the synthetic orchard's trees, the PDE pretraining
and the U-Net seeds alike), then embeds the stage images with the PDE encoder and with
a random encoder of the same seed and measures their k-NN stage accuracy
(``visualize.py embeddings``), and reads each frozen U-Net's encoder pixel by pixel with
a linear read-out (``benchmarks/pixel_probe.py``). It prints, as mean ± std over the
seeds: frozen and fine-tuned test mIoU and per-class IoU of both rows, the PDE pretext's
held-out pair accuracy, the k-NN stage accuracies, the read-out's mIoU, and whether
PDE's frozen mean (U-Net, and read-out) is above random's by more than twice the larger
standard deviation.

    python benchmarks/pde_vs_random.py                   # demo profile, seeds 11 12 13
    python benchmarks/pde_vs_random.py --seeds 11 12 13 14 15 --pipeline-args "--unet-args '--freeze-lr 3e-4'"

Everything lands in a new run folder (``seeds.json``, ``summary.md``); ``--resume RUN_DIR``
skips the seeds already finished. The same rows at fewer labelled photos, and other
encoders, are ``benchmarks/label_efficiency.py``'s (the same verdict rule); this script
keeps the k-NN and per-pixel read-outs.
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from pipeline.steps import gap_verdict, mean_std, pm as _pm  # noqa: E402
from utils.options import add_logs_dir  # noqa: E402
from utils.utils import NAME_CLASSES  # noqa: E402
from utils.run import make_run_dir, write_json  # noqa: E402

# The pipeline steps that make the two rows; predictions and growth add nothing here.
ROW_STEPS = ("orchard", "priors", "select", "pairs", "pretrain", "unet_frozen",
             "unet_finetune", "random_frozen", "random_finetune")
# (pipeline step, row, column) of every U-Net the comparison reads.
UNETS = (("unet_frozen", "pde", "frozen"), ("unet_finetune", "pde", "fine-tuned"),
         ("random_frozen", "random", "frozen"), ("random_finetune", "random", "fine-tuned"))
# The per-pixel read-outs of the frozen encoders: all five feature maps, and the three
# shallow ones alone (conv1-res3, whose kernels the demo's PDE keeps at their initial
# values; on the demo they read better than all five, for both encoders alike): result
# column -> (maps read, their name in the summary).
PROBES = {"probe": (None, "all maps"), "probe shallow": ((0, 1, 2), "maps 0-2")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="demo", help="run_pipeline.py profile (default demo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13],
                   help="one pipeline run per seed (default 11 12 13; at least 3 for a spread)")
    p.add_argument("--data-dir", default="demo_data/pde_vs_random",
                   help="where each seed's synthetic orchard is generated or found, in "
                        "seed<N>/ (the pipeline's --seed also seeds the orchard, so every seed "
                        "has its own trees; default demo_data/pde_vs_random)")
    p.add_argument("--pipeline-args", default="",
                   help="extra run_pipeline.py options for every seed, e.g. "
                        "\"--unet-args '--freeze-lr 3e-4'\"")
    p.add_argument("--knn-input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="encoder input for the k-NN stage accuracy (default: the U-Net's "
                        "--input-shape of the profile, 128 224 for demo; the tables of the demo's "
                        "64x128 U-Nets used 64 128)")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="skip the per-pixel linear read-outs of the frozen U-Nets' encoders "
                        "(benchmarks/pixel_probe.py: all five feature maps, and maps 0-2; "
                        "about 4 minutes a seed on 2 cores)")
    add_logs_dir(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue, skipping finished seeds")
    return p.parse_args(argv)


def _knn(encoder_path, image_dir, input_size, seed, out_dir):
    """k-NN stage accuracy of one encoder (None = random weights of this seed)."""
    import visualize

    argv = ["embeddings", "--image-dir", str(image_dir), "--input-size", *map(str, input_size),
            "--out-dir", str(out_dir), "--seed", str(seed)]
    if encoder_path:
        argv += ["--model-path", str(encoder_path)]
    return visualize.main(argv)["knn_accuracy"]


def _unet_input(profile):
    from pipeline.profiles import PROFILES

    return tuple(PROFILES[profile].unet.get("input_shape", (576, 1024)))


def run_seed(args, seed, out_dir):
    import run_pipeline

    argv = ["--profile", args.profile, "--seed", str(seed), "--logs-dir", str(out_dir),
            "--steps", ",".join(ROW_STEPS), "--data-dir", str(Path(args.data_dir) / f"seed{seed}"),
            *shlex.split(args.pipeline_args)]
    if args.probe:      # the frozen U-Nets' checkpoints, read below, then deleted
        argv.append("--keep-all-checkpoints")
    start = time.time()
    record = run_pipeline.main(argv)["steps"]
    pretext = record["pretrain"]["result"].get("test_metrics", {})
    result = {"seconds": round(time.time() - start, 1), "pair_accuracy": pretext.get("acc"),
              "view_accuracy": pretext.get("view_acc"), "stage_accuracy": pretext.get("stage_acc")}
    for step, row, column in UNETS:
        metrics = record[step]["result"]["test_metrics"]
        result[f"{row} {column}"] = {"mIoU": metrics["mIoU"], "IoU": metrics["IoU"]}
    size = args.knn_input_size or _unet_input(args.profile)
    image_dir = record["select"]["result"]["out_dir"]
    encoder = record["pretrain"]["result"]["encoder_path"]
    result["knn pde"] = _knn(encoder, image_dir, size, seed, out_dir / f"knn_pde_{seed}")
    result["knn random"] = _knn(None, image_dir, size, seed, out_dir / f"knn_random_{seed}")
    # The instrument check: a per-pixel colour classifier on the same photos.
    from benchmarks import colour_baseline

    colour = colour_baseline.main(["--voc", record["orchard"]["result"]["voc"],
                                   "--seed", str(seed)])
    result["colour"] = {"mIoU": colour["mIoU"], "IoU": [colour["iou"][c] for c in NAME_CLASSES]}
    if args.probe:
        from benchmarks import pixel_probe

        for step, row in (("unet_frozen", "pde"), ("random_frozen", "random")):
            for column, (maps, _) in PROBES.items():
                read = pixel_probe.probe(record["orchard"]["result"]["voc"],
                                         record[step]["result"]["model_path"], maps=maps)
                result[f"{row} {column}"] = {"mIoU": read["mIoU"],
                                             "IoU": [read["iou"][c] for c in NAME_CLASSES]}
    # The U-Net checkpoints are 180-300 MB each and nothing here reads them again.
    for path in out_dir.rglob("*.keras"):
        path.unlink()
    return result


def _verdict(what, runs, column):
    """``what``'s gap PDE - random against twice the larger std, and the paired gaps."""
    return gap_verdict(what, *([r[f"{row} {column}"]["mIoU"] for r in runs]
                               for row in ("pde", "random")))


def summarise(results):
    """Markdown: the two rows' mean ± std over seeds, per-class IoU, pretext and k-NN."""
    runs = list(results.values())
    seeds = ", ".join(results)
    lines = [f"Seeds {seeds} ({len(runs)} runs); mean ± std (population) over seeds.", "",
             "| Encoder | Frozen mIoU | Fine-tuned mIoU | k-NN stage accuracy |",
             "|---|---|---|---|"]
    for row in ("pde", "random"):
        lines.append(f"| {'PDE (classification distance)' if row == 'pde' else 'Random'} | "
                     f"{_pm(mean_std([r[f'{row} frozen']['mIoU'] for r in runs]))} | "
                     f"{_pm(mean_std([r[f'{row} fine-tuned']['mIoU'] for r in runs]))} | "
                     f"{_pm(mean_std([r[f'knn {row}'] for r in runs]), 3)} |")
    lines += ["", "Per-class test IoU (mean over seeds):", "",
              "| U-Net | " + " | ".join(NAME_CLASSES) + " |",
              "|---|" + "---|" * len(NAME_CLASSES)]
    for _, row, column in UNETS:
        mean, std = mean_std([r[f"{row} {column}"]["IoU"] for r in runs])
        lines.append(f"| {row} {column} | " + " | ".join(
            f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, std)) + " |")
    if all("colour" in r for r in runs):
        mean, std = mean_std([r["colour"]["IoU"] for r in runs])
        lines.append("| colour classifier | " + " | ".join(
            f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, std)) + " |")
        above = sum(r["pde frozen"]["mIoU"] > r["colour"]["mIoU"] for r in runs)
        lines += ["", f"Per-pixel colour classifier (benchmarks/colour_baseline.py, same photos): "
                      f"test mIoU {_pm(mean_std([r['colour']['mIoU'] for r in runs]))}; the frozen "
                      f"PDE U-Net is above it on {above} of {len(runs)} seeds."]
    pair = mean_std([r["pair_accuracy"] for r in runs])
    lines += ["", f"PDE pretext, held-out pair accuracy: {_pm(pair, 3)} (chance 0.25)"]
    if all(r.get("stage_accuracy") is not None for r in runs):
        view, stage = (mean_std([r[f"{half}_accuracy"] for r in runs]) for half in ("view", "stage"))
        lines.append(f"  same view or not: {_pm(view, 3)}, same stage or not: {_pm(stage, 3)} "
                     f"(chance 0.5 each)")
    lines.append(_verdict("Frozen mIoU", runs, "frozen"))
    probes = [c for c in PROBES if all(f"pde {c}" in r for r in runs)]
    if probes:
        lines += ["", "Per-pixel linear read-out of the frozen U-Nets' encoders "
                      "(benchmarks/pixel_probe.py, same photos), test IoU:", "",
                  "| Encoder, maps read | " + " | ".join(NAME_CLASSES) + " | mIoU |",
                  "|---|" + "---|" * (len(NAME_CLASSES) + 1)]
        for column in probes:
            for row in ("pde", "random"):
                mean, std = mean_std([r[f"{row} {column}"]["IoU"] for r in runs])
                miou = _pm(mean_std([r[f"{row} {column}"]["mIoU"] for r in runs]))
                lines.append(f"| {row}, {PROBES[column][1]} | " + " | ".join(
                    f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, std)) + f" | {miou} |")
        lines.append("")
        lines += [_verdict(f"Read-out mIoU ({PROBES[c][1]})", runs, c) for c in probes]
    lines.append(f"Wall time per seed: {_pm(mean_std([r['seconds'] for r in runs]), 0)} s")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.timing import machine_line

    print(machine_line(), flush=True)
    if args.resume:
        out_dir = Path(args.resume)
        results = json.loads((out_dir / "seeds.json").read_text()) \
            if (out_dir / "seeds.json").is_file() else {}
    else:
        out_dir, results = make_run_dir("pde_vs_random", args, root=args.logs_dir), {}
    for seed in args.seeds:
        if str(seed) in results:
            print(f"seed {seed}: done earlier, skipped")
            continue
        print(f"=== seed {seed} ===", flush=True)
        results[str(seed)] = run_seed(args, seed, out_dir)
        write_json(out_dir / "seeds.json", results)
    summary = summarise(results)
    (out_dir / "summary.md").write_text(summary + "\n")
    print("\n" + summary + f"\n\nEverything is in {out_dir}")
    return {"out_dir": out_dir, "results": results, "summary": summary}


if __name__ == "__main__":
    main()
