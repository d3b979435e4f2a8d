"""Step 1 windows (date_pro) and the pair label of two stage image names."""
import random
import warnings

import pytest

from data_processing import date_pro
from data_processing.date_pro import (Phenology, Stage, create_assist_date, get_date_list,
                                      load_phenology, stage_windows, write_phenology)
from data_processing.make_dataset import get_label
from data_processing.names import FileNameError, parse_stage_name


def touch(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"jpg")


def dates_of(paths):
    return [p.rsplit("_", 2)[1] for p in paths]


def original_slices(buddate, point, time, path, offsets=(-12, 10, 45, 84), days=12):
    """The original's rule for the offset stages, written from its description:
    list slices of the season's dates, [offset + bud index : offset + bud index + days]."""
    season = create_assist_date("2021-01-01", "2021-07-01")
    i = season.index(buddate)
    paths = [f"{path}/{point}_{d}_{time}.jpg" for d in season]
    return [paths[o + i:o + i + days] for o in offsets]


def test_create_assist_date():
    assert create_assist_date("2021-02-27", "2021-03-02") == [
        "2021-02-27", "2021-02-28", "2021-03-01", "2021-03-02"]
    assert len(create_assist_date("2021-01-01", "2021-07-01")) == 182
    assert create_assist_date()[0] == "2016-01-01"
    assert create_assist_date("2021-03-02", "2021-03-01") == ["2021-03-02"]  # as the original


def test_windows_for_the_example_bud_date(tmp_path):
    """Bud date 2021-01-08 (the original's example), windows worked out by hand."""
    folder = tmp_path / "E88570046"
    # Harvested stage: preset 1 at 09 has photos 2021-05-01..05-20; other presets,
    # times and dates after the season must not count.
    touch(folder, [f"1_2021-05-{d:02d}_09.jpg" for d in range(1, 21)]
          + ["1_2021-06-30_12.jpg", "2_2021-06-01_09.jpg", "1_2021-07-05_09.jpg"])
    with pytest.warns(UserWarning, match="dormancy.*2020-12-27..2021-01-07.*2021-01-01..2021-01-07"):
        lists = get_date_list("2021-01-08", 1, "09", str(folder))
    assert len(lists) == 5
    d0, d1, d2, d3, d4 = map(dates_of, lists)
    assert d0 == [f"2021-01-{d:02d}" for d in range(1, 8)]          # clipped to the season
    assert d1 == [f"2021-01-{d:02d}" for d in range(18, 30)]        # +10
    assert d2 == [f"2021-02-{d:02d}" for d in range(22, 29)] + [f"2021-03-{d:02d}" for d in range(1, 6)]
    assert d3 == [f"2021-04-{d:02d}" for d in range(2, 14)]         # +84
    assert d4 == [f"2021-05-{d:02d}" for d in range(9, 21)]         # last 12 existing
    # Full paths; the offset stages are not filtered for existence.
    assert lists[1][0] == f"{folder}/1_2021-01-18_09.jpg"
    assert not any(__import__("os").path.exists(p) for p in lists[1])
    # The original's list slicing agrees on stages 1-3; on stage 0 its negative start
    # index wrapped around and gave an empty window (a documented difference).
    ref = original_slices("2021-01-08", 1, "09", str(folder))
    assert lists[1:4] == ref[1:4] and ref[0] == []


def test_get_date_list_matches_original_inside_the_season(tmp_path):
    folder = tmp_path / "E88570046"
    touch(folder, [f"3_2021-06-{d:02d}_15.jpg" for d in range(1, 31)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")    # nothing clipped, nothing overlapping
        lists = get_date_list("2021-01-20", 3, "15", str(folder))
    assert lists[:4] == original_slices("2021-01-20", 3, "15", str(folder))
    assert dates_of(lists[4]) == [f"2021-06-{d:02d}" for d in range(19, 31)]


def test_stage_windows_from_toml(tmp_path):
    ph = Phenology("2021-03-01", "2021-05-31", 5,
                   (Stage("a", 0), Stage("b", 20), Stage("h", last=True)),
                   {"CAMERA_LONG_ID_7": "2021-03-10", "C2": "2021-04-01"})
    write_phenology(tmp_path / "p.toml", ph)
    ph = load_phenology(tmp_path / "p.toml")
    assert stage_windows(ph, "CAMERA_LONG_ID_7") == [
        ("a", "2021-03-10", "2021-03-14"), ("b", "2021-03-30", "2021-04-03"), ("h", None, None)]
    touch(tmp_path / "arch" / "C2", [f"{p}_2021-05-{d:02d}_{t}.jpg" for p, d, t in
                                      [(1, 20, "09"), (2, 21, "12"), (1, 22, "09"), (1, 23, "09"),
                                       (1, 24, "09"), (1, 25, "09"), (1, 26, "15")]])
    assert stage_windows(ph, "C2", tmp_path / "arch")[2] == ("h", "2021-05-22", "2021-05-26")
    assert stage_windows(ph, "C2", tmp_path / "arch", presets=[1], times=["09"])[2] == (
        "h", "2021-05-20", "2021-05-25")
    with pytest.raises(FileNotFoundError, match="CAMERA_LONG_ID_7: camera folder not found"):
        stage_windows(ph, "CAMERA_LONG_ID_7", tmp_path / "arch")


def test_bud_date_outside_season_names_file_and_camera(tmp_path):
    path = tmp_path / "bad.toml"
    write_phenology(path, Phenology("2021-01-01", "2021-07-01", 12, (Stage("s", 10),),
                                    {"E88570046": "2021-06-25"}))
    ph = load_phenology(path)
    with pytest.raises(ValueError, match=r"bad\.toml: camera E88570046 .*outside the season"):
        stage_windows(ph, "E88570046")
    with pytest.raises(ValueError, match="bad.toml"):
        get_date_list("2021-06-25", 1, "09", str(tmp_path / "E88570046"), ph)


def test_overlapping_windows_warn(tmp_path):
    path = tmp_path / "overlap.toml"
    write_phenology(path, Phenology("2021-01-01", "2021-07-01", 12,
                                    (Stage("x", 0), Stage("y", 5)), {"CAM": "2021-02-01"}))
    with pytest.warns(UserWarning, match=r"overlap\.toml: camera CAM.*'x'.*'y'.*overlap"):
        stage_windows(load_phenology(path), "CAM")


def test_window_table_cli(tmp_path, capsys):
    path = tmp_path / "p.toml"
    write_phenology(path, Phenology("2021-03-01", "2021-03-31", 3,
                                    (Stage("a", 0), Stage("h", last=True)),
                                    {"CAM1": "2021-03-05", "CAM2": "2021-03-05"}))
    touch(tmp_path / "arch" / "CAM1", [f"{p}_2021-03-{d:02d}_09.jpg" for p in (1, 2) for d in range(4, 21)])
    res = date_pro.main(["--phenology", str(path), "--archive", str(tmp_path / "arch"),
                         "--presets", "1", "2", "--times", "9", "--cameras", "CAM1"])
    rows = {r["name"]: r for r in res["rows"]}
    assert (rows["a"]["first"], rows["a"]["last"], rows["a"]["images"], rows["a"]["expected"]) == (
        "2021-03-05", "2021-03-07", 6, 6)
    assert (rows["h"]["first"], rows["h"]["last"], rows["h"]["images"]) == ("2021-03-18", "2021-03-20", 6)
    assert "CAM1" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=r"CAM2: camera folder not found \(the archive has: CAM1\)"):
        date_pro.main(["--phenology", str(path), "--archive", str(tmp_path / "arch")])
    with pytest.raises(ValueError, match="'NOPE' is not in"):
        date_pro.main(["--phenology", str(path), "--archive", str(tmp_path / "arch"), "--cameras", "NOPE"])


LABELS = [
    # original form: view = camera + preset; the time of day does not matter
    ("E88570046p1t09i0d2021-01-08_09.jpg", "E88570046p1t12i0d2021-01-09_12.jpg", 0),
    ("E88570046p1t09i0d2021-01-08_09.jpg", "E88570046p1t09i3d2021-04-08_09.jpg", 1),
    ("E88570046p2t15i2d2021-03-01_15.jpg", "E88570046p3t15i2d2021-03-01_15.jpg", 2),
    ("E88570046p1t09i1d2021-01-20_09.jpg", "F03210481p5t12i4d2021-06-25_12.jpg", 3),
    ("E88570046p1t09i2d2021-03-01_09.jpg", "F03210481p1t09i2d2021-03-01_09.jpg", 2),
    # long camera ids, multi-digit presets and stages
    ("ORCHARD-NORTH-CAM-0001p12t09i10d2022-05-01_09.jpg", "ORCHARD-NORTH-CAM-0001p12t15i10d2022-05-03_15.jpg", 0),
    ("ORCHARD-NORTH-CAM-0001p12t09i10d2022-05-01_09.jpg", "ORCHARD-NORTH-CAM-0001p12t09i1d2022-03-01_09.jpg", 1),
    ("ORCHARD-NORTH-CAM-0001p12t09i10d2022-05-01_09.jpg", "ORCHARD-NORTH-CAM-0001p1t09i10d2022-05-01_09.jpg", 2),
    ("CAMp1p2t09i11d2022-05-01_09.jpg", "CAMp1p2t09i1d2022-05-01_09.jpg", 1),   # "p" inside the id
    ("CAMp1p2t09i11d2022-05-01_09.jpg", "CAMp1p21t09i1d2022-05-01_09.jpg", 3),
    ("/data/out/E88570046p4t09i3d2021-04-05_09.jpg", "out/E88570046p4t12i3d2021-04-06_12.jpg", 0),
]


@pytest.mark.parametrize("a,b,label", LABELS)
def test_get_label_table(a, b, label):
    assert get_label((a, b)) == label
    assert get_label((b, a)) == label


def original_rule(a, b):
    """The original's slicing: view = first 11 characters, stage = character 15."""
    same_view, same_stage = a[:11] == b[:11], a[15] == b[15]
    return (0 if same_stage else 1) if same_view else (2 if same_stage else 3)


def test_get_label_agrees_with_the_original_on_its_names():
    rng = random.Random(0)
    cams = ["E88570046", "F03210481", "E88570047"]
    names = [f"{rng.choice(cams)}p{rng.randint(1, 5)}t{rng.choice(['09', '12', '15'])}i{rng.randint(0, 4)}"
             f"d2021-{rng.randint(1, 6):02d}-{rng.randint(1, 28):02d}_09.jpg" for _ in range(300)]
    pairs = [(rng.choice(names), rng.choice(names)) for _ in range(3000)]
    assert {original_rule(a, b) for a, b in pairs} == {0, 1, 2, 3}
    assert all(get_label(p) == original_rule(*p) for p in pairs)


def test_bad_names():
    with pytest.raises(FileNameError, match="manifest.csv"):
        get_label(("manifest.csv", "E88570046p1t09i0d2021-01-08_09.jpg"))
    with pytest.raises(FileNameError, match="2021-02-30"):
        parse_stage_name("E88570046p1t09i0d2021-02-30_09.jpg")
    assert parse_stage_name("E88570046p1t09i0d2021-01-08_09.jpg").view == "E88570046p1"
