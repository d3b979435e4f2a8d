"""User errors: one readable line, exit status 2; the traceback only when asked for.

A mistake a person can fix (a missing file, a bad option, an unreadable photo) raises
:class:`UserError` (or :class:`MissingInput` / :class:`OutputExists`, which are also a
``FileNotFoundError`` / ``FileExistsError``, so callers that catch those still work).
Every script ends with ``run_cli(main)``, which prints such an error as::

    error: <file or option>: <problem>; <what to do>

and exits with status 2. ``--debug`` on the command line, or ``PDE_DEBUG=1`` in the
environment, lets the traceback through instead. Anything else (a bug) keeps its
traceback. ``main(argv)`` called from Python raises as usual.
"""
import contextlib
import os
import sys
import traceback

# A tf.data pipeline cannot raise a Python exception from inside the graph: it fails an
# assertion whose message carries this mark and the one-line error after it.
BAD_RECORD_MARK = "PDE bad input record: "
DEBUG_ENV = "PDE_DEBUG"


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
    return bad_record_message(str(exc))


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
