"""The run harness every trainer shares: run folder, resume, per-epoch log, plots,
TensorBoard, early stopping and checkpoints that survive a kill.

Every file a run writes goes through :meth:`Run.write` into ``Run.dir`` (under
``--strategy multiworker`` the run folder on the chief only, a scratch folder on the
other workers: :meth:`Run.start`), and lands by rename from a temporary file in the
same folder, so a kill at any moment leaves the previous complete file, never a
cut-off one. A checkpoint holds its own epoch (:func:`checkpoint_epoch`), and the
per-epoch CSV row is written before the checkpoint, so a resumed run starts after the
newest complete checkpoint and drops the log rows after it: every epoch is trained and
logged exactly once.

Files of a run folder (every trainer): ``args.json`` (``args_resume.json``,
``args_resume_2.json`` ... per resume), ``training_log.csv``, ``epoch_loss.txt``,
``epoch_val_loss.txt``, ``epoch_loss.png``, ``tensorboard/``, and ``run.json`` (the
``kind`` of run: which script made the folder; ``--resume`` of another script's folder
is refused before anything is written, :func:`check_run_kind`).
"""
import contextlib
import csv
import datetime
import io
import json
import math
import os
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from utils.errors import note_run
from utils.model_card import CARD_ENTRY, card_of, card_text, sidecar_path

LOG_CSV = "training_log.csv"
RUN_RECORD = "run.json"     # {"kind": ...}: which script made the run folder
_STAMP = re.compile(r"_\d{8}-\d{6}(_\d+)?$")
EPOCH_KEY = "epoch.json"   # the zip entry (or HDF5 attribute) holding a checkpoint's epoch
# Options a resumed run may change; every other option must match the run's args.json.
RESUME_MAY_CHANGE = {"resume", "logs_dir", "run_eagerly", "num_workers", "debug"}
# Test hook: "NAME:K" cuts the K-th write of file NAME short and stops there (for kill tests).
_PAUSE_ENV = "PDE_PAUSE_AT_WRITE"
# Set (to anything) to keep a non-chief worker's scratch folder, e.g. to compare its
# files with the chief's.
KEEP_WORKER_ENV = "PDE_KEEP_WORKER_FILES"
_writes = {}


def fresh_path(path):
    """``path``, or ``stem_2.ext``, ``stem_3.ext`` ... whichever does not exist yet
    (``stem`` ends at the first dot, so ``a.weights.h5`` -> ``a_2.weights.h5``)."""
    path = Path(path)
    if not path.exists():
        return path
    name, dot, suffix = path.name.partition(".")
    k = 2
    while (candidate := path.with_name(f"{name}_{k}{dot}{suffix}")).exists():
        k += 1
    return candidate


def progress_verbose():
    """Keras ``verbose``: a live bar on a terminal, one line per epoch in a piped log."""
    return 1 if sys.stdout.isatty() else 2


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def json_text(data):
    return json.dumps(data, indent=2, default=_json_default) + "\n"


@contextlib.contextmanager
def removed_on_error(tmp, target=None):
    """Delete the partial file ``tmp`` when the block fails (a full disk, Ctrl-C), and
    name ``target`` (default ``tmp``) in an ``OSError`` that names no file, so the one
    line printed for it says where."""
    try:
        yield tmp
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = str(target or tmp)
        raise


def write_json(path, data):
    """Write ``data`` as indented JSON at ``path``, atomically; paths and NumPy scalars
    become plain values."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(json_text(data)))


def write_atomic(path, write):
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``;
    a failed write leaves no temporary file.

    The temporary name keeps the suffix (Keras checks it) and starts with ``tmp-``, so
    no reader's pattern (``ep*.keras``, ``last_epoch.keras``) ever picks it up.
    """
    path = Path(path)
    tmp = path.with_name(f"tmp-{os.getpid()}-{path.name}")
    with removed_on_error(tmp, path):
        write(tmp)
        _maybe_pause(path, tmp)
        os.replace(tmp, path)
    return path


def _maybe_pause(path, tmp):
    hook = os.environ.get(_PAUSE_ENV)
    if not hook:
        return
    name, _, count = hook.partition(":")
    if name != path.name:
        return
    _writes[name] = _writes.get(name, 0) + 1
    if _writes[name] == int(count or 1):
        size = tmp.stat().st_size
        with open(tmp, "r+b") as f:
            f.truncate(size // 2)   # a write cut off half way, as a kill leaves it
        Path(str(path) + ".paused").write_text(str(os.getpid()))
        while True:
            time.sleep(1)


def read_log(path):
    """The per-epoch CSV log as ``{column: [values]}`` (empty when there is none).

    ``path`` is the CSV file or its run folder. Numbers become floats (an empty cell,
    an epoch without validation, NaN), ``epoch`` ints.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOG_CSV
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    history = {}
    for row in rows:
        for key, value in row.items():
            try:
                value = float(value) if value not in (None, "") else math.nan
            except ValueError:
                pass
            history.setdefault(key, []).append(value)
    if "epoch" in history:
        history["epoch"] = [int(e) for e in history["epoch"]]
    return history


def logged(log, key, first=0, stop=None):
    """The numbers in ``log[key]`` of epochs ``first <= epoch < stop`` (NaN left out)."""
    stop = math.inf if stop is None else stop
    return [v for e, v in zip(log.get("epoch", []), log.get(key, []))
            if first <= e < stop and isinstance(v, float) and not math.isnan(v)]


def checkpoint_epoch(path, legacy=None):
    """The number of epochs a checkpoint written by :meth:`Run.save_model` holds, or
    None when the file is cut off or unreadable. A whole file from before checkpoints
    held their epoch gives ``legacy`` (e.g. the epoch in its name)."""
    path = Path(path)
    try:
        if path.name.endswith(".keras"):
            with zipfile.ZipFile(path) as z:
                if EPOCH_KEY not in z.namelist():
                    return legacy
                return int(json.loads(z.read(EPOCH_KEY))["epoch"])
        import h5py

        with h5py.File(path, "r") as f:
            return int(f.attrs["epoch"]) if "epoch" in f.attrs else legacy
    except Exception:  # noqa: BLE001 -- any damage means "not a complete checkpoint"
        return None


def has_optimizer_state(path):
    """Whether a ``.keras`` checkpoint carries optimizer variables (a resume point)."""
    import h5py

    # The zip stores its members uncompressed: h5py reads the few blocks it needs.
    with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as weights, \
            h5py.File(weights, "r") as f:
        return len(f.get("optimizer/vars", ())) > 0


def newest_checkpoint(paths, legacy=lambda path: None):
    """``(path, epochs)`` of the complete checkpoint holding the most epochs, or
    ``(None, 0)``; cut-off files are passed over. ``legacy(path)``: the epoch of a file
    from before checkpoints held their epoch."""
    found = [(e, str(p)) for p in paths if (e := checkpoint_epoch(p, legacy(p))) is not None]
    if not found:
        return None, 0
    epochs, path = max(found)
    return Path(path), epochs


def run_kind(run_dir):
    """The kind of run (the name its script gives its folders, e.g. ``unet``,
    ``pde_class``, ``pipeline``) recorded in ``run.json``; for a folder from before that
    record, read from its name ``<kind>_<YYYYmmdd-HHMMSS>[_k]``; None when unknown."""
    run_dir = Path(run_dir)
    record = run_dir / RUN_RECORD
    if record.is_file():
        try:
            return json.loads(record.read_text()).get("kind")
        except (ValueError, AttributeError):
            return None
    stamp = _STAMP.search(run_dir.name)
    return run_dir.name[:stamp.start()] if stamp else None


def check_run_kind(run_dir, kind, option="--resume"):
    """Refuse (one line, nothing written) a run folder another script made."""
    found = run_kind(run_dir)
    legacy = not (Path(run_dir) / RUN_RECORD).is_file()
    if found is None or found == kind or (legacy and found.startswith(f"{kind}_")):
        return
    from utils.errors import UserError

    raise UserError(f"{option} {run_dir}",
                    f"a run folder of kind {found!r} ({RUN_RECORD}), not of this script's "
                    f"kind {kind!r}; nothing was written",
                    "give a run folder this script wrote, or start a new run without --resume")


def resume_args(parser, argv=None, may_change=(), kind=None):
    """Parse ``argv``; with ``--resume RUN_DIR`` the run's ``args.json`` supplies every
    option not given, and a given option that differs from it is refused unless it is
    in ``may_change`` (or :data:`RESUME_MAY_CHANGE`). ``kind`` (a name, or a function of
    the merged arguments giving it): the run kind the folder must be
    (:func:`check_run_kind`)."""
    args = parser.parse_args(argv)
    if not getattr(args, "resume", None):
        return args
    if isinstance(kind, str):
        check_run_kind(args.resume, kind)
    saved_path = Path(args.resume) / "args.json"
    if not saved_path.is_file():
        parser.error(f"--resume {args.resume}: no args.json there; give a run folder this "
                     f"script wrote")
    saved = json.loads(saved_path.read_text())
    known = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in saved.items()
                           if k in known and k not in RESUME_MAY_CHANGE})
    args = parser.parse_args(argv)
    if callable(kind):
        check_run_kind(args.resume, kind(args))
    allowed = RESUME_MAY_CHANGE | set(may_change)
    refused = [k for k, v in saved.items() if k in known and k not in allowed
               and json.loads(json.dumps(getattr(args, k), default=_json_default)) != v]
    if refused:
        given = ", ".join(f"--{k.replace('_', '-')} (run: {saved[k]!r})" for k in refused)
        ok = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(set(may_change))) or "none"
        parser.error(f"--resume {args.resume}: {given} differs from the run's args.json; a "
                     f"resumed run keeps its options (it may change: {ok}); start a new run "
                     f"instead")
    return args


class Run:
    """One run folder. Every file the harness writes goes through :meth:`write`.

    Under ``--strategy multiworker`` every worker runs the same script, and only the
    chief may write the run folder: :meth:`start` gives the other workers a private
    scratch folder instead (``chief`` False), deleted when the process ends. They
    still write every file there, so all workers run the same code, collective ops
    included; only where the files land differs.
    """

    def __init__(self, run_dir, chief=True):
        # Absolute, so that a path built from it (``fresh_path(run.dir / name)``) and
        # handed back to ``write`` does not get the folder prefixed twice.
        self.dir = Path(run_dir).absolute()
        self.chief = chief

    @classmethod
    def start(cls, name, args, root="logs"):
        """A new run ``root/<name>_<YYYYmmdd-HHMMSS>[_k]`` of kind ``name`` with
        ``args.json``, or, with ``args.resume``, that run folder again (when of kind
        ``name``) with ``args_resume[_k].json``; on a worker that is not the chief, a
        scratch folder (see the class)."""
        from utils.distribute import is_chief

        if getattr(args, "resume", None):
            check_run_kind(args.resume, name)
        if not is_chief(getattr(args, "strategy", "default")):
            return cls._worker_scratch(name, args)
        if getattr(args, "resume", None):
            run = cls(args.resume)
            run.write_json(fresh_path(run.dir / "args_resume.json"), vars(args))
        else:
            run = cls(make_run_dir(name, args, root=root))
        note_run(run.dir, f"python {sys.argv[0]} --resume {run.dir}")
        return run

    @classmethod
    def _worker_scratch(cls, name, args):
        import atexit
        import shutil
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix=f"{name}_worker_"))
        # A resumed run's decisions (early stopping, the log rows it keeps) read the
        # log; the worker reads the chief's, as the chief does.
        log = Path(args.resume) / LOG_CSV if getattr(args, "resume", None) else None
        if log is not None and log.is_file():
            shutil.copyfile(log, scratch / LOG_CSV)
        if os.environ.get(KEEP_WORKER_ENV):
            print(f"Not the chief: run files go to {scratch} (kept: {KEEP_WORKER_ENV})")
        else:
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)
            print(f"Not the chief: run files go to {scratch}, deleted at exit; the chief "
                  f"writes the run folder")
        return cls(scratch, chief=False)

    def path(self, name):
        return self.dir / name

    def write(self, name, write):
        """Write file ``name`` (a name in the run folder or a path) with
        ``write(tmp_path)``, atomically. The one place where every harness write lands
        (on a worker that is not the chief, ``self.dir`` is its scratch folder)."""
        return write_atomic(self.dir / name, write)

    def write_text(self, name, text):
        return self.write(name, lambda tmp: Path(tmp).write_text(text))

    def write_json(self, name, data):
        return self.write_text(name, json_text(data))

    def save_model(self, model, name, epoch, include_optimizer=False):
        """Save ``model`` (``.keras``: the whole model; ``.weights.h5``: weights) with
        ``epoch`` (epochs trained) inside it; the optimizer state only when asked, for
        the one checkpoint a resume starts from. Weights that are not all finite are
        refused (:func:`check_finite_weights`): no file of a run ever holds NaN. The
        model's card (:func:`utils.model_card.attach`) goes with it."""
        check_finite_weights(model, self.dir / name, epoch)
        card = card_of(model)

        def write(tmp):
            tmp = str(tmp)
            optimizer = getattr(model, "optimizer", None)
            if not include_optimizer and optimizer is not None:
                model.optimizer = None
            try:
                if tmp.endswith(".keras"):
                    model.save(tmp)
                else:
                    model.save_weights(tmp)
            finally:
                if optimizer is not None:
                    model.optimizer = optimizer
            if tmp.endswith(".keras"):
                with zipfile.ZipFile(tmp, "a") as z:
                    z.writestr(EPOCH_KEY, json.dumps({"epoch": int(epoch)}))
                    if card is not None:
                        z.writestr(CARD_ENTRY, card_text(card))
            else:
                import h5py

                with h5py.File(tmp, "a") as f:
                    f.attrs["epoch"] = int(epoch)
        path = self.write(name, write)
        if card is not None and not path.name.endswith(".keras"):
            self.write_text(sidecar_path(path), card_text(card))
        return path

    def log(self, name=LOG_CSV):
        return read_log(self.dir / name)

    def truncate_log(self, epochs):
        """Keep the log rows of the first ``epochs`` epochs: the ones a resume from a
        checkpoint of ``epochs`` epochs must not train and log again."""
        path = self.dir / LOG_CSV
        if not path.is_file():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        col = rows[0].index("epoch")
        keep = [rows[0]] + [r for r in rows[1:] if int(r[col]) < epochs]
        if len(keep) < len(rows):
            print(f"{path}: dropped the rows of {len(rows) - len(keep)} epoch(s) after the "
                  f"newest complete checkpoint; they are trained again.")
            self.write_rows(keep)

    def write_rows(self, rows, name=LOG_CSV):
        """Replace the log ``name`` (``training_log.csv``) with ``rows`` (header first),
        atomically."""
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        self.write_text(name, out.getvalue())


def check_finite_weights(model, path, epoch):
    """Raise a one-line error when a weight of ``model`` is NaN or infinite (a run that
    diverged within its last step, before any loss showed it)."""
    from utils.errors import NonFiniteLoss

    floats = [(w.path, a) for w, a in zip(model.weights, model.get_weights())
              if a.dtype.kind == "f"]
    # A sum is NaN or inf when an element is (or, rarely, when it overflows: the exact
    # test below then clears it); ten times faster than isfinite on every element.
    if all(math.isfinite(float(np.sum(a))) for _, a in floats):
        return
    bad = [path for path, a in floats if not np.isfinite(a).all()]
    if bad:
        raise NonFiniteLoss(str(path), f"not written: after epoch {epoch} {len(bad)} weight "
                                       f"array(s) hold NaN or inf, first {bad[0]} (the run "
                                       f"diverged); the earlier checkpoints are kept",
                            "start a new run with a lower learning rate")


def die_with_parent(parent_pid):
    """Make this process end when ``parent_pid`` (the process that started it) does,
    also by ``kill -9``: Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``), and
    an exit at once if that parent is gone already (it may die before the call).
    Elsewhere a no-op: :class:`ProcessLock` still keeps a second copy from starting."""
    import ctypes
    import signal

    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)       # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


class ProcessLock:
    """An exclusive lock on file ``path`` held by the living process named in it: a
    killed holder releases it with its last descriptor, so a lock held is a process
    alive. :meth:`acquire` takes it (False when held); :meth:`holder` reads the pid of
    the process holding it (None when free); :meth:`wait` blocks until it is free."""

    def __init__(self, path):
        self.path = Path(path)
        self._handle = None

    def acquire(self, patience_s=2.0):
        import fcntl

        handle = open(self.path, "a+")
        # holder() takes the lock for an instant to test it: try again for a while.
        deadline = time.monotonic() + patience_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    handle.close()
                    return False
                time.sleep(0.02)
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle       # held until this process ends
        return True

    def holder(self):
        import fcntl

        if not self.path.is_file():
            return None
        with open(self.path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                text = handle.read().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    def wait(self):
        import fcntl

        with open(self.path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_run_dir(name, args=None, root="logs", kind=None):
    """Create a new folder ``root/<name>_<YYYYmmdd-HHMMSS>[_k]`` (an existing folder is
    never reused) holding ``run.json`` (its ``kind``, default ``name``) and ``args`` (a
    Namespace or dict, if given) as ``args.json``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{name}_{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir, k = base, 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            k += 1
            run_dir = Path(f"{base}_{k}")
    Run(run_dir).write_json(RUN_RECORD, {"kind": kind or name})
    if args is not None:
        data = vars(args) if hasattr(args, "__dict__") else dict(args)
        Run(run_dir).write_json("args.json", data)
    return run_dir
