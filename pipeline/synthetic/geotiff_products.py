"""Small synthetic multi-band GeoTIFF / COG cubes with spectral metadata, for tests and demos.

:func:`write_geotiff` writes ``data`` (bands, lines, samples) with rasterio and puts the
wavelengths where the different producers put them (``wavelength_style``):

- ``"band_tags"``: per-band tags ``wavelength`` / ``wavelength_units`` (GDAL ENVI driver style);
- ``"envi_domain"``: dataset ``ENVI`` metadata ``wavelength = {...}``, ``wavelength_units``,
  ``fwhm``, ``bbl`` (ENVI style);
- ``"imagery"``: per-band ``IMAGERY`` metadata ``CENTRAL_WAVELENGTH_UM`` / ``FWHM_UM`` (GDAL
  3.10 style);
- ``"descriptions"``: band descriptions ``"<wavelength> <unit>"``;
- ``None``: no wavelengths.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from parsers.atomic import atomic_path

DEFAULT_CRS = "EPSG:32633"
DEFAULT_TRANSFORM = (30.0, 0.0, 400000.0, 0.0, -30.0, 5000000.0)


def write_geotiff(
    path: str | os.PathLike[str], data: np.ndarray, *,
    wavelengths: Sequence[float] | None = None, wavelength_units: str = "nm",
    fwhm: Sequence[float] | None = None, bbl: Sequence[int] | None = None,
    wavelength_style: str | None = "band_tags", descriptions: Sequence[str] | None = None,
    nodata: float | None = None, cog: bool = False, interleave: str = "band",
    big_endian: bool = False, crs: str = DEFAULT_CRS,
    transform: Sequence[float] = DEFAULT_TRANSFORM,
) -> Path:
    """Write ``data`` (B, L, S) as a GeoTIFF (or COG when ``cog``); returns the path."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy
    from rasterio.transform import Affine

    path = Path(path)
    if cog and wavelength_style == "envi_domain":
        raise ValueError("the COG driver copies no ENVI metadata domain; write a plain GeoTIFF")
    bands, lines, samples = data.shape
    profile = {"driver": "GTiff", "width": samples, "height": lines, "count": bands,
               "dtype": data.dtype.name, "crs": crs, "transform": Affine(*transform),
               "nodata": nodata, "interleave": interleave}
    if big_endian:
        profile["ENDIANNESS"] = "BIG"
    with atomic_path(path) as tmp:
        if not cog:
            with rasterio.open(tmp, "w", **profile) as dst:
                _fill(dst, data, wavelengths, wavelength_units, fwhm, bbl, wavelength_style,
                      descriptions)
            return path
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                _fill(dst, data, wavelengths, wavelength_units, fwhm, bbl, wavelength_style,
                      descriptions)
            rio_copy(mem.name, str(tmp), driver="COG")
    return path


def _fill(dst, data: np.ndarray, wavelengths: Sequence[float] | None, wavelength_units: str,
          fwhm: Sequence[float] | None, bbl: Sequence[int] | None, style: str | None,
          descriptions: Sequence[str] | None) -> None:
    dst.write(data)
    factor = {"nm": 1e-3, "um": 1.0, "micrometers": 1.0}.get(wavelength_units.lower(), 1e-3)
    for i in range(data.shape[0]):
        if descriptions is not None:
            dst.set_band_description(i + 1, descriptions[i])
        if wavelengths is None:
            continue
        if style == "band_tags":
            dst.update_tags(i + 1, wavelength=f"{wavelengths[i]:g}",
                            wavelength_units=wavelength_units)
        elif style == "imagery":
            tags = {"CENTRAL_WAVELENGTH_UM": f"{wavelengths[i] * factor:g}"}
            if fwhm is not None:
                tags["FWHM_UM"] = f"{fwhm[i] * factor:g}"
            dst.update_tags(i + 1, ns="IMAGERY", **tags)
        elif style == "descriptions":
            dst.set_band_description(i + 1, f"{wavelengths[i]:g} {wavelength_units}")
    if wavelengths is not None and style == "envi_domain":
        envi = {"wavelength": "{" + ", ".join(f"{w:g}" for w in wavelengths) + "}",
                "wavelength_units": wavelength_units}
        if fwhm is not None:
            envi["fwhm"] = "{" + ", ".join(f"{w:g}" for w in fwhm) + "}"
        if bbl is not None:
            envi["bbl"] = "{" + ", ".join(str(int(b)) for b in bbl) + "}"
        dst.update_tags(ns="ENVI", **envi)
