"""Step 2: select_img on a tiny archive of real JPEG files."""
import csv
import os

import pytest
from PIL import Image

from data_processing import select_img
from data_processing.date_pro import Phenology, Stage, write_phenology

CAMS = {"CAM000001": "2021-03-05", "ORCHARD-LONG-ID-22": "2021-03-10"}


@pytest.fixture()
def archive(tmp_path):
    """Two cameras, presets 1 and 2, times 09 and 12, photos 2021-03-01..03-20; a
    season of March with 3-day windows at -2 and +5 days and a harvested stage."""
    root = tmp_path / "archive"
    for cam in CAMS:
        (root / cam).mkdir(parents=True)
        for day in range(1, 21):
            for preset in (1, 2):
                for hour in ("09", "12"):
                    Image.new("RGB", (8, 6), (day * 10, preset * 60, int(hour))).save(
                        root / cam / f"{preset}_2021-03-{day:02d}_{hour}.jpg", quality=90)
    toml = tmp_path / "phenology.toml"
    write_phenology(toml, Phenology("2021-03-01", "2021-03-31", 3,
                                    (Stage("early", -2), Stage("mid", 5), Stage("harvested", last=True)),
                                    CAMS))
    return root, toml


def run(archive, out, *extra):
    root, toml = archive
    return select_img.main(["--archive", str(root), "--phenology", str(toml), "--presets", "1", "2",
                            "--times", "09", "12", "--out", str(out), "--workers", "2", *extra])


def test_names_manifest_counts(archive, tmp_path, capsys):
    out = tmp_path / "out"
    res = run(archive, out)
    files = sorted(p.name for p in out.iterdir() if p.suffix == ".jpg")
    # Camera 1: bud 03-05 -> early 03-03..05, mid 03-10..12, harvested 03-18..20.
    cam1 = [f for f in files if f.startswith("CAM000001p1t09")]
    assert cam1 == [f"CAM000001p1t09i0d2021-03-{d:02d}_09.jpg" for d in (3, 4, 5)] + \
                   [f"CAM000001p1t09i1d2021-03-{d:02d}_09.jpg" for d in (10, 11, 12)] + \
                   [f"CAM000001p1t09i2d2021-03-{d:02d}_09.jpg" for d in (18, 19, 20)]
    # Long id: bud 03-10 -> early 03-08..10, mid 03-15..17.
    assert "ORCHARD-LONG-ID-22p2t12i1d2021-03-17_12.jpg" in files
    assert "ORCHARD-LONG-ID-22p2t12i0d2021-03-08_12.jpg" in files
    assert len(files) == 2 * 2 * 2 * 3 * 3
    # Same bytes as the source photo.
    assert (out / "CAM000001p2t12i1d2021-03-11_12.jpg").read_bytes() == \
        (archive[0] / "CAM000001" / "2_2021-03-11_12.jpg").read_bytes()
    with open(res["manifest"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "camera", "preset", "time", "stage", "date"]
    assert sorted(r["file"] for r in rows) == files
    row = next(r for r in rows if r["file"] == "ORCHARD-LONG-ID-22p1t09i2d2021-03-19_09.jpg")
    assert row == {"file": row["file"], "camera": "ORCHARD-LONG-ID-22", "preset": "1", "time": "09",
                   "stage": "2", "date": "2021-03-19"}
    assert res["counts"] == {cam: {0: 12, 1: 12, 2: 12} for cam in CAMS}
    printed = capsys.readouterr().out
    assert "ORCHARD-LONG-ID-22" in printed and "harvested" in printed


def test_rerun_identical_then_conflict(archive, tmp_path):
    out = tmp_path / "out"
    run(archive, out)
    again = run(archive, out)               # identical content: fine, nothing copied
    assert again["copied"] == 0 and again["kept"] == 72
    victim = out / "CAM000001p1t09i0d2021-03-03_09.jpg"
    victim.write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError, match="CAM000001p1t09i0d2021-03-03_09.jpg.*--skip-existing"):
        run(archive, out)
    assert victim.read_bytes() == b"someone else's file"
    res = run(archive, out, "--skip-existing")
    assert victim.read_bytes() == b"someone else's file"
    assert res["skipped"] == [str(victim)] and res["counts"]["CAM000001"][0] == 11


def test_links_and_per_camera_manifest(archive, tmp_path):
    out = tmp_path / "out"
    cam1, cam2 = CAMS
    run(archive, out, "--link", "--cameras", cam1)
    name = "CAM000001p1t09i1d2021-03-10_09.jpg"
    assert os.stat(out / name).st_ino == os.stat(archive[0] / cam1 / "1_2021-03-10_09.jpg").st_ino
    res = run(archive, out, "--link", "sym", "--cameras", cam2)
    sym = out / "ORCHARD-LONG-ID-22p1t09i1d2021-03-15_09.jpg"
    assert sym.is_symlink() and os.path.isabs(os.readlink(sym))
    with open(res["manifest"], newline="") as f:
        cams = {r["camera"] for r in csv.DictReader(f)}
    assert cams == set(CAMS)                # the second run added to the first's manifest


def test_bad_inputs(archive, tmp_path):
    root, toml = archive
    (root / "ORCHARD-LONG-ID-22").rename(root / "renamed")
    with pytest.raises(FileNotFoundError, match="ORCHARD-LONG-ID-22: camera folder not found"):
        run(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing started before the check
    with pytest.raises(ValueError, match="'NOPE' is not in"):
        run(archive, tmp_path / "out", "--cameras", "NOPE")
    with pytest.raises(ValueError, match="not an hour"):
        run(archive, tmp_path / "out", "--times", "noon")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="manifest.csv: not a manifest"):
        run(archive, tmp_path / "out", "--cameras", "CAM000001")
