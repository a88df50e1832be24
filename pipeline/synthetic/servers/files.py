"""A static file server on 127.0.0.1 that behaves like an archive web server.

:func:`serve_directory` serves a folder over HTTP/1.1 (keep-alive, Content-Length on every
answer) with GET and HEAD, single byte ranges (206 + Content-Range, 416 when unsatisfiable)
and Apache-style HTML directory listings, in a daemon thread. It is used by the offline
demo and by the tests, which can inject faults (:class:`Faults`) and inspect a log of the
requests it answered.

Example::

    with serve_directory(tmp_path, Faults(fail_first={"DATA/*.CAL": 2})) as url:
        requests.get(url + "DATA/X.CAL")   # two 503 answers, then the file
        url.log                            # [RequestRecord(...), ...]
"""

from __future__ import annotations

import contextlib
import fnmatch
import html
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from pipeline.synthetic.servers import LoopbackServer, QuietHandler, serve_handler

SEND_CHUNK = 1 << 20


@dataclass
class Faults:
    """Misbehaviour to inject, keyed by fnmatch patterns of the URL path below the root
    (no leading slash, e.g. ``"DATA/*/V1_0000000001.CAL"`` or ``"*.CAL"``). Counters are
    per actual path: ``fail_first={"*.CAL": 1}`` fails the first GET of every .CAL file.

    - ``fail_first``: answer 503 (with ``Retry-After: fail_retry_after`` if set) to the
      first N GET requests of the path.
    - ``rate_limit``: answer 429 with ``Retry-After: seconds`` to the first N GETs
      (value ``(N, seconds)``, whole seconds as HTTP wants).
    - ``drop_after``: on the first GET of the path send the headers and only K body bytes,
      then cut the connection.
    - ``replace``: serve these bytes instead of the file's (a file changed on the server).
    - ``ignore_range``: answer Range requests with 200 and the whole file.
    - ``not_found``: answer 404 although the file exists.
    - ``bandwidth``: cap every response body at this many bytes per second (a slow link;
      not a fault, but it lives here with the other ways to make the server realistic).
    """

    fail_first: dict[str, int] = field(default_factory=dict)
    fail_retry_after: int | None = None
    rate_limit: dict[str, tuple[int, int]] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)
    replace: dict[str, bytes] = field(default_factory=dict)
    ignore_range: set[str] = field(default_factory=set)
    not_found: set[str] = field(default_factory=set)
    bandwidth: float | None = None
    _counts: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _match(self, table, path: str):
        for pattern in table:
            if fnmatch.fnmatchcase(path, pattern):
                return pattern
        return None

    def _take(self, kind: str, path: str, limit: int) -> bool:
        """True for the first ``limit`` calls per (kind, path)."""
        with self._lock:
            n = self._counts.get((kind, path), 0)
            self._counts[(kind, path)] = n + 1
            return n < limit

    def status_for(self, path: str) -> tuple[int, dict[str, str]] | None:
        if self._match(self.not_found, path) is not None:
            return 404, {}
        pat = self._match(self.fail_first, path)
        if pat is not None and self._take("503", path, self.fail_first[pat]):
            hdr = {}
            if self.fail_retry_after is not None:
                hdr["Retry-After"] = str(math.ceil(self.fail_retry_after))
            return 503, hdr
        pat = self._match(self.rate_limit, path)
        if pat is not None:
            n, seconds = self.rate_limit[pat]
            if self._take("429", path, n):
                return 429, {"Retry-After": str(math.ceil(seconds))}
        return None

    def drop_for(self, path: str) -> int | None:
        pat = self._match(self.drop_after, path)
        if pat is not None and self._take("drop", path, 1):
            return self.drop_after[pat]
        return None

    def content_for(self, path: str) -> bytes | None:
        pat = self._match(self.replace, path)
        return None if pat is None else self.replace[pat]

    def ignores_range(self, path: str) -> bool:
        return self._match(self.ignore_range, path) is not None


@dataclass(frozen=True)
class RequestRecord:
    """One answered request: method, path below the root, Range header, status, body bytes."""

    method: str
    path: str
    range: str | None
    status: int
    sent: int


class ServerURL(str):
    """The base URL (``http://127.0.0.1:PORT/``), carrying ``.log``, ``.faults``, ``.root``."""

    log: list[RequestRecord]
    faults: Faults
    root: Path
    server: LoopbackServer

    def requests_for(self, path: str, method: str = "GET") -> list[RequestRecord]:
        """Log records of ``method`` requests whose path matches the fnmatch ``path``."""
        return [r for r in self.log if r.method == method and fnmatch.fnmatchcase(r.path, path)]


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.I)


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end inclusive), None for "no usable range" (send all), "unsat" for 416."""
    m = _RANGE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # malformed or multi-range: ignore it like many servers do
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
        if start >= size:
            return "unsat"
        return start, end
    suffix = int(last)
    if suffix == 0:
        return "unsat"
    return max(0, size - suffix), size - 1


def _listing(url_path: str, folder: Path) -> bytes:
    title = html.escape(f"Index of {url_path}")
    rows = []
    parent = url_path.rstrip("/").rsplit("/", 1)[0] + "/"
    rows.append(
        '<img src="/icons/back.gif" alt="[PARENTDIR]"> '
        f'<a href="{quote(parent)}">Parent Directory</a>                             -   '
    )
    entries = sorted(
        (e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name
    )
    for e in entries:
        is_dir = e.is_dir()
        name = e.name + ("/" if is_dir else "")
        st = e.stat()
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime))
        size = "-" if is_dir else _human(st.st_size)
        icon = "folder.gif\" alt=\"[DIR]" if is_dir else "unknown.gif\" alt=\"[   ]"
        rows.append(
            f'<img src="/icons/{icon}"> <a href="{quote(name)}">{html.escape(name)}</a>'
            f"{' ' * max(1, 24 - len(name))}{when}  {size:>5}  "
        )
    body = (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n<html>\n <head>\n'
        f"  <title>{title}</title>\n </head>\n <body>\n<h1>{title}</h1>\n"
        '<pre><img src="/icons/blank.gif" alt="Icon "> <a href="?C=N;O=D">Name</a>'
        '                    <a href="?C=M;O=A">Last modified</a>      '
        '<a href="?C=S;O=A">Size</a>  <a href="?C=D;O=A">Description</a><hr>'
        + "\n".join(rows)
        + "\n<hr></pre>\n</body></html>\n"
    )
    return body.encode("utf-8")


def _human(n: int) -> str:
    for unit in ("", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _make_handler(root: Path, faults: Faults, log: list[RequestRecord], lock: threading.Lock):
    class Handler(QuietHandler):
        server_version = "sscnet-static/1.0"

        def _record(self, rel: str, status: int, sent: int) -> None:
            with lock:
                log.append(
                    RequestRecord(self.command, rel, self.headers.get("Range"), status, sent)
                )

        def _simple(self, rel: str, status: int, extra: dict[str, str] | None = None,
                    body: bytes | None = None, ctype: str = "text/plain") -> None:
            if body is None:
                body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
            self.send_body(status, body, ctype, extra)
            self._record(rel, status, 0 if self.command == "HEAD" else len(body))

        def do_HEAD(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

        def _serve(self) -> None:
            url_path = unquote(urlsplit(self.path).path)
            rel = url_path.lstrip("/")
            parts = [p for p in rel.split("/") if p]
            if any(p in ("..", ".") or "\\" in p or "\x00" in p for p in parts):
                self._simple(rel, 404)
                return
            target = root.joinpath(*parts) if parts else root
            if target.is_dir():
                if not url_path.endswith("/"):
                    self._simple(rel, 301, {"Location": quote(url_path + "/")})
                    return
                index = target / "index.html"
                body = index.read_bytes() if index.is_file() else _listing(url_path, target)
                self._simple(rel, 200, body=body, ctype="text/html;charset=UTF-8")
                return
            if self.command == "GET":
                failure = faults.status_for(rel)
                if failure is not None:
                    self._simple(rel, failure[0], failure[1])
                    return
            elif faults._match(faults.not_found, rel) is not None:
                self._simple(rel, 404)
                return
            data = faults.content_for(rel)
            if data is None and not target.is_file():
                self._simple(rel, 404)
                return
            if data is not None:
                size, mtime = len(data), 0.0
            else:
                st = target.stat()
                size, mtime = st.st_size, st.st_mtime
            modified = formatdate(mtime, usegmt=True)
            start, end, status = 0, size - 1, 200
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if if_range is not None and if_range != modified:
                rng = None  # changed since the client's copy: send it all
            if rng and not faults.ignores_range(rel):
                parsed = parse_range(rng, size)
                if parsed == "unsat":
                    self._simple(rel, 416, {"Content-Range": f"bytes */{size}"})
                    return
                if isinstance(parsed, tuple):
                    start, end = parsed
                    status = 206
            count = max(0, end - start + 1)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", modified)
            self.send_header("Content-Length", str(count))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                self._record(rel, status, 0)
                return
            drop = faults.drop_for(rel)
            limit = count if drop is None else min(count, drop)
            # Logged before the body goes out, so a client that has its bytes sees the record.
            self._record(rel, status, limit)
            try:
                if data is not None:
                    self.wfile.write(data[start:start + limit])
                elif limit and faults.bandwidth:
                    self._send_throttled(target, start, limit, faults.bandwidth)
                elif limit:
                    with open(target, "rb") as fh:
                        self.connection.sendfile(fh, start, limit)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            if drop is not None and limit < count:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)

        def _send_throttled(self, target: Path, start: int, count: int, rate: float) -> None:
            step = max(1, min(SEND_CHUNK, int(rate / 20)))  # about 20 sends per second
            t0 = time.monotonic()
            sent = 0
            with open(target, "rb") as fh:
                while sent < count:
                    n = self.connection.sendfile(fh, start + sent, min(step, count - sent))
                    if not n:
                        break
                    sent += n
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)

    return Handler


@contextlib.contextmanager
def serve_directory(
    root: str | os.PathLike[str], faults: Faults | None = None
) -> Iterator[ServerURL]:
    """Serve ``root`` on ``http://127.0.0.1:<free port>/`` until the block ends.

    Yields the base URL (a ``str`` with ``.log``, ``.faults`` and ``.root``).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    faults = faults if faults is not None else Faults()
    log: list[RequestRecord] = []
    handler = _make_handler(root, faults, log, threading.Lock())
    with serve_handler(handler, name="static") as server:
        url = ServerURL(f"http://127.0.0.1:{server.server_port}/")
        url.log, url.faults, url.root, url.server = log, faults, root, server
        yield url
