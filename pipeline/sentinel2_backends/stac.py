"""``stac`` backend: STAC item search + windowed reads of Cloud-Optimised GeoTIFF assets.

Search: ``POST {api}/search`` (the landing page's ``rel=search`` link) through
:func:`pipeline.fetch.make_session` with ``collections``, ``bbox``, ``datetime``, ``limit`` and
``query={"eo:cloud_cover": {"lte": N}}``, following ``rel=next`` links to the end: POST links
carry a body (Earth Search v1: ``{"next": "<datetime>,<id>,<collection>"}``, v0:
``{"page": 2, ...}``) that is laid over the previous body, GET links are followed as given.
What real pages hold and is passed over (counted in the run summary):

- features of other collections (a page can mix collections);
- trimmed features (no id, no datetime, or no http(s) asset for a selected band), as a
  ``fields``-filtered search returns them;
- features whose cloud cover exceeds ``max_cloud`` (a server that ignores ``query``).

Assets: Earth Search v1 keys (``blue``, ``nir08``, ``scl``, ...), v0 keys (``B02``, ``SCL``)
or ``eo:bands`` names; ``*-jp2`` twins and ``s3://`` hrefs are never used.

Offsets (the DN offset of processing baseline >= 04.00), decided per item in this order and
recorded as ``offset_rule``: (1) ``product_metadata``: the product's own ``MTD_MSIL2A.xml``
asset (http(s) only) and its ``BOA_ADD_OFFSET`` values; (2)
``earthsearch:boa_offset_applied`` / ``sentinel:boa_offset_applied`` true: nothing left to
apply; (3) ``raster:bands``: the assets' declared offset / scale; (4) ``processing_baseline``:
-1000 from baseline 04.00 on, when an item declares nothing at all (v0 items).

Data: for each item the window of the 10 m grid that lies inside the area of interest (snapped
to the 480 m tile grid, at most ``window_px`` pixels a side, centred) is read from every band's
COG over HTTP range requests by :func:`parsers.sentinel2.read_assets` (20 m bands and SCL
pixel-replicated onto the 10 m grid), items in parallel threads. Per item the output folder
gets ``<item id>.tif`` (the selected bands, uint16, nodata 0, band descriptions = band names,
GDAL scale/offset and a ``BOA_ADD_OFFSET`` band tag in DN, e.g. -1000, both as decided above;
DNs as served, no offset applied), ``<item id>_SCL.tif`` (scene classification, same grid) and
``<item id>_MTD.xml`` (level, baseline, offsets and ``BOA_ADD_OFFSET_SOURCE`` = the rule, in
the ``MTD_MSIL2A.xml`` shape, which :func:`parsers.sentinel2.read` uses to harmonise).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import requests

from parsers.atomic import atomic_path
from parsers.errors import UserError, reason
from parsers.sentinel2 import ALL_BANDS, NATIVE_RESOLUTION
from pipeline.fetch import make_session, sha256_file
from pipeline.manifest import ManifestEntry
from pipeline.sentinel2_backends.common import (
    Failed,
    Fetched,
    Product,
    Query,
    SearchResult,
    fetch_in_parallel,
    unreachable,
)

# Sentinel-2 band -> Earth Search v1 asset key.
ASSET_KEYS: dict[str, str] = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B11": "swir16", "B12": "swir22", "SCL": "scl",
}
GRID_M = 480  # the 48 x 48 tile grid at 10 m: windows start and end on multiples of 480 m


OFFSET_FLAGS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
L2A_QUANTIFICATION = 10000.0  # BOA_QUANTIFICATION_VALUE: DN / 10000 = reflectance
MAX_PAGES = 10_000
MISLABELLED_COLLECTION = "sentinel-2-l2a"
TRIMMED = "trimmed (no id, datetime or http(s) asset for a selected band)"
FOREIGN = "of other collections"
CLOUDY = "cloudier than max_cloud"


class StacBackend:
    """Search a STAC API and cut the needed window out of each item's COG assets."""

    name = "stac"
    service = "STAC API"

    def __init__(self, settings: Any, bands: tuple[str, ...]) -> None:
        self.settings = settings
        self.bands = tuple(bands)
        self.service_url = settings.stac_url
        self.collection = settings.stac_collection
        self._items: dict[str, dict[str, Any]] = {}
        self._session = make_session(retries=settings.retries, backoff=settings.backoff,
                                     timeout=(min(10.0, settings.timeout), settings.timeout),
                                     pool_size=max(4, settings.workers * 2))
        self._warned = False

    # ------------------------------------------------------------------ search
    def _request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        """JSON answer of one API request; UserError naming the service on failure."""
        try:
            resp = self._session.request(method, url, json=body)
        except requests.RequestException as exc:
            raise unreachable(self.service, self.service_url, exc, _HINT) from None
        if resp.status_code != 200:
            raise UserError(
                f"{self.service} at {self.service_url} answered HTTP {resp.status_code} to "
                f"{method} {url} ({resp.text[:120].strip()!r}); check --stac-url / "
                "--stac-collection or try later")
        try:
            return resp.json()
        except ValueError:
            raise UserError(f"{self.service} at {url}: the answer is not JSON") from None

    def _search_url(self) -> str:
        landing = self._request("GET", self.service_url)
        links = [ln for ln in (landing.get("links") or []) if isinstance(ln, dict)
                 and ln.get("rel") == "search" and ln.get("href")]
        post = [ln for ln in links if str(ln.get("method", "POST")).upper() == "POST"]
        if post or links:
            return str((post or links)[0]["href"])
        return self.service_url.rstrip("/") + "/search"

    def _pages(self, body: dict[str, Any]) -> Iterator[list[Any]]:
        """The ``features`` of every page of a POST search, following ``rel=next`` links."""
        url, method = self._search_url(), "POST"
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = self._request(method, url, body if method == "POST" else None)
            features = page.get("features") if isinstance(page, dict) else None
            if not isinstance(features, list):
                raise UserError(f"{self.service} at {url}: the answer has no features list")
            yield features
            nxt = next((ln for ln in page.get("links") or [] if isinstance(ln, dict)
                        and ln.get("rel") == "next" and ln.get("href")), None)
            if nxt is None or not features:
                return
            method = str(nxt.get("method", "GET")).upper()
            url = str(nxt["href"])
            if method == "POST":
                # Earth Search's link bodies hold only the token ({"next": ...}, v0 {"page":
                # 2, ...}); laid over the previous body, the filters are kept either way.
                body = {**body, **(nxt.get("body") or {})}
            key = url + json.dumps(body, sort_keys=True) if method == "POST" else url
            if key in seen:
                return
            seen.add(key)
        raise UserError(f"{self.service} at {self.service_url}: more than {MAX_PAGES} pages")

    def _warn_collection(self) -> None:
        if self.collection == MISLABELLED_COLLECTION and not self._warned:
            self._warned = True
            warnings.warn(
                f"stac: collection {self.collection} has items whose "
                "earthsearch:boa_offset_applied flag is known to be wrong (element84 "
                "earth-search issues #66, #71): offsets are decided per item, but "
                "sentinel-2-c1-l2a (the default) is the safer collection", stacklevel=2)

    def search(self, query: Query) -> SearchResult:
        if query.level != "L2A" and "l2a" in self.collection.lower():
            raise UserError(
                f"stac: collection {self.collection} holds L2A products; for L1C use "
                "--backend cdse (Earth Search's L1C collection is JP2 in a requester-pays "
                "bucket) or --stac-collection naming an L1C COG collection"
            )
        self._warn_collection()
        body = {"collections": [self.collection], "bbox": list(query.bbox),
                "datetime": f"{query.start}T00:00:00Z/{query.end}T23:59:59Z",
                "query": {"eo:cloud_cover": {"lte": query.max_cloud}},
                "limit": self.settings.page_size}
        result = SearchResult([])
        ids: set[str] = set()
        for features in self._pages(body):
            for item in features:
                reason = self._unusable(item, query.max_cloud)
                if reason is not None:
                    result.skip(reason)
                elif item["id"] not in ids:
                    ids.add(item["id"])
                    result.products.append(self._product(item))
        return result

    def _unusable(self, item: Any, max_cloud: float | None = None) -> str | None:
        """Why a search feature cannot be used (a skip reason), or None."""
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            return TRIMMED
        if "collection" in item and item["collection"] != self.collection:
            return FOREIGN
        props = item.get("properties")
        if not isinstance(props, dict) or not props.get("datetime") or not isinstance(
                item.get("assets"), dict) or "collection" not in item:
            return TRIMMED
        if any(self._asset(item, b) is None for b in self.bands):
            return TRIMMED
        cloud = props.get("eo:cloud_cover")
        if max_cloud is not None and isinstance(cloud, (int, float)) and cloud > max_cloud:
            return CLOUDY
        return None

    def locate(self, entries: Sequence[ManifestEntry]) -> list[Product]:
        """Find the locked items again (by id) on the STAC API."""
        self._warn_collection()
        ids = [e.product_id for e in entries]
        found: dict[str, dict[str, Any]] = {}
        body = {"collections": [self.collection], "ids": ids,
                "limit": min(self.settings.page_size, max(1, len(ids)))}
        for features in self._pages(body):
            for item in features:
                if self._unusable(item) is None:
                    found.setdefault(item["id"], item)
        missing = [i for i in ids if i not in found]
        if missing:
            raise UserError(
                f"{self.service} at {self.service_url}: locked item(s) not found: "
                f"{', '.join(missing[:5])}"
            )
        return [self._product(found[i]) for i in ids]

    def _product(self, item: dict[str, Any]) -> Product:
        props = item.get("properties", {})
        self._items[item["id"]] = item
        self_href = next((ln["href"] for ln in item.get("links", []) if ln.get("rel") == "self"),
                         f"{self.service_url.rstrip('/')}/collections/{self.collection}/items/"
                         f"{item['id']}")
        uri = props.get("s2:product_uri") or props.get("sentinel:product_id")
        return Product(
            product_id=item["id"], url=self_href, filename=f"{item['id']}.tif",
            sensing_time=props.get("datetime"), cloud_cover=props.get("eo:cloud_cover"),
            processing_baseline=(props.get("s2:processing_baseline")
                                 or props.get("sentinel:processing_baseline")),
            meta={"collection": item.get("collection", self.collection),
                  "product_uri": uri, "level": "L2A"},
        )

    # ------------------------------------------------------------------- fetch
    def fetch(
        self, products: Sequence[Product], out: Path,
        on_done: Callable[[Fetched | Failed], None] | None = None,
    ) -> list[Fetched | Failed]:
        import rasterio

        s = self.settings
        env = rasterio.Env(
            GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
            CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif,.tiff,.TIF,.TIFF",
            GDAL_HTTP_MAX_RETRY=str(s.retries),
            GDAL_HTTP_RETRY_DELAY=str(max(s.backoff, 0.1)),
            GDAL_HTTP_TIMEOUT=str(math.ceil(s.timeout)),
            GDAL_HTTP_CONNECTTIMEOUT=str(math.ceil(min(s.timeout, 10))),
            VSI_CACHE="TRUE",
        )

        def one(product: Product) -> Fetched | Failed:
            try:
                return self._fetch_one(product, Path(out))
            except _ItemError as exc:
                return Failed(product, str(exc))

        # Items in parallel threads (rasterio keeps GDAL options per thread; the retry and
        # timeout options set here in the main thread apply to all of them).
        with env:
            return fetch_in_parallel(products, one, workers=s.workers, desc="stac",
                                     unit="item", progress=s.progress, on_done=on_done)

    @staticmethod
    def _asset(item: dict[str, Any], band: str) -> tuple[str, dict[str, Any]] | None:
        """(key, asset) of ``band``: v1 keys, v0 keys or ``eo:bands``; never a ``*-jp2``
        twin, never an ``s3://`` (or other non-http) href."""
        assets = item.get("assets") or {}

        def usable(key: str) -> bool:
            asset = assets.get(key)
            return (isinstance(asset, dict) and not key.endswith("-jp2")
                    and str(asset.get("href", "")).startswith(("http://", "https://")))

        for key in (ASSET_KEYS.get(band), band, band.lower(),
                    *(f"{band}_{r}m" for r in (10, 20, 60))):
            if key and usable(key):
                return key, assets[key]
        for key, asset in assets.items():
            names = [b.get("name") for b in (asset.get("eo:bands") or [])
                     if isinstance(b, dict)] if isinstance(asset, dict) else []
            if names == [band] and usable(key):
                return key, asset
        return None

    def _product_metadata(self, item: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """The item's own ``MTD_MSIL2A.xml`` (``product_metadata`` asset, http(s) only),
        parsed, and a manifest record of it; (None, None) when the item has none usable."""
        from parsers.errors import ProductError
        from parsers.sentinel2 import parse_mtd

        asset = (item.get("assets") or {}).get("product_metadata")
        href = str(asset.get("href", "")) if isinstance(asset, dict) else ""
        if not href.startswith(("http://", "https://")):
            return None, None
        try:
            resp = self._session.get(href)
        except requests.RequestException as exc:
            raise _ItemError(f"product_metadata {href}: {reason(exc)}") from None
        if resp.status_code != 200:
            raise _ItemError(f"product_metadata {href}: HTTP {resp.status_code}")
        try:
            mtd = parse_mtd(resp.content, name=href)
        except ProductError as exc:
            raise _ItemError(f"product_metadata: {exc}") from None
        return mtd, {"href": href, "size": len(resp.content),
                     "sha256": hashlib.sha256(resp.content).hexdigest(),
                     "baseline": mtd.baseline}

    def _window(self, ref) -> tuple[float, float, float, float] | None:
        """(left, bottom, right, top) in the item CRS: AOI ∩ raster, snapped, capped."""
        from rasterio.warp import transform_bounds

        w, s, e, n = transform_bounds("EPSG:4326", ref.crs, *self.settings.bbox,
                                      densify_pts=21)
        rb = ref.bounds
        left = math.ceil(max(w, rb.left) / GRID_M) * GRID_M
        right = math.floor(min(e, rb.right) / GRID_M) * GRID_M
        bottom = math.ceil(max(s, rb.bottom) / GRID_M) * GRID_M
        top = math.floor(min(n, rb.top) / GRID_M) * GRID_M
        if right - left < GRID_M or top - bottom < GRID_M:
            return None
        cap = self.settings.window_px * 10
        if cap:
            if right - left > cap:
                left = math.floor(((left + right) / 2 - cap / 2) / GRID_M) * GRID_M
                right = left + cap
            if top - bottom > cap:
                bottom = math.floor(((bottom + top) / 2 - cap / 2) / GRID_M) * GRID_M
                top = bottom + cap
        return left, bottom, right, top

    def _fetch_one(self, product: Product, out: Path) -> Fetched | Failed:
        """Read the window of one item (parsers.sentinel2.read_assets) and write its files."""
        import rasterio
        from rasterio.errors import RasterioIOError

        from parsers import sentinel2

        item = self._items[product.product_id]
        located = {}
        for band in (*self.bands, "SCL"):
            found = self._asset(item, band)
            if found is None:
                if band == "SCL":
                    continue
                raise _ItemError(f"item has no asset for band {band}")
            located[band] = found
        ref_band = next((b for b in self.bands if NATIVE_RESOLUTION[b] == 10), self.bands[0])
        ref_href = located[ref_band][1]["href"]
        try:
            with rasterio.open(ref_href) as ref:
                crs, ref_t = ref.crs, ref.transform
                bounds = self._window(ref)
        except RasterioIOError as exc:
            raise _ItemError(f"cannot open {ref_href} ({reason(exc)})") from None
        if bounds is None:
            return Failed(product, "no 480 m x 480 m window of the item lies inside the bbox",
                          ignorable=True)
        left, bottom, right, top = bounds
        res = abs(ref_t.a)
        window = (round((ref_t.f - top) / res), round((left - ref_t.c) / res),
                  round((top - bottom) / res), round((right - left) / res))
        try:
            # Raw DNs (harmonise=False): the offset is recorded, not applied, in the files.
            s2 = sentinel2.read_assets(
                {b: located[b][1]["href"] for b in located}, self.bands, "nearest",
                harmonise=False, window=window, product_id=product.product_id, level="L2A",
                baseline=product.processing_baseline)
        except UserError as exc:
            raise _ItemError(str(exc)) from None
        names = [*self.bands, *(["SCL"] if s2.scl is not None else [])]
        planes = [*s2.data, *([s2.scl] if s2.scl is not None else [])]
        stack = np.stack([p.astype(np.uint16) for p in planes])
        height, width = stack.shape[1:]
        transform = s2.transform
        crs = s2.crs or crs
        spectral = [b for b in names if b != "SCL"]
        k = len(spectral)
        mtd, mtd_record = self._product_metadata(item)
        decided, rule = decide_offsets(item, {b: located[b][1] for b in spectral},
                                       mtd, product.processing_baseline)
        scales = [_scale_offset(located[b][1], b)[0] for b in spectral]
        dn_offsets = [decided[b] for b in spectral]
        offsets = [d * sc for d, sc in zip(dn_offsets, scales, strict=True)]
        dest = out / product.filename
        profile = {"driver": "GTiff", "width": width, "height": height, "crs": crs,
                   "transform": transform, "nodata": 0, "tiled": True, "blockxsize": 256,
                   "blockysize": 256, "compress": "deflate"}
        sidecars: dict[str, Path] = {}
        # Sidecars first, the product file last: a complete product file implies both.
        if "SCL" in names:
            sidecars["SCL"] = out / f"{dest.stem}_SCL.tif"
            with atomic_path(sidecars["SCL"]) as tmp, rasterio.open(
                tmp, "w", count=1, dtype="uint8", **profile
            ) as dst:
                dst.write(stack[k:k + 1].astype(np.uint8))
                dst.set_band_description(1, "SCL")
                dst.update_tags(PRODUCT_ID=product.product_id, LAYER="SCL")
        sidecars["MTD"] = out / f"{dest.stem}_MTD.xml"
        with atomic_path(sidecars["MTD"]) as tmp:
            tmp.write_text(_mtd_xml(product, decided, rule), encoding="utf-8")
        with atomic_path(dest) as tmp, rasterio.open(
            tmp, "w", count=k, dtype="uint16", predictor=2, **profile
        ) as dst:
            dst.write(stack[:k])
            dst.scales = tuple(scales)
            dst.offsets = tuple(offsets)
            for i, band in enumerate(spectral, start=1):
                dst.set_band_description(i, band)
                dst.update_tags(i, BAND_NAME=band, STAC_ASSET=located[band][0],
                                BOA_ADD_OFFSET=str(dn_offsets[i - 1]))
            dst.update_tags(
                PRODUCT_ID=product.product_id, SOURCE="stac", STAC_ITEM=product.url,
                LEVEL="L2A", SENSING_TIME=str(product.sensing_time or ""),
                PROCESSING_BASELINE=str(product.processing_baseline or ""),
                CLOUD_COVER=str(product.cloud_cover if product.cloud_cover is not None
                                else ""),
                PRODUCT_URI=str(product.meta.get("product_uri") or ""),
                BANDS=",".join(spectral), OFFSET_RULE=rule,
            )
        digest = hashlib.sha256(stack.tobytes())
        digest.update(json.dumps({"bands": names, "crs": crs.to_string(),
                                  "transform": list(transform)[:6]}).encode())
        meta = {
            "bands": spectral, "crs": crs.to_string(), "transform": list(transform)[:6],
            "shape": [k, height, width], "data_sha256": digest.hexdigest(),
            "boa_add_offset": dict(decided), "offset_rule": rule,
            **({"product_metadata": mtd_record} if mtd_record else {}),
            "sidecars": {key: {"path": p.name, "size": p.stat().st_size,
                               "sha256": sha256_file(p)} for key, p in sidecars.items()},
            "assets": {b: located[b][1]["href"] for b in names},
        }
        size = dest.stat().st_size
        return Fetched(product, dest, size, sha256_file(dest), transferred=int(stack.nbytes),
                       meta=meta)


def _declared(asset: dict[str, Any]) -> dict[str, float]:
    """The ``scale``/``offset`` an asset declares: STAC 1.0 ``raster:bands`` or the STAC 1.1
    ``raster:scale``/``raster:offset`` fields (on the asset or its first ``bands`` entry)."""
    rb = (asset.get("raster:bands") or [{}])[0]
    if "scale" in rb or "offset" in rb:
        return {k: float(rb[k]) for k in ("scale", "offset") if k in rb}
    first = (asset.get("bands") or [{}])[0]
    out = {}
    for key in ("scale", "offset"):
        value = asset.get(f"raster:{key}", first.get(f"raster:{key}"))
        if value is not None:
            out[key] = float(value)
    return out


def _scale_offset(asset: dict[str, Any], band: str | None = None) -> tuple[float, float]:
    """(scale, offset) declared by a single-band asset. Without a declared scale a
    reflectance band gets 1 / 10000 (the L2A BOA quantification; v0 items declare none)."""
    found = _declared(asset)
    default = 1.0 if band in (None, "SCL") else 1.0 / L2A_QUANTIFICATION
    return found.get("scale", default), found.get("offset", 0.0)


def decide_offsets(
    item: dict[str, Any], assets: dict[str, dict[str, Any]], mtd: Any, baseline: str | None
) -> tuple[dict[str, int], str]:
    """(DN offset per band, rule) by the offset truth order of this module's docstring.

    ``assets`` maps each spectral band to its asset; ``mtd`` is the parsed
    ``product_metadata`` (a :class:`parsers.sentinel2.ProductMetadata`) or None.
    """
    from parsers.sentinel2 import baseline_has_offset

    if mtd is not None:
        return {b: int(mtd.offsets.get(b, 0)) for b in assets}, "product_metadata"
    props = item.get("properties") or {}
    for flag in OFFSET_FLAGS:
        if props.get(flag) is True:
            return dict.fromkeys(assets, 0), flag
    declared = {b: _declared(a) for b, a in assets.items()}
    if any("offset" in d for d in declared.values()):
        return {b: round(d.get("offset", 0.0) / _scale_offset(assets[b], b)[0])
                for b, d in declared.items()}, "raster:bands"
    return dict.fromkeys(assets, -1000 if baseline_has_offset(baseline) else 0), (
        "processing_baseline")


def _mtd_xml(product: Product, dn_offsets: dict[str, int], rule: str) -> str:
    """A minimal ``MTD_MSIL2A.xml``-shaped sidecar: level, baseline, quantification, the
    per-band ``BOA_ADD_OFFSET`` (ESA band_id order) and ``BOA_ADD_OFFSET_SOURCE`` (the rule
    that decided them), which :mod:`parsers.sentinel2` reads as ``<stem>_MTD.xml`` next to the
    GeoTIFF to harmonise the offset."""
    from xml.sax.saxutils import escape

    rows = "".join(
        f'      <BOA_ADD_OFFSET band_id="{ALL_BANDS.index(b)}">{v}</BOA_ADD_OFFSET>\n'
        for b, v in dn_offsets.items() if v)
    offsets = (f"     <BOA_ADD_OFFSET_VALUES_LIST>\n{rows}     </BOA_ADD_OFFSET_VALUES_LIST>\n"
               if rows else "")
    cloud = "" if product.cloud_cover is None else (
        "  <n1:Quality_Indicators_Info>\n"
        f"    <Cloud_Coverage_Assessment>{product.cloud_cover}</Cloud_Coverage_Assessment>\n"
        "  </n1:Quality_Indicators_Info>\n")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<!-- Written by pipeline.download_sentinel2 (stac backend) from the STAC item "
        f"{escape(product.product_id)}: not an ESA file. -->\n"
        '<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/'
        'User_Product_Level-2A.xsd">\n'
        "  <n1:General_Info>\n    <Product_Info>\n"
        f"      <PRODUCT_START_TIME>{escape(str(product.sensing_time or ''))}"
        "</PRODUCT_START_TIME>\n"
        "      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>\n"
        "      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>\n"
        f"      <PROCESSING_BASELINE>{escape(str(product.processing_baseline or ''))}"
        "</PROCESSING_BASELINE>\n"
        "    </Product_Info>\n    <Product_Image_Characteristics>\n"
        "     <QUANTIFICATION_VALUES_LIST>\n"
        '      <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>\n'
        "     </QUANTIFICATION_VALUES_LIST>\n"
        f"{offsets}"
        f"     <BOA_ADD_OFFSET_SOURCE>{escape(rule)}</BOA_ADD_OFFSET_SOURCE>\n"
        "    </Product_Image_Characteristics>\n  </n1:General_Info>\n"
        f"{cloud}"
        "</n1:Level-2A_User_Product>\n"
    )


_HINT = ("check the URL and your network (Earth Search promises no guaranteed service; "
         "try later)")


class _ItemError(Exception):
    """One item could not be turned into a product file (the others go on)."""

