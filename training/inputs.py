"""Open anything the readers open as an :class:`~training.cube_io.InputCube` (for compress).

* a tile HDF5 file of :mod:`pipeline.tiles` (``tiles`` (N, B, H, W)): kind ``"tiles"``;
* a Sentinel-2 product (:func:`parsers.sentinel2.read`: SAFE folder/zip, band folder, and a
  multi-band GeoTIFF/JP2 when the model is a Sentinel-2 model): uint16, 0 = no data;
* any cube :func:`parsers.cube.open_cube` opens (VIRTIS and other PDS3 QUBEs, ENVI,
  GeoTIFF): float32 with NaN where the reader found special or no-data values.

Kept apart from :mod:`training.cube_io` so that what only handles tile files (evaluation)
does not depend on every reader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from parsers.errors import ProductError
from training.cube_io import InputCube, open_tiles

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
S2_PRODUCT_SUFFIXES = (".zip", ".safe")
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")


def _is_hdf5(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(8) == HDF5_SIGNATURE


def open_input(path: str | os.PathLike[str], band_names: Sequence[str] | None = None,
               sentinel2: bool = False) -> InputCube:
    """Open anything the readers open (see the module docstring); ProductError otherwise.

    ``sentinel2``: read GeoTIFF/JP2 files as Sentinel-2 products (uint16, band names);
    ``band_names``: the Sentinel-2 bands to read, in order (default the reader's nine).
    """
    path = Path(path)
    if not path.exists():
        raise ProductError(path, "no such file or folder")
    if _is_hdf5(path):
        return open_tiles(path)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in S2_PRODUCT_SUFFIXES or (sentinel2 and
                                                          suffix in RASTER_SUFFIXES):
        return _open_sentinel2(path, band_names)
    return _open_cube(path)


def _open_cube(path: Path) -> InputCube:
    from parsers import pds3
    from parsers.cube import detect_format, open_cube

    fmt = detect_format(path)
    cube = open_cube(path, format=fmt)
    item = getattr(cube, "core_dtype", None) or getattr(cube, "stored_dtype", None)
    bits = 32 if item is None or item is pds3.VAX_F else 8 * np.dtype(item).itemsize
    wl = cube.wavelengths
    return InputCube(path, "cube", tuple(int(v) for v in cube.shape), np.dtype(np.float32),
                     bits, f"parsers.cube ({fmt})", str(cube.product_id), None if wl is None else
                     np.asarray(wl, np.float32), cube.wavelength_unit,
                     _read=lambda a, b: cube.read_lines(a, b), _close=cube.close)


def _open_sentinel2(path: Path, band_names: Sequence[str] | None) -> InputCube:
    from parsers import sentinel2
    from pipeline.products import S2_WAVELENGTH_NM

    bands = tuple(band_names) if band_names else sentinel2.DEFAULT_BANDS
    s = sentinel2.read(path, bands)
    data = s.data
    wl = None
    if all(b in S2_WAVELENGTH_NM for b in s.band_names):
        wl = np.array([S2_WAVELENGTH_NM[b] for b in s.band_names], np.float32)
    geo = None
    if s.crs is not None and s.transform is not None:
        geo = {"crs": s.crs.to_wkt(), "transform": [float(v) for v in list(s.transform)[:6]]}
    return InputCube(path, "cube", tuple(int(v) for v in data.shape), np.dtype(data.dtype),
                     8 * data.dtype.itemsize, "parsers.sentinel2", str(s.product_id), wl,
                     "nm" if wl is not None else None, list(s.band_names), sentinel2.NODATA,
                     geo, _read=lambda a, b: data[:, a:b])
