"""Growth modeling on a synthetic season, with a fake colour-coded segmenter."""
import csv
import datetime
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from growth_modeling import growth, unet_gm
from growth_modeling.smoothing import Kalman1D, kalman_smooth, rts_smooth
from utils.utils import NAME_CLASSES

# The synthetic priors' ripening and harvested windows overlap on purpose (as short
# seasons do); date_pro warns about it, which is not what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore:.*overlap:UserWarning")

H, W = 40, 60
CAMERA = "E88570046"
BUD = datetime.date(2021, 3, 1)
DAYS = 50
MISSING = {5, 30}               # days without a photo
FLOWER_WINDOW = (10, 21)        # prior window: bud + 10 .. + 10 + 12 - 1
RIPE_DAY, HARVEST_DAY = 40, 46
# Class colours; fruit is green before RIPE_DAY and red after it.
COLOURS = {0: (128, 128, 128), 2: (30, 160, 30), 3: (110, 70, 30), 4: (250, 250, 250)}
YOUNG_FRUIT, RED_FRUIT = (120, 200, 60), (200, 20, 20)
PHENOLOGY = """
[season]
start = "2021-01-01"
end = "2021-07-01"
window_days = 12

[[stages]]
name = "dormancy"
offset = -12

[[stages]]
name = "green leaves and flowering"
offset = 10

[[stages]]
name = "young fruit"
offset = 25

[[stages]]
name = "colouring and ripening"
offset = 38

[[stages]]
name = "harvested"
last = true

[cameras]
E88570046 = "2021-03-01"
"""


def truth(day):
    """The class map of day ``day``: leaves grow, flowers rise and fall inside their
    window, fruit sets, turns red and is picked."""
    m = np.zeros((H, W), np.uint8)
    m[0:3 + day // 8, :] = 2
    flower_rows = max(0, round(8 - 1.3 * abs(day - 15.5)))
    m[12:12 + flower_rows, :] = 4
    if 25 <= day < HARVEST_DAY:
        m[24:24 + min(10, 1 + (day - 25) // 2), :] = 1
    m[:, 0:6] = 3
    return m


def paint(day):
    m = truth(day)
    rgb = np.zeros((H, W, 3), np.uint8)
    for c, colour in COLOURS.items():
        rgb[m == c] = colour
    rgb[m == 1] = RED_FRUIT if day >= RIPE_DAY else YOUNG_FRUIT
    return rgb


def fake_segment(images):
    """Nearest class colour: deterministic, exact on the lossless synthetic photos."""
    palette = [(c, col) for c, col in COLOURS.items()] + [(1, YOUNG_FRUIT), (1, RED_FRUIT)]
    cols = np.array([p[1] for p in palette], np.float32)
    ids = np.array([p[0] for p in palette], np.uint8)
    maps = []
    for im in images:
        x = np.asarray(im, np.float32).reshape(-1, 1, 3)
        maps.append(ids[np.argmin(((x - cols) ** 2).sum(-1), axis=1)].reshape(im.height, im.width))
    return maps


def day_date(day):
    return (BUD + datetime.timedelta(days=day)).isoformat()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    cam = root / CAMERA
    cam.mkdir()
    for day in range(DAYS):
        if day in MISSING:
            continue
        Image.fromarray(paint(day)).save(cam / f"1_{day_date(day)}_12.png")
    # Other presets and hours that must be ignored, and a stray file.
    Image.fromarray(paint(0)).save(cam / f"1_{day_date(0)}_09.png")
    Image.fromarray(paint(0)).save(cam / f"2_{day_date(0)}_12.png")
    (cam / "notes.txt").write_text("not a photo")
    pheno = root / "phenology.toml"
    pheno.write_text(PHENOLOGY)
    return root


@pytest.fixture(scope="module")
def curves(archive):
    images = growth.find_daily_images(archive, CAMERA, 1, 12)
    return growth.growth_curves(images, fake_segment, progress=False)


@pytest.fixture(scope="module")
def cli_run(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "growth"
    argv = ["--archive", str(archive), "--camera", CAMERA, "--preset", "1", "--time", "12",
            "--phenology", str(archive / "phenology.toml"), "--out-dir", str(out),
            "--dpi", "50", "--quiet"]
    return argv, unet_gm.main(argv, segment=fake_segment)


def test_find_daily_images_filters_view_and_time(archive):
    images = growth.find_daily_images(archive, CAMERA, preset=1, time=12)
    assert len(images) == DAYS - len(MISSING)
    assert list(images) == sorted(images)
    assert all(p.name.startswith("1_") and p.name.endswith("_12.png") for p in images.values())


def test_shares_sum_to_one_and_match_truth(curves):
    dates, shares, red = curves
    assert shares.shape == (DAYS - len(MISSING), 5)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-12)
    days = [d for d in range(DAYS) if d not in MISSING]
    assert dates == [day_date(d) for d in days]
    expected = np.array([np.bincount(truth(d).ravel(), minlength=5) / (H * W) for d in days])
    np.testing.assert_allclose(shares, expected, atol=1e-12)
    # Red-fruit proxy: no fruit -> NaN, young fruit -> 0, ripe fruit -> 1.
    by_day = dict(zip(days, red))
    assert np.isnan(by_day[10]) and by_day[31] == 0.0 and by_day[42] == 1.0


def test_flower_curve_peaks_inside_the_flowering_window(curves, archive):
    dates, shares, red = curves
    from data_processing.date_pro import load_phenology

    with pytest.warns(UserWarning, match="overlap"):   # ripening and harvested, here
        windows = growth.stage_windows(load_phenology(archive / "phenology.toml"), CAMERA,
                                       archive, preset=1, time=12)
    flowering = windows[1]
    assert (flowering["start"], flowering["end"]) == (day_date(10), day_date(21))
    assert windows[4]["end"] == dates[-1] and windows[4]["start"] == dates[-12]
    grid, smoothed = growth.smooth_curves(dates, growth.adjust_first_day(shares))
    assert len(grid) == DAYS        # missing days are on the calendar
    raw_peak = dates[int(np.argmax(shares[:, 4]))]
    smooth_peak = grid[int(np.argmax(smoothed[:, 4]))]
    for peak in (raw_peak, smooth_peak):
        assert flowering["start"] <= peak <= flowering["end"]


def test_estimated_stage_dates(curves):
    dates, shares, red = curves
    ev = growth.estimate_stage_dates(dates, shares, NAME_CLASSES, red_fraction=red)
    day = {k: (datetime.date.fromisoformat(v) - BUD).days for k, v in ev.items() if v}
    assert FLOWER_WINDOW[0] <= day["flowering_onset"] < day["flowering_peak"] \
        < day["flowering_end"] <= FLOWER_WINDOW[1]
    assert 25 <= day["fruit_onset"] < day["fruit_peak"] < HARVEST_DAY
    assert abs(day["ripening_onset"] - RIPE_DAY) <= 2
    assert abs(day["harvest"] - HARVEST_DAY) <= 3
    # Without the red proxy, ripening is left out rather than guessed.
    assert growth.estimate_stage_dates(dates, shares)["ripening_onset"] is None


def test_first_day_adjustment_as_the_original():
    shares = np.array([[0.5, 0.1, 0.2, 0.1, 0.1], [0.4, 0.05, 0.3, 0.15, 0.1]])
    adj = growth.adjust_first_day(shares)
    np.testing.assert_allclose(adj, [[0.5, 0, 0, 0.1, 0], [0.4, 0, 0.1, 0.15, 0]])


def test_smoother_reduces_variance_of_a_noisy_constant():
    rng = np.random.default_rng(0)
    noisy = 0.3 + rng.normal(0, 0.05, 300)
    smoothed = kalman_smooth(noisy)
    assert np.var(smoothed - 0.3) < 0.25 * np.var(noisy - 0.3)
    assert abs(smoothed.mean() - 0.3) < 0.01


def test_pykalman_and_numpy_smoothers_agree():
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(0, 0.3, 60)) + rng.normal(0, 1, 60)
    x[[7, 8, 20, 41]] = np.nan      # missing days
    for q, r in ((0.1, 1.0), (0.5, 0.2)):
        np.testing.assert_allclose(kalman_smooth(x, q, r), rts_smooth(x, q, r), atol=1e-9)
        np.testing.assert_allclose(kalman_smooth(x, q, r, backend="numpy"),
                                   rts_smooth(x, q, r), atol=0)
    np.testing.assert_allclose(Kalman1D(x[:7]), kalman_smooth(x[:7]))


def test_plant_mask_otsu_and_morphology():
    grey = np.full((80, 100), 30, np.uint8)
    grey[20:60, 20:80] = 200         # the plant
    grey[38:41, 48:51] = 30          # a 3x3 hole in it: closed
    grey[6:8, 6:8] = 200             # a 2x2 speck in the sky: opened away
    mask = growth.plant_mask(grey)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert mask[39, 49] == 255 and mask[6, 6] == 0 and mask[70, 90] == 0
    assert (mask[20:60, 20:80] == 255).mean() > 0.98
    assert (mask == 255).sum() < 1.02 * 40 * 60


def test_plant_mask_keeps_only_the_plant(archive, tmp_path):
    mask_img = np.zeros((H, W, 3), np.uint8)
    mask_img[:, :50] = 255            # the last 10 columns are sky
    path = tmp_path / "mask.png"
    cv2.imwrite(str(path), mask_img)
    images = growth.find_daily_images(archive, CAMERA, 1, 12)
    dates, shares, _ = growth.growth_curves(images, fake_segment, plant_mask=path, progress=False)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-12)
    day = DAYS - 1
    t = truth(day)
    t[:, 50:] = 0                     # outside the plant counts as background, as the original
    np.testing.assert_allclose(shares[-1], np.bincount(t.ravel(), minlength=5) / (H * W))


def test_mask_of_the_wrong_size_is_a_clear_error(archive, tmp_path):
    path = tmp_path / "small_mask.png"
    cv2.imwrite(str(path), np.full((20, 30), 255, np.uint8))
    images = growth.find_daily_images(archive, CAMERA, 1, 12)
    calls = []
    with pytest.raises(ValueError, match=r"small_mask\.png.*20x30.*40x60"):
        growth.growth_curves(images, lambda ims: calls.append(1) or fake_segment(ims),
                             plant_mask=path, progress=False)
    assert not calls                  # fails before any segmentation


def test_no_images_is_a_clear_error_naming_the_folder(archive, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{CAMERA}.*preset 3 at 12.*preset 1 at 09"):
        growth.find_daily_images(archive, CAMERA, preset=3, time=12)
    with pytest.raises(FileNotFoundError, match="NOPE: camera folder not found"):
        unet_gm.main(["--archive", str(archive), "--camera", "NOPE", "--out-dir",
                      str(tmp_path / "x")], segment=fake_segment)
    with pytest.raises(FileNotFoundError, match=rf"{CAMERA}.*preset 1 at 15"):
        unet_gm.main(["--archive", str(archive), "--camera", CAMERA, "--time", "15",
                      "--out-dir", str(tmp_path / "x")], segment=fake_segment)
    assert not (tmp_path / "x").exists()


def test_cli_writes_dated_csv_plots_and_stage_dates(cli_run, archive):
    argv, res = cli_run
    with open(res["shares_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["date"] + NAME_CLASSES
    assert rows[0]["date"] == day_date(0) and len(rows) == DAYS - len(MISSING)
    assert all(abs(sum(float(r[c]) for c in NAME_CLASSES) - 1) < 1e-5 for r in rows)
    with open(res["smoothed_csv"]) as f:
        smooth_rows = list(csv.DictReader(f))
    assert len(smooth_rows) == DAYS and smooth_rows[5]["date"] == day_date(5)
    assert len(res["plots"]) == 4
    for p in res["plots"]:
        with Image.open(p) as im:
            assert im.width > 100
    info = json.loads(open(res["stage_dates"]).read())
    assert info["estimated"]["flowering_onset"] == res["events"]["flowering_onset"]
    flowering = next(r for r in info["comparison"] if r["event"] == "flowering_peak")
    assert flowering["prior_stage"] == "green leaves and flowering"
    assert flowering["inside_prior_window"] is True
    harvest = next(r for r in info["comparison"] if r["event"] == "harvest")
    assert harvest["prior_stage"] == "harvested"
    overlays = sorted((Path(res["run_dir"]) / "overlays").iterdir())
    assert len(overlays) == DAYS - len(MISSING)


def test_cli_never_overwrites(cli_run):
    argv, res = cli_run
    before = open(res["shares_csv"]).read()
    with pytest.raises(FileExistsError, match="not overwriting"):
        unet_gm.main(argv, segment=fake_segment)
    assert open(res["shares_csv"]).read() == before


def test_cli_new_run_folder_per_run_and_per_day_masks(archive, tmp_path):
    cam = archive / CAMERA
    # Per-day masks at 21 o'clock, as the original's night photos; made in a copy.
    root = tmp_path / "arch"
    shutil.copytree(archive, root)
    for p in sorted((root / CAMERA).glob("1_*_12.png")):
        m = np.full((H, W), 255, np.uint8)
        m[:, 50:] = 0
        cv2.imwrite(str(p.with_name(p.name.replace("_12.png", "_21.png"))), m)
    argv = ["--archive", str(root), "--camera", CAMERA, "--mask-time", "21", "--logs-dir",
            str(tmp_path / "logs"), "--dpi", "40", "--no-overlays", "--quiet"]
    a = unet_gm.main(argv, segment=fake_segment)
    b = unet_gm.main(argv, segment=fake_segment)
    assert a["run_dir"] != b["run_dir"]
    assert json.loads(open(f"{a['run_dir']}/args.json").read())["mask_time"] == 21
    with open(a["shares_csv"]) as f:
        last = list(csv.DictReader(f))[-1]
    assert float(last["_background_"]) >= 10 / W - 1e-6   # the sky columns
    with open(a["stage_dates_csv"]) as f:
        assert all(r["prior_stage"] == "" for r in csv.DictReader(f))   # no --phenology
    assert cam.exists()


def test_defaults_follow_the_original():
    a = unet_gm.parse_args(["--archive", "a", "--camera", "c"])
    assert (a.transition_covariance, a.observation_covariance) == (0.1, 1.0)
    # Left open, they come from the model's card, else the original's values.
    assert (a.num_classes, a.backbone, a.input_shape) == (None, None, None)
    from utils.model_card import DEFAULTS

    assert DEFAULTS == {"input_shape": (576, 1024), "num_classes": 5, "backbone": "resnet50"}
    assert (a.time, a.dpi, a.zoom_ylim) == (12, 300, 0.25)


def test_missing_model_path_is_a_clear_error(archive, tmp_path):
    with pytest.raises(ValueError, match="--model-path"):
        unet_gm.main(["--archive", str(archive), "--camera", CAMERA,
                      "--out-dir", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        unet_gm.main(["--archive", str(archive), "--camera", CAMERA, "--model-path",
                      str(tmp_path / "nope.keras"), "--out-dir", str(tmp_path / "o")])


@pytest.mark.slow
def test_real_unet_segmenter_wiring():
    pytest.importorskip("unet")
    import keras

    inp = keras.Input((32, 32, 3))
    model = keras.Model(inp, keras.layers.Conv2D(5, 1, activation="softmax")(inp))
    segment = unet_gm.unet_segmenter(model=model, input_shape=(32, 32), batch_size=2)
    maps = segment([Image.fromarray(paint(d)) for d in (0, 15, 30)])
    assert len(maps) == 3 and all(m.shape == (H, W) and m.max() < 5 for m in maps)
