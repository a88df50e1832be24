"""Encoding into the ``.sscz`` stream: tiles -> normalised, padded tiles -> integers -> records.

:func:`compress_cube` writes the stream of an opened :class:`~training.cube_io.InputCube` to
a binary file object; ``training.compress`` (files) and ``training.evaluate`` (in memory)
both call it, so the rate evaluate reports is the size of the file compress writes.

Per tile (memory: one tile row of the cube plus one batch of tiles): values normalised with
the checkpoint's normaliser; invalid values (NaN/inf in float cubes, the no-data value 0 in
integer cubes) set to 0, as in training; edge tiles padded to the full tile size by **edge
replication** (the last line and sample of the normalised tile repeated; never stored, the
decoder crops it away); latent times gain, rounded, entropy-coded with the checkpoint's
integer tables; record = invalid mask (lossless) + escaped values + ANS words, with a CRC.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from parsers.errors import ProductError, UserError
from training import sscz
from training.codec import NET_BATCH, Codec
from training.cube_io import Grid, InputCube, iter_tile_rows
from training.data import Normaliser

DEFAULT_BATCH = 8


@dataclass
class CompressReport:
    """What one compression did. Rates in bits per value (bpppc); times in seconds."""

    input: str
    output: str
    bytes: int
    header_bytes: int
    mask_bytes: int
    latent_bytes: int
    framing_bytes: int
    values: int
    native_bits: int
    tiles: int
    seconds: float
    network_s: float
    coder_s: float

    @property
    def bpppc(self) -> float:
        return 8 * self.bytes / self.values

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        mb = self.values * self.native_bits / 8 / 1e6
        out.update(bpppc=self.bpppc, ratio=self.native_bits / self.bpppc,
                   latent_bpppc=8 * self.latent_bytes / self.values,
                   overhead_share=(self.header_bytes + self.mask_bytes + self.framing_bytes)
                   / self.bytes,
                   encode_mbps=mb / self.seconds if self.seconds > 0 else math.nan,
                   coder_share_of_network=self.coder_s / self.network_s
                   if self.network_s > 0 else math.nan)
        return out


def checkpoint_normaliser(codec: Codec) -> Normaliser:
    """The normaliser training used (stored in the checkpoint), else one built from the
    checkpoint's statistics and normalisation mode."""
    ckpt = codec.ckpt
    try:
        if ckpt.get("normaliser"):
            return Normaliser.from_state_dict(ckpt["normaliser"])
        return Normaliser.from_stats(ckpt["stats"], ckpt["config"]["normalisation"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProductError(codec.path, f"no usable normaliser ({exc})") from None


def header_fields(codec: Codec, cube: InputCube, grid: Grid, norm: Normaliser
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON fields and binary arrays of the ``.sscz`` header."""
    cfg = codec.ckpt["config"]
    fields = {
        "format": "sscz", "version": sscz.FORMAT_VERSION, "model_id": codec.model_id,
        "model": {k: cfg.get(k) for k in ("arch", "bands", "tile", "latent", "source")},
        "kind": cube.kind, "shape": list(cube.shape), "dtype": cube.dtype.str,
        "native_bits": cube.native_bits, "fill": cube.fill, "tile": grid.tile,
        "grid": [grid.rows, grid.cols], "padding": "edge",
        "normalisation": {"mode": norm.mode, "clip": norm.clip},
        "band_names": cube.band_names, "wavelength_unit": cube.wavelength_unit,
        "product_id": cube.product_id, "reader": cube.reader, "geo": cube.geo,
        "latent": {"channels": codec.latent.channels,
                   "symbols_per_channel": codec.symbols_per_channel},
        "net_batch": NET_BATCH,
    }
    # float32: the normaliser computes in float32 (offset and scale cast to float32), so
    # these are exactly the numbers it uses, at half the bytes of float64.
    arrays = {"norm_offset": norm.offset.astype(np.float32),
              "norm_scale": norm.scale.astype(np.float32)}
    if cube.wavelengths is not None:
        arrays["wavelength"] = np.asarray(cube.wavelengths, np.float32)
    return fields, arrays


def header_size(codec: Codec, cube: InputCube) -> int:
    """Bytes of the header (magic to the first record) compress writes for ``cube``."""
    norm = checkpoint_normaliser(codec)
    grid = Grid(cube.kind, cube.shape, codec.tile_shape[1])
    return len(sscz.pack_header(*header_fields(codec, cube, grid, norm)))


def prepare(tiles: Sequence[np.ndarray], cube: InputCube, norm: Normaliser, size: int
            ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Native tiles (B, h, w) -> (normalised, invalid->0, edge-padded (n, B, T, T) float32,
    invalid masks (B, h, w))."""
    out = np.empty((len(tiles), tiles[0].shape[0], size, size), np.float32)
    masks = []
    for i, t in enumerate(tiles):
        inv = cube.invalid(t)
        x = norm.normalise(t)
        x[inv] = 0.0
        h, w = t.shape[1:]
        out[i] = np.pad(x, ((0, 0), (0, size - h), (0, size - w)), mode="edge")
        masks.append(inv)
    return out, masks


def check_fit(codec: Codec, cube: InputCube) -> None:
    bands, tile, _ = codec.tile_shape
    if cube.bands != bands:
        raise UserError(f"{cube.path.name}: {cube.bands} bands, but the model "
                        f"{codec.path.name} codes {bands}-band tiles")
    if cube.kind == "tiles" and tuple(cube.shape[2:]) != (tile, tile):
        raise UserError(f"{cube.path.name}: tiles are {cube.shape[2]} x {cube.shape[3]} px, "
                        f"the model codes {tile} x {tile}")


def compress_cube(cube: InputCube, codec: Codec, fh: Any, batch: int = DEFAULT_BATCH,
                  out_name: str = "") -> CompressReport:
    """Write the ``.sscz`` stream of an opened cube to the binary file object ``fh``."""
    check_fit(codec, cube)
    norm = checkpoint_normaliser(codec)
    grid = Grid(cube.kind, cube.shape, codec.tile_shape[1])
    fields, arrays = header_fields(codec, cube, grid, norm)
    t0 = time.perf_counter()
    head = sscz.pack_header(fields, arrays)
    fh.write(head)
    rep = CompressReport(str(cube.path), out_name, len(head), len(head), 0, 0, 0,
                         cube.values, cube.native_bits, grid.count, 0.0, 0.0, 0.0)
    for first, row in iter_tile_rows(cube, grid):
        for a in range(0, len(row), batch):
            x, masks = prepare(row[a:a + batch], cube, norm, grid.tile)
            t1 = time.perf_counter()
            q = codec.encode_batch(x)
            t2 = time.perf_counter()
            for i, inv in enumerate(masks):
                words, escapes = codec.pack(q[i])
                payload, mask_len = sscz.pack_payload(inv, words, escapes)
                fh.write(sscz.record(first + a + i, payload))
                rep.mask_bytes += mask_len
                rep.latent_bytes += len(payload) - mask_len
                rep.framing_bytes += sscz.RECORD_OVERHEAD
            rep.network_s += t2 - t1
            rep.coder_s += time.perf_counter() - t2
    tail = sscz.end_marker(grid.count)
    fh.write(tail)
    rep.framing_bytes += len(tail)
    rep.bytes = rep.header_bytes + rep.mask_bytes + rep.latent_bytes + rep.framing_bytes
    rep.seconds = time.perf_counter() - t0
    return rep
