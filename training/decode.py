"""Decoding of the ``.sscz`` stream: records -> integers -> tiles in physical values.

:func:`decode_stream` reads a stream from a binary file object and hands each tile's window
to an output (``training.decompress`` writes files, ``training.evaluate`` fills an array):
check the record's CRC, decode its integers with the checkpoint's integer tables, run the
decoder, undo the normalisation stored in the header, crop the edge padding, put back the
invalid values (NaN for float cubes, the header's ``fill`` value for integer cubes; integer
outputs are rounded half to even and clipped to the dtype's range).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parsers.errors import ProductError, UserError
from training import sscz
from training.codec import Codec
from training.cube_io import Grid
from training.data import Normaliser
from training.entropy import CodingError


@dataclass
class DecompressReport:
    input: str
    output: str
    bytes: int
    values: int
    native_bits: int
    tiles: int
    seconds: float
    network_s: float
    coder_s: float

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        mb = self.values * self.native_bits / 8 / 1e6
        out.update(bpppc=8 * self.bytes / self.values,
                   decode_mbps=mb / self.seconds if self.seconds > 0 else float("nan"))
        return out


def header_normaliser(header: sscz.Header) -> Normaliser:
    n = header["normalisation"]
    return Normaliser(n["mode"], header.arrays["norm_offset"], header.arrays["norm_scale"],
                      bool(n.get("clip", False)))


def check_model(header: sscz.Header, codec: Codec, path: Path) -> None:
    if header["model_id"] != codec.model_id:
        raise UserError(f"{path.name}: written with model {header['model_id'][:12]}..., but "
                        f"{codec.path.name} is model {codec.model_id[:12]}... (use the "
                        "checkpoint the file was compressed with)")


def to_output(y: np.ndarray, invalid: np.ndarray | None, dtype: np.dtype, fill: Any
              ) -> np.ndarray:
    """Physical float values (B, h, w) -> the output dtype with invalid values restored."""
    if dtype.kind == "f":
        out = y.astype(dtype, copy=False)
        if invalid is not None:
            out[invalid] = np.nan
        return out
    info = np.iinfo(dtype)
    out = np.clip(np.rint(y), info.min, info.max).astype(dtype)
    if invalid is not None:
        out[invalid] = fill if fill is not None else 0
    return out


class _Decoder:
    """Decode a batch of records into output windows."""

    def __init__(self, codec: Codec, header: sscz.Header, path: Path) -> None:
        self.codec, self.path = codec, path
        self.grid = Grid(header["kind"], tuple(header["shape"]), int(header["tile"]))
        self.norm = header_normaliser(header)
        self.dtype = np.dtype(header["dtype"])
        self.fill = header.get("fill")
        self.network_s = self.coder_s = 0.0

    def unpack(self, index: int, payload: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        t0 = time.perf_counter()
        try:
            p = sscz.unpack_payload(payload, self.grid.region_shape(index))
            q = self.codec.unpack(p.words, p.escapes)
        except (ValueError, IndexError, zlib.error, CodingError) as exc:
            raise ProductError(self.path, f"corrupt tile {index} of {self.grid.count} "
                                          f"({exc})") from None
        self.coder_s += time.perf_counter() - t0
        return q, p.invalid

    def windows(self, first: int, q: np.ndarray, masks: list[np.ndarray | None]
                ) -> list[tuple[tuple[Any, ...], np.ndarray]]:
        t0 = time.perf_counter()
        y = self.codec.decode_batch(q)
        self.network_s += time.perf_counter() - t0
        phys = self.norm.denormalise(y)
        out = []
        for i, inv in enumerate(masks):
            index = first + i
            lines, samples = self.grid.region(index)
            tile = phys[i][:, :lines.stop - lines.start, :samples.stop - samples.start]
            where = ((index, slice(None), lines, samples) if self.grid.kind == "tiles"
                     else (slice(None), lines, samples))
            out.append((where, to_output(tile, inv, self.dtype, self.fill)))
        return out


def output_meta(header: sscz.Header) -> dict[str, Any]:
    """What the output writers record besides the values (wavelengths, names, CRS...)."""
    return {"wavelengths": header.arrays.get("wavelength"),
            "wavelength_unit": header.get("wavelength_unit"),
            "band_names": header.get("band_names"), "product_id": header.get("product_id"),
            "model_id": header["model_id"], "source_reader": header.get("reader"),
            "geo": header.get("geo"), "fill": header.get("fill")}


def decode_stream(fh: Any, path: Path, codec: Codec, sink: Any, batch_size: int = 8,
                  out_name: str = "") -> DecompressReport:
    """Decode the ``.sscz`` stream ``fh`` (``path`` names it in errors); ``sink(header,
    dtype)`` returns the context manager of the :class:`~training.cube_io.OutputArray`."""
    t0 = time.perf_counter()
    header = sscz.read_header(fh, path)
    check_model(header, codec, path)
    dec = _Decoder(codec, header, path)
    with sink(header, dec.dtype) as dst:
        pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        first = 0
        for index, payload in sscz.iter_records(fh, path, dec.grid.count):
            pending.append(dec.unpack(index, payload))
            if len(pending) == batch_size or index == dec.grid.count - 1:
                q = np.stack([p[0] for p in pending])
                for where, values in dec.windows(first, q, [p[1] for p in pending]):
                    dst.write(where, values)
                first, pending = index + 1, []
    return DecompressReport(str(path), out_name, fh.tell(), int(np.prod(header["shape"])),
                            int(header["native_bits"]), dec.grid.count,
                            time.perf_counter() - t0, dec.network_s, dec.coder_s)
