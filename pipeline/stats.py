"""Per-band statistics over the training products: one pass, exact merge, scheduled by dask.

Each product (or strip, or ``task_lines`` lines of one) is read in blocks of about
``chunk_mb`` MB. A task (consecutive products, about ``task_mb`` MB, see
:mod:`pipeline.schedulers` for where it runs: a thread, a worker process or a
``dask.distributed`` worker with ``--scheduler tcp://host:8786``) adds its blocks into one
:class:`Partial`: the parts of the statistics that do not depend on the order of the values
(counts, min, max, histogram) summed in place, and the moments (count, mean, M2) of every
block. The stage adds the partials as they come back, in task order, and folds the block
moments in read order, so the result is bit for bit the same whatever the scheduler, the
worker count and ``task_mb``.

Per band: count of valid values, count of invalid ones (NaN/inf, masked pixels), min, max,
mean and M2 (per block in float64, blocks combined with the Chan et al. 1979 parallel update),
and a fixed-edge histogram for percentiles, all from one fused pass over each block
(:mod:`pipeline.stats_kernels`):

* integer data (Sentinel-2 uint16): one bin per integer value, so percentiles are exact.
* float data (VIRTIS radiance): bins taken from the float32 bit pattern: sign, exponent and
  the top ``mantissa_bits`` mantissa bits (log-linear bins, no range needed in advance).
  Magnitudes below ``2**min_exponent`` share one bin around zero; magnitudes at or above
  ``2**max_exponent`` go to an overflow bin per sign.

**Percentile tolerance** (numpy's default ``linear`` method, order statistics ``x_k``,
``x_k+1`` around the rank): ``|estimate - exact| <= 2**-(mantissa_bits+1) * max(|x_k|,
|x_k+1|) + 2**min_exponent`` whenever both order statistics lie below ``2**max_exponent``
(0.39 % relative + 1.5e-5 absolute with the defaults). An estimate that falls into an
overflow bin has no guarantee and is listed in ``stats.json`` under
``percentile_tolerance.unbounded``. Invalid values (NaN, inf, masked pixels) are ignored.

**Sampled histogram** (``hist_sample: k`` > 1, faster): the histogram counts one pixel in each
run of k samples of a line, picked by a hash of (product file name, line, run)
(:func:`sample_rows`); everything else still takes every value. The percentiles then also
carry a rank tolerance: with probability 0.999 the estimate of percentile q lies between the
exact ones at q - t and q + t, t from :func:`rank_tolerance`, written per percentile to
``stats.json`` under ``percentile_sample``. ``hist_sample: 1`` (the default) is the exact mode.

CLI: ``python -m pipeline.stats --params params.yaml --dataset S --split data/split/S.json
--out data/stats/S.json [--scheduler threads|processes|synchronous|tcp://h:8786]``.
Params ``stats`` + ``datasets.<name>.stats`` (:class:`StatsParams`).
"""

from __future__ import annotations

import json
import math
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parsers.atomic import atomic_open
from parsers.errors import UserError, cli_entry
from parsers.locks import lock_output
from pipeline.params import stage_parser, stage_settings, to_dict
from pipeline.schedulers import check_scheduler, ordered_map

UINT16_BINS = 1 << 16
# Imported by worker processes before they start (the kernels load once, see schedulers).
WORKER_MODULES = ("pipeline.stats_kernels",)
# Settings that choose how the work runs, not what is computed: left out of stats.json.
RUN_KEYS = ("scheduler", "workers", "task_mb")


@dataclass(frozen=True)
class StatsParams:
    """Settings of the statistics stage (params section ``stats``).

    scheduler: ``threads`` | ``processes`` | ``synchronous`` | ``tcp://host:port`` (a
        ``dask.distributed`` scheduler; workers need the same file paths).
    workers: local worker threads/processes (0 = dask's default, the CPU count).
    chunk_mb: size of one block of lines read at a time (bounds memory per task).
    task_lines: split products into pieces of this many lines (0 = whole products).
    task_mb: about how many MB of products one task reads (small products are grouped;
        scheduling only: the statistics are the same whatever its value).
    percentiles: percentiles (in %) written to stats.json; 0.1 and 99.9 are always added.
    hist_mantissa_bits, hist_min_exponent, hist_max_exponent: float histogram resolution
        and window (see the module docstring for the tolerance they give).
    hist_sample: 1 = every valid value goes into the histogram (exact percentiles, bin
        tolerance aside); k > 1 = one pixel in each run of k samples of a line (faster; the
        percentiles then also carry a rank tolerance, written to stats.json). Counts, min,
        max, mean and std always take every value.
    """

    scheduler: str = "threads"
    workers: int = 0
    chunk_mb: float = 32.0
    task_lines: int = 0
    task_mb: float = 256.0
    percentiles: list[float] = field(default_factory=lambda: [0.1, 1.0, 50.0, 99.0, 99.9])
    hist_mantissa_bits: int = 7
    hist_min_exponent: int = -16
    hist_max_exponent: int = 16
    hist_sample: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.hist_mantissa_bits <= 12:
            raise ValueError("hist_mantissa_bits must be in 1..12")
        if not -126 <= self.hist_min_exponent < self.hist_max_exponent <= 127:
            raise ValueError("need -126 <= hist_min_exponent < hist_max_exponent <= 127")
        if self.chunk_mb <= 0 or self.task_mb <= 0 or self.workers < 0 or self.task_lines < 0:
            raise ValueError("chunk_mb and task_mb must be > 0, workers and task_lines >= 0")
        if not 1 <= self.hist_sample <= 64:
            raise ValueError("hist_sample must be in 1..64 (1 = every value)")
        if any(not 0.0 <= q <= 100.0 for q in self.percentiles):
            raise ValueError("percentiles must lie in [0, 100]")
        check_scheduler(self.scheduler)

    @property
    def histogram(self) -> HistogramSpec:
        return HistogramSpec(
            "float", self.hist_mantissa_bits, self.hist_min_exponent, self.hist_max_exponent,
            self.hist_sample,
        )


# --------------------------------------------------------------------------------------
# Histogram layout
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistogramSpec:
    """Fixed bin layout of the per-band histogram.

    kind ``"uint16"``: 65536 bins, bin i holds the integer value i (exact percentiles).
    kind ``"float"``: log-linear bins from the float32 bit pattern (module docstring).
    sample: which pixels the histogram counts: all (1), or one in each run of ``sample``
    samples of a line (:func:`sample_rows`).
    """

    kind: str = "float"
    mantissa_bits: int = 7
    min_exponent: int = -16
    max_exponent: int = 16
    sample: int = 1

    @property
    def n_magnitude(self) -> int:
        return (self.max_exponent - self.min_exponent) << self.mantissa_bits

    @property
    def nbins(self) -> int:
        if self.kind == "uint16":
            return UINT16_BINS
        # negative overflow, negative window, zero/underflow, positive window, positive overflow
        return 2 * self.n_magnitude + 3

    @property
    def center(self) -> int:
        return self.n_magnitude + 1

    @property
    def relative_tolerance(self) -> float:
        return 0.0 if self.kind == "uint16" else 2.0 ** -(self.mantissa_bits + 1)

    @property
    def absolute_tolerance(self) -> float:
        return 0.0 if self.kind == "uint16" else 2.0**self.min_exponent

    def bin_index(self, x: np.ndarray) -> np.ndarray:
        """Bin of every value of ``x`` (any shape) as int32; NaN/inf land in overflow bins."""
        if self.kind == "uint16":
            return x.astype(np.int32)
        x = np.ascontiguousarray(x, dtype=np.float32)
        k = x.view(np.uint32) & np.uint32(0x7FFFFFFF)  # magnitude bits, ordered like |x|
        k >>= np.uint32(23 - self.mantissa_bits)
        k = k.view(np.int32)
        k -= ((127 + self.min_exponent) << self.mantissa_bits) - 1
        np.clip(k, 0, self.n_magnitude + 1, out=k)
        np.negative(k, out=k, where=x < 0)
        k += self.center
        return k

    def representatives(self, minimum: np.ndarray, maximum: np.ndarray) -> np.ndarray:
        """(B, nbins) float64 value standing for each bin, clamped to each band's [min, max]."""
        if self.kind == "uint16":
            row = np.arange(UINT16_BINS, dtype=np.float64)
            rep = np.broadcast_to(row, (len(minimum), UINT16_BINS))
        else:
            shift = 23 - self.mantissa_bits
            first = (127 + self.min_exponent) << self.mantissa_bits
            keys = np.arange(first, first + self.n_magnitude + 1, dtype=np.uint32)
            keys <<= np.uint32(shift)
            edges = keys.view(np.float32).astype(np.float64)  # n_magnitude + 1 lower edges
            mid = 0.5 * (edges[:-1] + edges[1:])
            top = edges[-1]
            pos = np.concatenate([[0.0], mid, [top]])  # underflow, window, overflow (lower edge)
            row = np.concatenate([-pos[:0:-1], pos])
            rep = np.broadcast_to(row, (len(minimum), row.size)).copy()
            # Overflow bins: the middle of [2**max_exponent, band max] (no guarantee).
            hi = np.maximum(maximum, top)
            lo = np.minimum(minimum, -top)
            rep[:, -1] = 0.5 * (top + hi)
            rep[:, 0] = 0.5 * (-top + lo)
        lo_b = np.where(np.isfinite(minimum), minimum, -np.inf)[:, None]
        hi_b = np.where(np.isfinite(maximum), maximum, np.inf)[:, None]
        return np.clip(rep, lo_b, hi_b)

    def is_overflow(self, bins: np.ndarray) -> np.ndarray:
        if self.kind == "uint16":
            return np.zeros(np.shape(bins), dtype=bool)
        return (bins == 0) | (bins == self.nbins - 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "mantissa_bits": self.mantissa_bits,
            "min_exponent": self.min_exponent, "max_exponent": self.max_exponent,
            "sample": self.sample,
        }


def histogram_spec_for(dtype: np.dtype, float_spec: HistogramSpec) -> HistogramSpec:
    """The histogram layout for data of ``dtype``: exact bins for (u)int8/uint16, else float."""
    dtype = np.dtype(dtype)
    if dtype.kind in "u" and dtype.itemsize <= 2:
        return HistogramSpec("uint16", sample=float_spec.sample)
    return float_spec


def sample_rows(lines: int, samples: int, line0: int, every: int, seed: int = 0) -> np.ndarray:
    """Pixels of a block of ``lines`` x ``samples`` starting at product line ``line0`` that
    the histogram counts (flat indices, increasing): in each run of ``every`` samples of a
    line, the one a hash of (seed, line, run) picks. Depends on the product (``seed``, see
    :func:`product_seed`) and its line, not on the block, so any blocking gives the same
    pixels; every pixel has the chance 1/every."""
    runs = -(-samples // every)
    line = np.arange(line0, line0 + lines, dtype=np.uint64)[:, None]
    run = np.arange(runs, dtype=np.uint64)[None, :]
    h = (line * np.uint64(0x9E3779B97F4A7C15) + run * np.uint64(0xC2B2AE3D27D4EB4F)
         + np.uint64(seed * 0x165667B19E3779F9 % 2**64))
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):  # splitmix64
        h ^= h >> np.uint64(shift)
        h *= np.uint64(mult)
    h ^= h >> np.uint64(31)
    pick = (run * np.uint64(every) + h % np.uint64(every)).astype(np.int64)
    flat = np.arange(lines, dtype=np.int64)[:, None] * samples + pick
    return flat[pick < samples]


def product_seed(path: str | Path) -> int:
    """The sampled histogram's seed of a product: from its file name (the same on every
    machine), so that copies or look-alike products do not share their picks."""
    return zlib.crc32(Path(path).name.encode("utf-8"))


def rank_tolerance(q: float, m: int, alpha: float = 1e-3) -> float:
    """Rank tolerance (percentile points) of the ``q`` % percentile of a sampled histogram
    holding ``m`` values: with probability >= 1 - alpha the estimate lies between the exact
    percentiles at q - t and q + t (bin tolerance aside). Bernstein's inequality for the
    empirical CDF at the two points that bound the error (each pick independent and uniform
    in its run, so the variance there is at most F (1 - F)), capped by Hoeffding's; both
    union-bounded over the two points. ``inf`` when m is 0."""
    if m <= 0:
        return math.inf
    log = math.log(4.0 / alpha)
    hoeffding = math.sqrt(log / (2.0 * m))
    p, t = q / 100.0, 0.0
    for _ in range(50):  # t = bernstein(variance at p -+ t): a fixed point, reached upwards
        lo, hi = max(p - t, 0.0), min(p + t, 1.0)
        var = 0.25 if lo <= 0.5 <= hi else max(lo * (1.0 - lo), hi * (1.0 - hi))
        new = (log / 3.0 + math.sqrt(log * log / 9.0 + 2.0 * m * var * log)) / m
        settled = new - t <= 1e-15 or new >= hoeffding
        t = new
        if settled:
            break
    return 100.0 * min(hoeffding, t)


# --------------------------------------------------------------------------------------
# The partial
# --------------------------------------------------------------------------------------


@dataclass
class BandStats:
    """Mergeable per-band statistics of a set of values (float64 moments, int64 counts).

    count, invalid, minimum, maximum, mean, m2: shape (B,). hist: (B, spec.nbins) int64.
    ``invalid`` counts the values left out (NaN, +-inf, masked pixels: for VIRTIS the NaN
    count). A band with no valid value has count 0, min/max/mean NaN.
    """

    spec: HistogramSpec
    count: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    hist: np.ndarray
    invalid: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.invalid is None:
            self.invalid = np.zeros(self.count.shape, np.int64)

    @classmethod
    def empty(cls, bands: int, spec: HistogramSpec) -> BandStats:
        nan = np.full(bands, np.nan)
        return cls(
            spec, np.zeros(bands, np.int64), nan.copy(), nan.copy(), nan.copy(),
            np.zeros(bands), np.zeros((bands, spec.nbins), np.int64),
        )

    @property
    def bands(self) -> int:
        return int(self.count.size)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled between processes: most bins are empty, so send the histogram sparse.
        state = dict(self.__dict__)
        state["hist"] = (self.hist.shape, *_sparse(self.hist))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        shape, nz, values = state["hist"]
        hist = np.zeros(shape, np.int64)
        hist.ravel()[nz] = values
        self.__dict__.update({**state, "hist": hist})

    @classmethod
    def from_block(
        cls, block: np.ndarray, spec: HistogramSpec, valid: np.ndarray | None = None
    ) -> BandStats:
        """Statistics of ``block`` (B, ...) ignoring NaN/inf and values where ``valid`` is False.

        ``valid`` broadcasts against ``block.shape[1:]`` (e.g. a (lines, samples) pixel mask).
        """
        return cls.empty(block.shape[0], spec).update(block, valid)

    def update(self, block: np.ndarray, valid: np.ndarray | None = None) -> BandStats:
        """Add the values of ``block`` (B, ...) in place, as one block (see :meth:`add`)."""
        acc = StatsAccumulator(self.bands, self.spec)
        acc.add(block, valid)
        return self.add(acc.partial())

    def add(self, part: Partial) -> BandStats:
        """Add a task's partial in place: exact sums, then its block moments in read order."""
        if self.spec != part.spec or self.bands != part.bands:
            raise ValueError(
                f"cannot merge statistics of {self.bands} bands/{self.spec} with "
                f"{part.bands} bands/{part.spec}"
            )
        self.hist.ravel()[part.hist_index] += part.hist_count
        self.invalid = self.invalid + part.invalid
        self.minimum = np.fmin(self.minimum, part.minimum)
        self.maximum = np.fmax(self.maximum, part.maximum)
        for count, mean, m2 in zip(part.counts, part.means, part.m2s, strict=True):
            self._merge_moments(count, mean, m2)
        return self

    def _merge_moments(self, nb_int: np.ndarray, mb: np.ndarray, m2b: np.ndarray) -> None:
        na, nb = self.count.astype(np.float64), nb_int.astype(np.float64)
        n = na + nb
        safe = np.where(n > 0, n, 1.0)
        ma, mbz = np.nan_to_num(self.mean), np.nan_to_num(mb)
        delta = mbz - ma
        self.mean = np.where(n > 0, ma + delta * nb / safe, np.nan)
        self.m2 = self.m2 + m2b + delta * delta * na * nb / safe
        self.count = self.count + nb_int

    def merge(self, other: BandStats) -> BandStats:
        """Exact combination of two partials (associative and commutative up to rounding)."""
        if self.spec != other.spec or self.bands != other.bands:
            raise ValueError(
                f"cannot merge statistics of {self.bands} bands/{self.spec} with "
                f"{other.bands} bands/{other.spec}"
            )
        out = BandStats(self.spec, self.count.copy(), np.fmin(self.minimum, other.minimum),
                        np.fmax(self.maximum, other.maximum), self.mean.copy(), self.m2.copy(),
                        self.hist + other.hist, self.invalid + other.invalid)
        out._merge_moments(other.count, other.mean, other.m2)
        return out

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0) per band; NaN where count is 0."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, np.sqrt(self.m2 / np.maximum(self.count, 1)), np.nan)

    def percentiles(self, qs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(len(qs), B) percentile estimates (numpy 'linear' method) and an 'unbounded' flag.

        The flag is True where an order statistic fell into an overflow bin (no tolerance
        guarantee). Bands without valid values give NaN.
        """
        qs = np.asarray(qs, dtype=np.float64)
        bands = self.bands
        est = np.full((qs.size, bands), np.nan)
        flag = np.zeros((qs.size, bands), dtype=bool)
        rep = self.spec.representatives(self.minimum, self.maximum)
        cum = np.cumsum(self.hist, axis=1)
        for b in range(bands):
            n = int(cum[b, -1])  # = count, unless the histogram takes a sample
            if n == 0:
                continue
            rank = qs / 100.0 * (n - 1)
            k = np.floor(rank).astype(np.int64)
            frac = rank - k
            k1 = np.minimum(k + 1, n - 1)
            b0 = np.searchsorted(cum[b], k, side="right")
            b1 = np.searchsorted(cum[b], k1, side="right")
            est[:, b] = rep[b, b0] + frac * (rep[b, b1] - rep[b, b0])
            flag[:, b] = self.spec.is_overflow(b0) | self.spec.is_overflow(b1)
        return est, flag


def _sparse(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, int64 counts) of the non-zero bins of a C-contiguous histogram."""
    nz = np.flatnonzero(hist)
    return nz, hist.ravel()[nz].astype(np.int64)


@dataclass
class Partial:
    """What one statistics task returns (picklable, small: the histogram is sparse).

    invalid (B,) int64, minimum/maximum (B,) float64 (NaN: no value): over all its blocks.
    hist_index, hist_count: the non-zero bins of the (B, nbins) histogram, flat.
    counts (k, B) int64, means (k, B), m2s (k, B) float64: each block's moments, in read order.
    """

    spec: HistogramSpec
    bands: int
    invalid: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    hist_index: np.ndarray
    hist_count: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    m2s: np.ndarray


_INT32_MAX = (1 << 31) - 1
# Count tables of finished accumulators, zeroed, for the next ones: a fresh 14 MB table per
# task costs page faults (and, on a VM whose host takes freed memory back, host faults).
_SPARE_TABLES: list[np.ndarray] = []
_SPARE_LOCK = threading.Lock()


def _count_table(shape: tuple[int, int]) -> np.ndarray:
    with _SPARE_LOCK:
        for i, table in enumerate(_SPARE_TABLES):
            if table.shape == shape:
                return _SPARE_TABLES.pop(i)
    return np.zeros(shape, np.int32)


def _spare_table(table: np.ndarray, nonzero: np.ndarray) -> None:
    """Zero ``table`` (whose nonzero flat indices are ``nonzero``) and keep it for reuse."""
    table.ravel()[nonzero] = 0
    with _SPARE_LOCK:
        if len(_SPARE_TABLES) < 4:
            _SPARE_TABLES.append(table)


class StatsAccumulator:
    """Adds blocks of one data set, in read order, into what becomes one :class:`Partial`.

    The histogram is counted in int32 with one spare column per band for the skipped values
    (:mod:`pipeline.stats_kernels`), and moved into an int64 sum before any bin could
    overflow; min, max and invalid counts are updated in place; each block's moments are
    kept (they are combined later, in the order of all blocks of the stage).
    """

    def __init__(self, bands: int, spec: HistogramSpec) -> None:
        self.bands, self.spec = bands, spec
        self._hist: np.ndarray | None = _count_table((bands, spec.nbins + 1))
        self._pixels = 0  # pixels counted in _hist since it was last emptied
        self._hist64: np.ndarray | None = None
        self.invalid = np.zeros(bands, np.int64)
        self._lo = np.full(bands, np.inf, np.float32)
        self._hi = np.full(bands, -np.inf, np.float32)
        self._moments: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, block: np.ndarray, valid: np.ndarray | None = None, line0: int = 0,
            seed: int = 0) -> None:
        """Add ``block`` (B, ...) ignoring NaN/inf and pixels where ``valid`` (block.shape[1:])
        is False. One fused pass in the block's own memory order (no copy of a view).
        ``line0``: the product line of the block's first line (a (B, lines, samples) block;
        a block of other shape counts as one line) and ``seed`` (:func:`product_seed`) pick
        the histogram's sample."""
        from pipeline import stats_kernels as k

        bands = block.shape[0]
        if bands != self.bands:
            raise ValueError(f"block of {bands} bands, statistics of {self.bands}")
        if self._hist is None:
            raise RuntimeError("this accumulator already gave its partial")
        x = np.moveaxis(block, 0, -1).reshape(-1, bands)  # (pixels, bands), a view if it can
        if x.shape[0] == 0:
            return
        if self._pixels + x.shape[0] > _INT32_MAX:
            self._spill()
        self._pixels += x.shape[0]
        mask = np.empty(0, bool) if valid is None else np.ascontiguousarray(
            np.broadcast_to(valid, block.shape[1:]), dtype=bool).reshape(-1)
        ref, invalid = np.empty(bands), np.zeros(bands, np.int64)
        s1, s2 = np.zeros(bands), np.zeros(bands)
        spec = self.spec
        sampled = spec.sample > 1
        rows = np.empty(0, np.int64)
        if sampled:
            lines, samples = block.shape[1:] if block.ndim == 3 else (1, x.shape[0])
            rows = sample_rows(lines, samples, line0, spec.sample, seed)
        if spec.kind == "uint16":
            x = x.astype(np.uint16, copy=False)
            k.accumulate_uint16(x, mask, rows, sampled, ref, invalid, s1, s2, self._lo,
                                self._hi, self._hist)
        else:
            x = x.astype(np.float32, copy=False)
            first = ((127 + spec.min_exponent) << spec.mantissa_bits) - 1
            k.accumulate_float(x, x.view(np.int32), mask, rows, sampled,
                               23 - spec.mantissa_bits, first, spec.n_magnitude + 1,
                               spec.center, ref, invalid, s1, s2, self._lo, self._hi,
                               self._hist)
        count = x.shape[0] - invalid
        has = count > 0
        n = np.maximum(count, 1)
        self.invalid += invalid
        self._moments.append((count, np.where(has, ref + s1 / n, np.nan),
                              np.where(has, np.maximum(s2 - s1 * s1 / n, 0.0), 0.0)))

    def _spill(self) -> None:
        """Move the int32 counts into the int64 sum (before 2**31 values of one band)."""
        if self._hist64 is None:
            self._hist64 = np.zeros((self.bands, self.spec.nbins), np.int64)
        self._hist64 += self._hist[:, :-1]
        self._hist[:] = 0
        self._pixels = 0

    def partial(self) -> Partial:
        """The partial of every block added; the accumulator is spent afterwards."""
        if self._hist is None:
            raise RuntimeError("this accumulator already gave its partial")
        if self._hist64 is not None:
            self._spill()
            index, counts = _sparse(self._hist64)
            nz = np.empty(0, np.intp)
        else:
            nz = np.flatnonzero(self._hist)
            band, column = np.divmod(nz, self.spec.nbins + 1)
            keep = column < self.spec.nbins
            index = band[keep] * self.spec.nbins + column[keep]
            counts = self._hist.ravel()[nz[keep]].astype(np.int64)
        _spare_table(self._hist, nz)
        self._hist = None
        bands = self.bands
        m = self._moments
        seen = self._lo <= self._hi
        return Partial(
            self.spec, bands, self.invalid.copy(),
            np.where(seen, self._lo.astype(np.float64), np.nan),
            np.where(seen, self._hi.astype(np.float64), np.nan), index, counts,
            np.array([c for c, _, _ in m], np.int64).reshape(-1, bands),
            np.array([a for _, a, _ in m], np.float64).reshape(-1, bands),
            np.array([b for _, _, b in m], np.float64).reshape(-1, bands),
        )


def tree_merge(parts: Sequence[BandStats]) -> BandStats:
    """Merge a list of partials pairwise (the same tree shape dask uses below)."""
    items = list(parts)
    if not items:
        raise ValueError("nothing to merge")
    while len(items) > 1:
        items = [items[i].merge(items[i + 1]) if i + 1 < len(items) else items[i]
                 for i in range(0, len(items), 2)]
    return items[0]


def format_q(q: float) -> str:
    """Percentile key as used in stats.json: 0.1 -> "0.1", 99.9 -> "99.9", 50 -> "50"."""
    return f"{q:g}"


def _clean(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in np.asarray(values, np.float64)]


# --------------------------------------------------------------------------------------
# Per-product partials scheduled by dask
# --------------------------------------------------------------------------------------


def _add_product(acc: StatsAccumulator | None, source: str, path: str | Path,
                 float_spec: HistogramSpec, chunk_mb: float, start: int, stop: int | None,
                 options: dict[str, Any] | None) -> StatsAccumulator:
    """Add lines [start, stop) of one product, block by block, to ``acc`` (made if None)."""
    from pipeline.products import open_product

    product = open_product(source, path, options)
    spec = histogram_spec_for(product.dtype, float_spec)
    if acc is None:
        acc = StatsAccumulator(product.bands, spec)
    elif (acc.bands, acc.spec) != (product.bands, spec):
        raise UserError(f"{path}: {product.bands} bands of {np.dtype(product.dtype)}, the "
                        f"products before it have {acc.bands} (products do not agree)")
    per_block = product.lines_for_bytes(chunk_mb * 1e6)
    seed = product_seed(path)
    for line0, data, valid in product.iter_blocks(per_block, start, stop, reuse=True):
        acc.add(data, valid, line0, seed)
    return acc


def product_partial(
    source: str,
    path: str | Path,
    float_spec: HistogramSpec,
    chunk_mb: float = 32.0,
    start: int = 0,
    stop: int | None = None,
    options: dict[str, Any] | None = None,
) -> BandStats:
    """Statistics of lines [start, stop) of one product, read block by block."""
    acc = _add_product(None, source, path, float_spec, chunk_mb, start, stop, options)
    return BandStats.empty(acc.bands, acc.spec).add(acc.partial())


@dataclass(frozen=True)
class Task:
    """Lines [start, stop) of a product (stop None = to the end); nbytes: its size, about."""

    product_id: str
    path: str
    start: int = 0
    stop: int | None = None
    nbytes: float = 0.0


def make_tasks(
    source: str, refs: Sequence[Any], task_lines: int = 0, options: dict[str, Any] | None = None
) -> list[Task]:
    """One task per product (or strip of one: ``ref.meta["strip"]``), or per ``task_lines``
    lines of it when task_lines > 0. Block boundaries start at each task's first line."""
    from pipeline.products import open_product

    tasks = []
    for ref in refs:
        first, stop = (ref.meta.get("strip") if hasattr(ref, "meta") else None) or (0, None)
        size = _disk_bytes(Path(ref.path))  # a strip counts as its whole product
        if task_lines <= 0:
            tasks.append(Task(ref.product_id, str(ref.path), first, stop, size))
            continue
        lines = open_product(source, ref.path, options).lines
        stop = lines if stop is None else stop
        for a in range(first, stop, task_lines):
            b = min(stop, a + task_lines)
            tasks.append(Task(ref.product_id, str(ref.path), a, b,
                              size * (b - a) / max(lines, 1)))
    return tasks


def _disk_bytes(path: Path) -> float:
    """Size of a product on disk (a file, or every file of a folder product)."""
    try:
        if path.is_dir():
            return float(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))
        return float(path.stat().st_size)
    except OSError:
        return 0.0


def group_tasks(tasks: Sequence[Task], task_mb: float) -> list[tuple[Task, ...]]:
    """Consecutive tasks in groups of about ``task_mb`` MB (a bigger task stays alone)."""
    groups: list[tuple[Task, ...]] = []
    group: list[Task] = []
    size = 0.0
    for t in tasks:
        if group and size + t.nbytes > task_mb * 1e6:
            groups.append(tuple(group))
            group, size = [], 0.0
        group.append(t)
        size += t.nbytes
    if group:
        groups.append(tuple(group))
    return groups


def tasks_partial(
    source: str, tasks: Sequence[Task], float_spec: HistogramSpec, chunk_mb: float = 32.0,
    options: dict[str, Any] | None = None,
) -> Partial:
    """The partial of a group of tasks, read one after the other (runs on a worker)."""
    acc = None
    for t in tasks:
        acc = _add_product(acc, source, t.path, float_spec, chunk_mb, t.start, t.stop, options)
    if acc is None:
        raise ValueError("no tasks")
    return acc.partial()


def compute_stats(
    source: str,
    tasks: Sequence[Task],
    spec: HistogramSpec,
    scheduler: str = "threads",
    workers: int = 0,
    chunk_mb: float = 32.0,
    options: dict[str, Any] | None = None,
    progress: bool = True,
    task_mb: float = 256.0,
) -> BandStats:
    """Statistics of ``tasks`` (grouped into units of work of about ``task_mb`` MB) computed
    on ``scheduler``; partials are added in task order (the same bits on every scheduler)."""
    from tqdm import tqdm

    if not tasks:
        raise UserError("no products to compute statistics over (empty training split)")
    check_scheduler(scheduler)
    groups = group_tasks(tasks, task_mb)
    calls = [(source, group, spec, chunk_mb, options) for group in groups]
    total: BandStats | None = None
    with tqdm(total=len(tasks), desc=f"stats {source}", unit="product",
              disable=not progress) as bar:
        for group, part in zip(groups, ordered_map(
                tasks_partial, calls, scheduler, workers, preload=WORKER_MODULES), strict=True):
            if total is None:
                total = BandStats.empty(part.bands, part.spec)
            try:
                total.add(part)
            except ValueError as exc:
                raise UserError(f"{group[0].path}: products do not agree: {exc}") from None
            bar.update(len(group))
    assert total is not None
    return total


def stats_document(
    source: str, stats: BandStats, product_ids: Sequence[str], params: StatsParams,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stats.json content (see docs: lists of length B; NaN written as null)."""
    qs = sorted({*params.percentiles, 0.1, 99.9})
    est, unbounded = stats.percentiles(qs)
    doc: dict[str, Any] = {
        "source": source,
        "products": list(product_ids),
        "bands": stats.bands,
        "count": [int(c) for c in stats.count],
        "invalid": [int(c) for c in stats.invalid],
        "min": _clean(stats.minimum),
        "max": _clean(stats.maximum),
        "mean": _clean(stats.mean),
        "std": _clean(stats.std),
        "percentiles": {format_q(q): _clean(est[i]) for i, q in enumerate(qs)},
        "percentile_method": "linear (numpy default), from a fixed-edge histogram",
        "percentile_tolerance": {
            "relative": stats.spec.relative_tolerance,
            "absolute": stats.spec.absolute_tolerance,
            "rule": "|estimate - exact| <= relative * max(|x_k|, |x_k+1|) + absolute",
            "unbounded": {format_q(q): np.flatnonzero(unbounded[i]).tolist()
                          for i, q in enumerate(qs) if unbounded[i].any()},
        },
        **_sample_tolerance(stats, qs),
        "histogram": stats.spec.to_dict(),
    }
    doc.update(meta or {})
    return doc


def _sample_tolerance(stats: BandStats, qs: Sequence[float]) -> dict[str, Any]:
    """stats.json's ``percentile_sample`` when the histogram took a sample (else nothing):
    the worst band's rank tolerance per percentile (:func:`rank_tolerance`)."""
    if stats.spec.sample == 1:
        return {}
    held = stats.hist.sum(axis=1)
    m = int(held[held > 0].min()) if (held > 0).any() else 0
    return {"percentile_sample": {
        "every": stats.spec.sample,
        "histogram_values_min": m,
        "confidence": 0.999,
        "rank_tolerance": {format_q(q): rank_tolerance(q, m) if m else None for q in qs},
        "rule": "the estimate of percentile q lies between the exact percentiles at "
                "q - rank_tolerance[q] and q + rank_tolerance[q] (bin tolerance aside)",
    }}


def product_metadata(
    source: str, ref: Any, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Band metadata of one product for stats.json / the tile files."""
    from pipeline.products import open_product

    product = open_product(source, ref.path, options)
    wl = product.wavelengths
    return {
        "dtype": str(np.dtype(product.dtype)),
        "wavelength": None if wl is None else [float(v) for v in wl],
        "wavelength_unit": product.wavelength_unit,
        "band_names": product.band_names,
    }


def read_stats(path: str | Path) -> dict[str, Any]:
    """Load a stats.json (UserError naming the file when missing or malformed)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: statistics file not found (run pipeline.stats)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable statistics file ({exc})") from None
    needed = ("source", "bands", "min", "max", "mean", "std", "percentiles")
    if not isinstance(doc, dict) or any(k not in doc for k in needed):
        raise UserError(f"{path}: not a statistics file (needs {', '.join(needed)})")
    return doc


@cli_entry("python -m pipeline.stats")
def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.products import reader_options
    from pipeline.split import read_split

    parser = stage_parser("python -m pipeline.stats", __doc__.split("\n\n")[0], StatsParams)
    parser.add_argument("--split", required=True, help="split file from pipeline.split")
    parser.add_argument("--out", required=True, help="statistics JSON to write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    name = args.dataset
    params, ds = stage_settings(args, StatsParams, "stats")
    lock_output(args.out, "python -m pipeline.stats")
    kind = ds.kind
    options = reader_options(name, args.params)
    split = read_split(args.split, name)
    refs = split.train
    if not refs:
        raise UserError(f"{args.split}: the training split is empty")
    t0 = time.perf_counter()
    tasks = make_tasks(kind, refs, params.task_lines, options)
    stats = compute_stats(
        kind, tasks, params.histogram, params.scheduler, params.workers,
        params.chunk_mb, options, progress=not args.no_progress, task_mb=params.task_mb,
    )
    meta = product_metadata(kind, refs[0], options)
    recorded = {k: v for k, v in to_dict(params).items() if k not in RUN_KEYS}
    meta["params"] = recorded
    meta["kind"] = kind
    doc = stats_document(name, stats, sorted({r.product_id for r in refs}), params, meta)
    with atomic_open(args.out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    elapsed = time.perf_counter() - t0
    print(
        f"{args.out}: {stats.bands} bands over {len(refs)} training products, "
        f"{int(stats.count.sum())} valid values, {elapsed:.1f} s ({params.scheduler})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
