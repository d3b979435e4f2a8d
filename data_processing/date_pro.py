"""Step 1: phenology priors -> the date window of each stage.

The priors live in a TOML file (see ``phenology.example.toml``), read with ``tomllib``.
"""
import dataclasses
import datetime
import tomllib
from pathlib import Path


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
        raise ValueError(f"{where}: {value!r} is not a YYYY-MM-DD date") from exc


def load_phenology(path):
    """Read and check a phenology TOML file; errors name the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"phenology file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    try:
        season, stages, cameras = data["season"], data["stages"], data["cameras"]
        start = _parse_date(season["start"], f"{path} [season] start")
        end = _parse_date(season["end"], f"{path} [season] end")
        window = int(season.get("window_days", 12))
    except KeyError as exc:
        raise ValueError(f"{path}: missing entry {exc}") from exc
    parsed = []
    for i, s in enumerate(stages):
        if "name" not in s or (("offset" in s) == bool(s.get("last", False))):
            raise ValueError(f"{path}: stage {i} needs a name and exactly one of "
                             f"`offset` or `last = true`")
        parsed.append(Stage(s["name"], int(s["offset"]) if "offset" in s else None,
                            bool(s.get("last", False))))
    if not cameras:
        raise ValueError(f"{path}: [cameras] lists no camera")
    if window < 1 or start > end:
        raise ValueError(f"{path}: season {start}..{end} with window_days={window} is empty")
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
