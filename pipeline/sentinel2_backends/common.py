"""Types and helpers shared by the Sentinel-2 download backends."""

from __future__ import annotations

import netrc
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from tqdm import tqdm

from parsers.errors import UserError, reason


@dataclass(frozen=True)
class Query:
    """What to search for. ``bbox`` is (west, south, east, north) in degrees (EPSG:4326);
    ``start``/``end`` are inclusive ISO dates (UTC); ``level`` 'L2A' or 'L1C';
    ``max_cloud`` in percent."""

    bbox: tuple[float, float, float, float]
    start: str
    end: str
    level: str
    max_cloud: float
    max_products: int

    def wkt(self) -> str:
        """The bbox as a WKT polygon (lon lat), closed, counter-clockwise."""
        w, s, e, n = self.bbox
        return f"POLYGON(({w} {s},{e} {s},{e} {n},{w} {n},{w} {s}))"

    def as_dict(self) -> dict[str, Any]:
        return {"bbox": list(self.bbox), "start": self.start, "end": self.end,
                "level": self.level, "max_cloud": self.max_cloud,
                "max_products": self.max_products}


@dataclass
class Product:
    """One product found by a backend. ``filename`` is the path relative to the output
    folder; ``checksums`` maps an algorithm ('md5', 'sha256', ...) to the hex digest the
    service publishes (may be empty); ``meta`` ends up in the manifest entry."""

    product_id: str
    url: str
    filename: str
    size: int | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    sensing_time: str | None = None
    cloud_cover: float | None = None
    processing_baseline: str | None = None
    online: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
    expected_sha256: str | None = None  # set when replaying a lock

    @classmethod
    def from_lock(cls, entry: Any) -> Product:
        """The product of a locked manifest entry (same URL, path, size, sha256, meta)."""
        meta = {k: v for k, v in entry.meta.items()
                if k not in ("sensing_time", "cloud_cover", "processing_baseline", "checksums")}
        return cls(entry.product_id, entry.url, entry.path, entry.size,
                   dict(entry.meta.get("checksums") or {}), entry.meta.get("sensing_time"),
                   entry.meta.get("cloud_cover"), entry.meta.get("processing_baseline"),
                   meta=meta, expected_sha256=entry.sha256)

    def manifest_meta(self) -> dict[str, Any]:
        out = {"sensing_time": self.sensing_time, "cloud_cover": self.cloud_cover,
               "processing_baseline": self.processing_baseline}
        if self.checksums:
            out["checksums"] = dict(self.checksums)
        out.update(self.meta)
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class Fetched:
    """A product written to ``path`` (``size`` bytes, hex ``sha256``)."""

    product: Product
    path: Path
    size: int
    sha256: str
    transferred: int = 0
    skipped: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failed:
    """A product that could not be fetched; ``offline`` marks a long-term-archive product,
    ``ignorable`` one that is of no use (e.g. no full tile inside the area): a warning only."""

    product: Product
    error: str
    offline: bool = False
    ignorable: bool = False


@dataclass
class SearchResult:
    """What a search found: every matching product (any order; the stage sorts and selects)
    and how many features it passed over, by reason (e.g. ``{"of other collections": 7,
    "trimmed (no datetime or band assets)": 2}``), for the run summary."""

    products: list[Product]
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


OnDone = Callable[["Fetched | Failed"], None]


@runtime_checkable
class Backend(Protocol):
    """The interface every Sentinel-2 download backend implements (``stac``, ``cdse``,
    ``dhus``). ``name`` is the ``--backend`` value, ``service`` a human name for messages,
    ``service_url`` the URL recorded in the manifest's query."""

    name: str
    service: str
    service_url: str

    def search(self, query: Query) -> SearchResult:
        """Every product matching ``query`` (the stage applies max_products/selection)."""
        ...

    def locate(self, entries: Sequence[Any]) -> list[Product]:
        """The products of a locked manifest's entries, found again."""
        ...

    def fetch(self, products: Sequence[Product], out: Path,
              on_done: OnDone | None = None) -> list[Fetched | Failed]:
        """Write ``products`` under ``out`` (atomically, resumable, retried); one result per
        product in order; ``on_done`` sees each as it finishes."""
        ...


def credentials(
    service: str, env_prefix: str, url: str, *, required: bool = True
) -> tuple[str, str] | None:
    """(user, password) from ``<PREFIX>_USERNAME``/``<PREFIX>_PASSWORD`` or ~/.netrc.

    The netrc file is ``$NETRC`` if set, else ``~/.netrc``; the entry is looked up by the
    host of ``url``. The password is never logged or put into an error message.
    """
    user = os.environ.get(f"{env_prefix}_USERNAME")
    password = os.environ.get(f"{env_prefix}_PASSWORD")
    if user and password:
        return user, password
    host = urlsplit(url).hostname or ""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if path.is_file():
        try:
            found = netrc.netrc(str(path)).authenticators(host)
        except (netrc.NetrcParseError, OSError) as exc:
            raise UserError(f"{path}: cannot read netrc file ({type(exc).__name__})") from None
        if found and found[0] and found[2]:
            return found[0], found[2]
    if not required:
        return None
    raise UserError(
        f"{service}: no credentials: set {env_prefix}_USERNAME and {env_prefix}_PASSWORD, "
        f"or add 'machine {host} login USER password PASS' to {path}"
    )


def unreachable(service: str, url: str, exc: BaseException, hint: str) -> UserError:
    """The one-line error for a service that cannot be reached."""
    return UserError(f"{service} at {url} is unreachable ({reason(exc)}): {hint}")


def fetch_in_parallel(
    products: Sequence[Product],
    fetch_one: Callable[[Product], Fetched | Failed],
    *,
    workers: int,
    desc: str,
    unit: str,
    progress: bool | None,
    on_done: Callable[[Fetched | Failed], None] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
    on_fatal: Callable[[BaseException], BaseException] | None = None,
) -> list[Fetched | Failed]:
    """Run ``fetch_one`` over ``products`` in ``workers`` threads with one progress bar.

    Results come back in the order of ``products``; ``on_done`` sees each as it finishes
    (the download stage writes the manifest there). An exception of a ``fatal`` type
    cancels the products not started yet and is re-raised as ``on_fatal(exc)``.
    """
    results: list[Fetched | Failed] = []
    bar = tqdm(total=len(products), desc=desc, unit=unit,
               disable=None if progress is None else not progress)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=desc) as pool:
            futures = [pool.submit(fetch_one, p) for p in products]
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except fatal as exc:
                    for f in futures:
                        f.cancel()
                    if on_fatal is None:
                        raise
                    raise on_fatal(exc) from None
                results.append(res)
                if on_done is not None:
                    on_done(res)
                bar.update(1)
    finally:
        bar.close()
    order = {p.product_id: i for i, p in enumerate(products)}
    return sorted(results, key=lambda r: order[r.product.product_id])
