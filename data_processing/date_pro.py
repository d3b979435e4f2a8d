"""Step 1: phenology priors -> the date window of each stage.

The priors live in a TOML file (see ``phenology.example.toml``), read with ``tomllib``.
Run as a script it prints, per camera and stage, the date window and how many archive
images exist in it::

    python data_processing/date_pro.py --phenology data_processing/phenology.example.toml --archive ROOT
"""
import argparse
import dataclasses
import datetime
import os
import sys
import tomllib
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_processing.names import (FileNameError, is_image_file,  # noqa: E402
                                   parse_archive_name)
from utils.errors import MissingInput, UserError  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    offset: int | None = None   # days from the bud date to the window's first day
    last: bool = False          # the last `window_days` dates that have a photo


@dataclasses.dataclass(frozen=True)
class Phenology:
    """Priors read from a TOML file: season, window length, stages, bud dates."""
    start: str
    end: str
    window_days: int
    stages: tuple
    cameras: dict               # camera id -> bud date "YYYY-MM-DD"
    path: str = ""


def _parse_date(value, where):
    text = value.isoformat() if isinstance(value, datetime.date) else str(value)
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise UserError(where, f"{value!r} is not a YYYY-MM-DD date", "write it as 2021-01-08") from exc


def load_phenology(path):
    """Read and check a phenology TOML file; errors name the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(path, "phenology file not found",
                           "give --phenology (data_processing/phenology.example.toml is a template)")
    try:
        # utf-8-sig: editors on Windows save a byte-order mark, which tomllib rejects.
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(path, f"not valid TOML ({exc})", "fix the line it names") from exc
    except UnicodeDecodeError as exc:
        raise UserError(path, f"not UTF-8 text ({exc.reason})", "save it as UTF-8") from exc
    try:
        season, stages, cameras = data["season"], data["stages"], data["cameras"]
        start = _parse_date(season["start"], f"{path} [season] start")
        end = _parse_date(season["end"], f"{path} [season] end")
        window = int(season.get("window_days", 12))
    except KeyError as exc:
        raise UserError(path, f"missing entry {exc}",
                        "see data_processing/phenology.example.toml") from exc
    parsed = []
    for i, s in enumerate(stages):
        if "name" not in s or (("offset" in s) == bool(s.get("last", False))):
            raise UserError(path, f"stage {i} needs a name and exactly one of "
                                  f"`offset` or `last = true`")
        parsed.append(Stage(s["name"], int(s["offset"]) if "offset" in s else None,
                            bool(s.get("last", False))))
    if not cameras:
        raise UserError(path, "[cameras] lists no camera", "add `<camera id> = \"<bud date>\"` lines")
    if window < 1 or start > end:
        raise UserError(path, f"season {start}..{end} with window_days={window} is empty")
    cams = {str(c): _parse_date(d, f"{path} [cameras] {c}") for c, d in cameras.items()}
    return Phenology(start, end, window, tuple(parsed), cams, str(path))


def write_phenology(path, phenology):
    """Write a :class:`Phenology` as TOML in the format :func:`load_phenology` reads."""
    lines = ["[season]", f'start = "{phenology.start}"', f'end = "{phenology.end}"',
             f"window_days = {phenology.window_days}", ""]
    for s in phenology.stages:
        lines += ["[[stages]]", f'name = "{s.name}"',
                  "last = true" if s.last else f"offset = {s.offset}", ""]
    lines.append("[cameras]")
    lines += [f'{cam} = "{date}"' for cam, date in phenology.cameras.items()]
    Path(path).write_text("\n".join(lines) + "\n")


# The original kept these values inside get_date_list; phenology=None means them.
ORIGINAL_PHENOLOGY = Phenology(
    start="2021-01-01", end="2021-07-01", window_days=12,
    stages=(Stage("dormancy", -12), Stage("green leaves and flowering", 10),
            Stage("young fruit", 45), Stage("colouring and ripening", 84),
            Stage("harvested", last=True)),
    cameras={"E88570046": "2021-01-08"}, path="")
DEFAULT_PRESETS = (1, 2, 3, 4, 5)
DEFAULT_TIMES = ("09", "12", "15")
DEFAULT_PHENOLOGY_FILE = Path(__file__).resolve().parent / "phenology.example.toml"


def create_assist_date(datestart=None, dateend=None):
    """Every date from ``datestart`` to ``dateend`` inclusive, as ``YYYY-MM-DD`` strings.

    Defaults: 2016-01-01 to today. As in the original, the start date is always
    returned, even when it lies after the end date.
    """
    datestart = datestart or "2016-01-01"
    dateend = dateend or datetime.date.today().isoformat()
    day = datetime.date.fromisoformat(datestart)
    last = datetime.date.fromisoformat(dateend)
    dates = [day.isoformat()]
    while day < last:
        day += datetime.timedelta(days=1)
        dates.append(day.isoformat())
    return dates


def _source(phenology):
    return phenology.path or "the built-in phenology (the original's values)"


def _shift(date, days):
    return (datetime.date.fromisoformat(date) + datetime.timedelta(days=days)).isoformat()


def _offset_windows(phenology, buddate, camera):
    """{stage index: (first, last)} of the offset stages, clipped to the season.

    A window with no date in the season is an error; one cut by the season's ends is
    clipped with a warning (the original's negative list index silently emptied a
    window that started before the season, e.g. dormancy for its own example).
    """
    where = f"{_source(phenology)}: camera {camera} (bud date {buddate})"
    windows = {}
    for i, stage in enumerate(phenology.stages):
        if stage.last:
            continue
        first = _shift(buddate, stage.offset)
        last = _shift(first, phenology.window_days - 1)
        if last < phenology.start or first > phenology.end:
            raise UserError(f"{where}: stage {i} {stage.name!r} window {first}..{last} "
                            f"falls outside the season {phenology.start}..{phenology.end}; "
                            f"check the bud date, the offsets and [season]")
        if first < phenology.start or last > phenology.end:
            clipped = max(first, phenology.start), min(last, phenology.end)
            warnings.warn(f"{where}: stage {i} {stage.name!r} window {first}..{last} "
                          f"reaches outside the season {phenology.start}..{phenology.end}; "
                          f"using {clipped[0]}..{clipped[1]}", stacklevel=3)
            first, last = clipped
        windows[i] = (first, last)
    _warn_overlaps(phenology, windows, where)
    return windows


def _warn_overlaps(phenology, windows, where, only=None):
    """Warn about every pair of overlapping windows (involving a stage in ``only``)."""
    items = sorted(windows.items())
    for a, (i, (f1, l1)) in enumerate(items):
        for j, (f2, l2) in items[a + 1:]:
            if f1 <= l2 and f2 <= l1 and (only is None or i in only or j in only):
                warnings.warn(f"{where}: windows of stage {i} {phenology.stages[i].name!r} "
                              f"({f1}..{l1}) and stage {j} {phenology.stages[j].name!r} "
                              f"({f2}..{l2}) overlap; their images get two stage labels",
                              stacklevel=3)


def _archive_name(point, date, time):
    return f"{point}_{date}_{time}.jpg"


def archive_photos(folder):
    """``({<preset>_<date>_<HH>.jpg: path}, [unparsed image paths])`` of one camera folder.

    The key is the name :func:`get_date_list` looks for; the path is the file as it is
    (``.jpg``, ``.jpeg`` or ``.png``, any case). Image files whose names do not parse
    are returned apart, so a caller can say so.
    """
    photos, unparsed = {}, []
    for p in sorted(Path(folder).iterdir()):
        if not (p.is_file() and is_image_file(p)):
            continue
        try:
            name = parse_archive_name(p)
        except FileNameError:
            unparsed.append(str(p))
            continue
        photos.setdefault(_archive_name(name.preset, name.date, name.hour), str(p))
    return photos, unparsed


def get_date_list(buddate, point, time, path, phenology=None, photos=None):
    """Paths of each stage's images for one camera folder, preset ``point`` and ``time``.

    Returns one list per stage (five with the original's priors) of full paths
    ``<path>/<point>_<date>_<time>.jpg`` (``.png`` or ``.jpeg`` where the archive holds
    that file). Offset stages list every date of their window whether or not the file
    exists; a ``last`` stage lists the last ``window_days`` existing images of this
    preset and time within the season. ``photos`` (from :func:`archive_photos`) saves
    listing the folder again.
    """
    phenology = phenology or ORIGINAL_PHENOLOGY
    camera = Path(path).name
    windows = _offset_windows(phenology, buddate, camera)
    season = create_assist_date(phenology.start, phenology.end)
    if photos is None:
        photos = archive_photos(path)[0] if Path(path).is_dir() else {}
    names = [_archive_name(point, d, time) for d in season]
    paths = [photos.get(n, os.path.join(path, n)) for n in names]
    lists = []
    for i, stage in enumerate(phenology.stages):
        if stage.last:
            existing = [p for n, p in zip(names, paths) if n in photos]
            lists.append(existing[-phenology.window_days:])
        else:
            first, last = windows[i]
            lists.append([p for d, p in zip(season, paths) if first <= d <= last])
    harvest = {i: (lists[i][0], lists[i][-1]) for i, s in enumerate(phenology.stages)
               if s.last and lists[i]}
    if harvest:
        # Dates only: the harvested window comes from the files, so check it here.
        dated = dict(windows)
        dated.update({i: (parse_archive_name(a).date, parse_archive_name(b).date)
                      for i, (a, b) in harvest.items()})
        _warn_overlaps(phenology, dated, f"{_source(phenology)}: camera {camera} "
                                         f"preset {point} time {time}", only=set(harvest))
    return lists


def camera_folder(archive, camera):
    """``<archive>/<camera>``; a clear error when that folder does not exist."""
    folder = Path(archive) / str(camera)
    if not folder.is_dir():
        if not Path(archive).is_dir():
            raise MissingInput(archive, "archive folder not found",
                               "give the folder holding <camera>/<preset>_<date>_<HH>.jpg")
        present = sorted(p.name for p in Path(archive).iterdir() if p.is_dir())
        raise MissingInput(folder, f"camera folder not found (the archive has: "
                                   f"{', '.join(present[:20]) or 'no camera folders'})",
                           "check the camera ids in [cameras] and --cameras")
    return folder


def stage_windows(phenology, camera, archive=None, presets=None, times=None):
    """``[(stage name, first date, last date), ...]`` for one camera.

    A ``last`` (harvested) stage is read from the files: the last ``window_days``
    dates with a photo of the given presets and times (any, when None) in
    ``<archive>/<camera>``; without an archive, or with no photo, its dates are None.
    """
    phenology = phenology or ORIGINAL_PHENOLOGY
    if camera not in phenology.cameras:
        raise UserError(_source(phenology), f"camera {camera!r} is not in [cameras]",
                        "add its bud date there")
    windows = _offset_windows(phenology, phenology.cameras[camera], camera)
    if archive is not None and any(s.last for s in phenology.stages):
        folder = camera_folder(archive, camera)
        presets = None if presets is None else {int(p) for p in presets}
        times = None if times is None else {str(t) for t in times}
        dates = set()
        for p in folder.iterdir():
            try:
                name = parse_archive_name(p)
            except FileNameError:
                continue
            if ((presets is None or name.preset in presets)
                    and (times is None or name.hour in times)
                    and phenology.start <= name.date <= phenology.end):
                dates.add(name.date)
        tail = sorted(dates)[-phenology.window_days:]
        for i, s in enumerate(phenology.stages):
            if s.last and tail:
                windows[i] = (tail[0], tail[-1])
        _warn_overlaps(phenology, windows, f"{_source(phenology)}: camera {camera}",
                       only={i for i, s in enumerate(phenology.stages) if s.last})
    return [(s.name,) + windows.get(i, (None, None)) for i, s in enumerate(phenology.stages)]


def _time_slot(value):
    """'9' or '09' -> '09' (the archive names use two digits)."""
    try:
        hour = int(value)
    except ValueError:
        raise UserError("--times", f"{value!r} is not an hour 00..23") from None
    if not 0 <= hour <= 23:
        raise UserError("--times", f"{value!r} is not an hour 00..23")
    return f"{hour:02d}"


def window_table(phenology, archive, cameras=None, presets=DEFAULT_PRESETS, times=DEFAULT_TIMES):
    """Rows ``{camera, stage, name, first, last, images, expected}`` of what each stage
    selects from the archive (summed over presets and times)."""
    rows = []
    for camera in cameras or list(phenology.cameras):
        if camera not in phenology.cameras:
            raise UserError(_source(phenology), f"camera {camera!r} is not in [cameras]",
                            "add its bud date there")
        folder = camera_folder(archive, camera)
        photos = archive_photos(folder)[0]
        found = [[] for _ in phenology.stages]
        for point in presets:
            for time in times:
                lists = get_date_list(phenology.cameras[camera], point, time, str(folder),
                                      phenology, photos)
                for i, paths in enumerate(lists):
                    found[i] += [parse_archive_name(p).date for p in paths if os.path.exists(p)]
        windows = stage_windows(phenology, camera)
        for i, (stage, (name, first, last)) in enumerate(zip(phenology.stages, windows)):
            if stage.last:
                first, last = (min(found[i]), max(found[i])) if found[i] else (None, None)
                expected = len(presets) * len(times) * phenology.window_days
            else:
                days = (datetime.date.fromisoformat(last) - datetime.date.fromisoformat(first)).days + 1
                expected = len(presets) * len(times) * days
            rows.append(dict(camera=camera, stage=i, name=name, first=first, last=last,
                             images=len(found[i]), expected=expected))
    return rows


def format_table(header, rows):
    """A plain text table (columns padded to their widest cell)."""
    cells = [list(map(str, header))] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Step 1: print each camera's stage windows from the phenology priors "
                    "and how many archive images fall in each.")
    parser.add_argument("--phenology", default=str(DEFAULT_PHENOLOGY_FILE),
                        help="phenology TOML file (original: values inside date_pro.py; "
                             "default: data_processing/phenology.example.toml)")
    parser.add_argument("--archive", default=None,
                        help="camera archive root <root>/<camera>/<preset>_<YYYY-MM-DD>_<HH>.jpg "
                             "(original: /mnt/hdd/cherry2021); without it only the windows are printed")
    parser.add_argument("--cameras", nargs="+", default=None,
                        help="cameras to show (default: all in the phenology file)")
    parser.add_argument("--presets", nargs="+", type=int, default=list(DEFAULT_PRESETS),
                        help="preset points (original: 1 2 3 4 5)")
    parser.add_argument("--times", nargs="+", default=list(DEFAULT_TIMES),
                        help="times of day (original: 09 12 15)")
    return parser.parse_args(argv)


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    phenology = load_phenology(args.phenology)
    times = [_time_slot(t) for t in args.times]
    cameras = args.cameras or list(phenology.cameras)
    if args.archive is None:
        rows = []
        for camera in cameras:
            for i, (name, first, last) in enumerate(stage_windows(phenology, camera)):
                rows.append(dict(camera=camera, stage=i, name=name, first=first or "from files",
                                 last=last or "from files", images=None, expected=None))
    else:
        rows = window_table(phenology, args.archive, cameras, args.presets, times)
    keys = ["camera", "stage", "name", "first", "last", "images", "expected"]
    print(f"{args.phenology}: season {phenology.start}..{phenology.end}, "
          f"windows of {phenology.window_days} days, presets {args.presets}, times {times}")
    print(format_table(keys, [[r[k] for k in keys] for r in rows]))
    return {"rows": rows}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
