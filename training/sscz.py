"""The ``.sscz`` container: header, tile records with CRCs, end marker (no torch here).

Byte layout (all integers little-endian; ``docs/compression.md`` has the full spec)::

    magic       8 bytes   b"SSCZ\\r\\n\\x1a\\n"
    version     u16       FORMAT_VERSION
    hlen        u32       length of the compressed header
    hcrc        u32       CRC-32 of those hlen bytes
    header      hlen      zlib( u32 json_len | JSON (utf-8) | binary arrays )
    records     one per tile, in tile order:
                u32 tile index | u32 payload length | u32 CRC-32 of (index, length, payload)
                | payload
    end         8 bytes b"SSCZEND\\0" | u32 number of tiles

The JSON names the arrays that follow it (``"arrays": {name: [dtype, count]}``, in order).
A tile payload is::

    u8 mask kind (0: every value valid, 1: one (h, w) pixel mask for all bands,
                  2: a (bands, h, w) value mask)
    [u32 length | zlib(packbits(invalid mask))]      kinds 1 and 2 only
    u32 escape count | int32 escaped latent values
    ANS words (uint32) up to the end of the payload

``h, w`` is the tile's part inside the cube (edge tiles are smaller than the model's tile).
Readers refuse, with one line naming the file and the tile: an unknown magic or version, a
header or record whose CRC fails, a record out of order, a file that ends early, bytes
after the end marker.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from parsers.errors import ProductError

MAGIC = b"SSCZ\r\n\x1a\n"
END = b"SSCZEND\0"
FORMAT_VERSION = 1
SUFFIX = ".sscz"
_PRE = struct.Struct("<8sHII")   # magic, version, header length, header CRC
_REC = struct.Struct("<III")     # tile index, payload length, CRC
_END = struct.Struct("<8sI")
RECORD_OVERHEAD = _REC.size
END_BYTES = _END.size
MASK_NONE, MASK_PIXELS, MASK_VALUES = 0, 1, 2
MAX_HEADER = 1 << 28
MAX_PAYLOAD = 1 << 31


@dataclass(frozen=True)
class Header:
    """The decoded header: the JSON fields plus the named binary arrays."""

    fields: dict[str, Any]
    arrays: dict[str, np.ndarray]
    nbytes: int  # bytes from the start of the file to the first record

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def pack_header(fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of magic + version + header (``fields`` must be JSON-able)."""
    spec, blobs = {}, []
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        dt = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
        spec[name] = [dt.str, int(a.size)]
        blobs.append(a.astype(dt, copy=False).tobytes())
    text = json.dumps({**fields, "arrays": spec}, sort_keys=True).encode()
    body = zlib.compress(struct.pack("<I", len(text)) + text + b"".join(blobs), 9)
    return _PRE.pack(MAGIC, FORMAT_VERSION, len(body), zlib.crc32(body)) + body


def read_header(fh: IO[bytes], path: str | os.PathLike[str]) -> Header:
    """Read and check the header at the start of ``fh`` (ProductError on any problem)."""
    pre = fh.read(_PRE.size)
    if pre[:8] != MAGIC[:len(pre)] or not pre:
        raise ProductError(path, "not an .sscz file (wrong magic bytes)")
    if len(pre) < 10:
        raise ProductError(path, "truncated in the header")
    version = struct.unpack("<H", pre[8:10])[0]
    if version != FORMAT_VERSION:
        raise ProductError(path, f"format version {version} is not supported (this reader "
                                 f"knows version {FORMAT_VERSION})")
    if len(pre) < _PRE.size:
        raise ProductError(path, "truncated in the header")
    _, _, hlen, hcrc = _PRE.unpack(pre)
    if hlen > MAX_HEADER:
        raise ProductError(path, "corrupt header (absurd length)")
    body = fh.read(hlen)
    if len(body) < hlen:
        raise ProductError(path, "truncated in the header")
    if zlib.crc32(body) != hcrc:
        raise ProductError(path, "corrupt header (CRC mismatch)")
    try:
        return _parse_header(zlib.decompress(body), _PRE.size + hlen)
    except (zlib.error, ValueError, KeyError, TypeError, struct.error):
        raise ProductError(path, "corrupt header (CRC fits but content does not parse)"
                           ) from None


def _parse_header(raw: bytes, nbytes: int) -> Header:
    (n,) = struct.unpack_from("<I", raw)
    fields = json.loads(raw[4:4 + n].decode())
    pos, arrays = 4 + n, {}
    for name, (dt, count) in fields.pop("arrays").items():
        dtype = np.dtype(dt)
        size = dtype.itemsize * int(count)
        if pos + size > len(raw):
            raise ValueError("array beyond the header")
        arrays[name] = np.frombuffer(raw, dtype, int(count), pos).astype(dtype.newbyteorder("="))
        pos += size
    if pos != len(raw):
        raise ValueError("bytes left in the header")
    return Header(fields, arrays, nbytes)


def record(index: int, payload: bytes) -> bytes:
    """One tile record: index, length, CRC-32 and the payload."""
    head = struct.pack("<II", index, len(payload))
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def end_marker(tiles: int) -> bytes:
    return _END.pack(END, tiles)


def iter_records(fh: IO[bytes], path: str | os.PathLike[str], tiles: int
                 ) -> Iterator[tuple[int, bytes]]:
    """Yield ``(index, payload)`` for tiles 0 .. tiles-1, checking order, lengths and CRCs,
    then the end marker and the end of the file."""
    for i in range(tiles):
        head = fh.read(_REC.size)
        if len(head) < _REC.size:
            raise ProductError(path, f"truncated at tile {i} of {tiles} (record header "
                                     "missing)")
        index, length, crc = _REC.unpack(head)
        if index != i or length > MAX_PAYLOAD:
            raise ProductError(path, f"corrupt record header at tile {i} of {tiles}")
        payload = fh.read(length)
        if len(payload) < length:
            raise ProductError(path, f"truncated in tile {i} of {tiles}")
        if zlib.crc32(payload, zlib.crc32(head[:8])) != crc:
            raise ProductError(path, f"corrupt tile {i} of {tiles} (CRC mismatch)")
        yield i, payload
    tail = fh.read(_END.size + 1)
    if len(tail) < _END.size:
        raise ProductError(path, f"truncated after tile {tiles - 1} (end marker missing)")
    if len(tail) > _END.size:
        raise ProductError(path, "unexpected bytes after the end marker")
    marker, count = _END.unpack(tail)
    if marker != END or count != tiles:
        raise ProductError(path, "corrupt end marker")


# --------------------------------------------------------------------------- payloads
def pack_payload(invalid: np.ndarray | None, words: np.ndarray, escapes: np.ndarray
                 ) -> tuple[bytes, int]:
    """(payload bytes of one tile, bytes of its mask section); ``invalid`` is the tile's
    (bands, h, w) invalid mask or None."""
    mask = pack_mask(invalid)
    parts = [mask, struct.pack("<I", escapes.size), escapes.astype("<i4").tobytes(),
             np.ascontiguousarray(words).astype("<u4").tobytes()]
    return b"".join(parts), len(mask)


def pack_mask(invalid: np.ndarray | None) -> bytes:
    if invalid is None or not invalid.any():
        return bytes([MASK_NONE])
    if (invalid == invalid[:1]).all():
        kind, bits = MASK_PIXELS, invalid[0]
    else:
        kind, bits = MASK_VALUES, invalid
    blob = zlib.compress(np.packbits(bits.ravel()).tobytes(), 9)
    return bytes([kind]) + struct.pack("<I", len(blob)) + blob


@dataclass(frozen=True)
class Payload:
    invalid: np.ndarray | None  # (bands, h, w) bool, or None when every value is valid
    escapes: np.ndarray         # int32
    words: np.ndarray           # uint32
    mask_bytes: int             # bytes of the mask section (incl. its kind byte)


def unpack_payload(payload: bytes, shape: tuple[int, int, int]) -> Payload:
    """Parse a payload for a tile region of ``shape`` (bands, h, w); ValueError if malformed."""
    kind = payload[0]
    pos = 1
    invalid = None
    if kind not in (MASK_NONE, MASK_PIXELS, MASK_VALUES):
        raise ValueError(f"unknown mask kind {kind}")
    if kind != MASK_NONE:
        (n,) = struct.unpack_from("<I", payload, pos)
        bits = np.frombuffer(zlib.decompress(payload[pos + 4:pos + 4 + n]), np.uint8)
        pos += 4 + n
        count = shape[1] * shape[2] * (shape[0] if kind == MASK_VALUES else 1)
        if bits.size != (count + 7) // 8:
            raise ValueError("mask size does not fit the tile")
        flat = np.unpackbits(bits)[:count].astype(bool)
        if kind == MASK_PIXELS:
            invalid = np.broadcast_to(flat.reshape(1, *shape[1:]), shape).copy()
        else:
            invalid = flat.reshape(shape)
    mask_bytes = pos
    (n_esc,) = struct.unpack_from("<I", payload, pos)
    pos += 4
    if pos + 4 * n_esc > len(payload) or (len(payload) - pos - 4 * n_esc) % 4:
        raise ValueError("escape count does not fit the payload")
    escapes = np.frombuffer(payload, "<i4", n_esc, pos).astype(np.int32)
    pos += 4 * n_esc
    words = np.frombuffer(payload, "<u4", (len(payload) - pos) // 4, pos).astype(np.uint32)
    return Payload(invalid, escapes, words, mask_bytes)
