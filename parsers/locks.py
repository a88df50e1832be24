"""One writer per output: the lock every stage takes on what it writes.

    with output_lock("data/tiles/virtis", "python -m pipeline.tiles"):
        ...  # write data/tiles/virtis

    lock_output(args.out, PROG)  # in a stage's main(): held until main returns

The lock is the file ``OUTPUT.lock`` beside the output (``data/tiles/virtis.lock``). The holder
keeps an exclusive ``flock`` on it and writes one JSON line into it: PID, host, start time and
command. A second run on the same output (another shell, another cluster job) waits up to
``SSCNET_LOCK_WAIT`` seconds (environment; default 0) and then fails with one line naming the
holder. The lock file is removed when the holder finishes, whatever the outcome.

The kernel drops an flock when its process dies, even by SIGKILL, so a lock file left by a
killed run is free: the next run takes it over, says so on stderr, and removes the temporary
files the killed run left (:func:`parsers.atomic.remove_stale_temporaries`). On a file system
without flock the lock file is created exclusively instead; a leftover is taken over when its
holder ran on this host and that PID is gone. ``dvc repro`` takes its own lock on the
workspace as well; this one also covers stages run by hand.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from parsers.atomic import remove_stale_temporaries
from parsers.errors import UserError, hold_for_this_run

LOCK_SUFFIX = ".lock"
WAIT_ENV = "SSCNET_LOCK_WAIT"
_POLL_SECONDS = 0.2
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class OutputLockedError(UserError):
    """Another run holds the lock of the output."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock."""

    pid: int
    host: str
    started: str
    command: str

    @classmethod
    def me(cls, command: str) -> Holder:
        now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), now, command)

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data["started"]),
                       str(data["command"]))
        except (ValueError, TypeError, KeyError):
            return None

    def dumps(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "started": self.started,
                           "command": self.command}) + "\n"

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host} since {self.started} ({self.command})"

    def alive(self) -> bool:
        """False only when the holder ran on this host and its PID no longer exists."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file of ``output``: ``OUTPUT.lock`` beside it."""
    output = Path(output)
    return output.with_name(output.name + LOCK_SUFFIX)


def _wait_seconds(wait: float | None) -> float:
    if wait is not None:
        return wait
    text = os.environ.get(WAIT_ENV, "0")
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{WAIT_ENV}={text!r}: expected a number of seconds") from None
    return max(value, 0.0)


def _busy(output: Path, path: Path, waited: float) -> OutputLockedError:
    holder = Holder.parse(_read(path))
    who = holder.describe() if holder else f"the holder of {path}"
    hint = (f"waited {waited:.0f} s; " if waited else "") + (
        f"wait for it to finish (or set {WAIT_ENV}=SECONDS to wait), or stop it")
    return OutputLockedError(f"{output}: another run is writing it: {who}; {hint}")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _take_flock(path: Path, deadline: float) -> int | None:
    """An fd holding the flock of ``path`` (the file now at ``path``), or None when the
    deadline passed. OSError with an errno of _NO_FLOCK when flock is not supported."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        return None
                    time.sleep(_POLL_SECONDS)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed that file as we waited: lock the new one


def _take_exclusive(path: Path, deadline: float) -> int | None:
    """Fallback without flock: create the lock file exclusively; take over a dead holder's."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = Holder.parse(_read(path))
            if holder is not None and not holder.alive():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_SECONDS)


@contextlib.contextmanager
def output_lock(
    output: str | os.PathLike[str], command: str, *, wait: float | None = None,
    clean: bool = True,
) -> Iterator[Holder]:
    """Hold the lock of ``output`` for the block; OutputLockedError when another run has it.

    ``command`` names this run in the lock file (e.g. ``python -m pipeline.tiles``).
    ``wait``: seconds to wait for a busy lock (default: ``$SSCNET_LOCK_WAIT`` or 0).
    ``clean``: remove the temporary files a killed earlier run left in ``output``.
    """
    output = Path(output)
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + _wait_seconds(wait)
    try:
        fd = _take_flock(path, deadline)
    except OSError as exc:
        if exc.errno not in _NO_FLOCK:
            raise
        fd = _take_exclusive(path, deadline)
    if fd is None:
        raise _busy(output, path, time.monotonic() - start)
    me = Holder.me(command)
    try:
        previous = Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if previous is not None and previous.pid != me.pid:
            print(f"{command}: note: {output} was left locked by {previous.describe()}, "
                  "which ended without releasing it; taking over", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.dumps().encode(), 0)
        if clean:
            remove_stale_temporaries(output)
        yield me
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before the flock goes, so a waiter never locks a dead file
        os.close(fd)


def lock_output(output: str | os.PathLike[str], command: str) -> Holder:
    """Take the lock of ``output`` until the running ``main`` returns (see the module doc).

    Every stage calls this in its ``main`` before it writes anything. Under ``torchrun`` only
    rank 0 writes, so only rank 0 should call it.
    """
    return hold_for_this_run(output_lock(output, command))
