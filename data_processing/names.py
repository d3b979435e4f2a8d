"""File names of the camera archive and of the selected stage images.

Archive:        ``<root>/<camera>/<preset>_<YYYY-MM-DD>_<HH>.jpg``  e.g. ``E88570046/1_2021-01-08_09.jpg``
Stage image:    ``<camera>p<preset>t<HH>i<stage>d<YYYY-MM-DD>_<HH>.jpg``  e.g. ``E88570046p1t09i0d2021-01-08_09.jpg``

The original sliced fixed character positions (view = first 11 characters, stage =
character 15), which only works for 9-character camera ids and one-digit presets and
stages. These parsers read the fields, and agree with the original on its names.
"""
import dataclasses
import datetime
import re
from pathlib import Path

from utils.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Greedy camera: the strict tail decides where the camera id ends, even if it holds "p".
_STAGE_RE = re.compile(r"^(?P<camera>.+)p(?P<preset>\d+)t(?P<time>\d{2})i(?P<stage>\d+)"
                       r"d(?P<date>\d{4}-\d{2}-\d{2})_(?P<hour>\d{2})\.(?:jpe?g|png)$", re.I)
_ARCHIVE_RE = re.compile(r"^(?P<preset>\d+)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<hour>\d{2})\.(?:jpe?g|png)$", re.I)


class FileNameError(UserError):
    """A file name that does not follow the expected pattern."""


@dataclasses.dataclass(frozen=True)
class StageImageName:
    """The fields of a selected stage image's name."""
    camera: str
    preset: int
    time: str      # the time-of-day slot, "09", "12", "15"
    stage: int
    date: str      # YYYY-MM-DD
    hour: str      # the hour in the archive name (equal to ``time`` in the original)

    @property
    def view(self):
        """Camera and preset: one fixed framing of one tree (the original's first 11 chars)."""
        return f"{self.camera}p{self.preset}"

    def filename(self, suffix=".jpg"):
        return f"{self.camera}p{self.preset}t{self.time}i{self.stage}d{self.date}_{self.hour}{suffix}"


@dataclasses.dataclass(frozen=True)
class ArchiveImageName:
    """The fields of an archive photo ``<camera>/<preset>_<date>_<HH>.jpg``."""
    camera: str
    preset: int
    date: str
    hour: str

    def filename(self, suffix=".jpg"):
        return f"{self.preset}_{self.date}_{self.hour}{suffix}"


def _check_date(date, name):
    try:
        datetime.date.fromisoformat(date)
    except ValueError as exc:
        raise FileNameError(f"{name}: {date!r} is not a valid date") from exc


def parse_stage_name(name):
    """Parse a stage image name (a path is fine); raise ``FileNameError`` naming it."""
    base = Path(str(name)).name
    m = _STAGE_RE.match(base)
    if not m:
        raise FileNameError(f"{base}: not a stage image name "
                         f"(expected <camera>p<preset>t<HH>i<stage>d<YYYY-MM-DD>_<HH>.jpg)")
    _check_date(m["date"], base)
    return StageImageName(m["camera"], int(m["preset"]), m["time"], int(m["stage"]),
                          m["date"], m["hour"])


def parse_archive_name(path):
    """Parse ``<camera>/<preset>_<date>_<HH>.jpg``; the camera is the parent folder."""
    path = Path(str(path))
    m = _ARCHIVE_RE.match(path.name)
    if not m:
        raise FileNameError(f"{path}: not an archive photo name "
                         f"(expected <preset>_<YYYY-MM-DD>_<HH>.jpg)")
    _check_date(m["date"], path)
    return ArchiveImageName(path.parent.name, int(m["preset"]), m["date"], m["hour"])


def pair_class(a, b):
    """Prior class (0..3) of a pair of stage image names or paths::

                     same stage   other stage
        same view        0             1
        other view       2             3

    The fields are parsed, so long camera ids and multi-digit presets or stages work;
    on the original's names this equals its rule (view = first 11 characters, stage =
    character 15). Raises ``FileNameError`` for a name that does not parse."""
    a, b = parse_stage_name(a), parse_stage_name(b)
    return int(class_of(a.view == b.view, a.stage == b.stage))


def class_of(same_view, same_stage):
    """The pair class from its two facts; elementwise on NumPy boolean arrays too."""
    return 2 * (same_view == 0) + (same_stage == 0)


def is_image_file(path):
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
