"""Synthetic Sentinel-2 products for the CDSE / DHuS imitations, and their HTTP plumbing."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from pipeline.synthetic.sentinel2_products import write_safe_product
from pipeline.synthetic.servers import QuietHandler, serve_handler
from pipeline.synthetic.servers.files import parse_range


@dataclass
class FakeProduct:
    """One product a fake hub serves: a SAFE zip in memory plus its search metadata."""

    uuid: str
    title: str  # product name without .SAFE
    begin: dt.datetime
    data: bytes
    cloud: float
    level: str = "L2A"
    baseline: str = "05.00"
    online: bool = True
    published_md5: str = ""  # what the hub claims (a wrong value imitates corruption)
    bbox: tuple[float, float, float, float] = (9.0, 45.0, 10.0, 46.0)
    extra: dict = field(default_factory=dict)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data, usedforsecurity=False).hexdigest()


def make_products(
    folder: Path, n: int = 3, *, level: str = "L2A", baseline: str = "05.00",
    size_10m: int = 36, start: dt.datetime = dt.datetime(2017, 7, 3, 10, 10, 31,
                                                          tzinfo=dt.timezone.utc),
) -> list[FakeProduct]:
    """``n`` tiny synthetic SAFE zips (GeoTIFF bands for speed), ten days apart."""
    out = []
    for i in range(n):
        when = start + dt.timedelta(days=10 * i)
        path = write_safe_product(folder, level=level, baseline=baseline, size_10m=size_10m,
                                  date=when, seed=i, zip=True, driver="GTiff",
                                  spacecraft="S2A" if i % 2 == 0 else "S2B")
        data = path.read_bytes()
        p = FakeProduct(str(uuid.UUID(int=0x5E27 * 10**6 + i)), path.stem, when, data,
                        cloud=[5.0, 12.0, 18.0, 70.0][i % 4], level=level, baseline=baseline)
        p.published_md5 = p.md5
        out.append(p)
    return out


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"",
         ctype: str = "application/json", headers: dict[str, str] | None = None) -> None:
    """Answer with ``body`` and a Content-Length (no body for HEAD)."""
    QuietHandler.send_body(handler, status, body, ctype, headers)


def send_ranged(handler: BaseHTTPRequestHandler, data: bytes,
                headers: dict[str, str] | None = None) -> None:
    """Serve ``data`` honouring a single ``Range`` header (206 / 416), like a file server."""
    rng = handler.headers.get("Range")
    extra = {"Accept-Ranges": "bytes", **(headers or {})}
    if rng:
        parsed = parse_range(rng, len(data))
        if parsed == "unsat":
            send(handler, 416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
            return
        if isinstance(parsed, tuple):
            a, b = parsed
            extra["Content-Range"] = f"bytes {a}-{b}/{len(data)}"
            send(handler, 206, data[a:b + 1], "application/octet-stream", extra)
            return
    send(handler, 200, data, "application/octet-stream", extra)


@contextlib.contextmanager
def serve(handler_cls: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler_cls`` on 127.0.0.1:<free port>; yield ``http://127.0.0.1:PORT/``."""
    with serve_handler(handler_cls, name="fake-hub") as server:
        yield f"http://127.0.0.1:{server.server_port}/"
