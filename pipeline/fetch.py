"""The project's one HTTP download engine.

Every download stage goes through this module:

- :func:`make_session` builds one pooled :class:`requests.Session` with timeouts, TLS
  verification that cannot be switched off, and urllib3 retries with exponential backoff on
  connection errors and 429/5xx answers (``Retry-After`` is respected).
- :func:`download` streams one URL to ``dest`` through ``dest.part``: resume with HTTP
  ``Range``, retry of a connection dropped mid-body by resuming, size checked against the
  server's length, sha256 computed while streaming, optional verification of the finished
  file, and an atomic rename. A partial or unverified file never takes the place of ``dest``.
- :func:`fetch_all` runs many :class:`FetchJob` with bounded parallelism and one tqdm bar
  counting bytes.
- :func:`safe_join` maps a path taken from an index or listing into the output folder and
  refuses anything that would land outside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from parsers.atomic import DiskFullError, durable_replace, is_disk_full
from parsers.errors import UserError, reason

CHUNK_BYTES = 1 << 20
PART_SUFFIX = ".part"
DEFAULT_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds
RETRY_STATUSES = (429, 500, 502, 503, 504)
USER_AGENT = "sscnet-pipeline/0.1 (+https://github.com/; python-requests)"

Verify = Callable[[Path], Any]
Progress = Callable[[int], Any]


class FetchError(UserError):
    """A transfer failed (after retries), or its bytes are not what was expected."""


@dataclass(frozen=True)
class FetchJob:
    """One file to fetch: ``url`` -> ``dest``; expectations are checked when given."""

    url: str
    dest: Path
    expected_size: int | None = None
    expected_sha256: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class FetchResult:
    """What happened to one file. ``error`` is None when ``path`` holds the good file."""

    url: str
    path: Path
    size: int = 0
    sha256: str = ""
    transferred: int = 0  # body bytes received in this call (0 when skipped)
    resumed: bool = False  # at least one Range request continued a partial file
    skipped: bool = False  # dest was already complete and matched the expectations
    attempts: int = 0  # GET requests issued by download() (urllib3 retries not counted)
    error: str | None = None
    job: FetchJob | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None


class _Session(requests.Session):
    """A Session with a default timeout and TLS verification always on."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        check_url(url)
        kwargs.setdefault("timeout", self.default_timeout)
        if kwargs.get("verify") is False:
            raise ValueError("TLS certificate verification cannot be disabled")
        return super().request(method, url, *args, **kwargs)


def make_session(
    *,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    pool_size: int = 16,
    retry_after_max: int = 120,
) -> requests.Session:
    """Return a pooled Session retrying connection errors and 429/5xx ``retries`` times.

    Backoff between consecutive failures is ``backoff * 2**(n-1)`` seconds (first retry
    immediate), capped at 30 s; a ``Retry-After`` header up to ``retry_after_max`` seconds
    wins. ``timeout`` is (connect, read) in seconds. Only http and https are mounted.
    """
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        backoff_factor=backoff,
        backoff_max=30,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        retry_after_max=retry_after_max,
        raise_on_status=False,  # hand the last answer back; download() names URL and status
    )
    session = _Session(timeout)
    session.verify = True
    session.adapters.clear()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # Identity encoding: Content-Length and Range offsets then count the bytes we store.
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    return session


def check_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL; raise UserError otherwise."""
    parts = urlsplit(str(url))
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise UserError(f"{url}: only http:// and https:// URLs are accepted")
    return str(url)


def safe_join(root: str | os.PathLike[str], relpath: str) -> Path:
    """Join ``relpath`` (from an index or listing, '/'-separated) under ``root``.

    Raises UserError for an empty, absolute or drive-qualified path, or one whose ``..``
    parts (or a symlink already inside root) would lead outside ``root``.
    """
    text = str(relpath).replace("\\", "/")
    if not text.strip() or "\x00" in text:
        raise UserError(f"refusing path {relpath!r}: empty or invalid")
    if text.startswith("/") or PureWindowsPath(str(relpath)).drive or re.match(r"^[A-Za-z]:", text):
        raise UserError(f"refusing path {relpath!r}: absolute paths are not allowed")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if ".." in parts or not parts:
        raise UserError(f"refusing path {relpath!r}: it would leave the output folder")
    root_path = Path(root).resolve()
    candidate = root_path.joinpath(*parts)
    resolved = candidate.resolve()
    if resolved != root_path and root_path not in resolved.parents:
        raise UserError(f"refusing path {relpath!r}: it resolves outside {root_path}")
    return candidate


def sha256_file(path: str | os.PathLike[str], chunk: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def part_path(dest: str | os.PathLike[str]) -> Path:
    """The temporary name a download of ``dest`` is streamed to."""
    dest = Path(dest)
    return dest.with_name(dest.name + PART_SUFFIX)


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)
_CONTENT_RANGE_UNSAT = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.I)


def _hash_prefix(path: Path) -> tuple[Any, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            h.update(block)
            n += len(block)
    return h, n


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


_DROPPED = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


def _body_chunks(resp: requests.Response) -> Iterator[bytes]:
    """Body bytes as they arrive (not decoded). Unlike ``iter_content``, bytes received
    before a connection drop are yielded before the error, so a resume loses nothing."""
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:  # urllib3 1.x
        yield from resp.iter_content(chunk_size=1 << 16)
        return
    while chunk := read1(CHUNK_BYTES, decode_content=False):
        yield chunk


def download(
    session: requests.Session,
    url: str,
    dest: str | os.PathLike[str],
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    progress: Progress | None = None,
    *,
    verify: Verify | None = None,
    max_resumes: int = 5,
    resume_backoff: float = 0.5,
) -> FetchResult:
    """Fetch ``url`` into ``dest`` and return what happened; raise FetchError on failure.

    If ``dest`` already exists and matches ``expected_sha256`` (or, without one, its size
    equals ``expected_size``), nothing is transferred; an existing ``dest`` that does not
    match is reported with a warning and fetched again. Otherwise the body streams into
    ``dest.part`` (resumed with Range if that exists), is checked against the server's
    total length, ``expected_size``, ``expected_sha256`` and ``verify(part_path)`` (any
    exception rejects it), and only then renamed onto ``dest``. A rejected file is deleted;
    an existing ``dest`` is never replaced by a partial or rejected one. A full disk raises
    :class:`~parsers.atomic.DiskFullError` (the part is deleted). ``progress(n)`` is called
    with each chunk's byte count (negative when a restart discards bytes); if it has an
    ``expect(total)`` method that is called once the total size is known and
    ``expected_size`` was not given.
    """
    check_url(url)
    dest = Path(dest)
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.lower()
    done = _already_there(url, dest, expected_size, expected_sha256, progress)
    if done is not None:
        return done
    dest.parent.mkdir(parents=True, exist_ok=True)
    t = _Transfer.start(url, dest, expected_size, progress)
    while not _transfer_round(session, t, max_resumes, resume_backoff):
        pass
    return _finalise(t, expected_sha256, verify)


def _already_there(
    url: str, dest: Path, expected_size: int | None, expected_sha256: str | None,
    progress: Progress | None,
) -> FetchResult | None:
    """A skipped result when ``dest`` is complete and matches the expectations, else None."""
    if not dest.is_file() or (expected_size is None and expected_sha256 is None):
        return None
    size = dest.stat().st_size
    digest = None
    if expected_size is None or size == expected_size:
        digest = sha256_file(dest)
        if expected_sha256 is None or digest == expected_sha256:
            _tell(progress, size)
            return FetchResult(url, dest, size, digest, skipped=True)
    what = ("its sha256 differs from the expected one" if digest
            else f"{size:,} bytes instead of the expected {expected_size:,}")
    warnings.warn(f"{dest}: {what} (damaged or changed since it was fetched?); "
                  "fetching it again", stacklevel=3)
    return None


@dataclass
class _Transfer:
    """One download in progress: the part file, the hash of its bytes, what is known."""

    url: str
    dest: Path
    part: Path
    progress: Progress | None
    expected_size: int | None
    hasher: Any
    have: int  # bytes in the part file (all hashed)
    total: int | None  # size of the whole file, once known
    told_total: bool
    transferred: int = 0
    resumed: bool = False
    attempts: int = 0
    drops: int = 0
    validator: str | None = None  # strong ETag or Last-Modified of this transfer's body

    @classmethod
    def start(cls, url: str, dest: Path, expected_size: int | None,
              progress: Progress | None) -> _Transfer:
        """Continue from ``dest.part`` when a previous run left one."""
        part = part_path(dest)
        hasher, have = (_hash_prefix(part) if part.is_file() else (hashlib.sha256(), 0))
        _tell(progress, have)
        return cls(url, dest, part, progress, expected_size, hasher, have,
                   total=expected_size, told_total=expected_size is not None)

    def restart(self, *, unlink: bool = True) -> None:
        """Forget the bytes received so far (the file changed, or the server sends it all)."""
        _tell(self.progress, -self.have)
        if unlink:
            _unlink(self.part)
        self.hasher, self.have = hashlib.sha256(), 0

    def learn_total(self, server_total: int) -> None:
        if self.total is not None and self.total != server_total:
            _unlink(self.part)
            raise FetchError(
                f"{self.url}: server reports {server_total} bytes, expected {self.total}")
        self.total = server_total
        if not self.told_total:
            self.told_total = True
            expect = getattr(self.progress, "expect", None)
            if expect is not None:
                expect(server_total)


def _transfer_round(
    session: requests.Session, t: _Transfer, max_resumes: int, resume_backoff: float
) -> bool:
    """One GET for the bytes still missing; True once the part file holds the whole body."""
    if t.expected_size is not None and t.have > t.expected_size:
        t.restart()
    if t.total is not None and t.have == t.total and t.have > 0:
        return True  # the part already holds every byte
    resp = _request(session, t)
    with resp:
        if resp.status_code == 416 and t.have:
            return _unsatisfiable(t, resp)
        length, mode = _accept(t, resp)
        got, error = _receive(t, resp, mode)
    if error is None and (length is None or got >= length):
        if t.total is None:
            t.total = t.have  # no length given: the body ended normally
        return True
    t.drops += 1
    if t.drops > max_resumes:
        why = reason(error) if error else f"body ended after {got} of {length} bytes"
        raise FetchError(
            f"{t.url}: connection dropped {t.drops} times, giving up "
            f"({why}); the partial file {t.part.name} is kept for a later resume"
        )
    time.sleep(resume_backoff * (2 ** (t.drops - 1)) if t.drops > 1 else 0)
    return False


def _request(session: requests.Session, t: _Transfer) -> requests.Response:
    """GET the rest of the file (Range + If-Range when part of it is here)."""
    headers = {"Range": f"bytes={t.have}-"} if t.have else {}
    if t.have and t.validator:
        headers["If-Range"] = t.validator  # the server sends it all (200) if it changed
    t.attempts += 1
    try:
        return session.get(t.url, headers=headers, stream=True)
    except requests.exceptions.RetryError as exc:
        raise FetchError(f"{t.url}: giving up after retries ({reason(exc)})") from None
    except _DROPPED as exc:
        raise FetchError(f"{t.url}: cannot connect ({reason(exc)})") from None


def _unsatisfiable(t: _Transfer, resp: requests.Response) -> bool:
    """A 416 answer to a Range request: True when the part is exactly the whole file."""
    m = _CONTENT_RANGE_UNSAT.match(resp.headers.get("Content-Range", ""))
    if m and int(m.group(1)) == t.have:
        t.total = t.have
        return True
    t.restart()  # the part is longer than the file (it changed): start again
    return False


def _accept(t: _Transfer, resp: requests.Response) -> tuple[int | None, str]:
    """Check a 200/206 answer against the part; return (body length, file mode)."""
    if resp.status_code not in (200, 206):
        raise FetchError(f"{t.url}: HTTP {resp.status_code} {resp.reason or ''}".rstrip())
    length = _int_header(resp.headers.get("Content-Length"))
    if resp.status_code == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != t.have:
            raise FetchError(
                f"{t.url}: bad Content-Range {resp.headers.get('Content-Range')!r} "
                f"for a request from byte {t.have}"
            )
        server_total = None if m.group(3) == "*" else int(m.group(3))
        body_len = int(m.group(2)) - int(m.group(1)) + 1
        if length is not None and length != body_len:
            raise FetchError(f"{t.url}: Content-Length {length} disagrees with Content-Range")
        length, mode = body_len, "ab"
        t.resumed = True
    else:  # 200: the server sent the whole file; any part is discarded
        t.restart(unlink=False)
        server_total, mode = length, "wb"
    if server_total is not None:
        t.learn_total(server_total)
    etag = resp.headers.get("ETag", "")
    t.validator = (etag if etag and not etag.startswith("W/")
                   else resp.headers.get("Last-Modified")) or t.validator
    return length, mode


def _receive(t: _Transfer, resp: requests.Response, mode: str) -> tuple[int, BaseException | None]:
    """Stream the body into the part file; (bytes received, the drop error or None)."""
    got = 0
    error: BaseException | None = None
    try:
        sink = _Sink(open(t.part, mode), t.hasher, t.progress)  # noqa: SIM115 (closed by sink)
        try:
            for chunk in _body_chunks(resp):
                sink.put(chunk)
                got += len(chunk)
        except _DROPPED as exc:
            error = exc
        finally:
            sink.close()  # waits until every chunk is written and hashed
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        written = t.part.stat().st_size if t.part.exists() else None
        _unlink(t.part)
        raise DiskFullError(t.dest, exc, needed=t.total, written=written) from None
    t.have += got
    t.transferred += got
    return got, error


def _finalise(t: _Transfer, expected_sha256: str | None, verify: Verify | None) -> FetchResult:
    """Check the complete part (size, sha256, ``verify``) and rename it onto ``dest``."""
    size = t.part.stat().st_size if t.part.exists() else 0
    if size != t.have or (t.total is not None and size != t.total):
        _unlink(t.part)
        raise FetchError(f"{t.url}: received {size} bytes, server announced {t.total}")
    digest = t.hasher.hexdigest()
    problem = None
    if t.expected_size is not None and size != t.expected_size:
        problem = f"size {size} differs from the expected {t.expected_size}"
    elif expected_sha256 is not None and digest != expected_sha256:
        problem = f"sha256 {digest} differs from the expected {expected_sha256}"
    if problem:
        _unlink(t.part)
        raise FetchError(f"{t.url}: {problem}; file not kept")
    if verify is not None:
        try:
            verify(t.part)
        except Exception as exc:
            _unlink(t.part)
            raise FetchError(f"{t.url}: rejected by verification ({exc}); file not kept") from None
    durable_replace(t.part, t.dest)
    return FetchResult(t.url, t.dest, size, digest, transferred=t.transferred,
                       resumed=t.resumed, attempts=t.attempts)


class _Sink:
    """Writes and hashes body chunks in a helper thread, so that receiving, hashing and
    writing overlap (sha256 and file writes release the GIL). At most ``depth`` chunks
    of up to 1 MiB wait in between: memory per transfer is bounded, whatever the file size."""

    def __init__(self, fh: Any, hasher: Any, progress: Progress | None, depth: int = 4) -> None:
        self._fh, self._hasher, self._progress = fh, hasher, progress
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fetch-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that put() never blocks
            try:
                self._fh.write(chunk)
                self._hasher.update(chunk)
                _tell(self._progress, len(chunk))
            except BaseException as exc:
                self._error = exc

    def put(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def close(self) -> None:
        """Flush, close the file and re-raise a write error, if any."""
        self._queue.put(None)
        self._thread.join()
        try:
            self._fh.close()
        except OSError as exc:
            self._error = self._error or exc
        if self._error is not None:
            raise self._error


def _tell(progress: Progress | None, n: int) -> None:
    if progress is not None and n:
        progress(n)


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class ByteBar:
    """A thread-safe tqdm bar in bytes (with rate) whose total can grow; a Progress."""

    def __init__(self, total: int | None, desc: str, disable: bool | None = None) -> None:
        from tqdm import tqdm

        self._lock = threading.Lock()
        self._bar = tqdm(
            total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
            dynamic_ncols=True, disable=disable, leave=True, mininterval=0.2,
        )

    def __call__(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def expect(self, extra: int) -> None:
        """Add ``extra`` bytes to the total (a file whose size was unknown up front)."""
        with self._lock:
            self._bar.total = (self._bar.total or 0) + extra
            self._bar.refresh()

    def note(self, text: str) -> None:
        with self._lock:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self._bar.close()


def fetch_all(
    session: requests.Session,
    jobs: Iterable[FetchJob],
    max_workers: int = 4,
    verify: Verify | None = None,
    *,
    desc: str = "download",
    progress: bool | None = None,
    max_resumes: int = 5,
) -> list[FetchResult]:
    """Run ``jobs`` with at most ``max_workers`` parallel transfers; results in job order.

    Failures do not stop the others: each shows up as a result with ``error`` set. A full
    disk does: :class:`~parsers.atomic.DiskFullError` is raised (transfers not yet started
    are cancelled).
    ``progress``: True/False forces the byte bar on/off; None shows it on a terminal.
    """
    jobs = list(jobs)
    if len({j.dest for j in jobs}) != len(jobs):
        raise ValueError("two jobs write the same destination")
    known = sum(j.expected_size or 0 for j in jobs)
    bar = ByteBar(known or None, desc, disable=None if progress is None else not progress)
    done = {"ok": 0, "skipped": 0, "failed": 0}
    lock = threading.Lock()

    def one(job: FetchJob) -> FetchResult:
        try:
            res = download(
                session, job.url, job.dest, job.expected_size, job.expected_sha256,
                progress=bar, verify=verify, max_resumes=max_resumes,
            )
            res = _with_job(res, job)
            key = "skipped" if res.skipped else "ok"
        except DiskFullError:
            raise  # the other files would not fit either: stop
        except (UserError, OSError, requests.RequestException) as exc:
            res = FetchResult(job.url, job.dest, error=str(exc), job=job)
            key = "failed"
        with lock:
            done[key] += 1
            bar.note(", ".join(f"{v} {k}" for k, v in done.items() if v))
        return res

    try:
        if max_workers <= 1 or len(jobs) <= 1:
            return [one(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fetch") as pool:
            futures = [pool.submit(one, j) for j in jobs]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        bar.close()


def _with_job(res: FetchResult, job: FetchJob) -> FetchResult:
    return dataclasses.replace(res, job=job)


def failed(results: Sequence[FetchResult]) -> list[FetchResult]:
    """The results that carry an error."""
    return [r for r in results if not r.ok]
