"""The project's user-facing errors, and how every ``python -m`` tool reports them.

Anything that is the user's (or the input file's) fault raises :class:`UserError` (or a
subclass) with a one-line message naming the file or value and what is wrong.
``main(argv)`` functions are wrapped with :func:`cli_entry`: a :class:`UserError` becomes one
line on stderr (``prog: error: message``) and exit status 2; warnings print as one line each;
Ctrl-C exits 130; a file-size limit gives an error line instead of killing the process.
Bugs still show a traceback, on purpose.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A problem with the input, the parameters or the environment, not a bug."""


class ProductError(UserError):
    """A product file is missing, truncated, malformed or unsupported."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{os.path.basename(self.path) or self.path}: {problem}")


class ParamsError(UserError):
    """A parameter in params.yaml or on the command line is missing or invalid."""


#: How long a reason may be inside a one-line message.
REASON_CHARS = 200


def one_line(text: object, limit: int = REASON_CHARS) -> str:
    """``text`` with white space folded to single spaces, cut to ``limit`` characters."""
    folded = " ".join(str(text).split())
    return folded if len(folded) <= limit else folded[:limit - 3] + "..."


def reason(exc: BaseException, limit: int = REASON_CHARS) -> str:
    """A short one-line phrase for why ``exc`` happened, for inside a one-line message.

    Network failures read ``host name not found``, ``connection refused`` or ``timed out``;
    otherwise the innermost reason (``exc.args[0].reason`` of urllib/urllib3 wrappers, the
    part after "Caused by") with white space folded, at most ``limit`` characters.
    """
    inner: object = exc.args[0] if exc.args else exc
    inner = getattr(inner, "reason", inner)
    text = one_line(inner, 10**6) or type(exc).__name__
    both = f"{text} {exc}"
    if any(k in both for k in ("NameResolutionError", "Name or service not known",
                               "Failed to resolve", "nodename nor servname")):
        return "host name not found"
    if "Connection refused" in both or "ConnectionRefusedError" in both:
        return "connection refused"
    if "timed out" in both.lower() or "Timeout" in both:
        return "timed out"
    if "Caused by" in text:
        text = text.split("Caused by", 1)[1].strip(" ()")
    return one_line(text, limit)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    stream = file if file is not None else sys.stderr
    with contextlib.suppress(OSError, ValueError):
        stream.write(f"warning: {message}\n")


def _report_file_size_limit_as_an_error() -> None:
    """A file-size limit (``ulimit -f``) kills a process with SIGXFSZ by default; ignored,
    the write fails with EFBIG instead, which the writers report as one line."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def run_main(
    func: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None, prog: str
) -> int:
    """Call ``func(argv)`` and turn user errors into a one-line message and exit code."""
    _report_file_size_limit_as_an_error()
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        with contextlib.ExitStack() as held:
            token = _HELD.set(held)
            try:
                return int(func(argv) or 0)
            finally:
                _HELD.reset(token)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into e.g. `head`: not an error. Silence the flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        warnings.showwarning = previous


_HELD: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar(
    "held_for_this_run", default=None)


def hold_for_this_run(context: contextlib.AbstractContextManager[T]) -> T:
    """Enter ``context`` until the running ``main`` (a :func:`cli_entry` call) returns or
    raises; e.g. the lock of a stage's output (:func:`parsers.locks.lock_output`)."""
    held = _HELD.get()
    if held is None:
        raise RuntimeError("hold_for_this_run() needs a main() decorated with cli_entry")
    return held.enter_context(context)


def cli_entry(prog: str) -> Callable[[Callable[[Sequence[str] | None], int]], Callable]:
    """Decorate a ``main(argv) -> int`` so that it reports user errors as one line.

    The decorated function keeps its signature, so tests call ``main([...])`` and check
    the returned exit code and the captured stderr.
    """

    def decorate(func: Callable[[Sequence[str] | None], int]) -> Callable:
        @functools.wraps(func)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            return run_main(func, argv, prog)

        return wrapper

    return decorate
