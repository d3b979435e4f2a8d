"""User errors: one readable line, exit status 2; the traceback only when asked for.

A mistake a person can fix (a missing file, a bad option, an unreadable photo) raises
:class:`UserError` (or :class:`MissingInput` / :class:`OutputExists`, which are also a
``FileNotFoundError`` / ``FileExistsError``, so callers that catch those still work).
Every script ends with ``run_cli(main)``, which prints such an error as::

    error: <file or option>: <problem>; <what to do>

and exits with status 2. A full disk, a read-only or forbidden folder (an ``OSError``
anywhere in the exception's chain, or a library's "No space left on device") is such a
line too, naming the folder; Ctrl-C is one line saying which run folder it stopped and
the command that continues it (status 130). ``--debug`` on the command line, or
``PDE_DEBUG=1`` in the environment, lets the traceback through instead. Anything else
(a bug) keeps its traceback. ``main(argv)`` called from Python raises as usual.
"""
import contextlib
import errno
import os
import sys
import tempfile
import traceback

# A tf.data pipeline cannot raise a Python exception from inside the graph: it fails an
# assertion whose message carries this mark and the one-line error after it.
BAD_RECORD_MARK = "PDE bad input record: "
DEBUG_ENV = "PDE_DEBUG"
# Errors of the file system a person fixes (space, permissions), and how they read.
_FS_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted"}
_FULL = (errno.ENOSPC, errno.EDQUOT)
# The run folder this process writes and the command that continues it (note_run).
_RUN = {}


class UserError(ValueError):
    """An input or option a person can fix.

    ``UserError(where, problem, fix)`` reads ``<where>: <problem>; <fix>``;
    ``UserError(message)`` keeps a message that already says all three.
    """

    def __init__(self, where, problem=None, fix=None):
        message = where if problem is None else f"{where}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the run needs does not exist."""


class OutputExists(UserError, FileExistsError):
    """The run would overwrite an earlier result."""


class NonFiniteLoss(UserError):
    """Training diverged: a loss or a weight became NaN or infinite."""


@contextlib.contextmanager
def user_errors(where, types=(ValueError,), fix=None):
    """Turn ``types`` raised inside the block (by ``nets/`` or a library, which know
    nothing of this module) into a :class:`UserError` about ``where``."""
    try:
        yield
    except UserError:
        raise
    except types as exc:
        raise UserError(where, str(exc).rstrip("."), fix) from exc


def note_run(run_dir, resume=None):
    """Remember the run folder this process writes (the first one noted: a pipeline's,
    not its steps') and the command that continues it, for the messages on a full disk
    and on Ctrl-C."""
    if "dir" not in _RUN:
        _RUN.update(dir=str(run_dir), resume=resume)


def note_progress(text):
    """Where the run is now (e.g. "epoch 3"), for the message on Ctrl-C."""
    _RUN["progress"] = text


def _continue_hint():
    if _RUN.get("resume"):
        return f"continue with: {_RUN['resume']}"
    return "run the same command again"


@contextlib.contextmanager
def output_checks_off():
    """Parse options without :func:`writable_dir`'s check: a caller that only validates
    a script's options and passes its own output folders later (run_pipeline's steps)."""
    _RUN["unchecked"] = _RUN.get("unchecked", 0) + 1
    try:
        yield
    finally:
        _RUN["unchecked"] -= 1


def writable_dir(path):
    """An ``argparse`` type for an output folder: ``path`` when it (or, for one not made
    yet, the nearest folder above it) takes a new file; else the ``OSError`` of the
    attempt, which :func:`run_cli` prints as one line, before any work."""
    if not path or _RUN.get("unchecked"):
        return path
    folder = os.path.abspath(path)
    while not os.path.isdir(folder):
        if os.path.exists(folder):
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", path)
        folder = os.path.dirname(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, folder) from None
    os.close(fd)
    os.unlink(probe)
    return path


def writable_file(path):
    """An ``argparse`` type for an output file: its folder is :func:`writable_dir`."""
    writable_dir(os.path.dirname(os.path.abspath(path)) if path else path)
    return path


def _chain(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def file_system_message(exc):
    """One line for a full disk or a folder that cannot be written, or None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FS_ERRORS:
            code, filename = e.errno, e.filename2 or e.filename   # a copy: the target
        elif "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            code, filename = errno.ENOSPC, None
        else:
            continue
        if code in _FULL:
            folder = (os.path.dirname(os.path.abspath(filename)) if filename
                      else _RUN.get("dir", "the output folder"))
            return (f"{folder}: {_FS_ERRORS[code]}; the files completed before it are kept "
                    f"and partial ones removed; free space there, then {_continue_hint()}")
        where = filename or _RUN.get("dir", "an output folder")
        if code == errno.EROFS:
            return f"{where}: {_FS_ERRORS[code]}; give a folder that can be written"
        return f"{where}: {_FS_ERRORS[code]}; check its permissions, or give another folder"
    return None


def interrupt_message():
    """The one line printed on Ctrl-C."""
    if "dir" not in _RUN:
        return "interrupted (Ctrl-C) before a run folder was made"
    at = f" at {_RUN['progress']}" if _RUN.get("progress") else ""
    return (f"{_RUN['dir']}: interrupted (Ctrl-C){at}; the files completed before it are "
            f"kept; {_continue_hint()}")


def bad_record_message(text):
    """The one-line error a failed pipeline assertion carries, or None."""
    if BAD_RECORD_MARK not in text:
        return None
    line = text.split(BAD_RECORD_MARK, 1)[1].splitlines()[0]
    # tf.debugging.Assert prints its string data in brackets; drop them.
    return line.strip().strip("[]'\"").replace("\\'", "'")


def user_message(exc):
    """The one line to print for ``exc``, or None when it is not a user's mistake."""
    if isinstance(exc, UserError):
        return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return bad_record_message(str(exc)) or file_system_message(exc)


def debug_requested(argv):
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(main, argv=None):
    """Run a script's ``main(argv)``: user errors as one line and exit status 2.

    ``--debug`` is taken out of the arguments (and turns the traceback back on).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"error: {interrupt_message()}", file=sys.stderr)
        status = 130
    except Exception as exc:  # noqa: BLE001  (sorted into user errors and bugs below)
        message = None if debug else user_message(exc)
        if message is None:
            traceback.print_exc()
        else:
            print(f"error: {message}", file=sys.stderr)
        status = 1 if message is None else 2
    sys.stdout.flush()
    sys.stderr.flush()
    # After a failed tf.data pipeline its worker threads can block the interpreter's
    # normal exit forever (a truncated VOC photo hung train.py after its traceback):
    # leave at once, the message and traceback printed.
    os._exit(status)
