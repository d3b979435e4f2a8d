"""pipeline/report.py on a hand-made run folder: what is there is linked, what is not
is said, never linked."""
import json
import re

from pipeline.report import build_report, disk_bytes
from pipeline.steps import StepRecord


def test_report_links_present_plots_and_names_missing_ones(tmp_path):
    unet = tmp_path / "unet_1"
    (unet / "miou_test").mkdir(parents=True)
    (unet / "results.json").write_text("{}")
    (unet / "epoch_loss.png").write_bytes(b"png")
    (unet / "miou_test" / "confusion_matrix.png").write_bytes(b"png")
    metrics = {"IoU": [0.9, 0.25, 0.5], "classes": ["bg", "apple", "leaf"]}
    record = {"unet_frozen": {"seconds": 12.0, "result": {"run_dir": str(unet),
                                                          "test_metrics": metrics}}}
    (tmp_path / "steps.json").write_text(json.dumps(record))
    text = build_report(StepRecord(tmp_path), "| table |", ["_background_", "fruit", "leaf"])
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["unet_1/epoch_loss.png", "unet_1/miou_test/confusion_matrix.png"]
    assert "| U-Net | bg | apple | leaf |" in text          # the evaluation's own names
    assert "| PDE row, frozen encoder | 0.900 | 0.250 | 0.500 |" in text
    assert "(no predictions in this run)" in text and "(no growth curves in this run)" in text
    assert "No pair pretraining" in text
    assert re.search(r"^\| unet_frozen \| 12 \| 8 B \| unet_1 \|$", text, re.M), text


def test_disk_bytes_counts_a_hard_linked_file_once(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "b").hardlink_to(tmp_path / "a")
    assert disk_bytes(tmp_path) == 1000 and disk_bytes(tmp_path / "a") == 1000
