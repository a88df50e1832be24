"""``stac`` backend: STAC item search + windowed reads of Cloud-Optimised GeoTIFF assets.

Search: pystac-client on a STAC API (default Earth Search v1, collection
``sentinel-2-c1-l2a``) with ``bbox``, ``datetime`` and ``query={"eo:cloud_cover": {"lte": N}}``.
Data: for each item the window of the 10 m grid that lies inside the area of interest (snapped
to the 480 m tile grid, at most ``window_px`` pixels a side, centred) is read from every band's
COG over HTTP range requests by :func:`parsers.sentinel2.read_assets` (20 m bands and SCL
pixel-replicated onto the 10 m grid), items in parallel threads. Per item the output folder
gets ``<item id>.tif`` (the selected bands, uint16, nodata 0, band descriptions = band names,
the assets' ``raster:bands`` scale/offset as GDAL scale/offset and a ``BOA_ADD_OFFSET`` band
tag in DN, e.g. -1000; DNs as served, no offset applied), ``<item id>_SCL.tif`` (scene
classification, same grid) and ``<item id>_MTD.xml`` (level, baseline and offsets in the
``MTD_MSIL2A.xml`` shape, which :func:`parsers.sentinel2.read` uses to harmonise).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parsers.atomic import atomic_path
from parsers.errors import UserError, reason
from parsers.sentinel2 import ALL_BANDS, NATIVE_RESOLUTION
from pipeline.fetch import sha256_file
from pipeline.manifest import ManifestEntry
from pipeline.sentinel2_backends.common import (
    Failed,
    Fetched,
    Product,
    Query,
    fetch_in_parallel,
)

# Sentinel-2 band -> Earth Search v1 asset key.
ASSET_KEYS: dict[str, str] = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B11": "swir16", "B12": "swir22", "SCL": "scl",
}
GRID_M = 480  # the 48 x 48 tile grid at 10 m: windows start and end on multiples of 480 m


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

    # ------------------------------------------------------------------ search
    def _client(self):
        from pystac_client import Client
        from pystac_client.exceptions import APIError
        from pystac_client.stac_api_io import StacApiIO
        from urllib3.util.retry import Retry

        s = self.settings
        retry = Retry(total=s.retries, backoff_factor=s.backoff, backoff_max=30,
                      status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None,
                      respect_retry_after_header=True, raise_on_status=False)
        io = StacApiIO(max_retries=retry, timeout=s.timeout)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Client.open(self.service_url, stac_io=io)
        except APIError as exc:
            raise self._api_error(exc) from None

    def _api_error(self, exc: BaseException) -> UserError:
        code = getattr(exc, "status_code", None)
        if code:
            return UserError(
                f"{self.service} at {self.service_url} answered HTTP {code} "
                f"({reason(exc)}); check --stac-url / --stac-collection or try later"
            )
        return UserError(
            f"{self.service} at {self.service_url} is unreachable ({reason(exc)}): check "
            "the URL and your network (Earth Search promises no guaranteed service; try later)"
        )

    def search(self, query: Query) -> list[Product]:
        from pystac_client.exceptions import APIError

        if query.level != "L2A" and "l2a" in self.collection.lower():
            raise UserError(
                f"stac: collection {self.collection} holds L2A products; for L1C use "
                "--backend cdse (Earth Search's L1C collection is JP2 in a requester-pays "
                "bucket) or --stac-collection naming an L1C COG collection"
            )
        client = self._client()
        try:
            search = client.search(
                collections=[self.collection], bbox=list(query.bbox),
                datetime=f"{query.start}T00:00:00Z/{query.end}T23:59:59Z",
                query={"eo:cloud_cover": {"lte": query.max_cloud}},
                max_items=query.max_products,
                limit=min(self.settings.page_size, query.max_products),
            )
            items = [it.to_dict() for it in search.items()]
        except APIError as exc:
            raise self._api_error(exc) from None
        items.sort(key=lambda it: (it["properties"].get("datetime") or "", it["id"]))
        return [self._product(it) for it in items]

    def locate(self, entries: Sequence[ManifestEntry]) -> list[Product]:
        """Find the locked items again (by id) on the STAC API."""
        from pystac_client.exceptions import APIError

        ids = [e.product_id for e in entries]
        client = self._client()
        try:
            found = {it.id: it.to_dict() for it in client.search(
                collections=[self.collection], ids=ids, max_items=len(ids),
                limit=min(self.settings.page_size, max(1, len(ids)))).items()}
        except APIError as exc:
            raise self._api_error(exc) from None
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
        return Product(
            product_id=item["id"], url=self_href, filename=f"{item['id']}.tif",
            sensing_time=props.get("datetime"), cloud_cover=props.get("eo:cloud_cover"),
            processing_baseline=props.get("s2:processing_baseline"),
            meta={"collection": item.get("collection", self.collection),
                  "product_uri": props.get("s2:product_uri"), "level": "L2A"},
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

    def _asset(self, item: dict[str, Any], band: str) -> tuple[str, dict[str, Any]] | None:
        assets = item.get("assets", {})
        for key in (ASSET_KEYS.get(band), band, band.lower(),
                    *(f"{band}_{r}m" for r in (10, 20, 60))):
            if key and key in assets:
                return key, assets[key]
        for key, asset in assets.items():
            names = [b.get("name") for b in asset.get("eo:bands", [])]
            if names == [band]:
                return key, asset
        return None

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
        scales, offsets, dn_offsets = [], [], []
        for band in names:
            scale, offset = _scale_offset(located[band][1])
            scales.append(scale)
            offsets.append(offset)
            dn_offsets.append(round(offset / scale) if scale and band != "SCL" else 0)
        spectral = [b for b in names if b != "SCL"]
        k = len(spectral)
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
            tmp.write_text(_mtd_xml(product, dict(zip(spectral, dn_offsets[:k], strict=True))),
                           encoding="utf-8")
        with atomic_path(dest) as tmp, rasterio.open(
            tmp, "w", count=k, dtype="uint16", predictor=2, **profile
        ) as dst:
            dst.write(stack[:k])
            dst.scales = tuple(scales[:k])
            dst.offsets = tuple(offsets[:k])
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
                BANDS=",".join(spectral),
            )
        digest = hashlib.sha256(stack.tobytes())
        digest.update(json.dumps({"bands": names, "crs": crs.to_string(),
                                  "transform": list(transform)[:6]}).encode())
        meta = {
            "bands": spectral, "crs": crs.to_string(), "transform": list(transform)[:6],
            "shape": [k, height, width], "data_sha256": digest.hexdigest(),
            "boa_add_offset": dict(zip(spectral, dn_offsets[:k], strict=True)),
            "sidecars": {key: {"path": p.name, "size": p.stat().st_size,
                               "sha256": sha256_file(p)} for key, p in sidecars.items()},
            "assets": {b: located[b][1]["href"] for b in names},
        }
        size = dest.stat().st_size
        return Fetched(product, dest, size, sha256_file(dest), transferred=int(stack.nbytes),
                       meta=meta)


def _scale_offset(asset: dict[str, Any]) -> tuple[float, float]:
    """(scale, offset) of a single-band asset: STAC 1.0 ``raster:bands`` or the STAC 1.1
    ``raster:scale``/``raster:offset`` fields (on the asset or its first ``bands`` entry)."""
    rb = (asset.get("raster:bands") or [{}])[0]
    if "scale" in rb or "offset" in rb:
        return float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0))
    first = (asset.get("bands") or [{}])[0]
    scale = asset.get("raster:scale", first.get("raster:scale", 1.0))
    offset = asset.get("raster:offset", first.get("raster:offset", 0.0))
    return float(scale), float(offset)


def _mtd_xml(product: Product, dn_offsets: dict[str, int]) -> str:
    """A minimal ``MTD_MSIL2A.xml``-shaped sidecar: level, baseline, quantification and the
    per-band ``BOA_ADD_OFFSET`` (ESA band_id order), which :mod:`parsers.sentinel2` reads as
    ``<stem>_MTD.xml`` next to the GeoTIFF to harmonise the offset."""
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
        "    </Product_Image_Characteristics>\n  </n1:General_Info>\n"
        f"{cloud}"
        "</n1:Level-2A_User_Product>\n"
    )


class _ItemError(Exception):
    """One item could not be turned into a product file (the others go on)."""

