"""Cut the products of each split into tiles and write one HDF5 file per split.

Tiles are cut on a regular grid (``line0 = 0, stride, 2*stride, ...``, same for samples;
incomplete tiles at the right/bottom edge are not made), products in product-id order, so
the same inputs and parameters give the same tiles in the same order. Products are read a
tile row at a time (``size`` lines), so memory stays at a few tile rows whatever the
dataset size. A tile whose fraction of invalid values (NaN special values of VIRTIS,
``valid == False`` pixels of Sentinel-2, counted over bands x lines x samples) exceeds
``max_invalid_fraction`` is dropped; the counts are printed and stored in the attributes.

HDF5 layout (``OUT/train.h5``, ``OUT/test.h5``; written to a temporary name, renamed at the end):

* ``tiles`` (N, B, H, W): raw physical values (float32 VIRTIS radiance with NaN kept where
  the reader gave NaN; uint16 Sentinel-2), chunks (1, B, H, W), compressed (params
  ``compression``; Blosc2 needs ``import hdf5plugin`` in readers), fletcher32.
* ``index`` (N,) compound ``product_id`` (bytes), ``line0``, ``sample0``: where each tile
  comes from; ``line0`` is the line number in the product file (VIRTIS dark lines skipped).
* ``invalid_fraction`` (N,) float32.
* ``valid`` (N, H, W) bool, only when the reader gives a pixel mask (Sentinel-2).
* ``wavelength`` (B,) float32 when known (attribute ``unit``).
* attributes: ``source``, ``split``, ``stats`` (the stats.json content, JSON), ``params``
  (JSON), ``software_version``, ``tile_size``, ``stride``, ``tiles_kept``,
  ``tiles_dropped_invalid``, ``tiles_per_product`` (JSON), ``products`` (JSON), ``band_names``.

CLI: ``python -m pipeline.tiles --params params.yaml --source S --split data/split/S.json
--stats data/stats/S.json --out data/tiles/S``. Params sections ``tiles.virtis`` /
``tiles.sentinel2`` (:class:`VirtisTileParams` / :class:`Sentinel2TileParams`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from parsers.atomic import atomic_path
from parsers.errors import UserError, cli_entry
from pipeline.params import DEFAULT_PARAMS, SOURCES, load_section, to_dict
from pipeline.products import Product, ProductRef, open_product, reader_options

Compression = Literal["blosc2-zstd", "blosc2-lz4", "gzip", "lzf", "none"]


@dataclass(frozen=True)
class TileParams:
    """Settings of the tile stage (params section ``tiles.<source>``).

    size: tile height = width in pixels. stride: step between tiles (None = size, no overlap).
    max_invalid_fraction: drop tiles with more invalid values than this (0..1).
    compression: ``blosc2-zstd`` (default: Blosc2 zstd + bitshuffle, via hdf5plugin),
        ``blosc2-lz4``, ``gzip`` (portable, any HDF5 reader), ``lzf`` (h5py only), ``none``.
    compression_level: clevel for blosc2/gzip.
    """

    size: int = 64
    stride: int | None = None
    max_invalid_fraction: float = 0.05
    compression: Compression = "blosc2-zstd"
    compression_level: int = 5

    def __post_init__(self) -> None:
        if self.size < 1 or (self.stride is not None and self.stride < 1):
            raise ValueError("size and stride must be >= 1")
        if not 0.0 <= self.max_invalid_fraction <= 1.0:
            raise ValueError("max_invalid_fraction must lie in [0, 1]")

    @property
    def step(self) -> int:
        return self.stride or self.size


@dataclass(frozen=True)
class VirtisTileParams(TileParams):
    """``tiles.virtis``: 432 x 64 x 64 float32 tiles, stride 64 (the paper's cut)."""

    size: int = 64


@dataclass(frozen=True)
class Sentinel2TileParams(TileParams):
    """``tiles.sentinel2``: 9 x 48 x 48 uint16 tiles, stride 48 (the paper's cut)."""

    size: int = 48


PARAMS_CLASS: dict[str, type[TileParams]] = {
    "virtis": VirtisTileParams, "sentinel2": Sentinel2TileParams,
}


def compression_kwargs(name: str, level: int = 5) -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a compression name."""
    if name.startswith("blosc2"):
        import hdf5plugin

        cname = name.split("-", 1)[1]
        shuffle = hdf5plugin.Blosc2.BITSHUFFLE if cname == "zstd" else hdf5plugin.Blosc2.SHUFFLE
        return dict(hdf5plugin.Blosc2(cname=cname, clevel=level, filters=shuffle))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": level, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "none":
        return {}
    raise UserError(f"compression {name!r}: expected blosc2-zstd, blosc2-lz4, gzip, lzf or none")


@dataclass
class Tile:
    """One tile cut from a product (data (B, H, W); valid (H, W) or None)."""

    line0: int
    sample0: int
    data: np.ndarray
    valid: np.ndarray | None
    invalid_fraction: float


def invalid_fraction(data: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Fraction of invalid values per tile for tiles (N, B, H, W) and pixel masks (N, H, W)."""
    bad = ~np.isfinite(data) if data.dtype.kind == "f" else np.zeros(data.shape, dtype=bool)
    if valid is not None:
        bad |= ~valid[:, None, :, :]
    return bad.reshape(bad.shape[0], -1).mean(axis=1)


def cut_rows(
    data: np.ndarray, valid: np.ndarray | None, size: int, step: int
) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """Tiles of one tile row: data (B, size, S) -> (n, B, size, size), masks, sample offsets."""
    samples = data.shape[2]
    offsets = list(range(0, samples - size + 1, step))
    tiles = np.stack([data[:, :, s:s + size] for s in offsets]) if offsets else \
        np.empty((0, data.shape[0], size, size), data.dtype)
    masks = None
    if valid is not None:
        masks = np.stack([valid[:, s:s + size] for s in offsets]) if offsets else \
            np.empty((0, size, size), bool)
    return tiles, masks, offsets


def iter_tile_rows(
    product: Product, size: int, step: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None, list[int]]]:
    """Yield (line0 in product lines, tiles (n, B, H, W), masks, sample offsets) row by row."""
    for line0 in range(0, product.lines - size + 1, step):
        data, valid = product.read_block(line0, line0 + size)
        tiles, masks, offsets = cut_rows(data, valid, size, step)
        yield line0, tiles, masks, offsets


def tile_array(
    cube: np.ndarray, size: int, stride: int | None = None, valid: np.ndarray | None = None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All tiles of an in-memory cube (B, L, S) in row-major order, and their (line0, sample0)."""
    step = stride or size
    out, where = [], []
    for line0 in range(0, cube.shape[1] - size + 1, step):
        rows = None if valid is None else valid[line0:line0 + size]
        tiles, _, offsets = cut_rows(cube[:, line0:line0 + size], rows, size, step)
        out.append(tiles)
        where += [(line0, s) for s in offsets]
    if not out:
        return np.empty((0, cube.shape[0], size, size), cube.dtype), []
    return np.concatenate(out), where


def software_version() -> str:
    try:
        from importlib.metadata import version

        return version("sscnet-pipeline")
    except Exception:  # not installed: the source tree's version
        from parsers import __version__

        return __version__


class TileWriter:
    """Append tiles to a new HDF5 file; atomic (temp name, renamed when closed without error)."""

    def __init__(
        self, path: str | os.PathLike[str], *, bands: int, size: int, dtype: np.dtype,
        id_length: int, with_mask: bool, compression: str = "blosc2-zstd", level: int = 5,
    ) -> None:
        self.path = Path(path)
        self.bands, self.size, self.dtype = bands, size, np.dtype(dtype)
        self.id_dtype = np.dtype([("product_id", f"S{max(1, id_length)}"),
                                  ("line0", "<i4"), ("sample0", "<i4")])
        self.with_mask = with_mask
        self.compression = compression_kwargs(compression, level)
        self.n = 0
        self._ctx = None
        self.file = None

    def __enter__(self) -> TileWriter:
        import h5py

        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        try:
            # libver v110+: attributes larger than 64 KiB (432-band statistics as JSON).
            self.file = h5py.File(tmp, "w", libver=("v110", "latest"))
            b, s = self.bands, self.size
            self.tiles = self.file.create_dataset(
                "tiles", shape=(0, b, s, s), maxshape=(None, b, s, s), chunks=(1, b, s, s),
                dtype=self.dtype, fletcher32=True, **self.compression,
            )
            self.index = self.file.create_dataset(
                "index", shape=(0,), maxshape=(None,), chunks=(4096,), dtype=self.id_dtype,
            )
            self.invalid = self.file.create_dataset(
                "invalid_fraction", shape=(0,), maxshape=(None,), chunks=(4096,), dtype="f4",
            )
            self.valid = None
            if self.with_mask:
                self.valid = self.file.create_dataset(
                    "valid", shape=(0, s, s), maxshape=(None, s, s), chunks=(1, s, s),
                    dtype=bool, compression="gzip", compression_opts=1, fletcher32=True,
                )
        except BaseException as exc:
            self._abort(type(exc), exc, exc.__traceback__)
            raise
        return self

    def append(
        self, product_id: str, tiles: np.ndarray, where: Sequence[tuple[int, int]],
        invalid: np.ndarray, masks: np.ndarray | None = None,
    ) -> None:
        """Append tiles (k, B, H, W) with their (line0, sample0) and invalid fractions."""
        k = len(tiles)
        if k == 0:
            return
        if tiles.shape[1:] != (self.bands, self.size, self.size):
            raise UserError(
                f"{product_id}: tiles of shape {tiles.shape[1:]}, file holds "
                f"{(self.bands, self.size, self.size)} (products with different band counts?)"
            )
        a, b = self.n, self.n + k
        for ds in (self.tiles, self.index, self.invalid, self.valid):
            if ds is not None:
                ds.resize(b, axis=0)
        self.tiles[a:b] = tiles.astype(self.dtype, copy=False)
        rows = np.zeros(k, self.id_dtype)
        rows["product_id"] = product_id.encode()
        rows["line0"] = [w[0] for w in where]
        rows["sample0"] = [w[1] for w in where]
        self.index[a:b] = rows
        self.invalid[a:b] = invalid
        if self.valid is not None:
            self.valid[a:b] = masks if masks is not None else True
        self.n = b

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.file.close()
            self._ctx.__exit__(None, None, None)
            return False
        self._abort(exc_type, exc, tb)
        return False

    def _abort(self, exc_type, exc, tb) -> None:
        if self.file is not None:
            with contextlib.suppress(Exception):  # the original error matters, not this one
                self.file.close()
        self._ctx.__exit__(exc_type, exc, tb)


def write_split_tiles(
    out: str | os.PathLike[str],
    source: str,
    split: str,
    refs: Sequence[ProductRef],
    params: TileParams,
    stats: dict[str, Any],
    options: dict[str, Any] | None = None,
    progress: bool = True,
    extra_attrs: dict[str, Any] | None = None,
    opener: Callable[[ProductRef], Product] | None = None,
) -> dict[str, Any]:
    """Tile every product of ``refs`` into ``out`` (HDF5); return the counts.

    ``opener`` opens a product (default: the source's reader via :func:`open_product`).
    """
    if opener is None:
        def opener(ref: ProductRef) -> Product:
            return open_product(source, ref.path, options)

    from tqdm import tqdm

    refs = sorted(refs, key=lambda r: r.product_id)
    size, step = params.size, params.step
    n_bands = int(stats["bands"])
    dtype = np.dtype(stats.get("dtype") or ("float32" if source == "virtis" else "uint16"))
    id_len = max((len(r.product_id.encode()) for r in refs), default=1)
    per_product: dict[str, list[int]] = {}
    kept = dropped = 0
    bar = tqdm(refs, desc=f"tiles {source}/{split}", unit="product", disable=not progress)
    with TileWriter(
        out, bands=n_bands, size=size, dtype=dtype, id_length=id_len,
        with_mask=source == "sentinel2", compression=params.compression,
        level=params.compression_level,
    ) as writer:
        for ref in bar:
            product = opener(ref)
            if product.bands != n_bands:
                raise UserError(
                    f"{ref.path}: {product.bands} bands, the statistics have {n_bands}"
                )
            k_kept = k_drop = 0
            for line0, tiles, masks, offsets in iter_tile_rows(product, size, step):
                frac = invalid_fraction(tiles, masks)
                keep = frac <= params.max_invalid_fraction
                k_kept += int(keep.sum())
                k_drop += int((~keep).sum())
                line_no = int(product.line_numbers[line0])
                writer.append(
                    ref.product_id, tiles[keep],
                    [(line_no, s) for s, k in zip(offsets, keep, strict=True) if k],
                    frac[keep], None if masks is None else masks[keep],
                )
            per_product[ref.product_id] = [k_kept, k_drop]
            kept += k_kept
            dropped += k_drop
            bar.set_postfix(kept=kept, dropped=dropped)
        f = writer.file
        if stats.get("wavelength"):
            wl = f.create_dataset("wavelength", data=np.asarray(stats["wavelength"], np.float32))
            wl.attrs["unit"] = stats.get("wavelength_unit") or ""
        attrs = {
            "source": source, "split": split,
            "stats": json.dumps(stats, separators=(",", ":")),
            "params": json.dumps(to_dict(params)),
            "software_version": software_version(),
            "tile_size": size, "stride": step,
            "tiles_kept": kept, "tiles_dropped_invalid": dropped,
            "tiles_per_product": json.dumps(per_product),
            "products": json.dumps([r.product_id for r in refs]),
            "band_names": json.dumps(stats.get("band_names")),
            "nan_policy": "tiles hold raw values; NaN (VIRTIS) and valid==False (Sentinel-2) "
                          "mark invalid values; training.data.TileDataset sets them to 0 "
                          "after normalisation",
        }
        attrs.update(extra_attrs or {})
        for key, value in attrs.items():
            f.attrs[key] = value
    bar.close()
    return {"kept": kept, "dropped_invalid": dropped, "products": len(refs)}


@cli_entry("python -m pipeline.tiles")
def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.split import SPLITS, read_split
    from pipeline.stats import read_stats

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tiles", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file")
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--split", required=True, help="split file from pipeline.split")
    parser.add_argument("--stats", required=True, help="stats.json from pipeline.stats")
    parser.add_argument("--out", required=True, help="folder for train.h5 and test.h5")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    params = load_section(PARAMS_CLASS[args.source], f"tiles.{args.source}", args.params)
    options = reader_options(args.source, args.params)
    split = read_split(args.split, args.source)
    stats = read_stats(args.stats)
    if stats["source"] != args.source:
        raise UserError(f"{args.stats}: statistics of {stats['source']!r}, not {args.source!r}")
    out = Path(args.out)
    for name in SPLITS:
        t0 = time.perf_counter()
        counts = write_split_tiles(
            out / f"{name}.h5", args.source, name, split.products(name), params, stats,
            options, progress=not args.no_progress,
        )
        print(
            f"{out / (name + '.h5')}: {counts['kept']} tiles from {counts['products']} products, "
            f"{counts['dropped_invalid']} dropped (invalid > {params.max_invalid_fraction}), "
            f"{time.perf_counter() - t0:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
