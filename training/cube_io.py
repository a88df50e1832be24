"""What the codec reads and writes, tile row by tile row: the input cube, its tile grid,
the output arrays.

An :class:`InputCube` is a (bands, lines, samples) cube read in blocks of lines, or a tile
file (N, B, H, W) read in blocks of tiles (:func:`open_tiles`; every other input is opened
by :func:`training.inputs.open_input`). The invalid mask is exact: NaN or infinite for float
cubes, the no-data value 0 for integer cubes (per value, so a pixel that is 0 in one band
only keeps its other bands).

Outputs (:func:`open_output`): ``.npy`` (a memory-mapped array written window by window),
``.h5`` (dataset ``cube`` or ``tiles``, wavelengths and band names as attributes) and
``.tif`` (GeoTIFF, cubes only), all written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parsers.atomic import atomic_path
from parsers.errors import ProductError, UserError


@dataclass
class InputCube:
    """A cube or tile file opened for compression.

    ``kind``: ``"cube"`` (shape (B, L, S)) or ``"tiles"`` (shape (N, B, H, W)).
    ``read(start, stop)``: lines [start, stop) of a cube as (B, n, S), or tiles [start,
    stop) as (n, B, H, W), in ``dtype``; ``invalid(block)`` the matching bool mask.
    """

    path: Path
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    native_bits: int
    reader: str
    product_id: str
    wavelengths: np.ndarray | None = None
    wavelength_unit: str | None = None
    band_names: list[str] | None = None
    fill: int | None = None  # value of invalid samples in integer outputs
    geo: dict[str, Any] | None = None  # {"crs": WKT, "transform": 6 floats} (georeferenced)
    _read: Any = field(default=None, repr=False)
    _close: Any = field(default=None, repr=False)

    @property
    def bands(self) -> int:
        return self.shape[0] if self.kind == "cube" else self.shape[1]

    @property
    def values(self) -> int:
        return int(np.prod(self.shape))

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._read(start, stop)

    def invalid(self, block: np.ndarray) -> np.ndarray:
        if block.dtype.kind == "f":
            return ~np.isfinite(block)
        return block == (self.fill if self.fill is not None else 0)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def open_tiles(path: Path) -> InputCube:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc2 filter)

    f = h5py.File(path, "r")
    if "tiles" not in f or f["tiles"].ndim != 4:
        f.close()
        raise ProductError(path, "HDF5 file without a 'tiles' (N, B, H, W) dataset")
    tiles = f["tiles"]
    dtype = np.dtype(tiles.dtype)
    wl = f["wavelength"][()].astype(np.float32) if "wavelength" in f else None
    unit = f["wavelength"].attrs.get("unit") if wl is not None else None
    names = f.attrs.get("band_names")

    # Values are compressed as stored: the file's 'valid' mask (clouds, for Sentinel-2)
    # marks real values that training ignores, not missing ones; only no-data is invalid.
    return InputCube(path, "tiles", tuple(int(v) for v in tiles.shape), dtype,
                     8 * dtype.itemsize, "tiles", path.stem, wl,
                     unit.decode() if isinstance(unit, bytes) else unit,
                     _names(names), 0 if dtype.kind != "f" else None,
                     _read=lambda a, b: tiles[a:b], _close=f.close)


def _names(value: Any) -> list[str] | None:
    import json

    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    return [str(v) for v in value] if isinstance(value, list) else None


# --------------------------------------------------------------------------- tile grid
@dataclass(frozen=True)
class Grid:
    """The tile grid of an input: ``rows`` x ``cols`` tiles of ``tile`` px over a cube (tile
    (r, c) has index ``r * cols + c``), or ``count`` tiles of a tile file (rows = count,
    cols = 1). Edge tiles of a cube are cut to the cube (``region``)."""

    kind: str
    shape: tuple[int, ...]
    tile: int

    @property
    def rows(self) -> int:
        return self.shape[0] if self.kind == "tiles" else -(-self.shape[1] // self.tile)

    @property
    def cols(self) -> int:
        return 1 if self.kind == "tiles" else -(-self.shape[2] // self.tile)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def bands(self) -> int:
        return self.shape[1] if self.kind == "tiles" else self.shape[0]

    def region(self, index: int) -> tuple[slice, slice]:
        """(lines, samples) of tile ``index`` inside its cube (or tile)."""
        if self.kind == "tiles":
            return slice(0, self.shape[2]), slice(0, self.shape[3])
        r, c = divmod(index, self.cols)
        t = self.tile
        return (slice(r * t, min((r + 1) * t, self.shape[1])),
                slice(c * t, min((c + 1) * t, self.shape[2])))

    def region_shape(self, index: int) -> tuple[int, int, int]:
        lines, samples = self.region(index)
        return (self.bands, lines.stop - lines.start, samples.stop - samples.start)


def iter_tile_rows(cube: InputCube, grid: Grid, tiles_per_read: int = 64
                   ) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Yield (first tile index, tiles (B, h, w) in native dtype): one tile row of a cube at a
    time, or up to ``tiles_per_read`` tiles of a tile file."""
    if grid.kind == "tiles":
        for a in range(0, grid.count, tiles_per_read):
            block = cube.read(a, min(grid.count, a + tiles_per_read))
            yield a, list(block)
        return
    for r in range(grid.rows):
        lines = grid.region(r * grid.cols)[0]
        block = cube.read(lines.start, lines.stop)
        yield r * grid.cols, [block[:, :, grid.region(r * grid.cols + c)[1]]
                              for c in range(grid.cols)]


# --------------------------------------------------------------------------- outputs
OUTPUT_SUFFIXES = (".npy", ".h5", ".tif", ".tiff")


class OutputArray:
    """A destination array written window by window (``write(index_tuple, values)``)."""

    def __init__(self, target: Any, close: Any = None) -> None:
        self._target, self._close = target, close

    def write(self, where: tuple[Any, ...], values: np.ndarray) -> None:
        self._target(where, values)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def check_output(path: Path, kind: str) -> None:
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"{path}: output must end in .npy, .h5 or .tif")
    if suffix in (".tif", ".tiff") and kind != "cube":
        raise UserError(f"{path}: a tile file decompresses to .npy or .h5, not GeoTIFF")


@contextlib.contextmanager
def open_output(path: str | os.PathLike[str], kind: str, shape: tuple[int, ...],
                dtype: np.dtype, meta: dict[str, Any]) -> Iterator[OutputArray]:
    """An output array of ``shape``/``dtype`` at ``path`` (atomic: renamed on success)."""
    path = Path(path)
    check_output(path, kind)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)

            def put(where: tuple[Any, ...], v: np.ndarray) -> None:
                arr[where] = v

            out = OutputArray(put, lambda: arr.flush())
        elif suffix == ".h5":
            out = _h5_output(tmp, kind, shape, dtype, meta)
        else:
            out = _tif_output(tmp, shape, dtype, meta)
        try:
            yield out
        finally:
            out.close()


def _h5_output(tmp: Path, kind: str, shape: tuple[int, ...], dtype: np.dtype,
               meta: dict[str, Any]) -> OutputArray:
    import h5py

    f = h5py.File(tmp, "w")
    chunks = (1, *shape[1:]) if kind == "tiles" else (shape[0], min(64, shape[1]),
                                                      min(64, shape[2]))
    ds = f.create_dataset(kind if kind == "tiles" else "cube", shape=shape, dtype=dtype,
                          chunks=chunks)
    if meta.get("wavelengths") is not None:
        wl = f.create_dataset("wavelength", data=np.asarray(meta["wavelengths"], np.float32))
        wl.attrs["unit"] = meta.get("wavelength_unit") or ""
    for key in ("product_id", "model_id", "source_reader"):
        if meta.get(key):
            f.attrs[key] = str(meta[key])
    if meta.get("band_names"):
        f.attrs["band_names"] = [str(b) for b in meta["band_names"]]

    def put(where: tuple[Any, ...], v: np.ndarray) -> None:
        ds[where] = v

    return OutputArray(put, f.close)


def _tif_output(tmp: Path, shape: tuple[int, ...], dtype: np.dtype, meta: dict[str, Any]
                ) -> OutputArray:
    import rasterio
    from rasterio.windows import Window

    bands, lines, samples = shape
    geo = meta.get("geo") or {}
    extra: dict[str, Any] = {}
    if geo:
        from affine import Affine

        extra = {"crs": rasterio.crs.CRS.from_wkt(geo["crs"]),
                 "transform": Affine(*geo["transform"])}
    if np.dtype(dtype).kind != "f" and meta.get("fill") is not None:
        extra["nodata"] = meta["fill"]
    dst = rasterio.open(tmp, "w", driver="GTiff", width=samples, height=lines, count=bands,
                        dtype=np.dtype(dtype).name, compress="deflate", tiled=True, **extra)
    for i, name in enumerate(meta.get("band_names") or [], start=1):
        dst.set_band_description(i, str(name))

    def put(where: tuple[Any, ...], v: np.ndarray) -> None:
        _, ls, ss = where
        dst.write(v, window=Window(ss.start, ls.start, ss.stop - ss.start, ls.stop - ls.start))

    def close() -> None:
        dst.close()
        for aux in tmp.parent.glob(tmp.name + ".aux.xml"):
            aux.unlink()

    return OutputArray(put, close)
