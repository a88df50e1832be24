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
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from parsers.atomic import atomic_open
from parsers.errors import UserError, cli_entry
from training import sscz
from training.codec import NET_BATCH, Codec
from training.device import resolve_device
from training.encode import DEFAULT_BATCH, CompressReport, check_fit, compress_cube
from training.inputs import open_input


def compress(input_path: str | Path, codec: Codec, out: str | Path,
             batch_size: int = DEFAULT_BATCH) -> CompressReport:
    """Compress ``input_path`` into ``out`` (written atomically); see the module docstring."""
    input_path, out = Path(input_path), Path(out)
    names = (codec.ckpt.get("stats") or {}).get("band_names")
    is_s2 = codec.ckpt["config"].get("source") == "sentinel2"
    cube = open_input(input_path, band_names=names, sentinel2=is_s2)
    try:
        check_fit(codec, cube)
        with atomic_open(out) as fh:
            return compress_cube(cube, codec, fh, batch_size, str(out))
    finally:
        cube.close()


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
