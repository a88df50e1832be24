"""Tile chunks made outside HDF5: cutting, invalid counts, Blosc2 and Fletcher-32 in parallel.

h5py holds one lock for every HDF5 call, so tiles compressed through HDF5's filter pipeline
(an in-memory HDF5 file per task) are compressed one chunk at a time in a threaded stage,
and each chunk is copied into and out of that file. For the tile files' default pipeline,
Blosc2 then Fletcher-32, this module makes the stored chunk bytes itself:

* :func:`column_invalid`: one pass (numba, GIL released) over a tile row in the reader's
  memory order (VIRTIS blocks are pixel-major views) counts the invalid values of every
  sample column (NaN/inf, and every value of a pixel whose ``valid`` flag is False); a tile's
  count is the sum over its columns.
* :class:`Blosc2Chunks`: copies a tile out of the block straight into the buffer the filter
  takes (one transposing copy), calls the Blosc2 filter function of hdf5plugin, the very
  function HDF5 calls, with the filter values HDF5 computed for the dataset, through ctypes
  (which releases the GIL while it runs), then appends HDF5's Fletcher-32 checksum of the
  compressed bytes (:func:`fletcher32`, little-endian, as HDF5's ``fletcher32`` filter
  does). The bytes are those HDF5 would have stored (tests/pipeline/test_tile_chunks.py
  compares them chunk by chunk), so any HDF5 reader with hdf5plugin reads the file.

Other pipelines (gzip, lzf, none, and the Sentinel-2 ``valid`` masks) keep going through
HDF5 (:class:`pipeline.tiles.ChunkEncoder`).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np
from numba import njit

BLOSC2_ID = 32026
FLETCHER32_ID = 3


@njit(nogil=True, cache=True)
def fletcher32(data):  # pragma: no cover - compiled
    """HDF5's Fletcher-32 checksum of ``data`` (uint8, 1-D), as H5_checksum_fletcher32 computes
    it: 16-bit big-endian words, both sums folded every 360 words, 32-bit arithmetic.

    Per run of n <= 360 words the C loop adds sum1 += sum(w) and sum2 += n * sum1_before +
    sum((n - i) * w_i); those sums are taken here in 64 bits (a loop the compiler vectorises)
    and reduced modulo 2**32, which is what the C loop's wrapping additions give.
    """
    mask = 0xFFFFFFFF
    words = data.size // 2
    s1 = 0
    s2 = 0
    i = 0
    while words > 0:
        n = min(words, 360)
        words -= n
        a = 0
        c = 0
        for k in range(n):
            w = (np.int64(data[i + 2 * k]) << 8) | np.int64(data[i + 2 * k + 1])
            a += w
            c += (n - k) * w
        i += 2 * n
        s2 = (s2 + n * s1 + c) & mask
        s1 = (s1 + a) & mask
        s1 = (s1 & 0xFFFF) + (s1 >> 16)
        s2 = (s2 & 0xFFFF) + (s2 >> 16)
    if data.size % 2:
        s1 = (s1 + (np.int64(data[i]) << 8)) & mask
        s2 = (s2 + s1) & mask
        s1 = (s1 & 0xFFFF) + (s1 >> 16)
        s2 = (s2 & 0xFFFF) + (s2 >> 16)
    s1 = (s1 & 0xFFFF) + (s1 >> 16)
    s2 = (s2 & 0xFFFF) + (s2 >> 16)
    return ((s2 << 16) | s1) & mask


@njit(nogil=True, cache=True)
def column_invalid(data, valid, out):  # pragma: no cover - compiled
    """out[s] = invalid values of sample column s of ``data`` (B, H, S), in its memory order:
    NaN/inf, and all B values of a pixel whose ``valid`` (H, S) flag is False (``valid``
    empty: every pixel valid)."""
    bands, lines, samples = data.shape
    masked = valid.size > 0
    out[:] = 0
    if data.strides[0] < data.strides[2]:  # bands innermost (pixel-major, BIP)
        for h in range(lines):
            for s in range(samples):
                if masked and not valid[h, s]:
                    out[s] += bands
                    continue
                n = 0
                for b in range(bands):
                    v = data[b, h, s]
                    n += v - v != 0
                out[s] += n
    else:
        for b in range(bands):
            for h in range(lines):
                for s in range(samples):
                    v = data[b, h, s]
                    out[s] += (v - v != 0) or (masked and not valid[h, s])


_LIBC = ctypes.CDLL(None)
_LIBC.malloc.restype = ctypes.c_void_p
_LIBC.malloc.argtypes = [ctypes.c_size_t]
_LIBC.free.restype = None
_LIBC.free.argtypes = [ctypes.c_void_p]


def _filter_function() -> Any:
    """hdf5plugin's ``blosc2_filter_function`` (the H5Z filter callback) as a ctypes call."""
    import glob
    import os

    import hdf5plugin

    names = glob.glob(os.path.join(hdf5plugin.PLUGIN_PATH, "libh5blosc2*"))
    if not names:
        raise RuntimeError("hdf5plugin has no Blosc2 filter library")
    lib = ctypes.CDLL(names[0])
    fn = lib.blosc2_filter_function
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_uint, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint),
                   ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t),
                   ctypes.POINTER(ctypes.c_void_p)]
    lib.blosc2_init.restype = None
    lib.blosc2_init()  # once, here: the filter's own call to it is not thread-safe
    return fn


def filter_values(dataset_kwargs: dict[str, Any]) -> list[tuple[int, tuple[int, ...]]]:
    """(filter id, values) of the pipeline HDF5 sets up for a dataset made with these
    ``create_dataset`` arguments (values after the filters' ``set_local``)."""
    import h5py

    name = f"filters-{threading.get_ident()}.h5"
    with h5py.File(name, "w", driver="core", backing_store=False) as f:
        plist = f.create_dataset("x", **dataset_kwargs).id.get_create_plist()
        return [(int(code), tuple(int(v) for v in values))
                for code, _, values, _ in (plist.get_filter(i)
                                           for i in range(plist.get_nfilters()))]


class Blosc2Chunks:
    """Stored HDF5 chunk bytes (Blosc2 then Fletcher-32) of one dataset's chunks."""

    def __init__(self, values: tuple[int, ...], chunk_bytes: int) -> None:
        self._fn = _function()
        self._values = (ctypes.c_uint * len(values))(*values)
        self.chunk_bytes = chunk_bytes

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        """The stored bytes (uint8) of one chunk; ``chunk`` in any memory order (a view of
        the reader's block is copied once, into the buffer the filter takes)."""
        n = chunk.nbytes
        if n != self.chunk_bytes:
            raise ValueError(f"a chunk of {self.chunk_bytes} bytes is needed, not {n}")
        buf = ctypes.c_void_p(_LIBC.malloc(n))
        if not buf.value:
            raise MemoryError(f"cannot allocate {n} bytes to compress a tile")
        try:
            raw = np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(buf.value))
            np.copyto(raw.view(chunk.dtype).reshape(chunk.shape), chunk)
            size = ctypes.c_size_t(n)
            stored = self._fn(0, len(self._values), self._values, n, ctypes.byref(size),
                              ctypes.byref(buf))  # compresses into a new buffer, frees ours
            if stored == 0:  # (the filter also tears down Blosc2's globals then)
                raise RuntimeError("the Blosc2 filter could not compress a tile")
            packed = np.ctypeslib.as_array((ctypes.c_uint8 * stored).from_address(buf.value))
            out = np.empty(stored + 4, np.uint8)
            out[:stored] = packed
            out[stored:] = np.array([fletcher32(packed)], "<u4").view(np.uint8)
        finally:
            _LIBC.free(buf)
        return out


_LOCK = threading.Lock()
_FUNCTION: list[Any] = []


def _function() -> Any:
    with _LOCK:
        if not _FUNCTION:
            _FUNCTION.append(_filter_function())
        return _FUNCTION[0]


def blosc2_chunks(dataset_kwargs: dict[str, Any], chunk_bytes: int) -> Blosc2Chunks | None:
    """A :class:`Blosc2Chunks` for a dataset made with ``dataset_kwargs``, or None when its
    pipeline is not exactly Blosc2 then Fletcher-32."""
    pipeline = filter_values(dataset_kwargs)
    if [code for code, _ in pipeline] != [BLOSC2_ID, FLETCHER32_ID]:
        return None
    return Blosc2Chunks(pipeline[0][1], chunk_bytes)
