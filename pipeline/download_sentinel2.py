"""Download Sentinel-2 products for an area and dates: ``python -m pipeline.download_sentinel2``.

One interface, three backends (``--backend``):

- ``stac`` (default, no account): STAC item search (POST /search, paged) on Earth Search v1
  ``sentinel-2-c1-l2a``; reads only the needed window of each band's Cloud-Optimised GeoTIFF
  over HTTP and writes one multi-band GeoTIFF per item (the selected bands, 10 m grid) with an
  SCL GeoTIFF and an MTD xml (offsets) beside it.
- ``cdse`` (Copernicus Data Space account): OData search, Bearer-token download of SAFE zips
  through :mod:`pipeline.fetch` (<= 4 parallel, resume, checksum).
- ``dhus`` (a DHuS hub you name with ``--dhus-url``): sentinelsat. DHuS only: the Copernicus
  Open Access Hub it was written for closed in 2023 and sentinelsat cannot talk to CDSE.

Selection (all backends): every product the search finds is sorted by sensing time (then id)
and ``max_products`` of them are kept by ``selection`` (:mod:`pipeline.selection`, as in the
PDS stage): ``first`` (the earliest) or ``spread`` (evenly over the date range, first and last
included). The same search answer always gives the same products.

Every backend writes ``OUT/manifest.json`` (:mod:`pipeline.manifest`): product id, path,
source URL, size, sha256 and the query. Passing that file back with ``--locked`` fetches exactly
those products again and fails if any differs (stac: by pixel content, since the GeoTIFF is
rebuilt locally). Products already present are not fetched
again. Settings come from the ``download_sentinel2`` section of params.yaml (flags override)
and the band list from ``datasets.sentinel2.reader.bands``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from parsers.errors import EXIT_OK, ParamsError, UserError, cli_entry
from parsers.locks import lock_output
from parsers.sentinel2 import DEFAULT_BANDS, Sentinel2Settings, check_bands
from pipeline import manifest as mf
from pipeline.params import DEFAULT_PARAMS, add_flags, flag_overrides, from_dict, load_section
from pipeline.selection import SELECTIONS, pick
from pipeline.sentinel2_backends import make_backend
from pipeline.sentinel2_backends.common import Failed, Fetched, Product, Query

PROG = "python -m pipeline.download_sentinel2"

# Lombardia (Italian region, IT-C4), lon/lat degrees: the region's extreme points rounded
# outward (westmost ~8.50 E on the Ticino, eastmost ~11.43 E in the province of Mantua,
# southmost ~44.68 N in the Oltrepo Pavese, northmost ~46.64 N at Livigno). [inferred from
# the region's extent; not read from an official boundary file]
LOMBARDIA_BBOX = (8.49, 44.67, 11.43, 46.64)
EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"
CDSE_CATALOGUE_URL = "https://catalogue.dataspace.copernicus.eu/odata/v1"
CDSE_DOWNLOAD_URL = "https://download.dataspace.copernicus.eu/odata/v1"
CDSE_TOKEN_URL = (
    "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
)


@dataclass(frozen=True)
class DownloadSentinel2Params:
    """Settings of the Sentinel-2 download stage (params.yaml section ``download_sentinel2``).

    ``bbox`` (west, south, east, north) in degrees; ``start``/``end`` inclusive ISO dates;
    ``max_cloud`` percent; ``window_px`` (stac only) the largest window edge in 10 m pixels
    read from each item, centred on the part of the item inside ``bbox`` and snapped to the
    480 m tile grid (0: the whole intersection); ``workers`` parallel transfers (<= 4, the
    CDSE and DHuS connection limit); ``retries``/``backoff`` per request; ``timeout`` seconds;
    ``selection`` which ``max_products`` of the matching products (by sensing time):
    ``first`` or ``spread`` over the date range.
    """

    backend: Literal["stac", "cdse", "dhus"] = field(
        default="stac", metadata={"help": "stac (default), cdse or dhus"})
    out: Path = field(default=Path("data/raw/sentinel2"), metadata={
        "help": "output folder (default data/raw/sentinel2)"})
    bbox: tuple[float, float, float, float] = field(default=LOMBARDIA_BBOX, metadata={
        "help": "area of interest W,S,E,N, degrees (default: Lombardia)"})
    start: str = field(default="2017-01-01", metadata={"help": "first sensing date, YYYY-MM-DD"})
    end: str = field(default="2017-12-31", metadata={"help": "last sensing date, YYYY-MM-DD"})
    level: Literal["L2A", "L1C"] = field(default="L2A", metadata={"help": "product level"})
    max_cloud: float = field(default=20.0, metadata={"help": "maximum cloud cover, percent"})
    max_products: int = field(default=10, metadata={"help": "maximum number of products"})
    selection: Literal["first", "spread"] = field(default="spread", metadata={
        "help": "which products when more match: first (earliest) or spread over the date range"})
    window_px: int = field(
        default=1920, metadata={"help": "stac: window edge in 10 m pixels (0: all)"})
    stac_url: str = field(
        default=EARTH_SEARCH_URL, metadata={"help": "STAC API root (default Earth Search v1)"})
    stac_collection: str = field(default="sentinel-2-c1-l2a", metadata={"help": "STAC collection"})
    cdse_catalogue_url: str = field(
        default=CDSE_CATALOGUE_URL, metadata={"help": "CDSE OData catalogue base URL"})
    cdse_download_url: str = field(
        default=CDSE_DOWNLOAD_URL, metadata={"help": "CDSE OData download base URL"})
    cdse_token_url: str = field(
        default=CDSE_TOKEN_URL, metadata={"help": "CDSE identity (OpenID token) URL"})
    dhus_url: str | None = field(
        default=None, metadata={"help": "dhus: base URL of a DHuS hub (required; no default)"})
    page_size: int = field(default=100, metadata={"help": "search results per page"})
    workers: int = field(default=4, metadata={"help": "parallel transfers, 1..4"})
    retries: int = field(default=5, metadata={"help": "retries per request"})
    backoff: float = field(default=0.5, metadata={"help": "first retry delay, seconds (doubles)"})
    timeout: float = field(default=60.0, metadata={"help": "network timeout, seconds"})
    progress: bool | None = field(
        default=None, metadata={"help": "progress bars (default: when stderr is a terminal)"})

    def __post_init__(self) -> None:
        w, s, e, n = self.bbox
        if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
            raise ValueError(f"bbox {list(self.bbox)} must be west<east, south<north in degrees")
        for name in ("start", "end"):
            value = getattr(self, name)
            try:
                _iso_date(value)
            except ValueError:
                raise ValueError(f"{name} {value!r} is not an ISO date (YYYY-MM-DD)") from None
        if _iso_date(self.start) > _iso_date(self.end):
            raise ValueError(f"start {self.start} is after end {self.end}")
        if not 0 <= self.max_cloud <= 100:
            raise ValueError(f"max_cloud {self.max_cloud} must be within 0..100 (%)")
        if self.max_products < 1:
            raise ValueError("max_products must be at least 1")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection {self.selection!r} must be one of {list(SELECTIONS)}")
        if self.window_px < 0 or self.window_px % 48:
            raise ValueError(f"window_px {self.window_px} must be 0 or a multiple of 48")
        if not 1 <= self.workers <= 4:
            raise ValueError(f"workers {self.workers} must be 1..4 (the services allow 4)")
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0 or self.page_size < 1:
            raise ValueError("retries, backoff must be >= 0; timeout, page_size > 0")

    def query(self) -> Query:
        return Query(tuple(self.bbox), self.start, self.end, self.level, self.max_cloud,
                     self.max_products)


def _iso_date(text: str):
    import datetime as dt

    return dt.date.fromisoformat(str(text)[:10])


#: The reader settings of the data set this stage downloads for.
READER_SECTION = "datasets.sentinel2.reader"


def load_bands(params_path: str | Path) -> tuple[str, ...]:
    """The band list of params ``datasets.sentinel2.reader.bands``: the bands the data set
    ``sentinel2`` reads are the ones downloaded (default: the 9 default bands).

    Validated: 9 distinct known band names starting with B02, B03, B04 (docs/sentinel2.md, s. 2).
    """
    path = Path(params_path)
    if not path.is_file():
        return DEFAULT_BANDS
    bands = load_section(Sentinel2Settings, READER_SECTION, path).bands
    try:
        return check_bands(bands, paper_layout=True)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {READER_SECTION}.bands: {exc}") from None


@dataclass
class RunSummary:
    """What one run did: counts, the manifest written, and the products that failed."""

    manifest: Path
    fetched: int = 0
    skipped: int = 0
    bytes: int = 0
    failed: list[Failed] = dataclasses.field(default_factory=list)
    ignored: list[Failed] = dataclasses.field(default_factory=list)
    found: int = 0  # products the search matched (before max_products / selection)
    selected: int = 0
    search_skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    def line(self, backend: str) -> str:
        """The one-line summary ``main`` prints."""
        text = (f"{backend}: {self.selected} of {self.found} products found selected, "
                f"{self.fetched} fetched, {self.skipped} already present, "
                f"{self.bytes / 1e6:.1f} MB of data")
        if self.ignored:
            text += f", {len(self.ignored)} skipped (unusable or offline)"
        if self.search_skipped:
            text += "; search features passed over: " + ", ".join(
                f"{n} {why}" for why, n in self.search_skipped.items())
        return text + f"; manifest {self.manifest}"


def _query_record(settings: DownloadSentinel2Params, backend, bands: tuple[str, ...]) -> dict:
    query = settings.query().as_dict()
    query.update({"backend": settings.backend, "service_url": backend.service_url,
                  "bands": list(bands)})
    query["selection"] = settings.selection
    if settings.backend == "stac":
        query.update({"collection": settings.stac_collection, "window_px": settings.window_px})
    return query


def select_products(products: Sequence[Product], settings: DownloadSentinel2Params
                    ) -> list[Product]:
    """``max_products`` of ``products`` by ``selection``, from their (sensing time, id) order."""
    ordered = sorted(products, key=lambda p: (p.sensing_time or "", p.product_id))
    return pick(ordered, settings.max_products, settings.selection)


def run(
    settings: DownloadSentinel2Params, bands: tuple[str, ...], locked: Path | None = None
) -> RunSummary:
    """Search (or replay ``locked``), fetch what is missing, write ``OUT/manifest.json``.

    Raises UserError when nothing matches, when a service refuses or cannot be reached, when
    a locked product differs from its lock, or (after writing the manifest of what did
    arrive) when some products failed.
    """
    out = Path(settings.out)
    backend = make_backend(settings.backend, settings, bands)
    lock = None
    if locked is not None:
        lock = mf.Manifest.read(locked)
        if lock.source != "sentinel2":
            raise UserError(f"{locked}: not a Sentinel-2 manifest (source {lock.source!r})")
        lb = lock.query.get("backend")
        if lb != settings.backend:
            raise UserError(
                f"{locked}: the lock was made with --backend {lb}, not {settings.backend}; "
                f"use --backend {lb}"
            )
        products = backend.locate(lock.files)
        query = lock.query
        found, search_skipped = len(products), {}
    else:
        result = backend.search(settings.query())
        found, search_skipped = len(result.products), dict(result.skipped)
        products = select_products(result.products, settings)
        query = _query_record(settings, backend, bands)
        if not products:
            q = settings.query()
            raise UserError(
                f"{backend.service}: no Sentinel-2 {q.level} products in bbox {list(q.bbox)} "
                f"from {q.start} to {q.end} with cloud cover <= {q.max_cloud:g}%; widen the "
                "search (--bbox, --start/--end, --max-cloud)"
            )
    previous = mf.read_if_exists(out / mf.MANIFEST_NAME)
    known = {e.product_id: e for e in previous.files} if previous else {}
    if lock is not None:
        known.update({e.product_id: e for e in lock.files})
    todo: list[Product] = []
    entries: dict[str, mf.ManifestEntry] = {}
    summary = RunSummary(out / mf.MANIFEST_NAME, found=found, selected=len(products),
                         search_skipped=search_skipped)
    for product in products:
        entry = known.get(product.product_id)
        if entry is not None and _present(out, entry, strict=lock is not None):
            entries[product.product_id] = entry
            summary.skipped += 1
        else:
            todo.append(product)

    def write_manifest() -> None:
        files = [entries[p.product_id] for p in products if p.product_id in entries]
        mf.Manifest("sentinel2", query, files).write(summary.manifest)

    def on_done(res: Fetched | Failed) -> None:
        """Record one finished product; the manifest is rewritten so an interrupted run
        keeps what it already has."""
        if isinstance(res, Failed):
            if res.ignorable:
                summary.ignored.append(res)
                warnings.warn(f"{res.product.product_id}: skipped: {res.error}", stacklevel=1)
            else:
                summary.failed.append(res)
            return
        rel = res.path.resolve().relative_to(out.resolve()).as_posix()
        meta = res.product.manifest_meta()
        meta.update(res.meta)
        entry = mf.ManifestEntry(res.product.product_id, rel, res.product.url, res.size,
                                 res.sha256, meta)
        if lock is not None:
            _check_against_lock(lock, entry, res.path, locked)
        entries[entry.product_id] = entry
        summary.fetched += 0 if res.skipped else 1
        summary.skipped += 1 if res.skipped else 0
        summary.bytes += res.transferred
        write_manifest()

    if todo:
        backend.fetch(todo, out, on_done)
    write_manifest()
    files = [entries[p.product_id] for p in products if p.product_id in entries]
    if not files and not summary.failed and summary.ignored:
        raise UserError(
            f"{backend.service}: none of the {len(products)} products found can be used "
            f"(first: {summary.ignored[0].product.product_id}: {summary.ignored[0].error}); "
            "change the search"
        )
    if summary.failed:
        offline = [f for f in summary.failed if f.offline]
        other = [f for f in summary.failed if not f.offline]
        parts = []
        if other:
            parts.append(f"{len(other)} failed (first: {other[0].product.product_id}: "
                         f"{other[0].error})")
        if offline:
            parts.append(f"{len(offline)} offline at {backend.service} (retrieval from the "
                         "long-term archive requested; run the same command again later)")
        raise UserError(
            f"{backend.service}: {len(files)} of {len(products)} products downloaded; "
            + "; ".join(parts) + "; rerun to resume"
        )
    return summary


def _present(out: Path, entry: mf.ManifestEntry, strict: bool) -> bool:
    """True when the file of ``entry`` is complete on disk (size; sha256 too if strict)."""
    path = mf.safe_join(out, entry.path)
    if not path.is_file() or path.stat().st_size != entry.size:
        return False
    for side in (entry.meta.get("sidecars") or {}).values():
        extra = path.parent / str(side.get("path", ""))
        if not extra.is_file() or extra.stat().st_size != side.get("size"):
            return False
    return not strict or mf.sha256_file(path) == entry.sha256


def _check_against_lock(
    lock: mf.Manifest, entry: mf.ManifestEntry, path: Path, lock_path: Path | None
) -> None:
    """Refuse a re-fetched product whose content differs from the lock (file removed)."""
    old = next((e for e in lock.files if e.product_id == entry.product_id), None)
    if old is None:
        return
    # A product rebuilt from COG windows (stac) is compared by its pixel content, since
    # another GDAL version may lay the same pixels out differently in the file.
    key = "data_sha256" if "data_sha256" in old.meta else None
    same = (old.meta.get(key) == entry.meta.get(key)) if key else (old.sha256 == entry.sha256)
    if not same:
        path.unlink(missing_ok=True)
        what = "pixel content" if key else "sha256"
        raise UserError(
            f"{lock_path}: {entry.product_id}: {what} of the new download differs from the "
            "lock (the service changed the product?); the file was removed; re-run without "
            "--locked to make a new lock"
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                   help="params file (section download_sentinel2; bands from "
                        "datasets.sentinel2.reader.bands)")
    p.add_argument("--locked", type=Path, metavar="MANIFEST",
                   help="fetch exactly the products of this manifest; fail if any differs")
    add_flags(p.add_argument_group("overrides of the params (DownloadSentinel2Params keys)"),
              DownloadSentinel2Params)
    return p


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = flag_overrides(args, DownloadSentinel2Params)
    params_path = args.params
    if not Path(params_path).is_file() and params_path == DEFAULT_PARAMS:
        # No params.yaml here: defaults plus flags (typed and validated the same way).
        settings = from_dict(DownloadSentinel2Params, overrides, where=PROG)
    else:
        settings = load_section(DownloadSentinel2Params, "download_sentinel2", params_path,
                                overrides)
    bands = load_bands(params_path)
    lock_output(settings.out, PROG)
    summary = run(settings, bands, args.locked)
    print(summary.line(settings.backend), file=sys.stderr)
    return EXIT_OK


__all__ = ["DownloadSentinel2Params", "RunSummary", "load_bands", "main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
