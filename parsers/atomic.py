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
import mmap
import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


#: Alignment of O_DIRECT writes: offsets, lengths and memory addresses (covers 512-byte and
#: 4 KiB logical blocks).
DIRECT_BLOCK = 4096


def _pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    while view.nbytes:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


class _DirectTail:
    """The bytes of a file from offset ``base`` on, gathered in a page-aligned buffer and
    written with ``O_DIRECT`` in whole blocks, by a thread of its own while the next buffer
    fills.

    A big sequential writer (HDF5 appending compressed chunks) then skips the copy into the
    page cache: on a virtual machine whose host takes back freed memory, every new page-cache
    page costs a fault, and buffered writes ran at 330 to 480 MB/s where direct ones ran at
    1.3 to 2.2 GB/s (docs/benchmarks.md). Bytes before ``base`` are written by the caller
    through the ordinary descriptor, after :meth:`wait`; holes inside the buffer are zeros, as
    in a sparse file.
    """

    def __init__(self, direct_fd: int, fd: int, size: int) -> None:
        self.direct_fd: int | None = direct_fd
        self.fd = fd
        self.size = size // DIRECT_BLOCK * DIRECT_BLOCK
        # two page-aligned buffers: one fills while the other is written
        self._maps = [mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE) for _ in range(2)]
        self._bufs = [memoryview(m) for m in self._maps]
        self.buf = self._bufs[0]
        self.base = 0  # file offset of buf[0], a multiple of DIRECT_BLOCK
        self.end = 0  # file offset just after the last byte put
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="direct-write")
        self._pending: Future | None = None

    @classmethod
    def open(cls, path: Path, fd: int, size: int) -> _DirectTail | None:
        """A tail for the file ``fd`` has open, or None where O_DIRECT is not available."""
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            direct_fd = os.open(path, os.O_WRONLY | flag)
        except OSError:  # some file systems refuse O_DIRECT
            return None
        return cls(direct_fd, fd, size)

    def put(self, pos: int, data: memoryview) -> None:
        """Keep ``data`` (``pos`` >= ``base``), writing out whole blocks to make room."""
        while data.nbytes:
            if pos >= self.base + self.size:
                self._spill(pos)
            i = pos - self.base
            if pos > self.end:  # a hole: zeros, as a file system would give
                self.buf[self.end - self.base:i] = bytes(pos - self.end)
            k = min(data.nbytes, self.size - i)
            self.buf[i:i + k] = data[:k]
            self.end = max(self.end, pos + k)
            pos, data = pos + k, data[k:]

    def _spill(self, pos: int) -> None:
        """Hand the whole blocks held to the writing thread and move ``base`` on, so that
        ``pos`` fits; the partial last block moves to the other buffer."""
        used = self.end - self.base
        whole = used // DIRECT_BLOCK * DIRECT_BLOCK
        if pos >= self.base + whole + self.size:  # beyond reach: the partial block goes
            whole = -(-used // DIRECT_BLOCK) * DIRECT_BLOCK  # too, padded with the hole's
            self.buf[used:whole] = bytes(whole - used)  # zeros
        if whole > 0:
            full = self.buf
            self.wait()  # the other buffer's write is done
            self.buf = self._bufs[1] if full is self._bufs[0] else self._bufs[0]
            if used > whole:
                self.buf[:used - whole] = full[whole:used]
            self._pending = self._writer.submit(self._write, full, whole, self.base)
            self.base += whole
        if pos >= self.base + self.size:
            self.base = pos // DIRECT_BLOCK * DIRECT_BLOCK
        self.end = max(self.end, self.base)

    def _write(self, buf: memoryview, n: int, pos: int) -> None:
        """Write buf[:n] (whole blocks) at ``pos``; falls back to the ordinary descriptor
        when the file system refuses the alignment."""
        if self.direct_fd is not None:
            try:
                _pwrite_all(self.direct_fd, buf[:n], pos)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                os.close(self.direct_fd)
                self.direct_fd = None
        _pwrite_all(self.fd, buf[:n], pos)

    def wait(self) -> None:
        """Wait for the write in flight, if any; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def drain(self) -> None:
        """Write everything held (the last partial block through the ordinary descriptor);
        the buffer keeps it, so later bytes of that block join it."""
        self.wait()
        used = self.end - self.base
        whole = used // DIRECT_BLOCK * DIRECT_BLOCK
        if whole > 0:
            self._write(self.buf, whole, self.base)
        if used > whole:
            _pwrite_all(self.fd, self.buf[whole:used], self.base + whole)

    def truncate(self, size: int) -> None:
        """Forget what lies at and after ``size`` (the caller drained and truncates)."""
        self.end = max(min(self.end, size), self.base)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the caller drained, and recorded any error
            self.wait()
        self._writer.shutdown()
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None
        with contextlib.suppress(BufferError):  # a view still held: unmapped when freed
            for view, m in zip(self._bufs, self._maps, strict=True):
                view.release()
                m.close()


class GuardedFile:
    """A binary file for h5py's ``fileobj`` driver that survives a full disk.

    HDF5 cannot recover from a failed write: closing such a file later crashes the process
    (SIGSEGV/SIGBUS, measured with h5py 3.16). Here a write refused for lack of room is
    recorded instead of raised, and later writes are dropped; :meth:`check` raises the
    recorded error, so the caller stops, discards the file and reports the error itself.

    ``direct``: the end of the file (where a writer appends) is gathered in a buffer of
    ``window`` bytes and written with ``O_DIRECT`` where the file system allows it
    (:class:`_DirectTail`); earlier bytes, reads and everything else go through the page
    cache as before. The bytes of the file are the same either way.
    """

    def __init__(self, path: str | os.PathLike[str], *, direct: bool = False,
                 window: int = 32 << 20) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        self.error: OSError | None = None
        self.wanted = 0  # the file's size, had no write been refused (its length for seek)
        self._pos = 0
        self._tail = _DirectTail.open(self.path, self._fd, window) if direct else None

    @property
    def direct(self) -> bool:
        """True while the end of the file is written with O_DIRECT."""
        return self._tail is not None and self._tail.direct_fd is not None

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        n, pos = view.nbytes, self._pos
        if n == 0:
            return 0
        self._pos += n
        self.wanted = max(self.wanted, pos + n)
        self._guard(self._write_at, view, pos)
        return n

    def _write_at(self, view: memoryview, pos: int) -> None:
        if self._tail is not None:
            cut = min(max(self._tail.base - pos, 0), view.nbytes)
            if cut < view.nbytes:
                self._tail.put(pos + cut, view[cut:])
            view = view[:cut]
            if view.nbytes:
                self._tail.wait()  # it may be writing the blocks these bytes land in
        _pwrite_all(self._fd, view, pos)

    def _guard(self, call: Callable[..., None], *args) -> None:
        """Run a write unless one was refused; record a refusal for lack of room."""
        if self.error is not None:
            return
        try:
            call(*args)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            self.error = exc.with_traceback(None)  # its frames would hold the buffer

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self.wanted = size
        self._guard(self._drain)
        if self._tail is not None:
            self._tail.truncate(size)
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            self.error = self.error or exc
        return size

    def _drain(self) -> None:
        if self._tail is not None:
            self._tail.drain()

    def read(self, size: int = -1) -> bytes:
        size = max(self.wanted - self._pos, 0) if size < 0 else size
        buffer = bytearray(size)
        return bytes(buffer[:self.readinto(buffer)])

    def readinto(self, buffer) -> int:
        self._guard(self._drain)
        n = os.preadv(self._fd, [buffer], self._pos)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        start = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.wanted}[whence]
        if start + offset < 0:
            raise OSError(errno.EINVAL, f"{self.path}: seek to a negative offset")
        self._pos = start + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        """Hand what the direct-I/O buffer holds to the file system."""
        self._guard(self._drain)

    def check(self) -> None:
        """Raise the recorded disk-full error, if a write was refused."""
        if self.error is not None:
            raise OSError(self.error.errno, f"{self.path}: {self.error.strerror}")

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self._guard(self._drain)
        finally:
            if self._tail is not None:
                self._tail.close()
            os.close(self._fd)
            self._fd = -1
