"""Compress a cube or tile file into an ``.sscz`` file with a rate-distortion SSCNet.

    python -m training.compress INPUT --checkpoint CKPT --out FILE.sscz [--json]
        [--batch-size N] [--threads N] [--device cpu|cuda|auto]

INPUT is anything :func:`training.cube_io.open_input` opens: a VIRTIS product or any PDS3
QUBE, ENVI or GeoTIFF cube (:func:`parsers.cube.open_cube`), a Sentinel-2 product (GeoTIFF/JP2
files are read as Sentinel-2 when the model is a Sentinel-2 model), or a tile HDF5 file of
``pipeline.tiles``. The checkpoint must be
a finalised rate-distortion checkpoint (``best.pt`` of ``training.train`` with ``objective:
rate_distortion``).

What happens, tile by tile (memory: one tile row of the cube plus one batch of tiles):

1. The cube is cut into the model's tile size on a regular grid from (0, 0). Values are
   normalised with the checkpoint's normaliser; invalid values (NaN/inf in float cubes, the
   no-data value 0 in integer cubes) are set to 0, as in training.
2. Edge tiles are padded to the full tile size by **edge replication** (the last line and
   sample of the normalised tile repeated); the padding is never stored and the decoder
   crops it away.
3. The encoder's latent is multiplied by the learned gains, rounded to integers and
   entropy-coded with the checkpoint's integer tables (``training.entropy``).
4. Each tile's record holds its invalid mask (lossless, zlib of packed bits), the escaped
   latent values and the ANS words, with a CRC-32 (format: ``training.sscz``).

``--json`` prints bytes, bpppc (file bits / (bands x lines x samples)), the ratio to the
input's native bits, encode MB/s (native input bytes per second) and the breakdown of the
file and of the time (network vs entropy coder).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parsers.atomic import atomic_open
from parsers.errors import ProductError, UserError, cli_entry
from training import sscz
from training.codec import NET_BATCH, Codec
from training.cube_io import Grid, InputCube, iter_tile_rows, open_input
from training.data import Normaliser
from training.device import resolve_device

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
    arrays = {"norm_offset": norm.offset.astype(np.float64),
              "norm_scale": norm.scale.astype(np.float64)}
    if cube.wavelengths is not None:
        arrays["wavelength"] = np.asarray(cube.wavelengths, np.float32)
    return fields, arrays


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


def _check_fit(codec: Codec, cube: InputCube) -> None:
    bands, tile, _ = codec.tile_shape
    if cube.bands != bands:
        raise UserError(f"{cube.path.name}: {cube.bands} bands, but the model "
                        f"{codec.path.name} codes {bands}-band tiles")
    if cube.kind == "tiles" and tuple(cube.shape[2:]) != (tile, tile):
        raise UserError(f"{cube.path.name}: tiles are {cube.shape[2]} x {cube.shape[3]} px, "
                        f"the model codes {tile} x {tile}")


def compress(input_path: str | Path, codec: Codec, out: str | Path,
             batch_size: int = DEFAULT_BATCH) -> CompressReport:
    """Compress ``input_path`` into ``out`` (written atomically); see the module docstring."""
    input_path, out = Path(input_path), Path(out)
    names = (codec.ckpt.get("stats") or {}).get("band_names")
    is_s2 = codec.ckpt["config"].get("source") == "sentinel2"
    cube = open_input(input_path, band_names=names, sentinel2=is_s2)
    try:
        _check_fit(codec, cube)
        with atomic_open(out) as fh:
            return compress_cube(cube, codec, fh, batch_size, str(out))
    finally:
        cube.close()


def compress_cube(cube: InputCube, codec: Codec, fh: Any, batch: int = DEFAULT_BATCH,
                  out_name: str = "") -> CompressReport:
    """Write the ``.sscz`` stream of an opened cube to the binary file object ``fh``."""
    _check_fit(codec, cube)
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


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="finalised rate-distortion checkpoint (best.pt)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help="tiles read and coded per step (default %(default)s; the network "
                        f"always runs on {NET_BATCH} tiles at a time, so the output does not "
                        "depend on it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")


def setup(args: argparse.Namespace) -> Codec:
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    return Codec(args.checkpoint, resolve_device(args.device))


@cli_entry("python -m training.compress")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.compress",
                                description=__doc__.split("\n")[0])
    p.add_argument("input", type=Path, help="VIRTIS/PDS3 QUBE, Sentinel-2 product or tile .h5")
    p.add_argument("--out", type=Path, required=True, help="output FILE.sscz")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.out.suffix.lower() != sscz.SUFFIX:
        raise UserError(f"{args.out}: the output name must end in {sscz.SUFFIX}")
    codec = setup(args)
    s = compress(args.input, codec, args.out, args.batch_size).summary()
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        print()
    else:
        print(f"{args.input} -> {args.out}: {s['bytes']:,} bytes, {s['bpppc']:.4f} bpppc "
              f"({s['ratio']:.1f}:1 against {s['native_bits']}-bit input), {s['tiles']} tiles,"
              f" {s['encode_mbps']:.2f} MB/s; header+mask+framing "
              f"{100 * s['overhead_share']:.2f} % of the file")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
