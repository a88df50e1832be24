"""Multi-band GeoTIFF / Cloud-Optimised GeoTIFF cubes, read through rasterio (GDAL GTiff).

GDAL decodes the file (strips or tiles, compression, predictor, byte order, BigTIFF) and
reports the per-band no-data values, scale/offset, descriptions, tags, the transform and the
CRS. Band order is the file's band order (GDAL band 1 = cube band 0). This module maps the
wavelengths, the first source found being used for all bands:

1. per-band ``IMAGERY`` metadata ``CENTRAL_WAVELENGTH_UM`` / ``FWHM_UM`` (the GDAL 3.10
   convention);
2. per-band tags ``wavelength`` (+ ``wavelength_units`` on the band or the dataset), as the
   GDAL ENVI driver and ENVI-derived GeoTIFFs write them;
3. dataset ``ENVI`` metadata (or plain tags) ``wavelength = {...}`` + ``wavelength_units``
   (+ ``fwhm``, ``bbl``), as ENVI writes them;
4. band descriptions that end in a number with an optional unit (``"450 nm"``,
   ``"band 19 (0.513 Micrometers)"``).

Wavelengths and FWHM are reported in nm (:mod:`parsers.wavelengths`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from parsers.envi import split_list
from parsers.errors import ProductError
from parsers.raster import RasterCube, interleave_of, open_dataset, per_band
from parsers.wavelengths import nm_factor, parse_value_with_unit, to_nanometres

MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def is_tiff(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in MAGICS
    except OSError:
        return False


def _ci(tags: dict[str, str], key: str) -> str | None:
    """Case-insensitive tag lookup (writers spell ``wavelength`` / ``WAVELENGTH``)."""
    for k, v in tags.items():
        if k.lower() == key:
            return v
    return None


Spectral = tuple[np.ndarray | None, np.ndarray | None, str | None]  # wavelengths, fwhm, note


def _from_imagery(ds: Any) -> Spectral | None:
    tags = [ds.tags(i, ns="IMAGERY") for i in ds.indexes]
    if not all("CENTRAL_WAVELENGTH_UM" in t for t in tags):
        return None
    wl = np.array([float(t["CENTRAL_WAVELENGTH_UM"]) for t in tags]) * 1e3
    fwhm = None
    if all("FWHM_UM" in t for t in tags):
        fwhm = (np.array([float(t["FWHM_UM"]) for t in tags]) * 1e3).astype(np.float32)
    return wl.astype(np.float32), fwhm, None


def _from_band_tags(ds: Any) -> Spectral | None:
    tags = [ds.tags(i) for i in ds.indexes]
    values = [_ci(t, "wavelength") for t in tags]
    if not all(v is not None for v in values):
        return None
    units = {_ci(t, "wavelength_units") or _ci(ds.tags(), "wavelength_units") for t in tags}
    if len(units) > 1:
        return None, None, f"bands give different wavelength units {sorted(map(str, units))}"
    raw = np.array([float(v) for v in values])
    unit = units.pop()
    wl, note = to_nanometres(raw, unit)
    fwhm_values = [_ci(t, "fwhm") for t in tags]
    fwhm = None
    factor, _ = nm_factor(raw, unit)
    if all(v is not None for v in fwhm_values) and factor is not None:
        fwhm = (np.array([float(v) for v in fwhm_values]) * factor).astype(np.float32)
    return wl, fwhm, note


def _from_dataset_lists(ds: Any, domain: dict[str, str]) -> Spectral | None:
    text = _ci(domain, "wavelength")
    if text is None:
        return None
    raw = np.array([float(v) for v in split_list(text)])
    if raw.size != ds.count:
        return None, None, f"wavelength lists {raw.size} values for {ds.count} bands; ignored"
    unit = _ci(domain, "wavelength_units") or _ci(domain, "wavelength units")
    wl, note = to_nanometres(raw, unit)
    fwhm = None
    fwhm_text = _ci(domain, "fwhm")
    factor, _ = nm_factor(raw, unit)
    if fwhm_text is not None and factor is not None:
        values = np.array([float(v) for v in split_list(fwhm_text)])
        fwhm = (values * factor).astype(np.float32) if values.size == ds.count else None
    return wl, fwhm, note


def _from_descriptions(ds: Any) -> Spectral | None:
    parsed = [parse_value_with_unit(d) if d else None for d in ds.descriptions]
    if not parsed or not all(p is not None for p in parsed):
        return None
    units = {p[1].lower() if p[1] else None for p in parsed}
    if len(units) > 1:
        return None
    wl, note = to_nanometres([p[0] for p in parsed], parsed[0][1])
    return wl, None, note


def spectral_metadata(ds: Any) -> Spectral:
    """(wavelengths nm, fwhm nm, note) from the first source of the module docstring."""
    sources = (lambda: _from_imagery(ds), lambda: _from_band_tags(ds),
               lambda: _from_dataset_lists(ds, ds.tags(ns="ENVI")),
               lambda: _from_dataset_lists(ds, ds.tags()), lambda: _from_descriptions(ds))
    for source in sources:
        try:
            found = source()
        except ValueError as exc:
            return None, None, f"wavelength metadata not understood ({exc}); ignored"
        if found is not None:
            return found
    return None, None, None


def _bad_bands(ds: Any) -> np.ndarray | None:
    text = _ci(ds.tags(ns="ENVI"), "bbl")
    if text is None:
        return None
    try:
        values = np.array([float(v) for v in split_list(text)])
    except ValueError:
        return None
    return values == 0 if values.size == ds.count else None


def read(path: str | os.PathLike[str]) -> RasterCube:
    """Open a (multi-band) GeoTIFF or COG. Reads the header and tags only."""
    path = Path(path)
    ds = open_dataset(path, path)
    try:
        if ds.driver != "GTiff":
            raise ProductError(path, f"GDAL reads it as {ds.driver}, not as a GeoTIFF")
        dtype = np.dtype(ds.dtypes[0])
        if len(set(ds.dtypes)) > 1:
            raise ProductError(path, f"bands of different data types {sorted(set(ds.dtypes))}")
        if dtype.kind == "c":
            raise ProductError(path, f"complex data ({dtype}) is not supported")
        wavelengths, fwhm, note = spectral_metadata(ds)
        with open(path, "rb") as fh:
            order = "big-endian" if fh.read(2) == b"MM" else "little-endian"
        descriptions = list(ds.descriptions)
        cube = RasterCube(
            path=path, data_path=path, format="geotiff",
            product_id=path.name[: -len(path.suffix)] if path.suffix.lower() in (
                ".tif", ".tiff") else path.name,
            band_index=tuple(ds.indexes), lines=ds.height, samples=ds.width,
            stored_dtype=dtype, interleave=interleave_of(ds),
            byte_order=order if dtype.itemsize > 1 else "n/a (1 byte)",
            nodata=per_band(ds.nodatavals, ds.count, np.nan),
            scale=per_band(ds.scales, ds.count, 1.0),
            offset=per_band(ds.offsets, ds.count, 0.0),
            wavelengths=wavelengths, fwhm=fwhm,
            band_names=descriptions if all(descriptions) else None,
            bad_bands=_bad_bands(ds), crs=ds.crs.to_wkt() if ds.crs else None,
            transform=tuple(ds.transform)[:6], metadata=dict(ds.tags()),
            warnings=[note] if note else [],
        )
        layout = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        if layout:
            cube.metadata["LAYOUT"] = layout
    except BaseException:
        ds.close()
        raise
    cube._ds = ds
    return cube
