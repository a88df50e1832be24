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
bands; ``GROUP`` pixels are summed per band before touching the band's accumulators), then
the histogram increments band by band from the keys (one band's bins stay in the L1 cache
instead of 432 bands' rows being touched for every pixel). On a 32 MB block of 432-band
radiance that takes the pass from about 66 ms to about 15 ms (docs/benchmarks.md).

With a sampled histogram (``sampled``, :func:`pipeline.stats.sample_rows` gives ``rows``) the
moments pass is the same loop without keys, so counts, min, max and moments keep the same
bits, and only the picked pixels are keyed and counted.

Why numba: with numpy the same statistics take about 14 passes over a block (88 ms per
32 MB block of 432-band radiance); the fused kernel takes one. The numpy version of the bin
rule, :meth:`pipeline.stats.HistogramSpec.bin_index`, stays as the reference the tests
compare to.
"""

from __future__ import annotations

import numpy as np
from numba import njit

PIXELS_PER_PASS = 256  # pixels whose keys are scattered band by band (P above)
GROUP = 4  # pixels whose moments are added together, per band


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


@njit(nogil=True, cache=True, inline="always")
def _key(w, shift, first, top, center):  # pragma: no cover - compiled
    """Histogram bin of the float32 whose bit pattern is ``w`` (HistogramSpec.bin_index)."""
    k = min(max(((w & 0x7FFFFFFF) >> shift) - first, 0), top)
    return center - k if w < 0 else center + k


@njit(nogil=True, cache=True, error_model="numpy")
def _pixel_major(x, bits, valid, rule, ref, invalid, s1, s2, lo, hi, hist,
                 with_keys):  # pragma: no cover - compiled
    """Moments of the valid values of pixel-major ``x`` and, ``with_keys``, the histogram
    of all of them, PIXELS_PER_PASS pixels at a time (keys, then the scatter). Pixels go
    GROUP at a time, one by one in a group with a masked pixel and at the end: the same
    order with or without keys, so the same bits."""
    n_pix, n_bands = x.shape
    masked = valid.size > 0
    shift, first, top, center, trash = rule
    keys = np.empty((n_bands, PIXELS_PER_PASS), np.int32)
    for p0 in range(0, n_pix, PIXELS_PER_PASS):
        p1 = min(n_pix, p0 + PIXELS_PER_PASS)
        full = p0 + (p1 - p0) // GROUP * GROUP
        for p in range(p0, full, GROUP):
            if masked and not _all(valid, p, GROUP):
                for q in range(p, p + GROUP):
                    _one(x, bits, valid, q, p0, rule, ref, invalid, s1, s2, lo, hi, keys,
                         with_keys)
                continue
            for b in range(n_bands):
                a1 = 0.0
                a2 = 0.0
                bad = 0
                mn = lo[b]
                mx = hi[b]
                r = ref[b]
                for j in range(GROUP):
                    v = x[p + j, b]
                    ok = v - v == 0.0
                    d = np.float64(v) - r if ok else 0.0
                    a1 += d
                    a2 += d * d
                    bad += 0 if ok else 1
                    mn = v if ok and v < mn else mn
                    mx = v if ok and v > mx else mx
                    if with_keys:
                        k = _key(bits[p + j, b], shift, first, top, center)
                        keys[b, p + j - p0] = k if ok else trash
                s1[b] += a1
                s2[b] += a2
                invalid[b] += bad
                lo[b] = mn
                hi[b] = mx
        for q in range(full, p1):
            _one(x, bits, valid, q, p0, rule, ref, invalid, s1, s2, lo, hi, keys, with_keys)
        if with_keys:
            _scatter(keys, p1 - p0, hist)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _one(x, bits, valid, p, p0, rule, ref, invalid, s1, s2, lo, hi, keys,
         with_keys):  # pragma: no cover - compiled
    """Add pixel p alone (all its values invalid if ``valid`` masks it)."""
    shift, first, top, center, trash = rule
    use = valid.size == 0 or valid[p]
    for b in range(x.shape[1]):
        v = x[p, b]
        ok = use and v - v == 0.0
        if ok:
            d = np.float64(v) - ref[b]
            s1[b] += d
            s2[b] += d * d
            lo[b] = min(lo[b], v)
            hi[b] = max(hi[b], v)
        else:
            invalid[b] += 1
        if with_keys:
            k = _key(bits[p, b], shift, first, top, center)
            keys[b, p - p0] = k if ok else trash


@njit(nogil=True, cache=True, inline="always")
def _all(valid, p, g):  # pragma: no cover - compiled
    """valid[p:p + g] all True (a loop: a slice's .all() here slows the whole pass 1.8x)."""
    for j in range(g):  # noqa: SIM110 - numba
        if not valid[p + j]:
            return False
    return True


@njit(nogil=True, cache=True)
def _scatter(keys, n, hist):  # pragma: no cover - compiled
    """hist[b, keys[b, q]] += 1 for q < n, one band at a time (its bins stay in L1)."""
    for b in range(keys.shape[0]):
        h = hist[b]
        kb = keys[b]
        for q in range(n):
            h[kb[q]] += 1


@njit(nogil=True, cache=True, error_model="numpy")
def accumulate_float(x, bits, valid, rows, sampled, shift, first, top, center,
                     ref, invalid, s1, s2, lo, hi, hist):  # pragma: no cover - compiled
    """Add float32 ``x`` (P, B) to the per-band accumulators (module docstring).

    ``bits``: ``x`` viewed as int32 (the bin key comes from the bit pattern); ``valid``:
    (P,) bool, or an empty array when every pixel is valid; ``rows``: with ``sampled``, the
    sorted pixels whose values go into the histogram (the moments take every pixel);
    ``shift``, ``first``, ``top``, ``center``: the float bin rule of the histogram spec;
    ``ref`` is set by the kernel.
    """
    _first_valid(x, valid, ref)
    n_pix, n_bands = x.shape
    trash = hist.shape[1] - 1
    rule = (shift, first, top, center, trash)
    masked = valid.size > 0
    if x.strides[1] > x.strides[0]:  # band-major: one band at a time
        inhist = _row_mask(n_pix, rows, sampled)
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
                if inhist[p]:
                    h[_key(bits[p, b], shift, first, top, center)] += 1
            _band_done(b, a1, a2, bad, mn, mx, s1, s2, invalid, lo, hi)
        return
    _pixel_major(x, bits, valid, rule, ref, invalid, s1, s2, lo, hi, hist, not sampled)
    if not sampled:
        return
    keys = np.empty((PIXELS_PER_PASS, n_bands), np.int32)  # pixel-major here
    for q0 in range(0, rows.size, PIXELS_PER_PASS):
        q1 = min(rows.size, q0 + PIXELS_PER_PASS)
        for q in range(q0, q1):
            p = rows[q]
            if masked and not valid[p]:
                keys[q - q0, :] = trash
                continue
            for b in range(n_bands):
                k = _key(bits[p, b], shift, first, top, center)
                keys[q - q0, b] = k if x[p, b] - x[p, b] == 0.0 else trash
        _scatter(keys.T, q1 - q0, hist)


@njit(nogil=True, cache=True, inline="always")
def _band_done(b, a1, a2, bad, mn, mx, s1, s2, invalid, lo, hi):  # pragma: no cover
    """Add one band's sums over a band-major block to the accumulators."""
    s1[b] += a1
    s2[b] += a2
    invalid[b] += bad
    lo[b] = mn
    hi[b] = mx


@njit(nogil=True, cache=True)
def _row_mask(n_pix, rows, sampled):  # pragma: no cover - compiled
    """(n_pix,) bool: True for the pixels that go into the histogram."""
    if not sampled:
        return np.ones(n_pix, np.bool_)
    m = np.zeros(n_pix, np.bool_)
    for q in range(rows.size):
        m[rows[q]] = True
    return m


@njit(nogil=True, cache=True, error_model="numpy")
def accumulate_uint16(x, valid, rows, sampled, ref, invalid, s1, s2, lo, hi,
                      hist):  # pragma: no cover - compiled
    """Add uint16 ``x`` (P, B) to the accumulators; the histogram bin is the value.
    ``valid``, ``rows``, ``sampled``: as for :func:`accumulate_float`."""
    _first_valid(x, valid, ref)
    n_pix, n_bands = x.shape
    masked = valid.size > 0
    inhist = _row_mask(n_pix, rows, sampled)
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
                if inhist[p]:
                    h[v] += 1
            _band_done(b, a1, a2, bad, mn, mx, s1, s2, invalid, lo, hi)
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
            if inhist[p]:
                hist[b, v] += 1
