"""Decompress an ``.sscz`` file back to physical values.

    python -m training.decompress FILE.sscz --checkpoint CKPT --out OUT.npy|OUT.h5|OUT.tif
        [--json] [--batch-size N] [--threads N] [--device cpu|cuda|auto]

Tile by tile (memory: one batch of tiles): check the record's CRC, decode its integers with
the checkpoint's integer tables, run the decoder, undo the normalisation stored in the
header, crop the edge padding, put back the invalid values (NaN for float cubes, the
header's ``fill`` value for integer cubes; integer outputs are rounded half to even and
clipped to the dtype's range) and write the tile's window into the output.

Refusals (one line, no output file): a checkpoint whose model id differs from the header's,
an unknown format version, a truncated or corrupt file (naming the tile).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parsers.errors import ProductError, UserError, cli_entry
from training import sscz
from training.codec import Codec
from training.compress import add_common_args, setup
from training.cube_io import OUTPUT_SUFFIXES, check_output, open_output
from training.decode import DecompressReport, decode_stream, output_meta


def decompress(path: str | Path, codec: Codec, out: str | Path, batch_size: int = 8
               ) -> DecompressReport:
    """Decode ``path`` into ``out`` (written atomically); see the module docstring."""
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise ProductError(path, "no such file")

    def sink(header: sscz.Header, dtype: np.dtype) -> Any:
        check_output(out, header["kind"])
        return open_output(out, header["kind"], tuple(header["shape"]), dtype,
                           output_meta(header))

    with open(path, "rb") as fh:
        return decode_stream(fh, path, codec, sink, batch_size, str(out))


@cli_entry("python -m training.decompress")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.decompress",
                                description=__doc__.split("\n")[0])
    p.add_argument("input", type=Path, help="FILE.sscz")
    p.add_argument("--out", type=Path, required=True, help="OUT.npy, OUT.h5 or OUT.tif")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"{args.out}: output must end in .npy, .h5 or .tif")
    codec = setup(args)
    s = decompress(args.input, codec, args.out, args.batch_size).summary()
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        print()
    else:
        print(f"{args.input} -> {args.out}: {s['tiles']} tiles, {s['decode_mbps']:.2f} MB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
