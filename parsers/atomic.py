"""Write files so that readers never see a partial output, and say so when the disk is full.

Every writer in the project goes through :func:`atomic_path`: the data is written to a
temporary name in the destination folder, flushed to the disk (``fsync``) and renamed over the
destination only when the writer finished without an exception. On failure the temporary file
is removed and an existing destination is left untouched. A process killed at any moment
leaves at worst a hidden ``.NAME.*.tmp`` file beside the destination, never a partial file
under the destination's name (the next run of the same stage removes such leftovers:
:func:`remove_stale_temporaries`).

A full disk (``ENOSPC``), an exceeded quota (``EDQUOT``) or file-size limit (``EFBIG``,
``ulimit -f``) while writing becomes one :class:`DiskFullError` line naming the destination
and the bytes it needs. :class:`GuardedFile` is the file object for libraries that cannot
survive their own write errors (HDF5 crashes when it closes a file whose write failed).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from parsers.errors import UserError

#: errno values that mean "no room for these bytes" (disk, quota, per-process size limit).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: How libraries that hide errno (HDF5, GDAL, libtorch) spell the same errors.
_DISK_FULL_TEXT = (*(os.strerror(e).lower() for e in DISK_FULL_ERRNOS),
                   *(f"errno = {e}" for e in DISK_FULL_ERRNOS))
TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask() can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


class DiskFullError(UserError):
    """No room to write ``path``: the disk, a quota or the file-size limit is exhausted.

    ``needed`` is the size of the whole output in bytes when known (``estimate``: an
    extrapolation from the part written so far); ``written`` the bytes written before the
    failure.
    """

    def __init__(
        self, path: str | os.PathLike[str], cause: BaseException | None = None, *,
        needed: int | None = None, estimate: bool = False, written: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.needed = needed
        code = getattr(cause, "errno", None)
        reason = os.strerror(code).lower() if code in DISK_FULL_ERRNOS else "no space left"
        parts = [f"{self.path}: {reason}"]
        if written:
            parts[0] += f" after {written:,} bytes"
        if needed is not None:
            parts.append(f"needs {'about ' if estimate else ''}{needed:,} bytes")
        elif written:
            parts.append(f"needs more than {written:,} bytes")
        parts.append(_room(self.path.parent))
        kept = ("the previous file is untouched" if self.path.exists()
                else "no partial file was kept")
        super().__init__("; ".join(parts) + f"; {kept}")


def _room(folder: Path) -> str:
    """'N bytes free in FOLDER' and the file-size limit, if one is set."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        text = f"{shutil.disk_usage(folder).free:,} bytes free in {folder}"
    except OSError:
        text = f"free space in {folder} unknown"
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        text += f" (file-size limit {soft:,} bytes, see ulimit -f)"
    return text


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) means the disk had no room."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "errno", None) in DISK_FULL_ERRNOS:
            return True
        text = str(current).lower()
        if any(t in text for t in _DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or a folder's) data to the disk (skipped where folders refuse it)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on folders
            os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Rename a finished ``tmp`` onto ``dest`` so that a crash (even a power cut) leaves
    either the old or the new content under ``dest``: data synced, rename, folder synced."""
    fsync_path(tmp)
    os.replace(tmp, dest)
    fsync_path(Path(dest).parent)


@contextlib.contextmanager
def atomic_path(
    dest: str | os.PathLike[str], *, suffix: str | None = None,
    needed: Callable[[Path], int | None] | int | None = None,
) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` on success.

    Use it with libraries that write by file name (h5py, numpy, torch, matplotlib).
    ``suffix`` defaults to the destination's own suffix, because some writers choose the
    format from the extension. ``needed`` (an estimate of the output's size in bytes, or a
    function of the temporary path giving one) sizes the message of the
    :class:`DiskFullError` raised when the disk fills up.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=(dest.suffix if suffix is None else suffix) + TMP_SUFFIX,
        dir=dest.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer did not create its output")
        # mkstemp creates 0600; give the result the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_UMASK)
        durable_replace(tmp, dest)
    except BaseException as exc:
        full = isinstance(exc, Exception) and not isinstance(exc, UserError) \
            and is_disk_full(exc)
        written = tmp.stat().st_size if full and tmp.exists() else None
        size = (needed(tmp) if callable(needed) else needed) if full else None
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if full:
            raise DiskFullError(dest, exc, needed=size, estimate=True, written=written) from None
        raise


@contextlib.contextmanager
def atomic_open(
    dest: str | os.PathLike[str], mode: str = "wb", *, needed: int | None = None, **kwargs
) -> Iterator[IO]:
    """Open a temporary file for writing; fsync and rename it to ``dest`` on success."""
    if not mode.startswith("w"):
        raise ValueError("atomic_open only writes ('w' modes)")
    with atomic_path(dest, needed=needed) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()


def remove_stale_temporaries(output: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files interrupted writers of ``output`` left behind.

    ``output`` is a file (its ``.NAME.*.tmp`` siblings go) or a folder (every ``.*.tmp``
    below it goes). Only names :func:`atomic_path` makes are touched, and the caller must
    hold the output's lock (:mod:`parsers.locks`), so that no live writer owns them.
    Resumable ``.part`` downloads are kept. Returns what was removed.
    """
    output = Path(output)
    if output.is_dir():
        found = [p for p in output.rglob(f".*{TMP_SUFFIX}") if p.is_file()]
    elif output.parent.is_dir():
        found = list(output.parent.glob(f".{glob.escape(output.name)}.*{TMP_SUFFIX}"))
    else:
        found = []
    removed = []
    for path in found:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


class GuardedFile:
    """A binary file for h5py's ``fileobj`` driver that survives a full disk.

    HDF5 cannot recover from a failed write: closing such a file later crashes the process
    (SIGSEGV/SIGBUS, measured with h5py 3.16). Here a write refused for lack of room is
    recorded instead of raised, and later writes are dropped; :meth:`check` raises the
    recorded error, so the caller stops, discards the file and reports the error itself.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._raw = open(self.path, "w+b", buffering=0)  # noqa: SIM115 (closed by close())
        self.error: OSError | None = None
        self.wanted = 0  # the size the file would have if no write had been refused

    def write(self, data: bytes) -> int:
        n = memoryview(data).nbytes
        self.wanted = max(self.wanted, self._raw.tell() + n)
        if self.error is None:
            try:
                return self._raw.write(data)
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS:
                    raise
                self.error = exc
        return n

    def truncate(self, size: int | None = None) -> int:
        if size is not None:
            self.wanted = size
        try:
            return self._raw.truncate(size)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            self.error = self.error or exc
            return size if size is not None else self._raw.tell()

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def readinto(self, buffer) -> int:
        return self._raw.readinto(buffer)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def flush(self) -> None:
        """Nothing to do: the file is unbuffered."""

    def check(self) -> None:
        """Raise the recorded disk-full error, if a write was refused."""
        if self.error is not None:
            raise OSError(self.error.errno, f"{self.path}: {self.error.strerror}")

    def close(self) -> None:
        self._raw.close()
