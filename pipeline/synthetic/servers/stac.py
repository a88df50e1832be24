"""A synthetic Sentinel-2 STAC catalogue and a STAC API imitation on 127.0.0.1.

Used by the offline demo and by the tests of the ``stac`` download backend:

* :func:`build_stac_catalogue` writes ``n_items`` synthetic Sentinel-2 L2A items the way
  Earth Search v1 ``sentinel-2-c1-l2a`` publishes them: one Cloud-Optimised GeoTIFF per band
  (10 m bands at ``size`` x ``size`` pixels, 20 m bands and SCL at half that), asset keys
  ``blue``, ``green``, ``red``, ``rededge1..3``, ``nir``, ``nir08``, ``swir16``, ``swir22``,
  ``scl``, and ``raster:bands`` scale/offset (offset -0.1 for processing baseline >= 04.00).
* :func:`serve_stac_catalogue` serves it as a STAC API (landing page, ``/conformance``,
  ``/collections``, ``/search`` GET + POST with ``bbox``/``datetime``/``ids``/``query``
  filters and ``next``-link paging) and serves the COG files with HTTP Range support through
  :mod:`pipeline.synthetic.servers.files`, so rasterio reads only the windows it needs.

Layout under ``root``: ``collections/<collection>.json``, ``items/<item id>.json`` (asset
hrefs relative to ``root``; the server makes them absolute) and ``data/<item id>/<asset>.tif``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from parsers.atomic import atomic_open
from parsers.sentinel2 import NATIVE_RESOLUTION
from pipeline.sentinel2_backends.stac import ASSET_KEYS
from pipeline.synthetic.servers import QuietHandler, serve_handler

# Earth Search v1 asset key -> (Sentinel-2 band, native resolution in metres).
ASSET_BANDS: dict[str, tuple[str, int]] = {
    key: (band, NATIVE_RESOLUTION.get(band, 20)) for band, key in ASSET_KEYS.items()
}
# Assets written by default: every band the project may select (incl. B8A) plus SCL.
DEFAULT_ASSETS = (
    "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
    "swir16", "swir22", "scl",
)
CONFORMS_TO = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]


def build_stac_catalogue(
    root: str | os.PathLike[str],
    n_items: int = 3,
    size: int = 96,
    *,
    collection: str = "sentinel-2-c1-l2a",
    assets: Sequence[str] = DEFAULT_ASSETS,
    epsg: int = 32632,
    origin: tuple[float, float] = (515040.0, 5041920.0),
    start: str = "2017-03-01",
    cloud_cover: Sequence[float] | None = None,
    processing_baseline: str = "05.00",
    seed: int = 0,
) -> Path:
    """Write a synthetic STAC catalogue of ``n_items`` Sentinel-2 L2A items under ``root``.

    Item ``i`` covers ``size`` x ``size`` 10 m pixels (``size`` a multiple of 6) with its
    upper-left corner at ``origin`` (UTM easting, northing in metres; the default lies in
    Lombardia on the 480 m tile grid) shifted east by ``i * size * 5`` m, so neighbours
    overlap by half. It is dated ``start + 10 * i`` days, has cloud cover
    ``cloud_cover[i % len]`` (default cycle 5, 20, 60 %) and carries the -1000 DN offset
    (``raster:bands`` offset -0.1) when ``processing_baseline`` >= 04.00. Band data come
    from :func:`pipeline.synthetic.sentinel2_products.write_band_files` (COGs, seed ``seed + i``).
    Returns ``root``.
    """
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds, transform_geom

    from parsers.sentinel2 import baseline_has_offset
    from pipeline.synthetic.sentinel2_products import product_name, write_band_files

    unknown = [a for a in assets if a not in ASSET_BANDS]
    if unknown:
        raise ValueError(f"unknown asset key(s) {unknown}; known: {sorted(ASSET_BANDS)}")
    root = Path(root)
    covers = list(cloud_cover) if cloud_cover is not None else [5.0, 20.0, 60.0]
    with_offset = baseline_has_offset(processing_baseline)
    day0 = dt.datetime.fromisoformat(start).replace(tzinfo=dt.timezone.utc, hour=10, minute=20)
    crs = f"EPSG:{epsg}"
    tile = "32TNR"
    for i in range(n_items):
        when = day0 + dt.timedelta(days=10 * i)
        x0, y0 = origin[0] + i * size * 5, origin[1]
        sat = "S2A" if i % 2 == 0 else "S2B"
        item_id = f"{sat}_{tile}_{when:%Y%m%d}_0_L2A"
        bands = [ASSET_BANDS[a][0] for a in assets if a != "scl"]
        files = write_band_files(
            root / "data" / item_id, stem=item_id, bands=bands, size_10m=size, seed=seed + i,
            cog=True, with_offset=with_offset, origin=(x0, y0), crs=crs,
            include_scl="scl" in assets,
        )
        ext = (x0, y0 - size * 10, x0 + size * 10, y0)
        ring = [[ext[0], ext[1]], [ext[2], ext[1]], [ext[2], ext[3]], [ext[0], ext[3]],
                [ext[0], ext[1]]]
        item_assets: dict[str, Any] = {}
        for key in assets:
            band, res = ASSET_BANDS[key]
            n = size * 10 // res
            if band == "SCL":
                raster_band: dict[str, Any] = {"nodata": 0, "data_type": "uint8",
                                               "spatial_resolution": res}
            else:
                raster_band = {"nodata": 0, "data_type": "uint16", "spatial_resolution": res,
                               "scale": 0.0001, "offset": -0.1 if with_offset else 0.0}
            item_assets[key] = {
                "href": files[band].relative_to(root).as_posix(),
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "title": f"{band} ({res} m)",
                "roles": ["data"],
                "proj:shape": [n, n],
                "proj:transform": list(from_origin(x0, y0, res, res))[:6],
                "raster:bands": [raster_band],
                **({"eo:bands": [{"name": band}]} if band != "SCL" else {}),
            }
        item = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": [
                "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            ],
            "id": item_id,
            "collection": collection,
            "bbox": list(transform_bounds(crs, "EPSG:4326", *ext, densify_pts=5)),
            "geometry": transform_geom(crs, "EPSG:4326",
                                       {"type": "Polygon", "coordinates": [ring]}),
            "properties": {
                "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "platform": "sentinel-2a" if sat == "S2A" else "sentinel-2b",
                "constellation": "sentinel-2",
                "eo:cloud_cover": float(covers[i % len(covers)]),
                "proj:epsg": epsg,
                "proj:code": crs,
                "s2:processing_baseline": processing_baseline,
                "s2:product_uri": product_name("L2A", processing_baseline, "T" + tile, when,
                                               sat) + ".SAFE",
                "s2:product_type": "S2MSI2A",
                "grid:code": f"MGRS-{tile}",
            },
            "links": [],
            "assets": item_assets,
        }
        with atomic_open(root / "items" / f"{item_id}.json", "w", encoding="utf-8") as fh:
            json.dump(item, fh, indent=1)
    coll = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection,
        "description": "Synthetic Sentinel-2 L2A items (sscnet-pipeline test catalogue)",
        "license": "proprietary",
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                   "temporal": {"interval": [[None, None]]}},
        "links": [],
    }
    with atomic_open(root / "collections" / f"{collection}.json", "w", encoding="utf-8") as fh:
        json.dump(coll, fh, indent=1)
    return root


# --------------------------------------------------------------------------- the API


def _load_catalogue(root: Path) -> tuple[list[dict], list[dict]]:
    items = [json.loads(p.read_text("utf-8")) for p in sorted((root / "items").glob("*.json"))]
    colls = [json.loads(p.read_text("utf-8"))
             for p in sorted((root / "collections").glob("*.json"))]
    items.sort(key=lambda it: (it["properties"]["datetime"], it["id"]))
    return items, colls


def _parse_time(text: str) -> dt.datetime | None:
    if text in ("", ".."):
        return None
    text = text.replace("Z", "+00:00")
    if len(text) == 10:
        text += "T00:00:00+00:00"
    return dt.datetime.fromisoformat(text)


def _match(item: dict, params: dict[str, Any]) -> bool:
    """Apply the STAC item-search filters the imitation supports."""
    if params.get("collections") and item.get("collection") not in params["collections"]:
        return False
    if params.get("ids") and item["id"] not in params["ids"]:
        return False
    if params.get("bbox"):
        w, s, e, n = (float(v) for v in params["bbox"])
        iw, is_, ie, in_ = item["bbox"]
        if iw > e or ie < w or is_ > n or in_ < s:
            return False
    if params.get("datetime"):
        parts = str(params["datetime"]).split("/")
        when = _parse_time(item["properties"]["datetime"])
        lo = _parse_time(parts[0])
        hi = _parse_time(parts[-1]) if len(parts) > 1 else lo
        if (lo and when < lo) or (hi and when > hi):
            return False
    ops = {"lt": float.__lt__, "lte": float.__le__, "gt": float.__gt__, "gte": float.__ge__,
           "eq": float.__eq__}
    for prop, conds in (params.get("query") or {}).items():
        value = item["properties"].get(prop)
        for op, ref in conds.items():
            if value is None or op not in ops or not ops[op](float(value), float(ref)):
                return False
    return True


class _StacHandler(QuietHandler):
    server_version = "FakeSTAC/1.0"
    root: Path
    files_base: str  # URL of the static file server (Range-capable) serving root
    page_cap = 100
    log: list[tuple[str, str]]

    def _json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _absolute(self, item: dict) -> dict:
        item = json.loads(json.dumps(item))
        for asset in item["assets"].values():
            if "://" not in asset["href"]:
                asset["href"] = self.files_base + asset["href"]
        item["links"] = [
            {"rel": "self", "href": f"{self.base}collections/{item['collection']}/items/"
                                    f"{item['id']}", "type": "application/geo+json"},
            {"rel": "collection", "href": f"{self.base}collections/{item['collection']}"},
            {"rel": "root", "href": self.base},
        ]
        return item

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.log.append((self.command, self.path))
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        items, colls = _load_catalogue(self.root)
        if path == "":
            self._json({
                "type": "Catalog", "stac_version": "1.0.0", "id": "fake-stac",
                "description": "STAC API imitation (sscnet-pipeline)", "conformsTo": CONFORMS_TO,
                "links": [
                    {"rel": "self", "href": self.base, "type": "application/json"},
                    {"rel": "root", "href": self.base, "type": "application/json"},
                    {"rel": "conformance", "href": self.base + "conformance"},
                    {"rel": "data", "href": self.base + "collections"},
                    {"rel": "search", "href": self.base + "search",
                     "type": "application/geo+json", "method": "GET"},
                    {"rel": "search", "href": self.base + "search",
                     "type": "application/geo+json", "method": "POST"},
                ],
            })
        elif path == "/conformance":
            self._json({"conformsTo": CONFORMS_TO})
        elif path == "/collections":
            self._json({"collections": [self._collection(c) for c in colls], "links": []})
        elif path.startswith("/collections/"):
            parts = path.split("/")
            coll = next((c for c in colls if c["id"] == parts[2]), None)
            if coll is None:
                self._json({"code": "NotFound", "description": "no such collection"}, 404)
            elif len(parts) == 3:
                self._json(self._collection(coll))
            elif len(parts) == 5 and parts[3] == "items":
                item = next((i for i in items if i["id"] == parts[4]), None)
                if item is None:
                    self._json({"code": "NotFound", "description": "no such item"}, 404)
                else:
                    self._json(self._absolute(item))
            else:
                self._json({"code": "NotFound", "description": path}, 404)
        elif path == "/search":
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            params: dict[str, Any] = {}
            for key in ("collections", "ids", "bbox"):
                if key in q:
                    params[key] = q[key].split(",")
            for key in ("datetime", "limit", "token"):
                if key in q:
                    params[key] = q[key]
            if "query" in q:
                params["query"] = json.loads(q["query"])
            self._search(params, "GET")
        else:
            self._json({"code": "NotFound", "description": path}, 404)

    def do_POST(self) -> None:
        self.log.append((self.command, self.path))
        if urlsplit(self.path).path.rstrip("/") != "/search":
            self._json({"code": "NotFound", "description": self.path}, 404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            params = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json({"code": "BadRequest", "description": "body is not JSON"}, 400)
            return
        self._search(params, "POST")

    def _collection(self, coll: dict) -> dict:
        coll = dict(coll)
        coll["links"] = [
            {"rel": "self", "href": f"{self.base}collections/{coll['id']}"},
            {"rel": "items", "href": f"{self.base}collections/{coll['id']}/items"},
            {"rel": "root", "href": self.base},
        ]
        return coll

    def _search(self, params: dict[str, Any], method: str) -> None:
        items, _ = _load_catalogue(self.root)
        hits = [it for it in items if _match(it, params)]
        limit = min(int(params.get("limit") or 10), self.page_cap)
        start = int(str(params.get("token") or "next:0").split(":")[-1])
        page = hits[start: start + limit]
        links = []
        if start + limit < len(hits):
            token = f"next:{start + limit}"
            if method == "POST":
                body = {k: v for k, v in params.items() if k != "token"}
                body["token"] = token
                links.append({"rel": "next", "href": self.base + "search", "method": "POST",
                              "body": body, "merge": False, "type": "application/geo+json"})
            else:
                query = {k: (",".join(v) if isinstance(v, list) else
                             json.dumps(v) if isinstance(v, dict) else v)
                         for k, v in params.items() if k != "token"}
                query["token"] = token
                links.append({"rel": "next", "href": f"{self.base}search?{urlencode(query)}",
                              "method": "GET", "type": "application/geo+json"})
        self._json({
            "type": "FeatureCollection",
            "features": [self._absolute(it) for it in page],
            "links": links,
            "numberMatched": len(hits),
            "numberReturned": len(page),
        })


class StacURL(str):
    """The STAC API root URL; ``.files`` is the static file server's
    :class:`~pipeline.synthetic.servers.files.ServerURL` (its ``.log`` lists every COG request)."""

    files: Any
    log: list[tuple[str, str]]


@contextlib.contextmanager
def serve_stac_catalogue(
    root: str | os.PathLike[str], faults: Any = None, *, page_cap: int = 100
) -> Iterator[StacURL]:
    """Serve the catalogue under ``root`` on 127.0.0.1; yield the STAC API root URL.

    The API runs on its own ephemeral port; asset hrefs point at a
    :func:`pipeline.synthetic.servers.files.serve_directory` server over ``root`` (Range, HEAD) that
    injects ``faults`` (a :class:`pipeline.synthetic.servers.files.Faults`, e.g. 503s on the COGs).
    ``page_cap`` caps the page size the API accepts (to exercise paging). The yielded URL
    carries ``.files`` (the file server URL, with its request log) and ``.log`` (API
    requests as (method, path) pairs).
    """
    from pipeline.synthetic.servers.files import serve_directory

    root = Path(root)
    if not (root / "items").is_dir():
        raise FileNotFoundError(f"{root}: no STAC catalogue here (run build_stac_catalogue)")
    with serve_directory(root, faults) as files_base:
        log: list[tuple[str, str]] = []
        handler = type("Handler", (_StacHandler,), {
            "root": root, "files_base": str(files_base), "page_cap": page_cap, "log": log,
        })
        with serve_handler(handler, name="fake-stac-api") as server:
            url = StacURL(f"http://127.0.0.1:{server.server_port}/")
            url.files, url.log = files_base, log
            yield url


# --------------------------------------------------------------------------- recorded replies
EARTH_SEARCH_V1 = "https://earth-search.aws.element84.com/v1"
PAGE_KEYS = ("next", "page", "token")  # what a POST next-link body uses to name its page


def rewrite_hrefs(obj: Any, api_origin: str, api_base: str, files_base: str | None) -> Any:
    """A copy of a recorded STAC document with its links pointed at loopback servers:
    ``api_origin``... -> ``api_base``...; any other ``https://HOST/PATH`` ->
    ``files_base + HOST/PATH`` (when a file server is given); ``s3://`` hrefs unchanged."""
    if isinstance(obj, dict):
        return {k: (_rewrite(v, api_origin, api_base, files_base) if k == "href"
                    else rewrite_hrefs(v, api_origin, api_base, files_base))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [rewrite_hrefs(v, api_origin, api_base, files_base) for v in obj]
    return obj


def _rewrite(href: Any, api_origin: str, api_base: str, files_base: str | None) -> Any:
    if not isinstance(href, str):
        return href
    if href.startswith(api_origin):
        return api_base + href[len(api_origin):].lstrip("/")
    if files_base and href.startswith("https://"):
        return files_base + href[len("https://"):]
    return href


def recorded_asset_path(href: str) -> str:
    """Where :func:`serve_recorded_stac`'s file server expects the file of a recorded
    ``https://HOST/PATH`` href: ``HOST/PATH`` below its root."""
    return href[len("https://"):] if href.startswith("https://") else href


def write_recorded_assets(pages: Sequence[dict], root: str | os.PathLike[str], size: int = 96,
                          seed: int = 0) -> list[Path]:
    """Synthetic COGs for the band assets (http(s) hrefs, no ``*-jp2`` twin) of every
    Sentinel-2 L2A feature of recorded search ``pages``, written under ``root`` where
    :func:`serve_recorded_stac` serves those hrefs. Each item's COGs sit at the item's real
    tile origin (``proj:transform`` of its assets) and CRS (``proj:epsg``), ``size`` 10 m
    pixels a side: real item JSON, synthetic pixels. Returns the files written."""
    import shutil
    import tempfile

    from pipeline.synthetic.sentinel2_products import write_band_files

    root = Path(root)
    known = {**{k: b for k, (b, _) in ASSET_BANDS.items()}, **{b: b for b in ASSET_KEYS}}
    written: list[Path] = []
    for n, item in enumerate(f for page in pages for f in page.get("features", [])):
        props, assets = item.get("properties") or {}, item.get("assets") or {}
        wanted = {key: known[key] for key, a in assets.items()
                  if key in known and str(a.get("href", "")).startswith("https://")}
        epsg = props.get("proj:epsg")
        if not wanted or not epsg or "l2a" not in str(item.get("collection", "")):
            continue
        x0, y0 = next((a["proj:transform"][2], a["proj:transform"][5]) for a in assets.values()
                      if a.get("proj:transform"))
        bands = sorted({b for b in wanted.values() if b != "SCL"})
        with tempfile.TemporaryDirectory() as tmp:
            files = write_band_files(
                tmp, stem="x", bands=bands, size_10m=size, seed=seed + n, cog=True,
                with_offset=not props.get("earthsearch:boa_offset_applied", False)
                and not props.get("sentinel:boa_offset_applied", False),
                origin=(float(x0), float(y0)), crs=f"EPSG:{epsg}",
                include_scl="SCL" in wanted.values())
            for key, band in wanted.items():
                dest = root / recorded_asset_path(assets[key]["href"])
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(files[band], dest)
                written.append(dest)
    return written


def _page_index(pages: Sequence[dict], body: dict[str, Any]) -> int | None:
    """Which recorded page a POST search body asks for: the first page without a page key,
    else the page after the one whose next link carries the same key value."""
    given = {k: body[k] for k in PAGE_KEYS if k in body}
    if not given:
        return 0
    for i, page in enumerate(pages[:-1]):
        link = next((ln for ln in page.get("links", []) if ln.get("rel") == "next"), None)
        link_body = (link or {}).get("body") or {}
        if given and all(link_body.get(k) == v for k, v in given.items()):
            return i + 1
    return None


class _RecordedStacHandler(QuietHandler):
    server_version = "RecordedSTAC/1.0"
    landing: dict
    pages: list[dict]
    api_origin: str
    files_base: str | None
    log: list[tuple[str, str, Any]]

    def _send_json(self, obj: Any, status: int = 200) -> None:
        doc = rewrite_hrefs(obj, self.api_origin, self.base, self.files_base)
        self.send_body(status, json.dumps(doc).encode("utf-8"), "application/geo+json")

    def do_GET(self) -> None:
        self.log.append(("GET", self.path, None))
        path = urlsplit(self.path).path.rstrip("/")
        if path == "":
            self._send_json(self.landing)
        elif path == "/search":
            self._send_json(self.pages[0])
        else:
            self._send_json({"code": "NotFound", "description": path}, 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = None
        self.log.append(("POST", self.path, body))
        if urlsplit(self.path).path.rstrip("/") != "/search" or not isinstance(body, dict):
            self._send_json({"code": "BadRequest", "description": "not a search"}, 400)
            return
        index = _page_index(self.pages, body)
        if index is None:  # a page past the recording: the end of the results
            self._send_json({"type": "FeatureCollection", "features": [], "links": []})
        else:
            self._send_json(self.pages[index])


@contextlib.contextmanager
def serve_recorded_stac(
    landing: dict, pages: Sequence[dict], files_root: str | os.PathLike[str] | None = None,
    *, api_origin: str = EARTH_SEARCH_V1, faults: Any = None,
) -> Iterator[StacURL]:
    """Replay recorded STAC API answers on 127.0.0.1.

    ``GET /`` answers ``landing``; ``POST /search`` the page its body names
    (:data:`PAGE_KEYS`, the way the recorded next links name them; a page past the recording
    is an empty last page). Every document's links point at this server (API) and at a file
    server over ``files_root`` (asset hrefs, see :func:`write_recorded_assets`). The yielded
    URL's ``.log`` lists (method, path, JSON body) of every API request; ``.files`` is the
    file server's URL (with its own log), or None without ``files_root``."""
    from pipeline.synthetic.servers.files import serve_directory

    with contextlib.ExitStack() as stack:
        files_base = (stack.enter_context(serve_directory(Path(files_root), faults))
                      if files_root is not None else None)
        log: list[tuple[str, str, Any]] = []
        handler = type("Handler", (_RecordedStacHandler,), {
            "landing": landing, "pages": list(pages), "api_origin": api_origin.rstrip("/"),
            "files_base": str(files_base) if files_base else None, "log": log})
        server = stack.enter_context(serve_handler(handler, name="recorded-stac-api"))
        url = StacURL(f"http://127.0.0.1:{server.server_port}/")
        url.files, url.log = files_base, log
        yield url
