"""benchmarks/label_efficiency.py on the tiny profile: two encoders at 2 and 4 labelled
photos end to end, its resume, and the input errors it stops on before any work."""
import csv
import json
import shutil

import pytest
from PIL import Image

from benchmarks import label_efficiency
from utils.errors import UserError


def _argv(root, *more):
    return ["--profile", "tiny", "--seeds", "11", "--labels", "2", "4",
            "--encoders", "random", "supervised", "--data-dir", str(root / "data"),
            "--logs-dir", str(root / "logs"), "--workers", "1", *more]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_efficiency")
    return root, label_efficiency.main(_argv(root))


def test_csv_summary_and_plot(bench):
    root, result = bench
    out = result["out_dir"]
    with open(out / "label_efficiency.csv") as f:
        rows = list(csv.DictReader(f))
    cells = {(r["labels"], r["encoder"], r["column"]) for r in rows}
    assert cells == {(n, e, c) for n in ("2", "4")
                     for e, c in (("random", "frozen"), ("supervised", "frozen"),
                                  ("colour", "colour classifier"))}
    for r in rows:
        assert 0 <= float(r["mIoU"]) <= 1 and r["seed"] == "11"
        assert {"mPA", "IoU _background_", "IoU flower"} <= set(r)
    summary = (out / "summary.md").read_text()
    assert "| 2 |" in summary and "| 4 |" in summary
    assert "| U-Nets random |" in summary and "| pretrain supervised |" in summary
    assert "| wall time of the seed |" in summary
    with Image.open(out / "label_efficiency.png") as im:
        assert im.size[0] > 300
    # Every U-Net of the seed trained as many steps on its own nested draw.
    records = [json.loads(p.read_text()) for p in (out / "seed11").glob("unet_*/results.json")]
    assert len(records) == 4
    assert len({r["optimizer_steps"] for r in records}) == 1
    photos = {len(r["train_photos"]): r["train_photos"] for r in records}
    assert set(photos[2]) < set(photos[4])        # (4 is the whole split: no draw)
    args = [json.loads(p.read_text()) for p in (out / "seed11").glob("unet_*/args.json")]
    assert sorted(a["train_count"] or 0 for a in args) == [0, 0, 2, 2]
    colour = json.loads((out / "seed11" / "steps.json").read_text())["colour 2"]["result"]
    assert colour["train_photos"] == photos[2]
    # No U-Net checkpoint is left behind.
    assert not list(out.rglob("*.keras"))


def test_resume_trains_only_the_missing_cell(bench):
    root, result = bench
    out = result["out_dir"]
    record_path = out / "seed11" / "steps.json"
    record = json.loads(record_path.read_text())
    del record["unet random 4"]
    record_path.write_text(json.dumps(record))
    before = set((out / "seed11").glob("unet_*"))
    resumed = label_efficiency.main(_argv(root, "--resume", str(out)))
    assert len(set((out / "seed11").glob("unet_*")) - before) == 1
    assert "unet random 4" in json.loads(record_path.read_text())
    assert len(resumed["rows"]) == len(result["rows"])
    # A resume with other U-Net options is refused (only seeds, budgets, encoders,
    # --fine-tuned and --workers may change).
    with pytest.raises(SystemExit):
        label_efficiency.main(_argv(root, "--resume", str(out), "--unet-args=--freeze-lr 1"))


@pytest.mark.parametrize("more, message", [
    (["--labels", "4", "2"], "--labels: 4 2 is not an increasing list"),
    (["--encoders", "random", "pdee"], "--encoders: unknown encoder(s) pdee; choose from pde, "
                                        "pde_shuffled, random"),
    (["--labels", "2", "5"], "--labels: 5 photos asked for, the train split has 4"),
])
def test_bad_options_stop_before_any_work(tmp_path, more, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        label_efficiency.main(_argv(tmp_path, *more))
    assert not (tmp_path / "logs").exists()


def test_voc_without_test_split_stops_before_any_work(bench, tmp_path):
    root, _ = bench
    orchard = root / "data" / "seed11"
    voc = tmp_path / "VOCdevkit"
    shutil.copytree(orchard / "VOCdevkit", voc)
    (voc / "VOC2007" / "ImageSets" / "Segmentation" / "test.txt").unlink()
    with pytest.raises(UserError, match="test.txt: split list not found"):
        label_efficiency.main(_argv(tmp_path, "--archive", str(orchard / "archive"),
                                    "--phenology", str(orchard / "phenology.toml"),
                                    "--voc", str(voc)))
    assert not (tmp_path / "logs").exists()


def test_a_killed_training_process_ends_in_one_line_with_the_resume(tmp_path, monkeypatch):
    # The OOM killer ends a worker: the pool breaks; the run says how to continue.
    from concurrent.futures.process import BrokenProcessPool

    def killed(*args):
        raise BrokenProcessPool("a process was terminated abruptly")

    monkeypatch.setattr(label_efficiency, "run_seed", killed)
    monkeypatch.setattr(label_efficiency, "check_inputs", lambda args: None)
    with pytest.raises(UserError, match="--resume .*label_efficiency_tiny"):
        label_efficiency.main(_argv(tmp_path, "--workers", "2"))
