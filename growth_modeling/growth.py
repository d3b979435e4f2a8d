"""Class proportions over a season: daily shares, smoothing, stage dates, plots.

The segmentation is injected: every function that needs it takes ``segment``, a
callable from a list of PIL images to a list of HxW integer class maps at the photos'
own size (``unet.Unet(...).predict_masks`` in the CLI, a fake one in the tests).

Typical use::

    images = find_daily_images(archive, "E88570046", preset=1, time=12)
    dates, shares, red = growth_curves(images, segment)
    grid, smoothed = smooth_curves(dates, adjust_first_day(shares))
    events = estimate_stage_dates(dates, shares, NAME_CLASSES, red_fraction=red)
"""
import csv
import datetime
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from data_processing.names import FileNameError, is_image_file, parse_archive_name
from growth_modeling.smoothing import (OBSERVATION_COVARIANCE, TRANSITION_COVARIANCE,
                                       kalman_smooth)
from utils.errors import MissingInput, UserError
from utils.image_check import rgb8

# The original subtracts the first day's fruit, leaf and flower shares (not trunk).
FIRST_DAY_CLASSES = ("fruit", "leaf", "flower")
# A fruit pixel counts as red when its OpenCV hue (0..180) is near 0 and it is coloured.
RED_HUE, RED_MIN_SAT, RED_MIN_VAL = 12, 80, 50
# Which prior stage each estimated event is compared with: keywords in the stage name.
EVENT_STAGES = {
    "flowering_onset": ("flower",), "flowering_peak": ("flower",), "flowering_end": ("flower",),
    "fruit_onset": ("fruit",), "fruit_peak": ("fruit",),
    "ripening_onset": ("ripen", "colour", "color"),
    "harvest": ("harvest",),
}


class GrowthCurves(NamedTuple):
    dates: list             # YYYY-MM-DD of each photo, ascending
    shares: np.ndarray      # [days, classes] pixel share of each class (rows sum to 1)
    red_fraction: np.ndarray  # [days] share of fruit pixels that look red (NaN: no fruit)


def find_daily_images(archive, camera, preset=1, time=12):
    """Photos of one view at one time of day: ``{date: path}`` in date order.

    Reads ``<archive>/<camera>/<preset>_<YYYY-MM-DD>_<HH>.jpg``; files with other
    names are ignored. Raises ``FileNotFoundError`` naming the folder when it is
    missing or holds no photo of that preset and hour.
    """
    folder = Path(archive) / str(camera)
    if not folder.is_dir():
        raise MissingInput(folder, "camera folder not found", "check --archive and --camera")
    hour = f"{int(time):02d}"
    found, seen = {}, set()
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and is_image_file(path)):
            continue
        try:
            name = parse_archive_name(path)
        except FileNameError:
            continue
        seen.add((name.preset, name.hour))
        if name.preset != int(preset) or name.hour != hour:
            continue
        if name.date in found:
            raise UserError(folder, f"two photos for {name.date} preset {preset} at "
                                    f"{hour}: {found[name.date].name} and {path.name}",
                            "keep one of them")
        found[name.date] = path
    if not found:
        have = ", ".join(f"preset {p} at {h}" for p, h in sorted(seen)) or "none"
        raise MissingInput(folder, f"no photo of preset {preset} at {hour} o'clock "
                                   f"(expected names like {preset}_YYYY-MM-DD_{hour}.jpg; "
                                   f"found: {have})", "check --preset and --time")
    return dict(sorted(found.items()))


def plant_mask(image, kernel_size=7):
    """Binary plant mask (uint8 0/255) from a mask photo, as the original.

    ``image`` is a path or an array (grey or 3-channel). Otsu's threshold separates
    plant from sky, then a 7x7 closing fills small holes and a 7x7 opening removes
    specks.
    """
    if isinstance(image, (str, Path)):
        grey = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise ValueError(f"cannot read mask image {image}")
    else:
        grey = np.asarray(image)
        if grey.ndim == 3:
            grey = cv2.cvtColor(grey.astype(np.uint8), cv2.COLOR_RGB2GRAY)
        grey = grey.astype(np.uint8)
    _, binary = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    kernel = np.ones((kernel_size, kernel_size), np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    return cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)


def _mask_for(plant_masks, date, cache):
    if plant_masks is None:
        return None, None
    if isinstance(plant_masks, dict):
        if date not in plant_masks:
            raise FileNotFoundError(f"no plant mask image for {date}")
        source = plant_masks[date]
    else:
        source = plant_masks
    key = str(source) if isinstance(source, (str, Path)) else id(source)
    if key not in cache:
        cache[key] = plant_mask(source)
    return cache[key], (str(source) if isinstance(source, (str, Path)) else "the plant mask")


def red_fruit_fraction(rgb, fruit):
    """Share of the ``fruit`` pixels of an RGB array whose colour is red; NaN if none."""
    n = int(fruit.sum())
    if n == 0:
        return float("nan")
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    red = ((h <= RED_HUE) | (h >= 180 - RED_HUE)) & (s >= RED_MIN_SAT) & (v >= RED_MIN_VAL)
    return float((red & fruit).sum()) / n


def overlay(rgb, class_map, mask=None, alpha=0.7):
    """The original's picture: class colours blended 70 % over the photo, plant only."""
    from utils.utils import class_colors

    palette = np.array(class_colors(int(class_map.max()) + 1), np.uint8)
    blend = (1 - alpha) * rgb.astype(np.float32) + alpha * palette[class_map].astype(np.float32)
    blend = np.clip(blend, 0, 255).astype(np.uint8)
    if mask is not None:
        blend[mask == 0] = 0
    return Image.fromarray(blend)


def growth_curves(images_by_date, segment, num_classes=5, plant_mask=None, batch_size=8,
                  fruit_class=1, overlay_dir=None, progress=True):
    """Segment one view's daily photos and count each class's pixel share per day.

    ``images_by_date``: ``{date: path}`` (see :func:`find_daily_images`).
    ``segment``: list of PIL RGB images -> list of HxW integer class maps.
    ``plant_mask``: None, one mask image (path or array) for every day, or
    ``{date: mask image}``; pixels outside the plant count as background, and the share
    is over the whole photo, as the original. ``overlay_dir``: when given, the
    original's blended pictures are saved there under the photos' names.
    Returns :class:`GrowthCurves` (dates, shares [days, num_classes], red_fraction [days]).
    """
    from tqdm import tqdm

    dates = sorted(images_by_date)
    if not dates:
        raise ValueError("no images to model")
    shares = np.zeros((len(dates), num_classes), np.float64)
    red = np.full(len(dates), np.nan)
    cache = {}
    if overlay_dir is not None:
        Path(overlay_dir).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(dates), desc="growth", unit="day", disable=not progress)
    for start in range(0, len(dates), batch_size):
        chunk = dates[start:start + batch_size]
        paths = [Path(images_by_date[d]) for d in chunk]
        images = []
        for path in paths:
            try:
                with Image.open(path) as im:
                    images.append(rgb8(im).copy())
            except OSError as exc:
                raise ValueError(f"cannot read image {path}: {exc}") from exc
        # Masks are checked before segmenting: a wrong size should fail fast.
        masks = []
        for date, path, image in zip(chunk, paths, images):
            mask, mask_name = _mask_for(plant_mask, date, cache)
            if mask is not None and mask.shape != (image.height, image.width):
                raise ValueError(f"{mask_name}: plant mask is {mask.shape[0]}x{mask.shape[1]} "
                                 f"(HxW) but the photo {path} is {image.height}x{image.width}")
            masks.append(mask)
        maps = segment(images)
        if len(maps) != len(images):
            raise ValueError(f"segment returned {len(maps)} maps for {len(images)} images")
        for i, (path, image, cmap, mask) in enumerate(zip(paths, images, maps, masks)):
            cmap = np.asarray(cmap)
            h, w = image.height, image.width
            if cmap.shape != (h, w):
                raise ValueError(f"{path}: class map has shape {cmap.shape}, the photo is "
                                 f"{h}x{w}; segment must return maps at the photo's size")
            if mask is not None:
                cmap = np.where(mask > 0, cmap, 0)
            counts = np.bincount(cmap.astype(np.int64).ravel(), minlength=num_classes)
            if counts.size > num_classes:
                raise ValueError(f"{path}: class map holds class {counts.size - 1}, "
                                 f"but num_classes={num_classes}")
            shares[start + i] = counts / float(h * w)
            rgb = np.asarray(image)
            if 0 <= fruit_class < num_classes:
                red[start + i] = red_fruit_fraction(rgb, cmap == fruit_class)
            if overlay_dir is not None:
                out = Path(overlay_dir) / path.name
                if out.exists():
                    raise FileExistsError(f"{out} exists; not overwriting")
                overlay(rgb, cmap.astype(np.int64), mask).save(out)
        bar.update(len(chunk))
    bar.close()
    return GrowthCurves(dates, shares, red)


def class_index(name_classes, name):
    """Index of the first class whose name contains ``name``; None when there is none."""
    for i, c in enumerate(name_classes):
        if name in c.lower():
            return i
    return None


def adjust_first_day(shares, name_classes=None):
    """Subtract the first day's fruit, leaf and flower shares and clip at 0, as the
    original does before smoothing (the curves then show growth since day one)."""
    from utils.utils import NAME_CLASSES

    names = list(name_classes or NAME_CLASSES)
    out = np.array(shares, dtype=np.float64, copy=True)
    for cls in FIRST_DAY_CLASSES:
        i = class_index(names, cls)
        if i is not None and i < out.shape[1]:
            out[:, i] -= out[0, i]
    return np.maximum(out, 0.0)


def calendar(dates):
    """Every date from the first to the last of ``dates`` (YYYY-MM-DD strings)."""
    first = datetime.date.fromisoformat(min(dates))
    last = datetime.date.fromisoformat(max(dates))
    return [(first + datetime.timedelta(days=k)).isoformat()
            for k in range((last - first).days + 1)]


def on_calendar(dates, values):
    """Place per-photo ``values`` ([days, ...]) on the daily calendar, NaN on missing days."""
    grid = calendar(dates)
    index = {d: k for k, d in enumerate(grid)}
    values = np.asarray(values, dtype=np.float64)
    out = np.full((len(grid),) + values.shape[1:], np.nan)
    for d, v in zip(dates, values):
        out[index[d]] = v
    return grid, out


def smooth_curves(dates, shares, transition_covariance=TRANSITION_COVARIANCE,
                  observation_covariance=OBSERVATION_COVARIANCE, backend="pykalman"):
    """Kalman-smooth each column of ``shares`` over the calendar days.

    Days without a photo are missing observations, so the time axis is real days.
    Returns (every date from first to last, smoothed [calendar days, classes]).
    """
    grid, values = on_calendar(dates, shares)
    smoothed = np.column_stack([
        kalman_smooth(values[:, c], transition_covariance, observation_covariance, backend)
        for c in range(values.shape[1])])
    return grid, smoothed


def stage_windows(phenology, camera, archive=None, preset=None, time=None):
    """The priors' date window of each stage for ``camera``, as step 1 computes them.

    A stage with an offset spans bud date + offset .. + window_days - 1 (clipped to the
    season); the ``last`` stage is the last ``window_days`` dates with a photo of this
    preset and time in ``<archive>/<camera>`` (left out without an archive or photo).
    Returns ``[{"index", "name", "start", "end"}, ...]``.
    """
    from data_processing.date_pro import stage_windows as prior_windows

    windows = prior_windows(phenology, camera, archive,
                            presets=None if preset is None else [int(preset)],
                            times=None if time is None else [f"{int(time):02d}"])
    return [{"index": i, "name": name, "start": first, "end": last}
            for i, (name, first, last) in enumerate(windows) if first is not None]


def _first_at_or_above(values, level, start=0):
    for k in range(start, len(values)):
        if values[k] >= level:
            return k
    return None


def estimate_stage_dates(dates, shares, name_classes=None, red_fraction=None,
                         transition_covariance=TRANSITION_COVARIANCE,
                         observation_covariance=OBSERVATION_COVARIANCE, min_peak=1e-3):
    """Stage dates read off the smoothed curves (first-day-adjusted, as plotted).

    - flowering onset / peak / end: the first day the flower share reaches half its
      peak, the peak day, and the last day at or above half the peak;
    - fruit onset / peak: the same for fruit; harvest: the first day after the fruit
      peak when the fruit share falls below half its peak;
    - ripening onset (only with ``red_fraction``): the first day at least half of the
      fruit pixels look red, once fruit has set.
    A class whose smoothed peak is below ``min_peak`` gives None. Returns
    ``{event: "YYYY-MM-DD" or None}``.
    """
    from utils.utils import NAME_CLASSES

    names = list(name_classes or NAME_CLASSES)
    grid, smoothed = smooth_curves(dates, adjust_first_day(shares, names),
                                   transition_covariance, observation_covariance)
    events = {k: None for k in EVENT_STAGES}

    def curve(cls):
        i = class_index(names, cls)
        if i is None or i >= smoothed.shape[1]:
            return None
        c = smoothed[:, i]
        return c if c.max() >= min_peak else None

    flower = curve("flower")
    if flower is not None:
        peak = int(np.argmax(flower))
        half = flower[peak] / 2
        events["flowering_onset"] = grid[_first_at_or_above(flower, half)]
        events["flowering_peak"] = grid[peak]
        above = np.nonzero(flower >= half)[0]
        events["flowering_end"] = grid[int(above[above >= peak].max())]
    fruit = curve("fruit")
    if fruit is not None:
        peak = int(np.argmax(fruit))
        half = fruit[peak] / 2
        onset = _first_at_or_above(fruit, half)
        events["fruit_onset"] = grid[onset]
        events["fruit_peak"] = grid[peak]
        after = np.nonzero(fruit[peak:] < half)[0]
        if after.size:
            events["harvest"] = grid[peak + int(after[0])]
        if red_fraction is not None:
            _, red = on_calendar(dates, np.asarray(red_fraction, np.float64))
            observed = np.nonzero(~np.isnan(red))[0]
            # Only days after fruit set count: a few red pixels on day one are noise.
            observed = observed[observed >= onset]
            if observed.size:
                red_s = np.full(len(grid), np.nan)
                first = observed[0]
                red_s[first:] = kalman_smooth(red[first:], transition_covariance,
                                              observation_covariance)
                k = _first_at_or_above(np.nan_to_num(red_s, nan=-1.0), 0.5, first)
                events["ripening_onset"] = grid[k] if k is not None else None
    return events


def compare_with_priors(events, windows):
    """One row per event: its date beside the prior window of the matching stage."""
    rows = []
    last = next((w for w in reversed(windows)), None)
    for event, keywords in EVENT_STAGES.items():
        window = next((w for w in windows if any(k in w["name"].lower() for k in keywords)), None)
        if window is None and event == "harvest":
            window = last
        row = {"event": event, "estimated": events.get(event) or "",
               "prior_stage": window["name"] if window else "",
               "prior_start": window["start"] if window else "",
               "prior_end": window["end"] if window else "",
               "days_from_prior_start": "", "inside_prior_window": ""}
        if window and events.get(event):
            est = datetime.date.fromisoformat(events[event])
            start = datetime.date.fromisoformat(window["start"])
            row["days_from_prior_start"] = (est - start).days
            row["inside_prior_window"] = window["start"] <= events[event] <= window["end"]
        rows.append(row)
    return rows


def _refuse_existing(path):
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; not overwriting")
    return path


def write_shares_csv(path, dates, shares, name_classes):
    """CSV with a ``date`` column and one column per class; refuses to overwrite."""
    path = _refuse_existing(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["date"] + list(name_classes))
        for d, row in zip(dates, np.asarray(shares)):
            writer.writerow([d] + [f"{v:.6f}" if np.isfinite(v) else "" for v in row])
    return path


def write_rows_csv(path, rows):
    path = _refuse_existing(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _dates_axis(ax, fig):
    import matplotlib.dates as mdates

    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    fig.autofmt_xdate()


def plot_growth(path, dates, curves, name_classes, title="", ylim=None, windows=None,
                events=None, points=None, dpi=300):
    """Plot class curves against the date (background left out, as the original).

    ``curves`` is [len(dates), classes]; ``windows`` (from :func:`stage_windows`) are
    shaded behind the curves; ``events`` ({name: date}) are drawn as dashed lines;
    ``points`` = (dates, values) adds the raw observations as faint dots. Refuses to
    overwrite ``path``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = _refuse_existing(path)
    x = [datetime.date.fromisoformat(d) for d in dates]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if windows:
        cmap = plt.get_cmap("Pastel1")
        for k, w in enumerate(windows):
            start = datetime.date.fromisoformat(w["start"])
            end = datetime.date.fromisoformat(w["end"]) + datetime.timedelta(days=1)
            # Windows may overlap (the `last` stage often does), so they are named in
            # the legend rather than labelled on the plot.
            ax.axvspan(start, end, color=cmap(k % 9), alpha=0.6, lw=0, zorder=0,
                       label=f"stage {w['index']}: {w['name']} ({w['start']}..{w['end']})")
    colours = {}
    for c in range(1, len(name_classes)):
        (line,) = ax.plot(x, curves[:, c], label=name_classes[c], zorder=3)
        colours[c] = line.get_color()
    if points is not None:
        px = [datetime.date.fromisoformat(d) for d in points[0]]
        for c in range(1, len(name_classes)):
            ax.plot(px, points[1][:, c], ".", ms=3, alpha=0.35, color=colours[c], zorder=2)
    for k, (name, date) in enumerate((events or {}).items()):
        if date:
            ax.axvline(datetime.date.fromisoformat(date), ls="--", lw=0.8, color="0.3", zorder=2)
            # Staggered heights keep labels of close dates apart.
            ax.text(datetime.date.fromisoformat(date), 0.02 + 0.3 * (k % 3), f" {name}",
                    rotation=90, transform=ax.get_xaxis_transform(), fontsize=6,
                    va="bottom", zorder=4)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("Date")
    ax.set_ylabel("Proportion")
    ax.set_title(title, fontsize=9)
    if windows:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    else:
        ax.legend(loc="upper right")
    _dates_axis(ax, fig)
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if windows else None)
    plt.close(fig)
    return path
