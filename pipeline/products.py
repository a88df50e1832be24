"""The one place that lists downloaded products and opens them through the readers.

``list_products(DIR)`` reads ``DIR/manifest.json`` (:mod:`pipeline.manifest`) and groups its
files by product id. ``open_product(source, path)`` returns a :class:`Product`: a uniform,
streaming view of one product as a (bands, lines, samples) cube:

* VIRTIS (:func:`parsers.virtis.read`): float32 radiance, NaN where the label's special
  values were. Raw dark-current lines (``valid_lines`` False) are left out: the product's
  lines are its valid lines, in order (``line_numbers`` maps them back to the file).
* Sentinel-2 (:func:`parsers.sentinel2.read`): uint16 on the 10 m grid with a (lines,
  samples) validity mask: no data in any band, or (L2A, when an SCL is present) a scene
  class in :data:`parsers.sentinel2.SCL_REJECT` (no data, defective, cloud shadow, clouds,
  cirrus), so that the tiles stage drops cloudy tiles by its invalid-fraction threshold.

Blocks are read with :meth:`Product.read_block` so that no stage needs a whole product in
memory at once (the VIRTIS reader reads line ranges; Sentinel-2 products are read window
by window).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from parsers.errors import ProductError, UserError
from pipeline.params import SOURCES

Source = Literal["virtis", "sentinel2"]

# Preferred file to open when a product id has several files in the manifest.
_PREFERRED_SUFFIXES = {
    "virtis": (".qub", ".cal", ".lbl"),
    "sentinel2": (".zip", ".tif", ".tiff", ".jp2"),
}

# Sentinel-2A central wavelengths in nm (ESA spectral response functions, S2-SRF v3).
S2_WAVELENGTH_NM: dict[str, float] = {
    "B01": 442.7, "B02": 492.7, "B03": 559.8, "B04": 664.6, "B05": 704.1, "B06": 740.5,
    "B07": 782.8, "B08": 832.8, "B8A": 864.7, "B09": 945.1, "B10": 1373.5, "B11": 1613.7,
    "B12": 2202.4,
}


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise UserError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    return source


@dataclass(frozen=True)
class ProductRef:
    """A product listed in a manifest: id, path (absolute) and the manifest metadata."""

    product_id: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _product_path(root: Path, source: str, paths: Sequence[str]) -> Path:
    """The path the reader opens for a product made of the manifest files ``paths``."""
    if len(paths) == 1:
        return root / paths[0]
    for suffix in _PREFERRED_SUFFIXES[source]:
        hits = sorted(p for p in paths if p.lower().endswith(suffix))
        if len(hits) == 1:
            return root / hits[0]
    # A product made of many files (SAFE folder, band folder): their deepest common folder,
    # or the .SAFE folder above it.
    parts = [PurePosixPath(p).parent.parts for p in paths]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    for i, part in enumerate(common):
        if part.upper().endswith(".SAFE"):
            return root.joinpath(*common[: i + 1])
    if not common:
        raise UserError(f"{root}: cannot tell which of {', '.join(paths[:3])} ... to open")
    return root.joinpath(*common)


def list_products(
    products_dir: str | os.PathLike[str], source: str,
    kinds: Sequence[str] | None = None, channels: Sequence[str] | None = None,
) -> list[ProductRef]:
    """Products listed in ``DIR/manifest.json``, sorted by product id; error if none.

    ``kinds`` / ``channels``: keep only files whose manifest ``meta.kind`` / ``meta.channel``
    is one of these (files without that metadata are kept); None or empty = no filter.
    """
    from pipeline.manifest import MANIFEST_NAME, Manifest

    check_source(source)
    root = Path(products_dir)
    manifest = Manifest.read(root / MANIFEST_NAME)
    if manifest.source and manifest.source != source:
        raise UserError(
            f"{root / MANIFEST_NAME}: manifest is for source {manifest.source!r}, not {source!r}"
        )
    groups: dict[str, list[str]] = {}
    metas: dict[str, dict[str, Any]] = {}
    for entry in manifest.files:
        kind, channel = entry.meta.get("kind"), entry.meta.get("channel")
        if kinds and kind and kind not in kinds:
            continue
        if channels and channel and channel not in channels:
            continue
        groups.setdefault(entry.product_id, []).append(entry.path)
        metas.setdefault(entry.product_id, {}).update(entry.meta)
    if not groups:
        what = f" of kind {list(kinds)}" if kinds else ""
        what += f" of channel {list(channels)}" if channels else ""
        raise UserError(f"{root / MANIFEST_NAME}: lists no products{what}")
    refs = []
    for pid in sorted(groups):
        path = _product_path(root, source, sorted(groups[pid]))
        if not path.exists():
            raise ProductError(path, f"listed in {root / MANIFEST_NAME} but missing")
        refs.append(ProductRef(pid, Path(os.path.abspath(path)), metas[pid]))
    return refs


class Product:
    """A streaming (bands, lines, samples) view of one product; see the module docstring."""

    product_id: str
    bands: int
    lines: int
    samples: int
    dtype: np.dtype
    wavelengths: np.ndarray | None
    wavelength_unit: str | None
    band_names: list[str] | None
    #: Original line number in the file of every product line (VIRTIS drops dark lines).
    line_numbers: np.ndarray
    #: Blocks of fewer lines cost more per line to read (e.g. JPEG 2000 tiles).
    preferred_lines: int = 1

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Lines [start, stop) as (data (B, n, S), valid (n, S) bool or None = all valid).

        ``out``: a buffer returned by :meth:`block_buffer` that the reader may fill instead
        of allocating (readers that cannot use it ignore it).
        """
        raise NotImplementedError

    def block_buffer(self, lines: int) -> np.ndarray | None:
        """A reusable buffer for blocks of ``lines`` lines, or None (reader allocates)."""
        return None

    def iter_blocks(self, lines_per_block: int, start: int = 0, stop: int | None = None,
                    reuse: bool = False):
        """Yield (line0, data, valid) over lines [start, stop) in blocks of at most n lines.

        ``reuse=True``: every block is read into the same buffer, so a block is valid only
        until the next one is yielded (no page faults on fresh memory per block).
        """
        stop = self.lines if stop is None else min(stop, self.lines)
        n = max(1, lines_per_block, self.preferred_lines)
        buf = self.block_buffer(min(n, max(stop - start, 0))) if reuse else None
        for a in range(start, stop, n):
            b = min(stop, a + n)
            data, valid = self.read_block(a, b, buf if b - a == n else None)
            yield a, data, valid

    def lines_for_bytes(self, nbytes: float) -> int:
        """How many lines make a block of about ``nbytes`` bytes (at least 1)."""
        per_line = self.bands * self.samples * np.dtype(self.dtype).itemsize
        return max(1, int(nbytes // max(per_line, 1)))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.bands, self.lines, self.samples)


class ArrayProduct(Product):
    """An in-memory product (B, L, S) with an optional (L, S) pixel mask (tests, benchmarks)."""

    def __init__(
        self, product_id: str, data: np.ndarray, valid: np.ndarray | None = None,
        wavelengths: np.ndarray | None = None, wavelength_unit: str | None = None,
    ) -> None:
        self.product_id = product_id
        self._data, self._valid = data, valid
        self.bands, self.lines, self.samples = (int(v) for v in data.shape)
        self.dtype = np.dtype(data.dtype)
        self.wavelengths, self.wavelength_unit = wavelengths, wavelength_unit
        self.band_names = None
        self.line_numbers = np.arange(self.lines)

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        valid = None if self._valid is None else self._valid[start:stop]
        return self._data[:, start:stop], valid


class VirtisProduct(Product):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        from parsers import virtis

        cube = virtis.read(path)
        self._cube = cube
        self.path = Path(path)
        self.product_id = str(cube.product_id)
        self.bands, _, self.samples = (int(v) for v in cube.shape)
        valid = np.asarray(cube.valid_lines, dtype=bool)
        self.line_numbers = np.flatnonzero(valid)
        self.lines = int(self.line_numbers.size)
        self._contiguous = bool(valid.all())
        self.dtype = np.dtype(np.float32)
        wl = cube.wavelengths
        self.wavelengths = None if wl is None else np.asarray(wl, dtype=np.float32)
        self.wavelength_unit = getattr(cube, "wavelength_unit", None)
        self.band_names = None
        self.channel = getattr(cube, "channel", None)
        self.processing_level = getattr(cube, "processing_level", None)

    def block_buffer(self, lines: int) -> np.ndarray | None:
        return np.empty((lines, *self._cube.line_shape), np.float32) if self._contiguous \
            else None

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, n, S) float32, a view of a buffer in file order (BIP: pixel-major)."""
        if not 0 <= start < stop <= self.lines:
            raise IndexError(f"lines [{start}, {stop}) outside 0..{self.lines}")
        if self._contiguous:
            return self._cube.read_lines(start, stop, out=out), None
        rows = self.line_numbers[start:stop]
        data = self._cube.read_lines(int(rows[0]), int(rows[-1]) + 1)
        if data.shape[1] != rows.size:
            data = data[:, rows - rows[0], :]
        return data, None


class Sentinel2Product(Product):
    """A Sentinel-2 product read window by window: opening reads the metadata and a 1-pixel
    window; every block is a window read of the band rasters (never the whole product)."""

    #: Lines per read that keep the JPEG 2000 decoding efficient (ESA's 10 m tiles are
    #: 1024 px high), about 200 MB for 9 bands of 10980 px.
    preferred_lines = 1024

    def __init__(self, path: str | os.PathLike[str], options: Mapping[str, Any] | None = None
                 ) -> None:
        from parsers import sentinel2

        self.path = Path(path)
        self._options = dict(options or {})
        s = sentinel2.read(path, window=(0, 0, 1, 1), **self._options)
        self.product_id = str(s.product_id)
        self.bands = int(s.data.shape[0])
        self.lines, self.samples = (int(v) for v in s.grid_shape)
        self.dtype = np.dtype(s.data.dtype)
        self.line_numbers = np.arange(self.lines)
        self.band_names = list(getattr(s, "band_names", None) or []) or None
        if self.band_names and all(b in S2_WAVELENGTH_NM for b in self.band_names):
            self.wavelengths = np.array(
                [S2_WAVELENGTH_NM[b] for b in self.band_names], dtype=np.float32
            )
            self.wavelength_unit = "nm"
        else:
            self.wavelengths, self.wavelength_unit = None, None

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        from parsers import sentinel2

        if not 0 <= start < stop <= self.lines:
            raise IndexError(f"lines [{start}, {stop}) outside 0..{self.lines}")
        s = sentinel2.read(self.path, window=(start, 0, stop - start, self.samples),
                           **self._options)
        return s.data, np.asarray(s.usable(), dtype=bool)


def open_product(
    source: str, path: str | os.PathLike[str], options: Mapping[str, Any] | None = None
) -> Product:
    """Open one product of ``source`` through its reader (ProductError on bad input).

    ``options``: reader keyword arguments (see :func:`reader_options`); none for VIRTIS.
    """
    check_source(source)
    if source == "virtis":
        return VirtisProduct(path)
    return Sentinel2Product(path, options)


def reader_options(source: str, params_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reader settings from params: Sentinel-2 section ``sentinel2`` (bands, resampling,
    harmonise, as defined by :class:`parsers.sentinel2.Sentinel2Settings`); {} for VIRTIS."""
    check_source(source)
    if source == "virtis":
        return {}
    from parsers.sentinel2 import Sentinel2Settings
    from pipeline.params import load_section

    settings = load_section(Sentinel2Settings, "sentinel2", params_path)
    return {"bands": tuple(settings.bands), "resampling": settings.resampling,
            "harmonise": settings.harmonise}
