"""The one place that lists a data set's products and opens them through the readers.

``list_products(DIR, kind)`` reads ``DIR/manifest.json`` (:mod:`pipeline.manifest`: written by a
download stage or by :mod:`pipeline.register`) and groups its files by product id.
``open_product(kind, path)`` returns a :class:`Product`: a uniform, streaming view of one
product as a (bands, lines, samples) cube. The reader depends on the data set's kind
(:data:`KINDS`):

* VIRTIS (:func:`parsers.virtis.read`): float32 radiance, NaN where the label's special
  values were. Raw dark-current lines (``valid_lines`` False) are left out: the product's
  lines are its valid lines, in order (``line_numbers`` maps them back to the file).
* Sentinel-2 (:func:`parsers.sentinel2.read`): uint16 on the 10 m grid with a (lines,
  samples) validity mask: no data in any band, or (L2A, when an SCL is present) a scene
  class in :data:`parsers.sentinel2.SCL_REJECT` (no data, defective, cloud shadow, clouds,
  cirrus), so that the tiles stage drops cloudy tiles by its invalid-fraction threshold.
* cube (:func:`parsers.cube.open_cube`: any PDS3 QUBE, ENVI or GeoTIFF file): float32, NaN
  for no data; wavelengths in nm.

Two views narrow a product for every stage alike: the data set's band selection
(:func:`select_bands`: indices or a wavelength range) and a line window (a strip of a
product, when the split cuts products into strips).

Blocks are read with :meth:`Product.read_block` so that no stage needs a whole product in
memory at once (the VIRTIS reader reads line ranges; Sentinel-2 products are read window
by window).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from parsers.errors import ProductError, UserError
from pipeline.params import KINDS

# Preferred file to open when a product id has several files in the manifest.
_PREFERRED_SUFFIXES = {
    "virtis": (".qub", ".cal", ".lbl"),
    "sentinel2": (".zip", ".tif", ".tiff", ".jp2"),
    "cube": (".hdr", ".lbl", ".qub", ".cub", ".tif", ".tiff"),
}

# Sentinel-2A central wavelengths in nm (ESA spectral response functions, S2-SRF v3).
S2_WAVELENGTH_NM: dict[str, float] = {
    "B01": 442.7, "B02": 492.7, "B03": 559.8, "B04": 664.6, "B05": 704.1, "B06": 740.5,
    "B07": 782.8, "B08": 832.8, "B8A": 864.7, "B09": 945.1, "B10": 1373.5, "B11": 1613.7,
    "B12": 2202.4,
}


def check_kind(kind: str) -> str:
    """``kind`` if it names a reader of :data:`KINDS`, else a UserError."""
    if kind not in KINDS:
        raise UserError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True)
class ProductRef:
    """A product listed in a manifest: id, path (absolute) and the manifest metadata."""

    product_id: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _product_path(root: Path, kind: str, paths: Sequence[str]) -> Path:
    """The path the reader opens for a product made of the manifest files ``paths``."""
    if len(paths) == 1:
        return _join(root, paths[0])
    for suffix in _PREFERRED_SUFFIXES[kind]:
        hits = sorted(p for p in paths if p.lower().endswith(suffix))
        if len(hits) == 1:
            return _join(root, hits[0])
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
            return _join(root, *common[: i + 1])
    if not common:
        raise UserError(f"{root}: cannot tell which of {', '.join(paths[:3])} ... to open")
    return _join(root, *common)


def _join(root: Path, *parts: str) -> Path:
    # Registered files may lie outside the manifest's folder ("../cubes/a.hdr").
    return Path(os.path.normpath(root.joinpath(*parts)))


def list_products(
    products_dir: str | os.PathLike[str], kind: str,
    kinds: Sequence[str] | None = None, channels: Sequence[str] | None = None,
    name: str | None = None,
) -> list[ProductRef]:
    """Products listed in ``DIR/manifest.json``, sorted by product id; error if none.

    The manifest must be one of a download stage for ``kind`` or one written by
    :mod:`pipeline.register` for the data set ``name``. The files of a registered manifest
    lie outside DVC's view, so every one is checked against its size and sha256 first.
    ``kinds`` / ``channels``: keep only files whose manifest ``meta.kind`` /
    ``meta.channel`` is one of these (files without that metadata are kept).
    """
    from pipeline.manifest import MANIFEST_NAME, Manifest, check_files

    check_kind(kind)
    root = Path(products_dir)
    manifest = Manifest.read(root / MANIFEST_NAME)
    allowed = {kind} | ({name} if name else set())
    if manifest.source and manifest.source not in allowed:
        raise UserError(f"{root / MANIFEST_NAME}: manifest is for {manifest.source!r}, "
                        f"not {' or '.join(sorted(allowed))!r}")
    if manifest.registered:
        problems = check_files(manifest, root)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise UserError(f"{root / MANIFEST_NAME}: {'; '.join(problems[:3])}{more}; "
                            "the files changed since pipeline.register: register them again")
    return refs_from_manifest(manifest, root, kind, kinds, channels)


def refs_from_manifest(
    manifest: Any, root: Path, kind: str,
    kinds: Sequence[str] | None = None, channels: Sequence[str] | None = None,
) -> list[ProductRef]:
    """The products of a :class:`~pipeline.manifest.Manifest` whose paths are relative to
    ``root`` (see :func:`list_products` for the filters); error if none is left."""
    from pipeline.manifest import MANIFEST_NAME

    groups: dict[str, list[str]] = {}
    metas: dict[str, dict[str, Any]] = {}
    for entry in manifest.files:
        file_kind, channel = entry.meta.get("kind"), entry.meta.get("channel")
        if kinds and file_kind and file_kind not in kinds:
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
        path = _product_path(root, kind, sorted(groups[pid]))
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


class CubeProduct(Product):
    """Any cube :func:`parsers.cube.open_cube` reads (PDS3 QUBE, ENVI, GeoTIFF): float32
    (B, L, S), NaN for no data, wavelengths in nm."""

    def __init__(self, path: str | os.PathLike[str], options: Mapping[str, Any] | None = None
                 ) -> None:
        from parsers import cube as cubes

        fmt = cubes.detect_format(path)
        accepted = cubes.format_options(fmt)
        kwargs = {k: v for k, v in dict(options or {}).items() if k in accepted}
        cube = cubes.open_cube(path, format=fmt, **kwargs)
        self._cube = cube
        self.format = fmt
        self.path = Path(path)
        self.product_id = str(cube.product_id)
        self.bands, self.lines, self.samples = (int(v) for v in cube.shape)
        self.dtype = np.dtype(np.float32)
        self.line_numbers = np.arange(self.lines)
        self.wavelengths = cubes.wavelengths_nm(cube)
        self.wavelength_unit = None if self.wavelengths is None else "nm"
        names = getattr(cube, "band_names", None)
        self.band_names = list(names) if names and len(names) == self.bands else None
        files = [self.path, getattr(cube, "data_path", None)]
        if fmt == "envi":
            from parsers.envi import header_for

            files.append(header_for(files[1] or self.path))
        self.files = sorted({Path(f) for f in files if f is not None})

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if not 0 <= start < stop <= self.lines:
            raise IndexError(f"lines [{start}, {stop}) outside 0..{self.lines}")
        return np.asarray(self._cube.read_lines(start, stop), dtype=np.float32), None


class BandSubset(Product):
    """The bands ``indices`` (in that order) of another product."""

    def __init__(self, inner: Product, indices: Sequence[int]) -> None:
        self._inner = inner
        self._idx = np.asarray(indices, dtype=np.intp)
        self.product_id, self.lines, self.samples = inner.product_id, inner.lines, inner.samples
        self.dtype, self.line_numbers = inner.dtype, inner.line_numbers
        self.bands = int(self._idx.size)
        wl = inner.wavelengths
        self.wavelengths = None if wl is None else np.asarray(wl)[self._idx]
        self.wavelength_unit = inner.wavelength_unit
        names = inner.band_names
        self.band_names = None if names is None else [names[i] for i in self._idx]

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        data, valid = self._inner.read_block(start, stop)
        return np.take(data, self._idx, axis=0), valid


class LineWindow(Product):
    """Lines [first, stop) of another product (a strip of it), renumbered from 0."""

    def __init__(self, inner: Product, first: int, stop: int) -> None:
        if not 0 <= first < stop <= inner.lines:
            raise UserError(f"{inner.product_id}: lines [{first}, {stop}) outside the "
                            f"product's 0..{inner.lines}")
        self._inner, self._first = inner, first
        for name in ("product_id", "bands", "samples", "dtype", "wavelengths",
                     "wavelength_unit", "band_names"):
            setattr(self, name, getattr(inner, name))
        self.lines = stop - first
        self.line_numbers = inner.line_numbers[first:stop]

    def block_buffer(self, lines: int) -> np.ndarray | None:
        return self._inner.block_buffer(lines)

    def read_block(
        self, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if not 0 <= start < stop <= self.lines:
            raise IndexError(f"lines [{start}, {stop}) outside 0..{self.lines}")
        return self._inner.read_block(self._first + start, self._first + stop, out)


def select_bands(selection: Mapping[str, Any] | None, product: Product) -> list[int] | None:
    """Band indices the data set keeps of ``product`` (None: all of them).

    ``selection`` is params ``datasets.<name>.bands`` as a dict: ``indices`` (0-based, kept in
    that order) or ``wavelength_nm`` ``[lo, hi]`` (band centres in that closed range, nm)
    with ``exclude_nm`` ranges dropped (e.g. water vapour absorption).
    """
    if not selection or not any(selection.values()):
        return None
    n = product.bands
    if selection.get("indices"):
        bad = [i for i in selection["indices"] if not 0 <= i < n]
        if bad:
            raise UserError(f"{product.product_id}: band index {bad[0]} outside 0..{n - 1} "
                            f"(params bands.indices; the product has {n} bands)")
        return list(selection["indices"])
    if product.wavelengths is None:
        raise UserError(f"{product.product_id}: the reader gives no wavelengths, so a "
                        "wavelength range cannot select bands (use bands.indices)")
    from parsers.wavelengths import to_nanometres

    nm, _ = to_nanometres(np.asarray(product.wavelengths, np.float64), product.wavelength_unit)
    keep = np.isfinite(nm)
    if selection.get("wavelength_nm"):
        lo, hi = selection["wavelength_nm"]
        keep &= (nm >= lo) & (nm <= hi)
    for lo, hi in selection.get("exclude_nm") or []:
        keep &= ~((nm >= lo) & (nm <= hi))
    if not keep.any():
        raise UserError(f"{product.product_id}: no band lies in the selected wavelengths "
                        f"(bands span {np.nanmin(nm):.1f}-{np.nanmax(nm):.1f} nm)")
    return np.flatnonzero(keep).tolist()


#: Keys of the ``options`` dict that are not reader arguments.
_VIEW_OPTIONS = ("select",)


def open_product(
    kind: str, path: str | os.PathLike[str], options: Mapping[str, Any] | None = None,
    lines: Sequence[int] | None = None,
) -> Product:
    """Open one product of ``kind`` through its reader (ProductError on bad input).

    ``options``: from :func:`reader_options`: the reader's keyword arguments (Sentinel-2
    bands, resampling, ...; ENVI ``drop_bad_bands``) and ``select``, the data set's band
    selection (:func:`select_bands`). ``lines``: ``[first, stop)``, a strip of the product.
    """
    check_kind(kind)
    reader = {k: v for k, v in dict(options or {}).items() if k not in _VIEW_OPTIONS}
    if kind == "virtis":
        product: Product = VirtisProduct(path)
    elif kind == "sentinel2":
        product = Sentinel2Product(path, reader)
    else:
        product = CubeProduct(path, reader)
    indices = select_bands((options or {}).get("select"), product)
    if indices is not None:
        product = BandSubset(product, indices)
    if lines is not None:
        product = LineWindow(product, int(lines[0]), int(lines[1]))
    return product


def open_ref(kind: str, ref: ProductRef, options: Mapping[str, Any] | None = None) -> Product:
    """:func:`open_product` for a product of a split file (a strip when it names ``strip``)."""
    return open_product(kind, ref.path, options, ref.meta.get("strip"))


def product_files(product: Product) -> list[Path]:
    """The files a product opened by :func:`open_product` consists of (for hashing)."""
    inner: Any = product
    while hasattr(inner, "_inner"):
        inner = inner._inner
    files = getattr(inner, "files", None)
    if files is not None:
        return list(files)
    if isinstance(inner, VirtisProduct):
        return sorted({Path(inner._cube.path), Path(inner._cube.data_path)})
    path = Path(inner.path)
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def reader_options(dataset: str, params_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The options :func:`open_product` needs for data set ``dataset``: its reader settings
    (params ``datasets.<name>.reader``, checked by the kind's settings class) and its band
    selection."""
    from pipeline.params import load_dataset, to_dict

    ds = load_dataset(dataset, params_path)
    options = reader_settings(ds.kind, ds.reader, f"datasets.{dataset}.reader")
    selection = to_dict(ds.bands)
    if any(selection.values()):
        options["select"] = selection
    return options


@dataclass(frozen=True)
class VirtisSettings:
    """``datasets.<name>.reader`` of a virtis data set: the reader takes no settings."""


@dataclass(frozen=True)
class CubeSettings:
    """``datasets.<name>.reader`` of a cube data set.

    drop_bad_bands: ENVI only: leave out the bands the header's ``bbl`` marks bad.
    """

    drop_bad_bands: bool = False


def reader_settings(kind: str, section: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The reader keyword arguments of ``kind`` from a params section (strictly checked)."""
    from pipeline.params import from_dict

    check_kind(kind)
    if kind == "virtis":
        from_dict(VirtisSettings, section, where=where)
        return {}
    if kind == "cube":
        cube = from_dict(CubeSettings, section, where=where)
        return {"drop_bad_bands": True} if cube.drop_bad_bands else {}
    from parsers.sentinel2 import Sentinel2Settings

    s2 = from_dict(Sentinel2Settings, section, where=where)
    return {"bands": tuple(s2.bands), "resampling": s2.resampling, "harmonise": s2.harmonise}
