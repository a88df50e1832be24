"""Fused per-block statistics kernels: every value is read once (numba, GIL released).

:class:`pipeline.stats.StatsAccumulator` hands each block to one of these kernels as a
``(pixels, bands)`` array (a view of the reader's buffer: pixel-major for VIRTIS BIP,
band-major for Sentinel-2). In one pass over the values the kernel adds, per band:

* ``invalid``: values skipped (NaN, +-inf, or a pixel whose ``valid`` flag is False);
* ``s1``, ``s2``: sums of ``d`` and ``d * d`` in float64 with ``d = x - ref[b]``, where
  ``ref[b]`` is the first valid value of the band in the block (found by a short scan
  first, so that the sums stay small and the variance well conditioned, and so that a
  block's moments depend on the block alone);
* ``lo``, ``hi``: min and max of the valid values;
* ``hist``: one count per value in its histogram bin (the float bin rule of
  :class:`pipeline.stats.HistogramSpec`, or the value itself for uint16 data). ``hist`` is
  ``(bands, nbins + 1)`` int32: the extra last column takes the skipped values, so that the
  scatter loop needs no test.

Pixel-major blocks (bands contiguous) are done ``P`` pixels at a time: first one loop over
those pixels with the bands inner (moments and bin keys; the compiler vectorises it across
bands), then the histogram increments band by band from the keys (one band's bins stay in
the L1 cache instead of 432 bands' rows being touched for every pixel). On a 32 MB block of
432-band radiance that takes the pass from about 66 ms to about 21 ms (docs/benchmarks.md).

Why numba: with numpy the same statistics take about 14 passes over a block (88 ms per
32 MB block of 432-band radiance); the fused kernel takes one. The numpy version of the bin
rule, :meth:`pipeline.stats.HistogramSpec.bin_index`, stays as the reference the tests
compare to.
"""

from __future__ import annotations

import numpy as np
from numba import njit

PIXELS_PER_PASS = 256  # pixels whose keys are scattered band by band (P above)


@njit(nogil=True, cache=True)
def _first_valid(x, valid, ref):  # pragma: no cover - compiled
    """ref[b] = first valid value of band b (NaN where the block has none)."""
    n_pix, n_bands = x.shape
    masked = valid.size > 0
    ref[:] = np.nan
    missing = n_bands
    for p in range(n_pix):
        if masked and not valid[p]:
            continue
        for b in range(n_bands):
            if ref[b] != ref[b]:
                v = np.float64(x[p, b])
                if v - v == 0.0:
                    ref[b] = v
                    missing -= 1
        if missing == 0:
            return


@njit(nogil=True, cache=True, error_model="numpy")
def accumulate_float(x, bits, valid, shift, first, top, center,
                     ref, invalid, s1, s2, lo, hi, hist):  # pragma: no cover - compiled
    """Add float32 ``x`` (P, B) to the per-band accumulators (module docstring).

    ``bits``: ``x`` viewed as int32 (the bin key comes from the bit pattern); ``valid``:
    (P,) bool, or an empty array when every pixel is valid; ``shift``, ``first``, ``top``,
    ``center``: the float bin rule of the histogram spec; ``ref`` is set by the kernel.
    """
    _first_valid(x, valid, ref)
    n_pix, n_bands = x.shape
    masked = valid.size > 0
    trash = hist.shape[1] - 1
    if x.strides[1] > x.strides[0]:  # band-major: one band at a time
        for b in range(n_bands):
            r, a1, a2, bad, mn, mx = ref[b], 0.0, 0.0, 0, lo[b], hi[b]
            h = hist[b]
            for p in range(n_pix):
                v = x[p, b]
                if (masked and not valid[p]) or v - v != 0.0:
                    bad += 1
                    continue
                d = np.float64(v) - r
                a1 += d
                a2 += d * d
                mn = min(mn, v)
                mx = max(mx, v)
                w = bits[p, b]
                k = min(max(((w & 0x7FFFFFFF) >> shift) - first, 0), top)
                h[center - k if w < 0 else center + k] += 1
            s1[b] += a1
            s2[b] += a2
            invalid[b] += bad
            lo[b] = mn
            hi[b] = mx
        return
    keys = np.empty((min(PIXELS_PER_PASS, n_pix), n_bands), np.int32)
    for p0 in range(0, n_pix, PIXELS_PER_PASS):
        p1 = min(n_pix, p0 + PIXELS_PER_PASS)
        for p in range(p0, p1):
            if masked and not valid[p]:
                for b in range(n_bands):
                    invalid[b] += 1
                    keys[p - p0, b] = trash
                continue
            for b in range(n_bands):
                v = x[p, b]
                ok = v - v == 0.0
                d = np.float64(v) - ref[b] if ok else 0.0
                s1[b] += d
                s2[b] += d * d
                invalid[b] += 0 if ok else 1
                lo[b] = v if ok and v < lo[b] else lo[b]
                hi[b] = v if ok and v > hi[b] else hi[b]
                w = bits[p, b]
                k = min(max(((w & 0x7FFFFFFF) >> shift) - first, 0), top)
                k = center - k if w < 0 else center + k
                keys[p - p0, b] = k if ok else trash
        _scatter(keys, p1 - p0, hist)


@njit(nogil=True, cache=True)
def _scatter(keys, n, hist):  # pragma: no cover - compiled
    """hist[b, keys[p, b]] += 1 for the first n rows of keys, one band at a time."""
    for b in range(keys.shape[1]):
        h = hist[b]
        for p in range(n):
            h[keys[p, b]] += 1


@njit(nogil=True, cache=True, error_model="numpy")
def accumulate_uint16(x, valid, ref, invalid, s1, s2, lo, hi, hist):  # pragma: no cover
    """Add uint16 ``x`` (P, B) to the accumulators; the histogram bin is the value."""
    _first_valid(x, valid, ref)
    n_pix, n_bands = x.shape
    masked = valid.size > 0
    if x.strides[1] > x.strides[0]:  # band-major (Sentinel-2): one band at a time
        for b in range(n_bands):
            r, a1, a2, bad, mn, mx = ref[b], 0.0, 0.0, 0, lo[b], hi[b]
            h = hist[b]
            for p in range(n_pix):
                if masked and not valid[p]:
                    bad += 1
                    continue
                v = x[p, b]
                d = np.float64(v) - r
                a1 += d
                a2 += d * d
                mn = min(mn, np.float32(v))
                mx = max(mx, np.float32(v))
                h[v] += 1
            s1[b] += a1
            s2[b] += a2
            invalid[b] += bad
            lo[b] = mn
            hi[b] = mx
        return
    for p in range(n_pix):
        if masked and not valid[p]:
            for b in range(n_bands):
                invalid[b] += 1
            continue
        for b in range(n_bands):
            v = x[p, b]
            d = np.float64(v) - ref[b]
            s1[b] += d
            s2[b] += d * d
            lo[b] = min(lo[b], np.float32(v))
            hi[b] = max(hi[b], np.float32(v))
            hist[b, v] += 1

