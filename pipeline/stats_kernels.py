"""Fused per-block statistics kernels: every value is read once (numba, GIL released).

:meth:`pipeline.stats.BandStats.update` hands each block to one of these kernels as a
``(pixels, bands)`` array (a view of the reader's buffer: pixel-major for VIRTIS BIP,
band-major for Sentinel-2). In one pass over the values the kernel adds, per band:

* ``invalid``: values skipped (NaN, +-inf, or a pixel whose ``valid`` flag is False);
* ``s1``, ``s2``: sums of ``d`` and ``d * d`` in float64 with ``d = x - ref[b]``; a band whose
  ``ref`` is NaN takes its first valid value as ``ref`` (the caller passes the running mean,
  so the sums stay small and the variance well conditioned);
* ``lo``, ``hi``: min and max of the valid values;
* ``hist``: one count per value in its histogram bin (the float bin rule of
  :class:`pipeline.stats.HistogramSpec`, or the value itself for uint16 data).

Why numba: with numpy the same statistics take about 14 passes over a block (88 ms per
32 MB block of 432-band radiance, 360 MB/s); the fused kernel takes one (about 25 ms on the
same block and machine, see docs/benchmarks.md). The numpy version of the bin rule,
:meth:`pipeline.stats.HistogramSpec.bin_index`, stays as the reference the tests compare to.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit
def _float_key(w, shift, first, top, center):  # pragma: no cover - compiled
    k = ((w & 0x7FFFFFFF) >> shift) - first
    k = min(max(k, 0), top)
    return center - k if w < 0 else center + k


@njit(nogil=True, cache=True, error_model="numpy")
def accumulate_float(x, bits, valid, shift, first, top, center,
                     ref, invalid, s1, s2, lo, hi, hist):  # pragma: no cover - compiled
    """Add float32 ``x`` (P, B) to the per-band accumulators (module docstring).

    ``bits``: ``x`` viewed as int32 (the bin key comes from the bit pattern); ``valid``:
    (P,) bool, or an empty array when every pixel is valid; ``shift``, ``first``, ``top``,
    ``center``: the float bin rule of the histogram spec. Pixels outer, bands inner.
    """
    n_pix, n_bands = x.shape
    masked = valid.size > 0
    for p in range(n_pix):
        if masked and not valid[p]:
            for b in range(n_bands):
                invalid[b] += 1
            continue
        for b in range(n_bands):
            v = x[p, b]
            if v - v != 0.0:  # NaN or +-inf
                invalid[b] += 1
                continue
            if ref[b] != ref[b]:
                ref[b] = v
            d = np.float64(v) - ref[b]
            s1[b] += d
            s2[b] += d * d
            if v < lo[b]:
                lo[b] = v
            if v > hi[b]:
                hi[b] = v
            hist[b, _float_key(bits[p, b], shift, first, top, center)] += 1


@njit(nogil=True, cache=True, error_model="numpy")
def accumulate_uint16(x, valid, ref, invalid, s1, s2, lo, hi, hist):  # pragma: no cover
    """Add uint16 ``x`` (P, B) to the accumulators; the histogram bin is the value.

    Pixels outer, bands inner: a band-major block (Sentinel-2, 9 bands) is read as 9
    interleaved streams.
    """
    n_pix, n_bands = x.shape
    masked = valid.size > 0
    for p in range(n_pix):
        if masked and not valid[p]:
            for b in range(n_bands):
                invalid[b] += 1
            continue
        for b in range(n_bands):
            v = x[p, b]
            if ref[b] != ref[b]:
                ref[b] = v
            d = np.float64(v) - ref[b]
            s1[b] += d
            s2[b] += d * d
            if v < lo[b]:
                lo[b] = v
            if v > hi[b]:
                hi[b] = v
            hist[b, v] += 1
