"""Cut the products of each split into tiles and write one HDF5 file per split.

Tiles are cut on a regular grid (``line0 = 0, stride, 2*stride, ...``, same for samples;
incomplete tiles at the right/bottom edge are not made), products in product-id order, so
the same inputs and parameters give the same tiles in the same order. A tile whose fraction
of invalid values (NaN special values of VIRTIS, ``valid == False`` pixels of Sentinel-2,
counted over bands x lines x samples) exceeds ``max_invalid_fraction`` is dropped; the counts
are printed and stored in the attributes.

Parallel and byte-identical: the work is split into tasks of whole tile rows of one product
(about ``task_mb`` MB of tiles each). A task, run by a dask worker (``scheduler``: threads,
processes, or ``tcp://host:port``, see :mod:`pipeline.schedulers`), reads its tile rows a
row at a time, filters the tiles and makes the stored chunk bytes of the final file: for
Blosc2 (the default) outside HDF5 with the very filter function HDF5 would call
(:mod:`pipeline.tile_chunks`, so threads compress in parallel), for other codecs through an
in-memory HDF5 file with the same dataset settings. The writer appends the stored chunk
bytes of the tasks in task order with direct chunk writes. Which worker compressed a chunk
never shows in the file, so the file is byte-identical whatever the scheduler and the worker
count. At most twice the worker count tasks are in flight, so memory stays bounded whatever
the dataset size.

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

CLI: ``python -m pipeline.tiles --params params.yaml --dataset NAME --split
data/split/NAME.json --stats data/stats/NAME.json --out data/tiles/NAME``. Params ``tiles`` +
``datasets.<name>.tiles`` (:class:`TileParams`); the data set's band selection and reader
settings (``datasets.<name>.bands`` / ``.reader``) decide what each product gives.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from parsers.atomic import GuardedFile, atomic_path
from parsers.errors import UserError, cli_entry
from parsers.locks import lock_output
from pipeline.params import stage_parser, stage_settings, to_dict
from pipeline.products import Product, ProductRef, open_ref, reader_options
from pipeline.schedulers import check_scheduler, ordered_map

Compression = Literal["blosc2-zstd", "blosc2-lz4", "gzip", "lzf", "none"]
Shuffle = Literal["bit", "byte", "none"]
# Settings that choose how the work runs, not what is written: left out of the file's attrs.
RUN_KEYS = ("scheduler", "workers", "task_mb")
# Imported by worker processes before they start (see pipeline.schedulers.process_pool).
WORKER_MODULES = ("pipeline.tiles", "pipeline.tile_chunks", "hdf5plugin")


@dataclass(frozen=True)
class TileParams:
    """Settings of the tile stage (params ``tiles`` + ``datasets.<name>.tiles``).

    size: tile height = width in pixels. stride: step between tiles (None = size, no overlap).
    max_invalid_fraction: drop tiles with more invalid values than this (0..1).
    compression: ``blosc2-zstd`` (default: Blosc2 zstd, via hdf5plugin), ``blosc2-lz4``,
        ``gzip`` (portable, any HDF5 reader), ``lzf`` (h5py only), ``none``; the table of
        docs/benchmarks.md chose the defaults.
    compression_level: clevel for blosc2/gzip.
    shuffle: Blosc2 pre-filter ``bit`` (bitshuffle), ``byte`` or ``none``.
    scheduler, workers: where the tasks run (:mod:`pipeline.schedulers`); task_mb: about
        how many MB of tiles one task makes. These three never change the file's bytes.
    """

    size: int = 64
    stride: int | None = None
    max_invalid_fraction: float = 0.05
    compression: Compression = "blosc2-lz4"
    compression_level: int = 5
    shuffle: Shuffle = "bit"
    scheduler: str = "threads"
    workers: int = 0
    task_mb: float = 64.0

    def __post_init__(self) -> None:
        if self.size < 1 or (self.stride is not None and self.stride < 1):
            raise ValueError("size and stride must be >= 1")
        if not 0.0 <= self.max_invalid_fraction <= 1.0:
            raise ValueError("max_invalid_fraction must lie in [0, 1]")
        if self.workers < 0 or self.task_mb <= 0:
            raise ValueError("workers must be >= 0 and task_mb > 0")
        check_scheduler(self.scheduler)

    @property
    def step(self) -> int:
        return self.stride or self.size


def compression_kwargs(name: str, level: int = 5, shuffle: str = "bit") -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a compression name."""
    if name.startswith("blosc2"):
        import hdf5plugin

        cname = name.split("-", 1)[1]
        filters = {"bit": hdf5plugin.Blosc2.BITSHUFFLE, "byte": hdf5plugin.Blosc2.SHUFFLE,
                   "none": hdf5plugin.Blosc2.NOFILTER}[shuffle]
        return dict(hdf5plugin.Blosc2(cname=cname, clevel=level, filters=filters))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": level, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "none":
        return {}
    raise UserError(f"compression {name!r}: expected blosc2-zstd, blosc2-lz4, gzip, lzf or none")


@dataclass(frozen=True)
class TileLayout:
    """What every chunk of a tile file looks like: shape, dtype and filter pipeline."""

    bands: int
    size: int
    dtype: str
    with_mask: bool
    compression: str = "blosc2-lz4"
    level: int = 5
    shuffle: str = "bit"

    def datasets(self) -> dict[str, dict[str, Any]]:
        """h5py create_dataset arguments of the chunked datasets (``tiles``, ``valid``)."""
        b, s = self.bands, self.size
        out = {"tiles": dict(shape=(0, b, s, s), maxshape=(None, b, s, s), chunks=(1, b, s, s),
                             dtype=np.dtype(self.dtype), fletcher32=True,
                             **compression_kwargs(self.compression, self.level, self.shuffle))}
        if self.with_mask:
            out["valid"] = dict(shape=(0, s, s), maxshape=(None, s, s), chunks=(1, s, s),
                                dtype=bool, compression="gzip", compression_opts=1,
                                fletcher32=True)
        return out



class ChunkEncoder:
    """Stored (compressed, checksummed) chunk bytes of tiles, as the final file would hold them.

    Tiles of the default pipeline (Blosc2 then Fletcher-32) are encoded right away by
    :mod:`pipeline.tile_chunks` (in parallel on threads: no HDF5 call); other pipelines and
    the ``valid`` masks go into an in-memory HDF5 file with the final file's dataset
    settings (:meth:`add`), from which :meth:`chunks` reads every chunk back as stored.
    """

    def __init__(self, layout: TileLayout) -> None:
        self.sets: dict[str, Any] = {}
        self.file = None
        self.n = 0
        self._fast = _fast_tiles(layout)
        self._stored: dict[str, list[Any]] = {}
        specs = layout.datasets()
        if self._fast is not None:
            specs.pop("tiles")
            self._stored["tiles"] = []
        if specs:
            import h5py

            name = f"tiles-{os.getpid()}-{threading.get_ident()}-{next(_MEMFILES)}.h5"
            self.file = h5py.File(name, "w", driver="core", backing_store=False,
                                  block_size=_MEMFILE_BLOCK)
            self.sets = {key: self.file.create_dataset(key, **kwargs)
                         for key, kwargs in specs.items()}

    def __enter__(self) -> ChunkEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()

    def add(self, tiles: np.ndarray | Sequence[np.ndarray], masks: np.ndarray | None) -> None:
        """Append k tiles ((k, B, H, W), or k (B, H, W) arrays in any memory order, e.g.
        views of the reader's block) and, when the layout has a ``valid`` set, masks."""
        k = len(tiles)
        if k == 0:
            return
        if self._fast is not None:
            self._stored["tiles"] += [self._fast.encode(t) for t in tiles]
        elif not isinstance(tiles, np.ndarray):
            tiles = np.stack(tiles)
        arrays = {"tiles": tiles, "valid": masks if masks is not None else True}
        for key, ds in self.sets.items():
            ds.resize(self.n + k, axis=0)
            ds[self.n:] = arrays[key]
        self.n += k

    def chunks(self) -> dict[str, list[Any]]:
        """Stored bytes of every chunk added, per dataset (bytes-like objects)."""
        out = dict(self._stored)
        for key, ds in self.sets.items():
            zeros = (0,) * (ds.ndim - 1)
            stored = []
            for i in range(self.n):
                mask, raw = ds.id.read_direct_chunk((i, *zeros))
                if mask != 0:  # a filter was skipped: the bytes would not be portable
                    raise RuntimeError(f"HDF5 skipped a filter of {key} (mask {mask})")
                stored.append(bytes(raw))
            out[key] = stored
        return out


@functools.lru_cache(maxsize=8)
def _fast_tiles(layout: TileLayout) -> Any:
    """The out-of-HDF5 encoder of the layout's ``tiles`` chunks, or None (other pipelines)."""
    if not layout.compression.startswith("blosc2"):
        return None
    from pipeline.tile_chunks import blosc2_chunks

    itemsize = np.dtype(layout.dtype).itemsize
    return blosc2_chunks(layout.datasets()["tiles"],
                         layout.bands * layout.size * layout.size * itemsize)


_MEMFILES = itertools.count()
_MEMFILE_BLOCK = 8 << 20  # the in-memory file grows by this much at a time




@dataclass(frozen=True)
class TileTask:
    """One unit of tiling work: tile rows [row0, row1) of one product (row r at line r*step)."""

    product_id: str
    path: str
    row0: int
    row1: int
    strip: tuple[int, int] | None = None  # lines [first, stop) of the product (a strip)

    @property
    def ref(self) -> ProductRef:
        return ProductRef(self.product_id, Path(self.path),
                          {} if self.strip is None else {"strip": list(self.strip)})


@dataclass
class TileBlock:
    """The tiles a task kept, compressed: stored chunk bytes plus where each tile comes from."""

    product_id: str
    where: np.ndarray  # (k, 2) int32: line0 (file line number), sample0
    invalid: np.ndarray  # (k,) float32
    chunks: dict[str, list[Any]]  # stored bytes per dataset: bytes or uint8 arrays
    dropped: int

    @property
    def kept(self) -> int:
        return len(self.where)


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


def row_invalid_fraction(
    data: np.ndarray, valid: np.ndarray | None, size: int, step: int
) -> tuple[list[int], np.ndarray]:
    """Sample offsets of the tiles of one tile row (B, size, S) and their invalid fractions.

    Same rule as :func:`invalid_fraction`, counted per sample column first (one pass over
    the row in its memory order, :func:`pipeline.tile_chunks.column_invalid`), then summed
    per tile.
    """
    bands, _, samples = data.shape
    offsets = list(range(0, samples - size + 1, step))
    if data.dtype.kind != "f" and valid is None:
        return offsets, np.zeros(len(offsets))
    from pipeline.tile_chunks import column_invalid

    column = np.empty(samples, np.int64)
    mask = np.empty((0, 0), bool) if valid is None else np.asarray(valid, bool)
    column_invalid(data, mask, column)
    per_column = np.concatenate([[0], np.cumsum(column)])
    counts = np.array([per_column[s + size] - per_column[s] for s in offsets], np.int64)
    return offsets, counts / (bands * size * size)


def cut_tiles(
    data: np.ndarray, valid: np.ndarray | None, size: int, offsets: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Tiles (n, B, size, size) at ``offsets`` of one tile row (B, size, S), and masks."""
    tiles = np.empty((len(offsets), data.shape[0], size, size), data.dtype)
    for i, s in enumerate(offsets):
        tiles[i] = data[:, :, s:s + size]
    masks = None
    if valid is not None:
        masks = np.empty((len(offsets), size, size), bool)
        for i, s in enumerate(offsets):
            masks[i] = valid[:, s:s + size]
    return tiles, masks


def tile_rows(product: Product, size: int, step: int) -> int:
    """Number of tile rows of a product (row r covers lines [r*step, r*step + size))."""
    return max(0, (product.lines - size) // step + 1)


def make_tile_block(
    task: TileTask, kind: str, params: TileParams, layout: TileLayout,
    options: dict[str, Any] | None = None, opener: Callable[[ProductRef], Product] | None = None,
) -> TileBlock:
    """Read, cut, filter and compress the tiles of one task (runs on a dask worker)."""
    ref = task.ref
    product = opener(ref) if opener is not None else open_ref(kind, ref, options)
    size, step = params.size, params.step
    group = max(1, (product.preferred_lines - size) // step + 1)  # tile rows per read
    buf = product.block_buffer(size) if group == 1 else None
    where, invalid, dropped = [], [], 0
    with ChunkEncoder(layout) as encoder:
        for first in range(task.row0, task.row1, group):
            rows = range(first, min(task.row1, first + group))
            top = first * step
            data, valid = product.read_block(top, rows[-1] * step + size, buf)
            for row in rows:
                a = row * step - top
                rv = None if valid is None else valid[a:a + size]
                offsets, frac = row_invalid_fraction(data[:, a:a + size], rv, size, step)
                keep = frac <= params.max_invalid_fraction
                dropped += int((~keep).sum())
                kept = [s for s, k in zip(offsets, keep, strict=True) if k]
                strip = data[:, a:a + size]
                masks = None if rv is None else cut_tiles(strip[:1], rv, size, kept)[1]
                encoder.add([strip[:, :, s:s + size] for s in kept], masks)
                line_no = int(product.line_numbers[row * step])
                where += [(line_no, s) for s in kept]
                invalid.append(frac[keep])
        chunks = encoder.chunks()
    return TileBlock(
        task.product_id, np.array(where, np.int32).reshape(-1, 2),
        np.concatenate(invalid).astype(np.float32) if invalid else np.empty(0, np.float32),
        chunks, dropped,
    )


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
    """Append tiles to a new HDF5 file; atomic (temp name, renamed when closed without error).

    A full disk raises :class:`parsers.atomic.DiskFullError` (the temporary file is removed;
    with ``products``, the count of products to come, it estimates the bytes needed).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, bands: int, size: int, dtype: np.dtype,
        id_length: int, with_mask: bool, compression: str = "blosc2-lz4", level: int = 5,
        shuffle: str = "bit", products: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.layout = TileLayout(bands, size, np.dtype(dtype).str, with_mask, compression,
                                 level, shuffle)
        self.bands, self.size, self.dtype = bands, size, np.dtype(dtype)
        self.id_dtype = np.dtype([("product_id", f"S{max(1, id_length)}"),
                                  ("line0", "<i4"), ("sample0", "<i4")])
        self.with_mask = with_mask
        self.n = 0
        self._ctx = None
        self.file = None
        self._guard: GuardedFile | None = None
        self._products = products
        self._seen: list[str] = []  # product ids in append order
        self._bytes_at: list[int] = []  # file size when each product began
        self._closing = False

    def _needed(self, tmp: Path) -> int | None:
        """Bytes the whole file needs: what HDF5 wrote (or tried to) when the file is
        complete, else that extrapolated from the products written completely."""
        wanted = self._guard.wanted if self._guard is not None else 0
        if self._closing:
            return wanted or None
        done = len(self._seen) - 1
        if not self._products or done < 1:
            return None
        header = self._bytes_at[0]
        return int(header + (self._bytes_at[-1] - header) * self._products / done)

    def __enter__(self) -> TileWriter:
        import h5py

        self._ctx = atomic_path(self.path, needed=self._needed)
        tmp = self._ctx.__enter__()
        try:
            # HDF5 crashes closing a file whose write failed: GuardedFile keeps it alive.
            self._guard = GuardedFile(tmp, direct=True)
            # libver v110+: attributes larger than 64 KiB (432-band statistics as JSON).
            self.file = h5py.File(self._guard, "w", libver=("v110", "latest"))
            specs = self.layout.datasets()
            self.tiles = self.file.create_dataset("tiles", **specs["tiles"])
            self.index = self.file.create_dataset(
                "index", shape=(0,), maxshape=(None,), chunks=(4096,), dtype=self.id_dtype,
            )
            self.invalid = self.file.create_dataset(
                "invalid_fraction", shape=(0,), maxshape=(None,), chunks=(4096,), dtype="f4",
            )
            self.valid = self.file.create_dataset("valid", **specs["valid"]) \
                if self.with_mask else None
        except BaseException as exc:
            self._abort(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _grow(self, product_id: str, k: int, where: np.ndarray, invalid: np.ndarray) -> int:
        a, b = self.n, self.n + k
        for ds in (self.tiles, self.index, self.invalid, self.valid):
            if ds is not None:
                ds.resize(b, axis=0)
        rows = np.zeros(k, self.id_dtype)
        rows["product_id"] = product_id.encode()
        rows["line0"] = where[:, 0]
        rows["sample0"] = where[:, 1]
        self.index[a:b] = rows
        self.invalid[a:b] = invalid
        self.n = b
        return a

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
        self._starting(product_id)
        a = self._grow(product_id, k, np.asarray(where, np.int32).reshape(-1, 2), invalid)
        self.tiles[a:a + k] = tiles.astype(self.dtype, copy=False)
        if self.valid is not None:
            self.valid[a:a + k] = masks if masks is not None else True
        self._guard.check()  # stop at the first write the disk refused

    def append_block(self, block: TileBlock) -> None:
        """Append a task's tiles as the stored chunk bytes it made (no compression here)."""
        if block.kept == 0:
            return
        self._starting(block.product_id)
        a = self._grow(block.product_id, block.kept, block.where, block.invalid)
        for name, ds in (("tiles", self.tiles), ("valid", self.valid)):
            if ds is None:
                continue
            zeros = (0,) * (ds.ndim - 1)
            for i, chunk in enumerate(block.chunks[name]):
                ds.id.write_direct_chunk((a + i, *zeros), chunk)
        self._guard.check()

    def _starting(self, product_id: str) -> None:
        """Note where each product's tiles begin (for the size estimate of a full disk)."""
        if not self._seen or self._seen[-1] != product_id:
            self._seen.append(product_id)
            self._bytes_at.append(self._guard.wanted)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._closing = True
            try:
                self.file.close()
                self._guard.close()
                self._guard.check()
            except Exception as err:
                self._abort(type(err), err, err.__traceback__)
                raise
            self._ctx.__exit__(None, None, None)
            return False
        self._abort(exc_type, exc, tb)
        return False

    def _abort(self, exc_type, exc, tb) -> None:
        if self.file is not None:
            with contextlib.suppress(Exception):  # the original error matters, not this one
                self.file.close()
        if self._guard is not None:
            self._guard.close()
        self._ctx.__exit__(exc_type, exc, tb)


def make_tile_tasks(
    refs: Sequence[ProductRef], params: TileParams, bands: int,
    opener: Callable[[ProductRef], Product],
) -> list[TileTask]:
    """Tasks in file order: product-id order, then tile rows; about task_mb MB of tiles each."""
    tasks = []
    for ref in refs:
        product = opener(ref)
        if product.bands != bands:
            raise UserError(f"{ref.path}: {product.bands} bands, the statistics have {bands}")
        rows = tile_rows(product, params.size, params.step)
        row_mb = product.bands * params.size * product.samples \
            * np.dtype(product.dtype).itemsize / 1e6
        per = max(1, int(params.task_mb // max(row_mb, 1e-9)))
        strip = ref.meta.get("strip")
        for r in range(0, max(rows, 1), per):
            tasks.append(TileTask(ref.product_id, str(ref.path), r, min(rows, r + per),
                                  None if strip is None else (int(strip[0]), int(strip[1]))))
    return tasks


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
    kind: str | None = None,
) -> dict[str, Any]:
    """Tile every product (or strip: ``ref.meta["strip"]``) of ``refs`` of data set ``source``
    into ``out`` (HDF5) on ``params.scheduler``; return the counts.

    ``kind``: the reader (default ``source``); ``opener`` opens a product (default: the
    kind's reader via :func:`open_ref`); with the processes scheduler or a cluster it must
    be picklable.
    """
    from tqdm import tqdm

    kind = kind or source
    refs = sorted(refs, key=lambda r: (r.product_id, r.meta.get("strip") or []))
    n_bands = int(stats["bands"])
    dtype = np.dtype(stats.get("dtype") or ("uint16" if kind == "sentinel2" else "float32"))
    id_len = max((len(r.product_id.encode()) for r in refs), default=1)
    tasks = make_tile_tasks(refs, params, n_bands, opener or (
        lambda ref: open_ref(kind, ref, options)))
    per_product: dict[str, list[int]] = {r.product_id: [0, 0] for r in refs}
    bar = tqdm(total=len(tasks), desc=f"tiles {source}/{split}", unit="task",
               disable=not progress)
    with TileWriter(
        out, bands=n_bands, size=params.size, dtype=dtype, id_length=id_len,
        with_mask=kind == "sentinel2", compression=params.compression,
        level=params.compression_level, shuffle=params.shuffle, products=len(refs),
    ) as writer:
        calls = [(t, kind, params, writer.layout, options, opener) for t in tasks]
        for block in ordered_map(make_tile_block, calls, params.scheduler, params.workers,
                                 preload=WORKER_MODULES):
            writer.append_block(block)
            per_product[block.product_id][0] += block.kept
            per_product[block.product_id][1] += block.dropped
            bar.update(1)
        kept = sum(k for k, _ in per_product.values())
        dropped = sum(d for _, d in per_product.values())
        _write_attrs(writer.file, source, split, refs, params, stats, kept, dropped,
                     per_product, extra_attrs)
    bar.close()
    return {"kept": kept, "dropped_invalid": dropped, "products": len(per_product)}


def _write_attrs(f: Any, source: str, split: str, refs: Sequence[ProductRef],
                 params: TileParams, stats: dict[str, Any], kept: int, dropped: int,
                 per_product: dict[str, list[int]], extra: dict[str, Any] | None) -> None:
    if stats.get("wavelength"):
        wl = f.create_dataset("wavelength", data=np.asarray(stats["wavelength"], np.float32))
        wl.attrs["unit"] = stats.get("wavelength_unit") or ""
    recorded = {k: v for k, v in to_dict(params).items() if k not in RUN_KEYS}
    attrs = {
        "source": source, "split": split,
        "stats": json.dumps(stats, separators=(",", ":")),
        "params": json.dumps(recorded),
        "software_version": software_version(),
        "tile_size": params.size, "stride": params.step,
        "tiles_kept": kept, "tiles_dropped_invalid": dropped,
        "tiles_per_product": json.dumps(per_product),
        "products": json.dumps(list(dict.fromkeys(r.product_id for r in refs))),
        "band_names": json.dumps(stats.get("band_names")),
        "nan_policy": "tiles hold raw values; NaN (VIRTIS) and valid==False (Sentinel-2) "
                      "mark invalid values; training.data.TileDataset sets them to 0 "
                      "after normalisation",
    }
    attrs.update(extra or {})
    for key, value in attrs.items():
        f.attrs[key] = value


@cli_entry("python -m pipeline.tiles")
def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.split import SPLITS, read_split
    from pipeline.stats import read_stats

    parser = stage_parser("python -m pipeline.tiles", __doc__.split("\n\n")[0], TileParams)
    parser.add_argument("--split", required=True, help="split file from pipeline.split")
    parser.add_argument("--stats", required=True, help="stats.json from pipeline.stats")
    parser.add_argument("--out", required=True, help="folder for train.h5 and test.h5")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    dataset = args.dataset
    params, ds = stage_settings(args, TileParams, "tiles")
    lock_output(args.out, "python -m pipeline.tiles")
    kind = ds.kind
    options = reader_options(dataset, args.params)
    split = read_split(args.split, dataset)
    stats = read_stats(args.stats)
    if stats["source"] != dataset:
        raise UserError(f"{args.stats}: statistics of {stats['source']!r}, not {dataset!r}")
    out = Path(args.out)
    for name in SPLITS:
        t0 = time.perf_counter()
        counts = write_split_tiles(
            out / f"{name}.h5", dataset, name, split.products(name), params, stats,
            options, progress=not args.no_progress, kind=kind,
        )
        print(
            f"{out / (name + '.h5')}: {counts['kept']} tiles from {counts['products']} products, "
            f"{counts['dropped_invalid']} dropped (invalid > {params.max_invalid_fraction}), "
            f"{time.perf_counter() - t0:.1f} s ({params.scheduler})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
