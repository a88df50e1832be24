"""Read Sentinel-2 products into one co-registered uint16 cube (bands, lines, samples), 10 m grid.

``read(path)`` accepts

- a SAFE product, as a ``.SAFE`` folder or a ``.zip`` (L1C: all bands flat in ``IMG_DATA``;
  L2A: ``IMG_DATA/R10m``, ``R20m``, ``R60m``). ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` give the
  product id, level, processing baseline, quantification value and the per-band
  ``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET`` (PB >= 04.00). L2A products also give the scene
  classification (SCL, 20 m, nearest-upsampled);
- a folder of single-band GeoTIFF/JP2 files named ``..._B02.tif`` (BigEarthNet style; an
  ``..._SCL.tif`` is used when present);
- a multi-band GeoTIFF. Band names come from the GDAL band descriptions when they are band
  names (``B02``, ``B8A``, ``Band 2`` ...); otherwise from ``file_bands=`` (the names of the
  file's bands in order); otherwise a 13-band file is taken to be in ESA order
  (B01 ... B08, B8A, B09, B10, B11, B12) and a file with exactly ``len(bands)`` bands is
  *assumed* to hold ``bands`` in that order. A multi-band file is read on its own grid;
- STAC item assets: a mapping band -> href (local path, ``http(s)://`` or ``/vsicurl/...``),
  with an optional ``"SCL"`` entry, via :func:`read_assets`.

The result is an :class:`S2Stack`: ``data`` uint16 (bands, lines, samples) on the finest
grid among the requested bands (10 m for the default bands), 20 m and 60 m bands resampled by
nearest neighbour (exact pixel replication when grids are aligned) or bilinear;
``valid`` bool (lines, samples) is False where any band is 0 (no data) or holds the file's
declared nodata value; ``scl`` uint8 or None.

Processing baseline offset: from PB 04.00 on, ESA adds +1000 to every DN > 0 and lists
``*_ADD_OFFSET = -1000`` in the metadata. With ``harmonise=True`` (default) the reader brings
such values back to the pre-2022 scale: ``DN' = max(DN + offset, 1)`` where ``0 < DN < 65535``
(0 stays no data, 65535 stays saturated), **only** for bands whose metadata lists an offset.
For inputs without MTD xml, pass ``metadata=`` (an MTD xml path) or ``offsets=``; a
``<stem>_MTD.xml`` or ``MTD_MSIL*.xml`` beside a file is found automatically.

``window=(row, col, height, width)`` (10 m grid pixels) reads only that part of every band,
so remote COGs are fetched with a few range requests.

CLI: ``python -m parsers.sentinel2 PATH [--json] [--export OUT.npy|OUT.tif] [--bands ...]``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from parsers.atomic import atomic_open, atomic_path
from parsers.errors import ParamsError, ProductError, UserError
from parsers.raster import gdal_message

# The 13 MSI bands in ESA ``band_id`` order (0..12), as used by the MTD offset lists.
ALL_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
# L2A products have no cirrus band B10.
L2A_BANDS: tuple[str, ...] = tuple(b for b in ALL_BANDS if b != "B10")
NATIVE_RESOLUTION: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}
# The paper's 9 bands are not documented; B02, B03, B04 first is certain (docs/sentinel2.md).
DEFAULT_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")
# The first processing baseline whose products carry the -1000 radiometric offset.
OFFSET_BASELINE = "04.00"

SCL_CLASSES: dict[int, str] = {
    0: "NO_DATA", 1: "SATURATED_OR_DEFECTIVE", 2: "DARK_AREA", 3: "CLOUD_SHADOWS",
    4: "VEGETATION", 5: "NOT_VEGETATED", 6: "WATER", 7: "UNCLASSIFIED", 8: "CLOUD_MEDIUM",
    9: "CLOUD_HIGH", 10: "THIN_CIRRUS", 11: "SNOW",
}
# Classes a tile should not contain: no data, defective, cloud shadow, clouds, cirrus.
SCL_REJECT: tuple[int, ...] = (0, 1, 3, 8, 9, 10)

# Asset keys of Earth Search's sentinel-2-l2a / sentinel-2-c1-l2a STAC items.
STAC_ASSET_BANDS: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
    "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
    "cirrus": "B10", "swir16": "B11", "swir22": "B12",
}

NODATA = 0
SATURATED = 65535
GDAL_CACHE_MB = 128
Resampling = Literal["nearest", "bilinear"]
# GDAL settings for remote reads: no directory listing per opened file, merged ranges.
# (CPL_VSIL_CURL_USE_HEAD=NO was tried: GDAL then GETs the whole file to learn its size.)
REMOTE_GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}

_BAND_RE = re.compile(r"(?:^|[_\-. ])(B(?:0?[1-9]|1[0-2]|8A))(?:[_\-. ]|$)", re.IGNORECASE)
_SCL_RE = re.compile(r"(?:^|[_\-. ])SCL(?:[_\-. ]|$)", re.IGNORECASE)
_RASTER_EXT = (".tif", ".tiff", ".jp2")


def baseline_has_offset(baseline: str | None) -> bool:
    """True when a processing baseline ("04.00", "05.09", ...) is at or after 04.00."""
    if not baseline:
        return False
    major, _, minor = baseline.partition(".")
    try:
        return (int(major), int(minor or 0)) >= (4, 0)
    except ValueError:
        return False


def normalise_band_name(name: str) -> str:
    """'B2', 'b02', 'B8a', 'Band 2' -> 'B02', 'B02', 'B8A', 'B02'; raise ParamsError if unknown."""
    text = str(name).strip().upper().replace("BAND", "B").replace(" ", "").replace("_", "")
    m = re.fullmatch(r"B0*(\d{1,2})(A?)", text)
    if m:
        number, a = int(m.group(1)), m.group(2)
        candidate = "B8A" if (number == 8 and a) else (f"B{number:02d}" if not a else "")
        if candidate in ALL_BANDS:
            return candidate
    raise ParamsError(f"unknown Sentinel-2 band name {name!r} (known: {', '.join(ALL_BANDS)})")


def check_bands(bands: Sequence[str], *, paper_layout: bool = False) -> tuple[str, ...]:
    """Validate and normalise a band list.

    Always an error: empty, unknown or repeated names. The paper's layout is 9 bands starting
    with B02, B03, B04; another list only warns, unless ``paper_layout=True`` makes it an error.
    """
    if isinstance(bands, str):
        bands = [b for b in re.split(r"[,\s]+", bands) if b]
    names = tuple(normalise_band_name(b) for b in bands)
    if not names:
        raise ParamsError("the band list is empty")
    repeated = sorted({b for b in names if names.count(b) > 1})
    if repeated:
        raise ParamsError(f"band list repeats {', '.join(repeated)}: {', '.join(names)}")
    if (len(names) != 9 or names[:3] != ("B02", "B03", "B04")) and (
            paper_layout or names not in _WARNED_BANDS):
        message = (f"band list {','.join(names)} differs from the paper's layout "
                   "(9 bands starting with B02,B03,B04)")
        if paper_layout:
            raise ParamsError(message)
        _WARNED_BANDS.add(names)
        warnings.warn(message, stacklevel=2)
    return names


_WARNED_BANDS: set[tuple[str, ...]] = set()  # warn once per band list and process


@dataclass(frozen=True)
class Sentinel2Settings:
    """Reader settings: params.yaml ``datasets.<name>.reader`` of a sentinel2 data set, keys
    ``bands``, ``resampling``, ``harmonise``."""

    bands: tuple[str, ...] = DEFAULT_BANDS
    resampling: Resampling = "nearest"
    harmonise: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "bands", check_bands(self.bands))
        except ParamsError as exc:
            raise ValueError(str(exc)) from None
        if self.resampling not in ("nearest", "bilinear"):
            raise ValueError(f"resampling must be 'nearest' or 'bilinear', not {self.resampling!r}")


# --------------------------------------------------------------------------------------------
# Metadata


@dataclass(frozen=True)
class ProductMetadata:
    """What the product-level MTD xml says (all optional: missing elements are None/empty)."""

    product_id: str | None = None
    level: str | None = None  # "L1C" | "L2A"
    baseline: str | None = None
    product_type: str | None = None
    sensing_time: str | None = None
    quantification: float | None = None
    offsets: dict[str, int] = field(default_factory=dict)  # band name -> additive DN offset
    cloud_cover: float | None = None
    image_files: tuple[str, ...] = ()
    # Which rule decided the offsets (only in the sidecars the stac download writes:
    # product_metadata, earthsearch:boa_offset_applied, raster:bands, ...).
    offset_source: str | None = None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_mtd(source: str | os.PathLike[str] | bytes, *,
              name: str | None = None) -> ProductMetadata:
    """Parse ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` (a path or the xml bytes).

    Offsets come from ``RADIO_ADD_OFFSET`` (L1C) or ``BOA_ADD_OFFSET`` (L2A), keyed by
    ``band_id`` (0..12 in ESA order, see :data:`ALL_BANDS`).
    """
    label = name or (os.fspath(source) if not isinstance(source, bytes) else "MTD xml")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise ProductError(label, f"cannot read metadata ({exc.strerror})") from None
    if not data.strip():
        raise ProductError(label, "empty metadata file")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ProductError(label, f"not well-formed XML ({exc})") from None
    root_tag = _local(root.tag)
    if "User_Product" not in root_tag:
        raise ProductError(label, f"not a Sentinel-2 product metadata file (root <{root_tag}>)")
    text: dict[str, str] = {}
    offsets: dict[str, int] = {}
    files: list[str] = []
    for el in root.iter():
        tag = _local(el.tag)
        value = (el.text or "").strip()
        if tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET"):
            try:
                offsets[ALL_BANDS[int(el.get("band_id", ""))]] = int(float(value))
            except (ValueError, IndexError):
                raise ProductError(label, f"bad {tag} band_id={el.get('band_id')!r} "
                                          f"value {value!r}") from None
        elif tag == "IMAGE_FILE":
            files.append(value)
        elif value and tag not in text:
            text[tag] = value
    level_text = text.get("PROCESSING_LEVEL", "")
    level = {"Level-1C": "L1C", "Level-2A": "L2A"}.get(level_text)
    if level is None:
        level = "L1C" if "Level-1C" in root_tag else "L2A" if "Level-2A" in root_tag else None
    quant = text.get("QUANTIFICATION_VALUE") or text.get("BOA_QUANTIFICATION_VALUE")
    uri = text.get("PRODUCT_URI")
    cloud = text.get("Cloud_Coverage_Assessment")
    return ProductMetadata(
        product_id=uri[:-5] if uri and uri.endswith(".SAFE") else uri,
        level=level,
        baseline=text.get("PROCESSING_BASELINE"),
        product_type=text.get("PRODUCT_TYPE"),
        sensing_time=text.get("PRODUCT_START_TIME"),
        quantification=float(quant) if quant else None,
        offsets=offsets,
        cloud_cover=float(cloud) if cloud else None,
        image_files=tuple(files),
        offset_source=text.get("BOA_ADD_OFFSET_SOURCE"),
    )


def _info_from_name(name: str) -> tuple[str | None, str | None]:
    """(level, baseline) guessed from a product or file name, e.g. ``S2A_MSIL2A_..._N0400_...``."""
    level = None
    m = re.search(r"MSIL(1C|2A)", name) or re.search(r"S2[ABCD](1C|2A)_", name)
    if m:
        level = "L" + m.group(1)
    m = re.search(r"_N(\d{2})(\d{2})_", name)
    baseline = f"{m.group(1)}.{m.group(2)}" if m else None
    return level, baseline


# --------------------------------------------------------------------------------------------
# Result


@dataclass
class S2Stack:
    """A co-registered Sentinel-2 cube.

    ``data`` uint16 (bands, lines, samples), 0 = no data; ``valid`` bool (lines, samples);
    ``scl`` uint8 (lines, samples) or None; ``crs`` a rasterio CRS; ``transform`` the affine
    of the output grid (pixel corner, metres); ``offsets`` the DN offsets the metadata listed;
    ``harmonised`` whether they were applied.
    """

    data: np.ndarray
    valid: np.ndarray
    scl: np.ndarray | None
    crs: Any
    transform: Any
    product_id: str
    level: str | None
    baseline: str | None
    band_names: tuple[str, ...]
    source: str = ""
    offsets: dict[str, int] = field(default_factory=dict)
    harmonised: bool = False
    quantification: float | None = None
    resampling: str = "nearest"
    window: tuple[int, int, int, int] | None = None
    #: (lines, samples) of the whole product grid, whatever window was read.
    grid_shape: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def resolution(self) -> float:
        return float(abs(self.transform.a))

    def band(self, name: str) -> np.ndarray:
        """One band (lines, samples) by name."""
        return self.data[self.band_names.index(normalise_band_name(name))]

    def usable(self, reject: Sequence[int] = SCL_REJECT) -> np.ndarray:
        """``valid`` and (when an SCL is present) not in the rejected SCL classes."""
        return self.valid if self.scl is None else self.valid & scl_mask(self.scl, reject)

    def summary(self) -> dict[str, Any]:
        """A JSON-able description (what the CLI prints)."""
        h, w = self.data.shape[1:]
        bands = []
        for i, name in enumerate(self.band_names):
            plane = self.data[i][self.valid]
            bands.append({
                "band": name,
                "min": int(plane.min()) if plane.size else None,
                "max": int(plane.max()) if plane.size else None,
                "mean": round(float(plane.mean()), 1) if plane.size else None,
            })
        out: dict[str, Any] = {
            "source": self.source,
            "product_id": self.product_id,
            "level": self.level,
            "baseline": self.baseline,
            "offsets": sorted({v for k, v in self.offsets.items() if k in self.band_names}),
            "harmonised": self.harmonised,
            "bands": list(self.band_names),
            "resampling": self.resampling,
            "crs": self.crs.to_string() if self.crs is not None else None,
            "transform": list(self.transform)[:6],
            "shape": [len(self.band_names), h, w],
            "resolution_m": self.resolution,
            "window": list(self.window) if self.window else None,
            "valid_fraction": round(float(self.valid.mean()), 6) if self.valid.size else 0.0,
            "band_stats": bands,
        }
        if self.scl is not None:
            counts = np.bincount(self.scl.ravel(), minlength=12)
            out["scl_fractions"] = {
                SCL_CLASSES.get(c, str(c)): round(float(n) / self.scl.size, 6)
                for c, n in enumerate(counts) if n
            }
            out["usable_fraction"] = round(float(self.usable().mean()), 6)
        return out


def scl_mask(scl: np.ndarray, reject: Sequence[int] = SCL_REJECT) -> np.ndarray:
    """True where the scene class is usable, i.e. not one of ``reject`` (default: no data,
    defective, cloud shadow, medium/high cloud, thin cirrus)."""
    return ~np.isin(scl, np.asarray(list(reject), dtype=scl.dtype))


# --------------------------------------------------------------------------------------------
# Raster access


@contextlib.contextmanager
def _gdal_env(remote: bool) -> Iterator[None]:
    import rasterio

    options = dict(REMOTE_GDAL_ENV) if remote else {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    # With multi-threaded JPEG 2000 decoding, GDAL 3.10 reports a truncated tile only on stderr
    # and returns zeros; single-threaded decoding raises, so a bad file is never read silently.
    options["GDAL_NUM_THREADS"] = "1"
    # GDAL's block cache defaults to 5 % of RAM; window-by-window readers need only a
    # little of it (pipeline.products reads products a strip at a time).
    options["GDAL_CACHEMAX"] = GDAL_CACHE_MB
    with rasterio.Env(**options):
        yield


def _is_remote(href: str) -> bool:
    return href.startswith(("/vsicurl", "http://", "https://", "/vsis3", "/vsigs", "/vsiaz"))


def _gdal_path(href: str) -> str:
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    return href


def _check_local_file(href: str, label: str) -> None:
    if href.startswith("/vsi") or _is_remote(href):
        return
    try:
        size = os.path.getsize(href)
    except OSError:
        raise ProductError(label, "file not found") from None
    if size == 0:
        raise ProductError(label, "empty file (0 bytes)")


@contextlib.contextmanager
def _open(href: str, label: str | None = None):
    """Open a raster; any failure becomes a one-line ProductError naming the file."""
    import rasterio
    from rasterio.errors import RasterioError

    label = label or href
    _check_local_file(href, label)
    try:
        src = rasterio.open(_gdal_path(href))
    except (RasterioError, OSError) as exc:
        problem = gdal_message(exc, _gdal_path(href))
        raise ProductError(label, f"not a readable raster ({problem})") from None
    if src.count > _MAX_RASTER_BANDS:  # a damaged header; reading it would take seconds
        src.close()
        raise ProductError(label, f"{src.count} bands: not a Sentinel-2 raster (damaged header?)")
    try:
        yield src
    finally:
        src.close()


@dataclass(frozen=True)
class _Grid:
    crs: Any
    transform: Any
    width: int
    height: int

    @property
    def res(self) -> float:
        return abs(self.transform.a)


def _read_plane(src, band_index: int, grid: _Grid, window: tuple[int, int, int, int],
                resampling: Resampling, label: str, nodata_values: Sequence[float] = ()
                ) -> np.ndarray:
    """Read band ``band_index`` of ``src`` onto ``window`` of ``grid`` (0 = nodata)."""
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    row, col, h, w = window
    st = src.transform
    if not all(math.isfinite(v) for v in (st.a, st.b, st.c, st.d, st.e, st.f)) or st.a == 0:
        raise ProductError(label, f"unusable geotransform {tuple(st)[:6]} (damaged header?)")
    if src.crs is not None and grid.crs is not None and src.crs != grid.crs:
        raise ProductError(label, f"CRS {src.crs} differs from the product grid's {grid.crs}")
    if abs(st.b) > 1e-9 or abs(st.d) > 1e-9:
        raise ProductError(label, "rotated rasters are not supported")
    ratio = abs(st.a) / grid.res
    dx = (st.c - grid.transform.c) / grid.res
    dy = (grid.transform.f - st.f) / grid.res
    if not (1e-6 < ratio < 1e6 and abs(dx) < 1e9 and abs(dy) < 1e9):  # no finite overlap
        raise ProductError(label, f"a {abs(st.a):g} m raster at ({st.c:g}, {st.f:g}) cannot "
                                  f"lie on the product's {grid.res:g} m grid (damaged header?)")
    k = round(ratio)
    aligned = (k >= 1 and abs(ratio - k) < 1e-6 and abs(dx - round(dx)) < 1e-6
               and abs(dy - round(dy)) < 1e-6 and abs(abs(st.e) - abs(st.a)) < 1e-9)
    try:
        if aligned and (k == 1 or resampling == "nearest"):
            dx, dy = round(dx), round(dy)
            # Target pixel (r, c) lies in source pixel ((r + row - dy) // k, (c + col - dx) // k).
            r0, c0 = row - dy, col - dx
            sr0, sc0 = r0 // k, c0 // k
            sr1, sc1 = -(-(r0 + h) // k), -(-(c0 + w) // k)
            if sr0 < 0 or sc0 < 0 or sr1 > src.height or sc1 > src.width:
                raise ProductError(label, f"does not cover the requested area "
                                          f"(rows {sr0}:{sr1}, cols {sc0}:{sc1} of a "
                                          f"{src.height} x {src.width} raster at {abs(st.a):g} m)")
            block = src.read(band_index, window=Window(sc0, sr0, sc1 - sc0, sr1 - sr0))
            if k > 1:
                block = np.repeat(np.repeat(block, k, axis=0), k, axis=1)
            out = block[r0 - sr0 * k: r0 - sr0 * k + h, c0 - sc0 * k: c0 - sc0 * k + w]
        else:
            from rasterio.enums import Resampling as RioResampling
            from rasterio.vrt import WarpedVRT

            src_nodata = nodata_values[0] if nodata_values else NODATA
            with WarpedVRT(src, crs=grid.crs or src.crs, transform=grid.transform,
                           width=grid.width, height=grid.height, src_nodata=src_nodata,
                           nodata=NODATA, resampling=getattr(RioResampling, resampling)) as vrt:
                out = vrt.read(band_index, window=Window(col, row, w, h))
    except RasterioError as exc:
        raise ProductError(label, "cannot decode the pixels: truncated or corrupt file "
                                  f"({gdal_message(exc)})") from None
    out = np.ascontiguousarray(out)
    for value in nodata_values:
        if value is not None and value != NODATA and not math.isnan(value):
            out[out == value] = NODATA
    return out


def _grid_of(src) -> _Grid:
    return _Grid(src.crs, src.transform, src.width, src.height)


def _target_grid(src, target_res: float | None) -> _Grid:
    """The grid at ``target_res`` covering the same area as ``src``."""
    from rasterio.transform import Affine

    grid = _grid_of(src)
    if target_res is None or abs(grid.res - target_res) < 1e-9:
        return grid
    k = grid.res / target_res
    t = grid.transform
    return _Grid(grid.crs, Affine(target_res, 0.0, t.c, 0.0, -target_res, t.f),
                 round(grid.width * k), round(grid.height * k))


def _normalise_window(window: Sequence[int] | None, grid: _Grid, label: str
                      ) -> tuple[int, int, int, int]:
    if window is None:
        return (0, 0, grid.height, grid.width)
    try:
        row, col, h, w = (int(v) for v in window)
    except (TypeError, ValueError):
        raise ParamsError(f"window must be (row, col, height, width), got {window!r}") from None
    if h <= 0 or w <= 0 or row < 0 or col < 0 or row + h > grid.height or col + w > grid.width:
        raise ProductError(label, f"window {(row, col, h, w)} lies outside the "
                                  f"{grid.height} x {grid.width} grid")
    return (row, col, h, w)


def _harmonise(plane: np.ndarray, offset: int) -> np.ndarray:
    """Apply an additive DN offset to 0 < DN < 65535, clipping at 1 (0 and 65535 are kept)."""
    signal = (plane > NODATA) & (plane < SATURATED)
    shifted = np.clip(plane.astype(np.int32) + offset, 1, SATURATED - 1).astype(np.uint16)
    return np.where(signal, shifted, plane)


def _assemble(
    sources: Mapping[str, tuple[str, int]],
    bands: tuple[str, ...],
    *,
    resampling: Resampling,
    harmonise: bool,
    offsets: Mapping[str, int],
    window: Sequence[int] | None,
    scl_source: tuple[str, int] | None,
    product_id: str,
    level: str | None,
    baseline: str | None,
    source: str,
    quantification: float | None = None,
    labels: Mapping[str, str] | None = None,
    target_res: float | None = 10.0,
) -> S2Stack:
    """Read ``bands`` from ``sources`` (band -> (gdal path, 1-based band index)) onto one grid."""
    if resampling not in ("nearest", "bilinear"):
        raise ParamsError(f"resampling must be 'nearest' or 'bilinear', not {resampling!r}")
    labels = dict(labels or {})
    hrefs = {b: sources[b][0] for b in bands}
    remote = any(_is_remote(h) for h in hrefs.values())
    with _gdal_env(remote), contextlib.ExitStack() as stack:
        opened: dict[str, Any] = {}
        for href in dict.fromkeys(hrefs.values()):
            label = labels.get(href, href)
            opened[href] = stack.enter_context(_open(href, label))
            src = opened[href]
            if src.count < 1:
                raise ProductError(label, "raster has no bands")
        # The grid of the finest requested band, refined to target_res when that is finer.
        finest = min(hrefs.values(), key=lambda h: abs(opened[h].transform.a))
        finest_res = abs(opened[finest].transform.a)
        grid = _target_grid(opened[finest], target_res if finest_res > (target_res or 0) else None)
        win = _normalise_window(window, grid, labels.get(finest, finest))
        data = np.empty((len(bands), win[2], win[3]), np.uint16)  # filled band by band
        for i, band in enumerate(bands):
            href, index = sources[band]
            src = opened[href]
            label = labels.get(href, href)
            if src.dtypes[index - 1] not in ("uint16", "uint8", "int16", "uint32", "int32"):
                raise ProductError(label, f"band {band} has data type {src.dtypes[index - 1]}, "
                                          "expected integer DNs (uint16)")
            nodata = [src.nodatavals[index - 1]] if src.nodatavals[index - 1] is not None else []
            plane = _read_plane(src, index, grid, win, resampling, label, nodata)
            if plane.dtype != np.uint16:
                if plane.min(initial=0) < 0 or plane.max(initial=0) > SATURATED:
                    raise ProductError(label, f"band {band} holds values outside 0..65535")
                plane = plane.astype(np.uint16)
            data[i] = plane
            del plane
        scl = None
        if scl_source is not None:
            href, index = scl_source
            label = labels.get(href, href)
            with _open(href, label) as src:
                scl = _read_plane(src, index, grid, win, "nearest", label).astype(np.uint8)
    applied = False
    if harmonise:
        for i, band in enumerate(bands):
            offset = offsets.get(band, 0)
            if offset:
                data[i] = _harmonise(data[i], offset)
                applied = True
    from rasterio.transform import Affine

    t = grid.transform
    row, col = win[0], win[1]
    transform = Affine(t.a, t.b, t.c + col * t.a + row * t.b, t.d, t.e, t.f + col * t.d + row * t.e)
    return S2Stack(
        data=data,
        valid=np.all(data > NODATA, axis=0),
        scl=scl,
        crs=grid.crs,
        transform=transform,
        product_id=product_id,
        level=level,
        baseline=baseline,
        band_names=bands,
        source=source,
        offsets=dict(offsets),
        harmonised=applied,
        quantification=quantification,
        resampling=resampling,
        window=tuple(win) if window is not None else None,
        grid_shape=(grid.height, grid.width),
    )


# --------------------------------------------------------------------------------------------
# SAFE products


_MAX_RASTER_BANDS = 256  # a Sentinel-2 raster file holds 1 band, or up to 13 + SCL
_MAX_MEMBER_BYTES = 256 * 2**20  # metadata members of a SAFE zip (MTD xml: about 60 kB)


class _SafeListing:
    """Files of a SAFE product, in a folder or a zip, addressed by path relative to ``.SAFE/``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            mtds = sorted(path.glob("MTD_MSIL*.xml"))
            if not mtds:
                inner = sorted(p for p in path.glob("*.SAFE") if p.is_dir())
                if len(inner) == 1:
                    path = inner[0]
                    mtds = sorted(path.glob("MTD_MSIL*.xml"))
            self.root_dir: Path | None = path
            self.prefix = ""
            self.files = sorted(
                p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()
            )
            self.name = path.name
        else:
            _check_local_file(os.fspath(path), os.fspath(path))
            try:
                self.zip = zipfile.ZipFile(path)
                members = self.zip.namelist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise ProductError(path, f"not a readable zip ({exc})") from None
            mtd = sorted(m for m in members
                         if PurePosixPath(m).name.startswith("MTD_MSIL") and m.endswith(".xml"))
            if not mtd:
                raise ProductError(path, "zip holds no MTD_MSIL1C.xml / MTD_MSIL2A.xml: "
                                         "not a SAFE product")
            top = mtd[0].rsplit("/", 1)[0] + "/" if "/" in mtd[0] else ""
            self.root_dir = None
            self.prefix = top
            self.files = sorted(m[len(top):] for m in members
                                if m.startswith(top) and not m.endswith("/"))
            self.name = top.rstrip("/").rsplit("/", 1)[-1] or path.stem

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def read_bytes(self, rel: str) -> bytes:
        if self.zip is not None:
            name = self.prefix + rel
            try:
                if self.zip.getinfo(name).file_size > _MAX_MEMBER_BYTES:
                    raise ProductError(self.path, f"{rel}: claims more than "
                                                  f"{_MAX_MEMBER_BYTES:,} bytes (damaged zip?)")
                return self.zip.read(name)
            except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError,
                    NotImplementedError) as exc:  # a damaged member of the zip
                raise ProductError(self.path, f"{rel}: cannot unpack ({exc})") from None
        assert self.root_dir is not None
        return (self.root_dir / rel).read_bytes()

    def gdal_path(self, rel: str) -> str:
        if self.zip is not None:
            return f"/vsizip/{os.path.abspath(self.path)}/{self.prefix}{rel}"
        assert self.root_dir is not None
        return os.fspath(self.root_dir / rel)

    def label(self, rel: str) -> str:
        return f"{self.path.name}!{rel}" if self.zip is not None else rel


def _find_band_file(files: Sequence[str], band: str) -> str | None:
    """The IMG_DATA file of ``band``: native resolution first, then the finest available."""
    candidates = []
    for rel in files:
        p = PurePosixPath(rel)
        if "IMG_DATA" not in p.parts or p.suffix.lower() not in _RASTER_EXT:
            continue
        stem = p.stem
        m = re.search(r"_(B\d[\dA])(?:_(\d+)m)?$", stem)
        if not m or m.group(1) != band:
            continue
        res = int(m.group(2)) if m.group(2) else NATIVE_RESOLUTION[band]
        candidates.append((res != NATIVE_RESOLUTION[band], res, rel))
    granules = {PurePosixPath(rel).parts[:2] for *_, rel in candidates}
    if len(granules) > 1:
        raise ValueError(f"{len(granules)} granules hold band {band}")
    return min(candidates)[2] if candidates else None


def _find_scl_file(files: Sequence[str]) -> str | None:
    candidates = []
    for rel in files:
        p = PurePosixPath(rel)
        m = re.search(r"_SCL_(\d+)m$", p.stem)
        if "IMG_DATA" in p.parts and m and p.suffix.lower() in _RASTER_EXT:
            candidates.append((int(m.group(1)), rel))
    return min(candidates)[1] if candidates else None


def read_safe(path: str | os.PathLike[str], bands: Sequence[str] = DEFAULT_BANDS,
              resampling: Resampling = "nearest", harmonise: bool = True, *,
              window: Sequence[int] | None = None) -> S2Stack:
    """Read a SAFE product (folder or zip); see :func:`read`."""
    path = Path(path)
    names = check_bands(bands)
    listing = _SafeListing(path)
    try:
        mtd_rel = next((f for f in listing.files if re.fullmatch(r"MTD_MSIL(1C|2A)\.xml", f)), None)
        if mtd_rel is None:
            raise ProductError(path, "no MTD_MSIL1C.xml / MTD_MSIL2A.xml: not a SAFE product")
        meta = parse_mtd(listing.read_bytes(mtd_rel), name=listing.label(mtd_rel))
        sources: dict[str, tuple[str, int]] = {}
        labels: dict[str, str] = {}
        for band in names:
            try:
                rel = _find_band_file(listing.files, band)
            except ValueError as exc:
                raise ProductError(path, f"multi-granule product (pre-2017 format) not "
                                         f"supported: {exc}") from None
            if rel is None:
                raise ProductError(path, f"band {band} not found in GRANULE/*/IMG_DATA "
                                         f"({meta.level or 'unknown level'})")
            href = listing.gdal_path(rel)
            sources[band] = (href, 1)
            labels[href] = listing.label(rel)
        scl_rel = _find_scl_file(listing.files) if meta.level != "L1C" else None
        scl_source = None
        if scl_rel is not None:
            scl_source = (listing.gdal_path(scl_rel), 1)
            labels[scl_source[0]] = listing.label(scl_rel)
        name_level, name_baseline = _info_from_name(listing.name)
        return _assemble(
            sources, names, resampling=resampling, harmonise=harmonise, offsets=meta.offsets,
            window=window, scl_source=scl_source,
            product_id=meta.product_id or listing.name.removesuffix(".SAFE"),
            level=meta.level or name_level, baseline=meta.baseline or name_baseline,
            source=os.fspath(path), quantification=meta.quantification, labels=labels,
        )
    finally:
        listing.close()


# --------------------------------------------------------------------------------------------
# Band folders, multi-band files, STAC assets


def _sidecar_metadata(path: Path) -> Path | None:
    folder = path.parent if path.is_file() else path
    stem = path.stem if path.is_file() else path.name
    for candidate in (folder / f"{stem}_MTD.xml", folder / "MTD_MSIL2A.xml",
                      folder / "MTD_MSIL1C.xml"):
        if candidate.is_file():
            return candidate
    return None


def _metadata_for(path: Path | None, metadata: str | os.PathLike[str] | None,
                  name: str) -> tuple[ProductMetadata, str | None, str | None]:
    """(metadata, level, baseline) for a non-SAFE input, with a warning when the name says the
    baseline carries an offset but no metadata lists it."""
    mtd_path = Path(metadata) if metadata is not None else (
        _sidecar_metadata(path) if path is not None else None)
    meta = parse_mtd(mtd_path) if mtd_path is not None else ProductMetadata()
    name_level, name_baseline = _info_from_name(meta.product_id or name)
    baseline = meta.baseline or name_baseline
    if mtd_path is None and baseline_has_offset(baseline):
        warnings.warn(f"{name}: the name says processing baseline {baseline} (DN offset +1000) "
                      "but no MTD xml lists the offset; values are NOT harmonised "
                      "(pass metadata=MTD.xml or offsets=)", stacklevel=3)
    return meta, meta.level or name_level, baseline


def read_band_folder(path: str | os.PathLike[str], bands: Sequence[str] = DEFAULT_BANDS,
                     resampling: Resampling = "nearest", harmonise: bool = True, *,
                     window: Sequence[int] | None = None,
                     metadata: str | os.PathLike[str] | None = None) -> S2Stack:
    """Read a folder of single-band files ``*_B02.tif`` / ``*_B02.jp2`` (one per band)."""
    path = Path(path)
    names = check_bands(bands)
    found: dict[str, list[Path]] = {}
    scl: list[Path] = []
    for p in sorted(path.iterdir()):
        if not p.is_file() or p.suffix.lower() not in _RASTER_EXT:
            continue
        if _SCL_RE.search(p.stem):
            scl.append(p)
            continue
        matches = {normalise_band_name(m) for m in _BAND_RE.findall(p.stem)}
        if len(matches) == 1:
            found.setdefault(matches.pop(), []).append(p)
    sources: dict[str, tuple[str, int]] = {}
    labels: dict[str, str] = {}
    for band in names:
        files = found.get(band, [])
        if not files:
            raise ProductError(path, f"band {band} not found (no *_{band}.tif / .jp2 file)")
        if len(files) > 1:  # e.g. T32TNR_..._B02_10m.jp2 and ..._B02_20m.jp2: native first
            native = [f for f in files if f.stem.endswith(f"_{NATIVE_RESOLUTION[band]}m")]
            files = native if len(native) == 1 else files
        if len(files) > 1:
            raise ProductError(path, f"band {band} is ambiguous: "
                                     f"{', '.join(f.name for f in files)}")
        sources[band] = (os.fspath(files[0]), 1)
        labels[os.fspath(files[0])] = files[0].name
    scl_source = (os.fspath(scl[0]), 1) if len(scl) == 1 else None
    if scl_source:
        labels[scl_source[0]] = scl[0].name
    meta, level, baseline = _metadata_for(path, metadata, path.name)
    return _assemble(
        sources, names, resampling=resampling, harmonise=harmonise, offsets=meta.offsets,
        window=window, scl_source=scl_source, product_id=meta.product_id or path.name,
        level=level, baseline=baseline, source=os.fspath(path),
        quantification=meta.quantification, labels=labels,
    )


def _names_from_descriptions(descriptions: Sequence[str | None]) -> list[str] | None:
    names = []
    for d in descriptions:
        if not d:
            return None
        try:
            names.append(normalise_band_name(d))
        except ParamsError:
            return None
    return names if len(set(names)) == len(names) else None


def read_multiband(path: str | os.PathLike[str], bands: Sequence[str] = DEFAULT_BANDS,
                   resampling: Resampling = "nearest", harmonise: bool = True, *,
                   window: Sequence[int] | None = None,
                   file_bands: Sequence[str] | None = None,
                   metadata: str | os.PathLike[str] | None = None,
                   offsets: Mapping[str, int] | None = None,
                   scl: str | os.PathLike[str] | None = None) -> S2Stack:
    """Read a multi-band GeoTIFF on its own grid.

    The file's band names are, in this order of preference: ``file_bands``; the GDAL band
    descriptions when every band has a recognisable band name; ESA order for a 13-band file;
    ``bands`` itself when the file has exactly ``len(bands)`` bands (an assumption, which the
    caller must know to be right). ``scl`` is an optional single-band SCL raster; by default
    a ``<stem>_SCL<suffix>`` file beside a local file is used when present.
    """
    href = os.fspath(path)
    names = check_bands(bands)
    label = os.path.basename(href) or href
    with _gdal_env(_is_remote(href)), _open(href, label) as src:
        count, descriptions = src.count, src.descriptions
    if file_bands is not None:
        in_file = [normalise_band_name(b) for b in file_bands]
        if len(in_file) != count:
            raise ProductError(label, f"file_bands names {len(in_file)} bands but the file "
                                      f"has {count}")
    else:
        in_file = _names_from_descriptions(descriptions)
        if in_file is None:
            if count == 1 and len(names) > 1:
                raise ProductError(label, "a single-band file: read the folder that holds "
                                          "all the band files")
            if count == len(ALL_BANDS):
                in_file = list(ALL_BANDS)
            elif count == len(names):
                in_file = list(names)
            else:
                raise ProductError(label, f"cannot tell which of its {count} bands is which "
                                          "(no band descriptions): pass file_bands=")
    sources: dict[str, tuple[str, int]] = {}
    for band in names:
        if band not in in_file:
            raise ProductError(label, f"band {band} not in the file (it holds "
                                      f"{','.join(in_file)})")
        sources[band] = (href, in_file.index(band) + 1)
    local = None if _is_remote(href) else Path(href)
    stem = Path(href).stem
    meta, level, baseline = _metadata_for(local, metadata, stem)
    if scl is None and local is not None:
        # The STAC download stage writes the scene classification beside the bands.
        sidecar = local.with_name(f"{stem}_SCL{local.suffix}")
        scl = sidecar if sidecar.exists() else None
    scl_source = (os.fspath(scl), 1) if scl is not None else None
    labels = {href: label}
    if scl_source:
        labels[scl_source[0]] = os.path.basename(scl_source[0])
    return _assemble(
        sources, names, resampling=resampling, harmonise=harmonise,
        offsets=dict(offsets) if offsets is not None else meta.offsets,
        window=window, scl_source=scl_source, product_id=meta.product_id or stem,
        level=level, baseline=baseline, source=href, quantification=meta.quantification,
        labels=labels, target_res=None,
    )


def read_assets(assets: Mapping[str, str], bands: Sequence[str] = DEFAULT_BANDS,
                resampling: Resampling = "nearest", harmonise: bool = True, *,
                window: Sequence[int] | None = None,
                offsets: Mapping[str, int] | int | None = None,
                product_id: str | None = None, level: str | None = None,
                baseline: str | None = None,
                metadata: str | os.PathLike[str] | None = None) -> S2Stack:
    """Read STAC item assets: ``assets`` maps band names (``B02``, ``b8a``, or Earth Search's
    keys ``blue``, ``nir08``, ... see :data:`STAC_ASSET_BANDS`) and optionally ``SCL``/``scl``
    to hrefs (paths, http(s) URLs or ``/vsicurl/`` paths). Other keys are ignored.

    ``offsets`` are DN offsets per band (or one for all), e.g. derived from STAC
    ``raster:bands`` as ``offset / scale`` (-0.1 / 0.0001 = -1000); without them the MTD xml
    given as ``metadata`` is used. ``window`` is on the 10 m grid.
    """
    names = check_bands(bands)
    normalised: dict[str, str] = {}
    scl_href = None
    for key, href in assets.items():
        if str(key).upper() == "SCL":
            scl_href = str(href)
            continue
        if str(key).lower() in STAC_ASSET_BANDS:
            normalised[STAC_ASSET_BANDS[str(key).lower()]] = str(href)
            continue
        with contextlib.suppress(ParamsError):
            normalised[normalise_band_name(key)] = str(href)
    sources = {}
    for band in names:
        if band not in normalised:
            raise ProductError(product_id or "STAC item", f"no asset for band {band} "
                                                           f"(assets: {', '.join(assets)})")
        sources[band] = (normalised[band], 1)
    meta = parse_mtd(metadata) if metadata is not None else ProductMetadata()
    if isinstance(offsets, (int, float)):
        offset_map = {b: int(offsets) for b in names}
    elif offsets is not None:
        offset_map = {normalise_band_name(k): int(v) for k, v in offsets.items()}
    else:
        offset_map = dict(meta.offsets)
    pid = product_id or meta.product_id or "stac-item"
    name_level, name_baseline = _info_from_name(pid)
    labels = {h: (h.rsplit("/", 1)[-1] or h) for h, _ in sources.values()}
    if scl_href:
        labels[scl_href] = scl_href.rsplit("/", 1)[-1] or scl_href
    return _assemble(
        sources, names, resampling=resampling, harmonise=harmonise, offsets=offset_map,
        window=window, scl_source=(scl_href, 1) if scl_href else None, product_id=pid,
        level=level or meta.level or name_level,
        baseline=baseline or meta.baseline or name_baseline,
        source=pid, quantification=meta.quantification, labels=labels,
    )


def read(path: str | os.PathLike[str] | Mapping[str, str],
         bands: Sequence[str] = DEFAULT_BANDS, resampling: Resampling = "nearest",
         harmonise: bool = True, *, window: Sequence[int] | None = None,
         **options: Any) -> S2Stack:
    """Read any supported Sentinel-2 input into an :class:`S2Stack` (see the module docstring).

    ``path``: SAFE folder or zip, band folder, multi-band GeoTIFF/JP2 (local or remote), or a
    mapping band -> href (STAC assets). ``bands``: output band order (default
    :data:`DEFAULT_BANDS`). ``resampling``: "nearest" (default) or "bilinear" for coarser
    bands. ``harmonise``: undo the PB >= 04.00 +1000 DN offset where the metadata lists it.
    ``window``: (row, col, height, width) on the output (10 m) grid. ``options`` go to the
    specific reader (``metadata=``, ``file_bands=``, ``offsets=``, ``scl=``, ``product_id=``).
    Bad input raises :class:`~parsers.errors.ProductError` (one line, naming the file).
    """
    if isinstance(path, Mapping):
        return read_assets(path, bands, resampling, harmonise, window=window, **options)
    text = os.fspath(path)
    if _is_remote(text):
        return read_multiband(text, bands, resampling, harmonise, window=window, **options)
    p = Path(text)
    if not p.exists():
        raise ProductError(p, "no such file or folder")
    if p.is_dir():
        is_safe = (p.suffix.upper() == ".SAFE" or any(p.glob("MTD_MSIL*.xml"))
                   or len([q for q in p.glob("*.SAFE") if q.is_dir()]) == 1)
        if is_safe:
            _reject_options(options, p)
            return read_safe(p, bands, resampling, harmonise, window=window)
        return read_band_folder(p, bands, resampling, harmonise, window=window, **options)
    if p.suffix.lower() == ".zip":
        _reject_options(options, p)
        return read_safe(p, bands, resampling, harmonise, window=window)
    return read_multiband(p, bands, resampling, harmonise, window=window, **options)


def _reject_options(options: Mapping[str, Any], path: Path) -> None:
    if options:
        raise ParamsError(f"{path.name}: option(s) {', '.join(options)} do not apply to "
                          "SAFE products (their MTD xml says it all)")


# --------------------------------------------------------------------------------------------
# Export and CLI


def export(stack: S2Stack, dest: str | os.PathLike[str]) -> Path:
    """Write ``stack.data`` to ``.npy`` (uint16 (bands, lines, samples)) or ``.tif`` (GeoTIFF with
    CRS, transform, band descriptions, nodata 0), atomically."""
    dest = Path(dest)
    suffix = dest.suffix.lower()
    if suffix == ".npy":
        with atomic_open(dest) as fh:
            np.save(fh, stack.data)
        return dest
    if suffix in (".tif", ".tiff"):
        import rasterio

        with atomic_path(dest) as tmp:
            with rasterio.open(tmp, "w", driver="GTiff", width=stack.data.shape[2],
                               height=stack.data.shape[1], count=stack.data.shape[0],
                               dtype="uint16", crs=stack.crs, transform=stack.transform,
                               nodata=NODATA, compress="deflate") as dst:
                dst.write(stack.data)
                for i, name in enumerate(stack.band_names, start=1):
                    dst.set_band_description(i, name)
                dst.update_tags(PRODUCT_ID=stack.product_id, LEVEL=stack.level or "",
                                PROCESSING_BASELINE=stack.baseline or "",
                                HARMONISED=str(stack.harmonised))
            for aux in tmp.parent.glob(tmp.name + ".aux.xml"):
                aux.unlink()
        return dest
    raise UserError(f"{dest}: export format must be .npy or .tif")


if __name__ == "__main__":
    from parsers.cli.sentinel2 import main

    raise SystemExit(main())
