"""A (bands, lines, samples) cube read lazily through rasterio/GDAL (ENVI, GeoTIFF, COG).

:class:`RasterCube` has the reading API of :class:`parsers.pds3.Cube` (``bands``, ``lines``,
``samples``, ``lines_available``, ``load()``, ``window()``, ``read_lines()``, ``band()``,
``spectrum()``, ``wavelengths``, ``wavelength_unit``, ``product_id``), so the pipeline, the
statistics and the tiles treat both alike. GDAL decodes the bytes (interleave, byte order,
header offset, compression); this module only turns what it returns into float32 with NaN
for no-data. The format modules (:mod:`parsers.envi`, :mod:`parsers.geotiff`) map the
header or tags onto the cube's metadata. Wavelengths and FWHM are in nanometres.

Values: ``stored * scale + offset`` per band (GDAL's scale/offset: ENVI ``data gain values``
/ ``data offset values``, GeoTIFF scale/offset tags), NaN where the stored value equals the
band's no-data value (ENVI ``data ignore value``, GeoTIFF nodata).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parsers.cube_access import CubeAccess
from parsers.errors import ProductError, UserError, one_line

_CHUNK_BYTES = 32 << 20
_INTERLEAVE = {"BAND": "BSQ", "LINE": "BIL", "PIXEL": "BIP"}


def gdal_message(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """GDAL's complaint on one line, without the (long) file path.

    Not :func:`parsers.errors.reason`: GDAL errors carry ``(code, errno, message)`` in
    ``args``, and rasterio chains the one that says what went wrong as ``__cause__``.
    """
    while "previous exception" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = one_line(exc, 10**6) or type(exc).__name__
    if path is not None:
        text = text.replace(f"'{os.fspath(path)}'", "<file>").replace(os.fspath(path), "<file>")
    return one_line(text, 160)


def open_dataset(data_path: Path, label: Path) -> Any:
    """``rasterio.open`` with any failure turned into a one-line ProductError naming ``label``."""
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioError
    except ImportError:
        raise UserError(f"{label.name}: reading ENVI and GeoTIFF cubes needs rasterio "
                        "(pip install 'sscnet-pipeline[cube]')") from None

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(data_path)
    except (RasterioError, OSError) as exc:
        raise ProductError(label, f"not readable by GDAL ({gdal_message(exc, data_path)})"
                           ) from None


@dataclass
class RasterCube(CubeAccess):
    """A raster opened lazily through rasterio; see the module docstring.

    ``band_index``: the 1-based GDAL band numbers that make up the cube, in order (all
    bands, or those an ENVI ``bbl`` keeps). Per-band arrays (``nodata``, ``scale``,
    ``offset``, ``wavelengths``, ``fwhm``, ``bad_bands``) follow the cube's bands.
    """

    path: Path
    data_path: Path
    format: str
    product_id: str
    band_index: tuple[int, ...]
    lines: int
    samples: int
    stored_dtype: np.dtype
    interleave: str
    byte_order: str
    nodata: np.ndarray  # float64 (B,), NaN = no no-data value for that band
    scale: np.ndarray  # float64 (B,)
    offset: np.ndarray  # float64 (B,)
    wavelengths: np.ndarray | None = None  # float32 (B,) nm
    fwhm: np.ndarray | None = None  # float32 (B,) nm
    band_names: list[str] | None = None
    bad_bands: np.ndarray | None = None  # bool (B,), True where ENVI bbl marks a bad band
    crs: str | None = None  # WKT
    transform: tuple[float, ...] | None = None  # affine (a, b, c, d, e, f) pixel -> map
    map_info: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _ds: Any = field(default=None, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)

    # ---- identity and shape
    @property
    def bands(self) -> int:
        return len(self.band_index)

    @property
    def lines_available(self) -> int:
        return self.lines

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, lines, samples)."""
        return (self.bands, self.lines, self.samples)

    @property
    def wavelength_unit(self) -> str | None:
        """Always "nm" when there are wavelengths."""
        return "nm" if self.wavelengths is not None else None

    # ---- reading
    def _dataset(self) -> Any:
        if self._ds is None:
            self._ds = open_dataset(self.data_path, self.path)
        return self._ds

    def _read(self, indexes: list[int], row: int, nrows: int, col: int, ncols: int
              ) -> np.ndarray:
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        with self._lock:
            try:
                return self._dataset().read(indexes, window=Window(col, row, ncols, nrows))
            except (RasterioError, OSError) as exc:
                raise ProductError(self.path, f"cannot read lines {row}..{row + nrows - 1} "
                                              f"({gdal_message(exc, self.data_path)})") from None

    def _convert(self, raw: np.ndarray, bands: np.ndarray) -> np.ndarray:
        """Stored ``(b, l, s)`` -> float32, scaled, NaN where equal to the band's no-data."""
        out = raw.astype(np.float32)
        for j, b in enumerate(bands):
            nd = self.nodata[b]
            mask = (raw[j] == raw.dtype.type(nd)) if np.isfinite(nd) and _fits(nd, raw.dtype) \
                else None
            if self.scale[b] != 1.0:
                out[j] *= np.float32(self.scale[b])
            if self.offset[b] != 0.0:
                out[j] += np.float32(self.offset[b])
            if mask is not None:
                out[j][mask] = np.nan
        return out

    def window(self, lines: slice, samples: slice, bands: slice | None = None) -> np.ndarray:
        """float32 ``(b, l, s)`` for the given slices (reads only those lines and samples)."""
        bands = bands if bands is not None else slice(None)
        if not all(isinstance(x, slice) for x in (lines, samples, bands)):
            raise TypeError("window() takes slices")
        l0, l1, ls = lines.indices(self.lines)
        s0, s1, ss = samples.indices(self.samples)
        sel = np.arange(self.bands)[bands]
        if l1 <= l0 or s1 <= s0 or sel.size == 0:
            n_l = len(range(l0, l1, ls))
            n_s = len(range(s0, s1, ss))
            return np.empty((sel.size, n_l, n_s), dtype=np.float32)
        indexes = [self.band_index[i] for i in sel]
        raw = self._read(indexes, l0, l1 - l0, s0, s1 - s0)[:, ::ls, ::ss]
        return self._convert(raw, sel)

    def read_lines(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """float32 ``(B, stop - start, S)``: streaming access by lines.

        ``out`` is accepted for API parity with :meth:`parsers.pds3.Cube.read_lines` and
        ignored (GDAL allocates the block).
        """
        if not 0 <= start <= stop <= self.lines:
            raise IndexError(f"lines {start}:{stop} outside 0..{self.lines}")
        return self.window(slice(start, stop), slice(None))

    def load(self, contiguous: bool = True) -> np.ndarray:
        """The whole cube as float32 ``(B, L, S)`` (C-contiguous), read in blocks of lines.

        ``contiguous`` is accepted for API parity with :meth:`parsers.pds3.Cube.load`; the
        result is always C-contiguous.
        """
        out = np.empty(self.shape, dtype=np.float32)
        per_line = max(1, self.bands * self.samples * self.stored_dtype.itemsize)
        step = max(1, _CHUNK_BYTES // per_line)
        for a in range(0, self.lines, step):
            b = min(self.lines, a + step)
            out[:, a:b] = self.window(slice(a, b), slice(None))
        return out

    # ---- lifetime
    def close(self) -> None:
        with self._lock:
            if self._ds is not None:
                with contextlib.suppress(Exception):
                    self._ds.close()
                self._ds = None

    def __enter__(self) -> RasterCube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ds"] = None  # a GDAL handle cannot travel to another process
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _fits(value: float, dtype: np.dtype) -> bool:
    """True when ``value`` is exactly representable in ``dtype`` (else it can never match)."""
    if dtype.kind == "f":
        return True
    if float(value) != int(value):
        return False
    info = np.iinfo(dtype)
    return info.min <= int(value) <= info.max


def interleave_of(ds: Any) -> str:
    """"BSQ", "BIL" or "BIP" as GDAL reports the storage order (BSQ when it does not say)."""
    structure = ds.tags(ns="IMAGE_STRUCTURE")
    return _INTERLEAVE.get(str(structure.get("INTERLEAVE", "")).upper(), "BSQ")


def per_band(values: Any, count: int, default: float) -> np.ndarray:
    """A float64 (count,) array from GDAL's per-band tuple (None entries -> ``default``)."""
    seq = list(values) if values is not None else []
    out = np.full(count, default, dtype=np.float64)
    for i, v in enumerate(seq[:count]):
        if v is not None:
            out[i] = float(v)
    return out
