"""The per-user cache of measurements the tool can redo (image verdicts, precision
probes): ``$PDE_CACHE_DIR``, default ``~/.cache/pde_tf``. Best effort: an unreadable or
unwritable cache only costs the measurement again."""
import json
import os
from pathlib import Path

CACHE_ENV = "PDE_CACHE_DIR"


def cache_root():
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pde_tf")


def read_cache(path):
    """The JSON object at ``path``, or ``{}`` where it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path, data):
    """Write ``data`` as JSON at ``path`` atomically (a temporary file renamed into
    place, so concurrent processes never read half a file); errors are ignored."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.part{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass
