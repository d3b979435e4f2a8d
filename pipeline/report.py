"""One page per main-job run: ``report.md`` in the run folder brings together the results
table beside the published rows, the per-class IoU, the pretext's pair accuracy, every
model's loss curves, the confusion matrices, the prediction overlays, the growth curves
and each step's time and disk use, with the images linked relative to the run folder so
that a Markdown viewer shows them inline."""
import os
from pathlib import Path

from pipeline.steps import UNET_STEPS, step_outputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
STEP_TITLES = {"unet_frozen": "PDE row, frozen encoder", "unet_finetune": "PDE row, fine-tuned",
               "random_frozen": "random row, frozen encoder",
               "random_finetune": "random row, fine-tuned"}


def disk_bytes(path):
    """Bytes under ``path`` (a file or a folder); a hard-linked file is counted once."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for name in files:
            stat = (Path(root) / name).stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def _size(n_bytes):
    if n_bytes >= 2**20:
        return f"{n_bytes / 2**20:.1f} MB"
    return f"{n_bytes / 2**10:.0f} KB" if n_bytes >= 2**10 else f"{n_bytes} B"


def _link(path, base):
    """Markdown image of ``path`` relative to ``base``, or None when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    rel = Path(os.path.relpath(path.resolve(), Path(base).resolve())).as_posix()
    return f"![{path.name}]({rel})"


def _images(paths, base):
    return [link for link in (_link(p, base) for p in paths) if link]


def step_paths(step, result):
    """The files and folders a finished step wrote: its own folder where it has one."""
    result = result or {}
    if step == "pretrain" and result.get("run_dir"):
        return [Path(result["run_dir"])]
    if step == "predict" and result.get("saved"):
        return sorted({Path(p).parent for p in result["saved"]})
    paths = [Path(p) for p in step_outputs(step, result) if p and Path(p).exists()]
    # A U-Net lists its folder and a file inside it: keep the folder.
    paths = [p for p in paths if not any(q != p and q in p.parents for q in paths)]
    parents = {p.parent for p in paths}
    if len(paths) > 2 and len(parents) == 1 and all(p.is_file() for p in paths):
        return [parents.pop()]                  # the pair index: its folder
    return paths


def step_table(run):
    """Markdown table of each finished step's time and the disk its outputs use."""
    lines = ["| Step | Time (s) | Disk | Where |", "|---|---|---|---|"]
    for step, entry in run.record.items():
        paths = [p for p in step_paths(step, entry.get("result")) if p.exists()]
        where = ", ".join(Path(os.path.relpath(p.resolve(), run.dir.resolve())).as_posix()
                          for p in paths) or "-"
        lines.append(f"| {step} | {entry.get('seconds', 0):.0f} | "
                     f"{_size(sum(disk_bytes(p) for p in paths))} | {where} |")
    lines.append(f"| **run folder** | {sum(e.get('seconds', 0) for e in run.record.values()):.0f} "
                 f"| {_size(disk_bytes(run.dir))} | . |")
    return "\n".join(lines)


def per_class_table(run, names):
    """Test IoU per class of every U-Net step, one row each."""
    rows = []
    for step in UNET_STEPS:
        iou = run.result(step).get("test_metrics", {}).get("IoU")
        if iou:
            rows.append(f"| {STEP_TITLES[step]} | " + " | ".join(f"{v:.3f}" for v in iou) + " |")
    if not rows:
        return "No U-Net was evaluated in this run."
    metrics = [run.result(s).get("test_metrics", {}) for s in UNET_STEPS]
    width = max(len(m.get("IoU") or []) for m in metrics)
    # The evaluation's own class names where it recorded them (a user's classes).
    names = next((m["classes"] for m in metrics if len(m.get("classes") or []) == width),
                 list(names)[:width] + [f"class_{i}" for i in range(len(names), width)])
    return "\n".join(["| U-Net | " + " | ".join(names) + " |", "|---|" + "---|" * width, *rows])


def pretext_lines(run):
    metrics = run.result("pretrain").get("test_metrics", {})
    if "acc" not in metrics:
        return ["No pair pretraining in this run (or it logged no held-out pair accuracy)."]
    lines = [f"Held-out pair accuracy **{metrics['acc']:.3f}** on the test dates' pairs "
             "(four classes, chance 0.25)."]
    if "stage_acc" in metrics:
        lines.append(f"Its two halves: same view or not {metrics['view_acc']:.3f}, same stage "
                     f"or not {metrics['stage_acc']:.3f} (chance 0.5 each).")
    return lines


def model_dirs(run):
    """(title, run folder) of every model this run trained, in step order."""
    dirs = []
    pretrain = run.result("pretrain")
    if pretrain.get("run_dir"):
        dirs.append(("pretraining", Path(pretrain["run_dir"])))
    for step in UNET_STEPS:
        if run.result(step).get("run_dir"):
            dirs.append((STEP_TITLES[step], Path(run.result(step)["run_dir"])))
    return dirs


def build_report(run, table, names):
    """The report's Markdown text. ``table``: the results table run_pipeline printed."""
    base = run.dir
    out = [f"# Run report: {run.dir.name}", "",
           "Everything below is this run's; the published rows are the paper's, measured at "
           "its scale on real photos. Images are linked relative to this folder.", "",
           "## Results beside the published rows", "", table, "",
           "## Per-class test IoU", "", per_class_table(run, names), "",
           "## The pretext", "", *pretext_lines(run), ""]
    out += ["## Loss curves", ""]
    for title, folder in model_dirs(run):
        out += [f"### {title}", "", *(_images([folder / "epoch_loss.png"], base)
                                      or ["(no epoch_loss.png)"]), ""]
    out += ["## Confusion matrices (test split)", ""]
    for title, folder in model_dirs(run):
        found = _images(sorted(folder.glob("miou_*/confusion_matrix.png")), base)
        if found:
            out += [f"### {title}", "", *found, ""]
    predictions = Path(run.result("predict").get("out_dir") or run.dir / "predictions")
    overlays = _images(sorted(p for p in predictions.glob("*")
                              if p.suffix.lower() in IMAGE_SUFFIXES), base) \
        if predictions.is_dir() else []
    out += ["## Prediction overlays", "", *(overlays or ["(no predictions in this run)"]), ""]
    growth = run.result("growth")
    plots = _images(growth.get("plots", []), base)
    out += ["## Growth curves", ""]
    if plots:
        camera = growth.get("camera")
        out += [f"Class shares over the season{f' for camera {camera}' if camera else ''}.", "",
                *plots, ""]
    else:
        out += ["(no growth curves in this run)", ""]
    out += ["## Time and disk of each step", "", step_table(run), ""]
    return "\n".join(out)


def write_report(run, table, names):
    """Write ``report.md`` into the run folder and return its path."""
    path = run.dir / "report.md"
    tmp = path.with_name("tmp-report.md")
    tmp.write_text(build_report(run, table, names))
    os.replace(tmp, path)
    return path
