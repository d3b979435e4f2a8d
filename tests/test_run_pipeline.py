"""run_pipeline.py and benchmarks/paper_table.py end to end on the tiny profile.

One tiny orchard serves both; every model step runs eagerly at 64x64 for 2 steps.
The tiny run_pipeline.py run (both rows, about 2 minutes on 2 cores) is in the default
suite; paper_table's is marked slow (``python -m pytest tests/test_run_pipeline.py
--runslow``).
"""
import csv
import json
import re
from pathlib import Path

import pytest

import run_pipeline
from benchmarks import paper_table
from data_processing.names import parse_stage_name
from pipeline.steps import StepRecord


NUMBER_ROW = re.compile(r"^\| (?P<label>[^|]+, this run) \|[^|]+\|"
                        r"(?P<cells>( [0-9.]+ \|){4})$", re.M)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    result = run_pipeline.main(["--profile", "tiny", "--logs-dir", str(root / "logs"),
                                "--data-dir", str(root / "data")])
    return root, result


def test_every_step_leaves_its_artifacts(tiny_run):
    root, result = tiny_run
    run = Path(result["run_dir"])
    steps = json.loads((run / "steps.json").read_text())
    assert sorted(steps) == sorted(run_pipeline.STEPS)      # in the order they finished
    assert (root / "data" / "archive").is_dir() and (root / "data" / "phenology.toml").is_file()
    assert (run / "out" / "manifest.csv").is_file()
    # Steps 1 and 2 look at the orchard's own presets (the tiny one has only close-up 6).
    assert steps["orchard"]["result"]["presets"] == [6]
    assert {parse_stage_name(p.name).preset for p in (run / "out").glob("*.jpg")} == {6}
    for name in ("train", "val", "test"):
        x, y = steps["pairs"]["result"]["splits"][name]
        assert Path(x).is_file() and Path(y).is_file()
    assert Path(steps["pretrain"]["result"]["encoder_path"]).is_file()
    for step in ("unet_frozen", "unet_finetune", "random_frozen", "random_finetune"):
        unet = steps[step]["result"]
        assert (Path(unet["run_dir"]) / "miou_test" / "metrics.json").is_file()
        assert 0.0 <= unet["test_metrics"]["mIoU"] <= 1.0
    # Only the U-Net the predictions used is kept; the encoder file stays.
    kept = run_pipeline.kept_unet(StepRecord(run))
    assert [str(p) for p in run.rglob("*.keras")] == [kept]
    random_args = json.loads((Path(steps["random_frozen"]["result"]["run_dir"]) / "args.json")
                             .read_text())
    assert not random_args["model_path"] and not random_args["init_model"]
    # The fine-tuned U-Net continued the frozen-only one's frozen phase (epoch 1).
    frozen_dir = Path(steps["unet_frozen"]["result"]["run_dir"])
    tuned_args = json.loads((Path(steps["unet_finetune"]["result"]["run_dir"]) / "args.json")
                            .read_text())
    assert Path(tuned_args["init_model"]).parent == frozen_dir
    assert tuned_args["init_epoch"] == 1 and not tuned_args["model_path"]
    assert len(list((run / "predictions").glob("*"))) == run_pipeline.PROFILES["tiny"].predict_images
    # Without a GPU the random row trained in a second process, which logged its steps.
    log = (run / "random_row.log").read_text()
    assert "random_frozen finished" in log and "random_finetune finished" in log
    # The frozen row stopped after its frozen phase (frozen_row_epochs).
    frozen_log = Path(steps["unet_frozen"]["result"]["run_dir"]) / "training_log.csv"
    assert len(frozen_log.read_text().strip().splitlines()) == 1 + 1
    growth = steps["growth"]["result"]
    assert Path(growth["shares_csv"]).is_file() and all(Path(p).is_file() for p in growth["plots"])
    record = (run / "results.md").read_text()
    assert record.startswith(result["table"]) and "held-out pair accuracy" in record


def test_table_has_this_runs_numbers_beside_the_published_row(tiny_run):
    _, result = tiny_run
    table = result["table"]
    rows = NUMBER_ROW.findall(table)
    assert [r[0] for r in rows] == ["PDE (classification distance), this run",
                                    "Glorot uniform (random), this run"], table
    for row in rows:
        values = [float(v) for v in re.findall(r"[0-9.]+", row[1])]
        assert len(values) == 4 and all(0 <= v <= 1 for v in values)
    assert "PDE (classification distance), published | 600,000 pairs from 3,100 images | 0.5502" in table


def test_report_shows_every_plot_of_the_run_and_links_only_files_that_exist(tiny_run):
    _, result = tiny_run
    report = Path(result["report"])
    assert report == Path(result["run_dir"]) / "report.md"
    text = report.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    missing = [link for link in links if not (report.parent / link).is_file()]
    assert links and not missing, missing
    # The pretraining's and all four U-Nets' curves, each U-Net's confusion matrix, every
    # overlay and the growth plots.
    assert sum(link.endswith("epoch_loss.png") for link in links) == 5
    assert sum(link.endswith("miou_test/confusion_matrix.png") for link in links) == 4
    assert sum(link.startswith("predictions/") for link in links) == \
        run_pipeline.PROFILES["tiny"].predict_images
    assert any(link.endswith("growth_smoothed.png") for link in links)
    assert result["table"] in text and "held-out pair accuracy" in text.lower()
    for step in run_pipeline.STEPS:
        assert re.search(rf"^\| {step} \| \d+ \| [0-9.]+ [KM]?B \|", text, re.M), step


def test_resume_skips_finished_steps(tiny_run, capsys):
    root, result = tiny_run
    again = run_pipeline.main(["--profile", "tiny", "--resume", str(result["run_dir"]),
                               "--data-dir", str(root / "data")])
    out = capsys.readouterr().out
    assert out.count("done earlier, skipped") == len(run_pipeline.STEPS)
    assert out.strip().splitlines()[-1].endswith(str(Path(result["run_dir"]) / "report.md"))
    assert again["table"] == result["table"]


def test_fine_tuned_unet_starts_from_the_frozen_phase_checkpoint(tmp_path):
    from pipeline.steps import unet_inputs

    common = ("voc", "logs", 3, 20, 30, "enc.weights.h5")
    frozen = unet_inputs(*common, frozen_only=True)
    assert frozen["save_period"] == 20 and frozen["frozen_only"]
    assert frozen["model_path"] == "enc.weights.h5" and not frozen["final_optimizer_state"]

    # No checkpoint at epoch 20 (an early stop): the fine-tuned run trains both phases.
    (tmp_path / "ep010-loss0.500-val_loss0.500.keras").write_text("")
    tuned = unet_inputs(*common, frozen_only=False, frozen_run=tmp_path)
    assert "init_model" not in tuned and tuned["model_path"] == "enc.weights.h5"
    start = tmp_path / "ep020-loss0.400-val_loss0.400.keras"
    start.write_text("")
    tuned = unet_inputs(*common, frozen_only=False, frozen_run=tmp_path)
    assert tuned["init_model"] == str(start)
    assert tuned["init_epoch"] == 20 and "model_path" not in tuned
    assert tuned["save_period"] == 0 and not tuned["frozen_only"]


def test_unknown_step_and_lone_archive_are_refused():
    with pytest.raises(SystemExit):
        run_pipeline.parse_args(["--steps", "orchard,nonsense"])
    with pytest.raises(SystemExit):
        run_pipeline.parse_args(["--archive", "somewhere"])


@pytest.mark.slow
def test_paper_table_tiny_writes_csv_and_markdown(tiny_run):
    root, _ = tiny_run
    result = paper_table.main(["--profile", "tiny", "--rows", "random,pde_class",
                               "--logs-dir", str(root / "table"), "--data-dir", str(root / "data")])
    run = Path(result["run_dir"])
    with open(run / "table.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"random", "pde_class"}
    for r in rows.values():
        for key in ("frozen mIoU", "frozen mPA", "tuned mIoU", "tuned mPA"):
            assert 0.0 <= float(r[key]) <= 1.0
    md = (run / "table.md").read_text()
    assert "Glorot uniform (random), this run" in md and "0.2309" in md
    # A rerun of the same folder computes nothing again.
    again = paper_table.main(["--profile", "tiny", "--rows", "random,pde_class",
                              "--resume", str(run), "--data-dir", str(root / "data")])
    assert again["rows"] == result["rows"]


def test_paper_table_refuses_unknown_rows_and_missing_imagenet_file(tmp_path):
    with pytest.raises(SystemExit):
        paper_table.parse_args(["--rows", "random,byol_v9"])
    with pytest.raises(SystemExit):
        paper_table.parse_args(["--rows", "imagenet"])
    with pytest.raises(SystemExit):
        paper_table.parse_args(["--rows", "imagenet", "--imagenet-weights", str(tmp_path / "no.h5")])


def _fake_run(tmp_path):
    """A run record with both rows finished, and the files the U-Net steps leave."""
    run = StepRecord(tmp_path)
    metrics = {"mIoU": 0.5, "mPA": 0.6, "IoU": [0.9, 0.1, 0.7, 0.3, 0.5]}
    run.record["pairs"] = {"result": {"counts": {"0": 10, "1": 10}, "n_images": 8}}
    run.record["pretrain"] = {"result": {"test_metrics": {"acc": 0.66, "view_acc": 0.97,
                                                           "stage_acc": 0.68}}}
    (tmp_path / "pde").mkdir()
    (tmp_path / "pde" / "ep003-loss1.0-val_loss1.0.keras").write_text("x")
    (tmp_path / "pde" / "encoder.weights.h5").write_text("x")
    for step, best in (("unet_frozen", 0.40), ("unet_finetune", 0.35),
                       ("random_frozen", 0.30), ("random_finetune", 0.20)):
        folder = tmp_path / step
        folder.mkdir()
        for name in ("best_epoch.keras", "last_epoch.keras"):
            (folder / name).write_text("x")
        (folder / "results.json").write_text(json.dumps({"best_val_mIoU": best}))
        run.record[step] = {"result": {"run_dir": str(folder),
                                       "model_path": str(folder / "best_epoch.keras"),
                                       "test_metrics": dict(metrics, mIoU=best)}}
    return run


def test_one_run_prints_the_pde_row_and_the_random_row(tmp_path):
    run = _fake_run(tmp_path)
    args = run_pipeline.parse_args([])
    assert args.baseline and set(run_pipeline.BASELINE_STEPS) < set(run_pipeline.STEPS)
    table = run_pipeline.results_table(args, run)
    assert "| PDE (classification distance), this run | 20 pairs from 8 images | 0.4000 |" in table
    assert "| Glorot uniform (random), this run | none | 0.3000 | 0.6000 | 0.2000 |" in table
    lines = run_pipeline.summary_lines(run, ["bg", "fruit", "leaf", "trunk", "flower"])
    assert lines[0].startswith("PDE pretext: held-out pair accuracy 0.660")
    assert "same view or not 0.970, same stage or not 0.680" in lines[1]
    assert any(l.startswith("random_frozen") and "fruit 0.100" in l for l in lines)
    # --init random is that row already: no second random row.
    assert not run_pipeline.parse_args(["--init", "random"]).baseline


def test_pruning_keeps_the_encoder_and_the_better_unet_only(tmp_path):
    run = _fake_run(tmp_path)
    # The frozen-only U-Net has the higher best val_mIoU (0.40 > 0.35): it is kept.
    assert run_pipeline.kept_unet(run) == str(tmp_path / "unet_frozen" / "best_epoch.keras")
    run_pipeline.prune_checkpoints(run)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.keras"))
    assert left == ["unet_frozen/best_epoch.keras"]
    assert (tmp_path / "pde" / "encoder.weights.h5").is_file()


def test_kept_resume_point_loses_its_optimizer_state_but_not_its_weights(tmp_path):
    import keras
    import numpy as np

    from utils.run import Run, checkpoint_epoch, has_optimizer_state

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(64), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(np.ones((8, 4)), np.zeros((8, 3)), epochs=1, verbose=0)
    path = Run(tmp_path).save_model(model, "last_epoch.keras", 7, include_optimizer=True)
    before = path.stat().st_size
    assert has_optimizer_state(path)
    after = run_pipeline._drop_optimizer_state(path)
    assert after < before and not has_optimizer_state(path)
    assert checkpoint_epoch(path) == 7
    reloaded = keras.models.load_model(path, compile=False)
    for a, b in zip(model.weights, reloaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # With a named copy of the same epoch beside it, that copy takes its place (no
    # rewrite); a copy of another epoch does not.
    run = Run(tmp_path / "twin")
    run.dir.mkdir()
    last = run.save_model(model, "last_epoch.keras", 7, include_optimizer=True)
    other = run.save_model(model, "ep006.keras", 6)
    twin = run.save_model(model, "ep007.keras", 7)
    inode = twin.stat().st_ino
    assert run_pipeline._strip_resume_state(last) > 0
    assert last.stat().st_ino == inode and not twin.exists() and other.exists()
    assert not has_optimizer_state(last) and checkpoint_epoch(last) == 7
    assert run_pipeline._strip_resume_state(last) == 0


def test_two_processes_finishing_steps_keep_each_others_records(tmp_path):
    # The random row's process and the main one share steps.json: each write re-reads it.
    main, second = StepRecord(tmp_path), StepRecord(tmp_path)
    (tmp_path / "enc.h5").write_text("x")
    main.finish("pretrain", {"encoder_path": str(tmp_path / "enc.h5")}, 1.0)
    second.finish("predict", {}, 2.0)          # its copy predates the pretrain record
    main.finish("growth", {}, 3.0)
    assert set(StepRecord(tmp_path).record) == {"pretrain", "predict", "growth"}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_lower_priority_reaches_threads_already_running_and_later_ones():
    """Linux gives each thread its own niceness: the random row's process must lower
    every thread it already has, not only the main one. Run in a child process, whose
    priority nothing else needs."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, threading
        from pathlib import Path
        from run_pipeline import lower_priority

        def niceness():
            return [os.getpriority(os.PRIO_PROCESS, int(t.name))
                    for t in Path("/proc/self/task").iterdir()]

        stop = threading.Event()
        early = [threading.Thread(target=stop.wait) for _ in range(3)]
        for t in early:
            t.start()
        before = niceness()
        target = max(before) + 3
        lower_priority(target)
        later = threading.Thread(target=stop.wait)
        later.start()
        print(len(before), max(before), len(niceness()), min(niceness()), target)
        stop.set()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(run_pipeline.__file__).parent, check=True).stdout.split()
    threads_before, most_before, threads_after, least_after, target = map(int, out[-5:])
    assert threads_before >= 4 and most_before < target
    assert threads_after == threads_before + 1 and least_after == target


def test_pde_vs_random_reads_a_seeds_pipeline_record(tiny_run, tmp_path, monkeypatch):
    # The pipeline itself is the fixture's tiny run; pde_vs_random's own work (k-NN
    # stage accuracies, the colour classifier, the summary) runs for real on its files.
    from benchmarks import pde_vs_random

    _, result = tiny_run
    monkeypatch.setattr(run_pipeline, "main", lambda argv: {"steps": result["steps"]})
    out = pde_vs_random.main(["--profile", "tiny", "--seeds", "11", "--no-probe",
                              "--logs-dir", str(tmp_path)])
    seed = out["results"]["11"]
    assert 0 <= seed["knn pde"] <= 1 and 0 <= seed["knn random"] <= 1
    assert 0 <= seed["colour"]["mIoU"] <= 1
    assert "Frozen mIoU" in out["summary"] and (out["out_dir"] / "summary.md").is_file()
