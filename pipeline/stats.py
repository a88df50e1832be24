"""Per-band statistics over the training products: one pass, exact merge, scheduled by dask.

The statistic is a pure-numpy *partial* (:class:`BandStats`) per block of lines plus an
exact, associative :meth:`BandStats.merge`. dask only schedules the per-product (or
per-line-range) partials and a tree of merges, so the same code runs serially in tests,
threaded or in processes on a laptop, and on a ``dask.distributed`` cluster
(``--scheduler tcp://host:8786``).

Per band: count of valid values, count of invalid ones (NaN/inf, masked pixels), min, max,
mean and M2 (Chan et al. 1979 parallel update, accumulated in float64), and a fixed-edge
histogram for percentiles, all from one fused pass over each block
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

CLI: ``python -m pipeline.stats --params params.yaml --dataset S --split data/split/S.json
--out data/stats/S.json [--scheduler threads|processes|synchronous|tcp://h:8786]``.
Params ``stats`` + ``datasets.<name>.stats`` (:class:`StatsParams`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parsers.atomic import atomic_open
from parsers.errors import UserError, cli_entry
from parsers.locks import lock_output
from pipeline.params import stage_parser, stage_settings, to_dict
from pipeline.schedulers import check_scheduler, connect, local_compute_kwargs

UINT16_BINS = 1 << 16


@dataclass(frozen=True)
class StatsParams:
    """Settings of the statistics stage (params section ``stats``).

    scheduler: ``threads`` | ``processes`` | ``synchronous`` | ``tcp://host:port`` (a
        ``dask.distributed`` scheduler; workers need the same file paths).
    workers: local worker threads/processes (0 = dask's default, the CPU count).
    chunk_mb: size of one block of lines read at a time (bounds memory per task).
    task_lines: lines per dask task (0 = one task per product); split big products.
    percentiles: percentiles (in %) written to stats.json; 0.1 and 99.9 are always added.
    hist_mantissa_bits, hist_min_exponent, hist_max_exponent: float histogram resolution
        and window (see the module docstring for the tolerance they give).
    """

    scheduler: str = "threads"
    workers: int = 0
    chunk_mb: float = 32.0
    task_lines: int = 0
    percentiles: list[float] = field(default_factory=lambda: [0.1, 1.0, 50.0, 99.0, 99.9])
    hist_mantissa_bits: int = 7
    hist_min_exponent: int = -16
    hist_max_exponent: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.hist_mantissa_bits <= 12:
            raise ValueError("hist_mantissa_bits must be in 1..12")
        if not -126 <= self.hist_min_exponent < self.hist_max_exponent <= 127:
            raise ValueError("need -126 <= hist_min_exponent < hist_max_exponent <= 127")
        if self.chunk_mb <= 0 or self.workers < 0 or self.task_lines < 0:
            raise ValueError("chunk_mb must be > 0, workers and task_lines >= 0")
        if any(not 0.0 <= q <= 100.0 for q in self.percentiles):
            raise ValueError("percentiles must lie in [0, 100]")
        check_scheduler(self.scheduler)

    @property
    def histogram(self) -> HistogramSpec:
        return HistogramSpec(
            "float", self.hist_mantissa_bits, self.hist_min_exponent, self.hist_max_exponent
        )


# --------------------------------------------------------------------------------------
# Histogram layout
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistogramSpec:
    """Fixed bin layout of the per-band histogram.

    kind ``"uint16"``: 65536 bins, bin i holds the integer value i (exact percentiles).
    kind ``"float"``: log-linear bins from the float32 bit pattern (module docstring).
    """

    kind: str = "float"
    mantissa_bits: int = 7
    min_exponent: int = -16
    max_exponent: int = 16

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
        }


def histogram_spec_for(dtype: np.dtype, float_spec: HistogramSpec) -> HistogramSpec:
    """The histogram layout for data of ``dtype``: exact bins for (u)int8/uint16, else float."""
    dtype = np.dtype(dtype)
    if dtype.kind in "u" and dtype.itemsize <= 2:
        return HistogramSpec("uint16")
    return float_spec


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
        # Pickled between dask workers: most bins are empty, so send the histogram sparse.
        state = dict(self.__dict__)
        flat = self.hist.ravel()
        nz = np.flatnonzero(flat)
        state["hist"] = (self.hist.shape, nz.astype(np.int32), flat[nz])
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
        """Add the values of ``block`` (B, ...) in place (same rules as :meth:`from_block`).

        One fused pass over the values (:mod:`pipeline.stats_kernels`), in the block's own
        memory order: no copy when the block is a view of the reader's buffer.
        """
        from pipeline import stats_kernels as k

        bands = block.shape[0]
        if bands != self.bands:
            raise ValueError(f"block of {bands} bands, statistics of {self.bands}")
        x = np.moveaxis(block, 0, -1).reshape(-1, bands)  # (pixels, bands), a view if it can
        if x.shape[0] == 0:
            return self
        mask = np.empty(0, bool) if valid is None else np.ascontiguousarray(
            np.broadcast_to(valid, block.shape[1:]), dtype=bool).reshape(-1)
        ref = self.mean.copy()  # NaN where no value yet: the kernel takes the first one
        invalid = np.zeros(bands, np.int64)
        s1, s2 = np.zeros(bands), np.zeros(bands)
        lo, hi = np.full(bands, np.inf, np.float32), np.full(bands, -np.inf, np.float32)
        spec = self.spec
        if spec.kind == "uint16":
            x = x.astype(np.uint16, copy=False)
            k.accumulate_uint16(x, mask, ref, invalid, s1, s2, lo, hi, self.hist)
        else:
            x = x.astype(np.float32, copy=False)
            first = ((127 + spec.min_exponent) << spec.mantissa_bits) - 1
            k.accumulate_float(x, x.view(np.int32), mask, 23 - spec.mantissa_bits, first,
                               spec.n_magnitude + 1, spec.center, ref, invalid, s1, s2, lo,
                               hi, self.hist)
        count = x.shape[0] - invalid
        has = count > 0
        n = np.maximum(count, 1)
        mean = np.where(has, ref + s1 / n, np.nan)
        m2 = np.where(has, np.maximum(s2 - s1 * s1 / n, 0.0), 0.0)
        lo = np.where(has, lo.astype(np.float64), np.nan)
        hi = np.where(has, hi.astype(np.float64), np.nan)
        self.invalid = self.invalid + invalid
        self._merge_moments(count, mean, m2, lo, hi)
        return self

    def _merge_moments(self, nb_int: np.ndarray, mb: np.ndarray, m2b: np.ndarray,
                       lo: np.ndarray, hi: np.ndarray) -> None:
        na, nb = self.count.astype(np.float64), nb_int.astype(np.float64)
        n = na + nb
        safe = np.where(n > 0, n, 1.0)
        ma, mbz = np.nan_to_num(self.mean), np.nan_to_num(mb)
        delta = mbz - ma
        self.mean = np.where(n > 0, ma + delta * nb / safe, np.nan)
        self.m2 = self.m2 + m2b + delta * delta * na * nb / safe
        self.count = self.count + nb_int
        self.minimum = np.fmin(self.minimum, lo)
        self.maximum = np.fmax(self.maximum, hi)

    def merge(self, other: BandStats) -> BandStats:
        """Exact combination of two partials (associative and commutative up to rounding)."""
        if self.spec != other.spec or self.bands != other.bands:
            raise ValueError(
                f"cannot merge statistics of {self.bands} bands/{self.spec} with "
                f"{other.bands} bands/{other.spec}"
            )
        out = BandStats(self.spec, self.count.copy(), self.minimum.copy(), self.maximum.copy(),
                        self.mean.copy(), self.m2.copy(), self.hist + other.hist,
                        self.invalid + other.invalid)
        out._merge_moments(other.count, other.mean, other.m2, other.minimum, other.maximum)
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
            n = int(self.count[b])
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
    from pipeline.products import open_product

    product = open_product(source, path, options)
    spec = histogram_spec_for(product.dtype, float_spec)
    total = BandStats.empty(product.bands, spec)
    per_block = product.lines_for_bytes(chunk_mb * 1e6)
    for _, data, valid in product.iter_blocks(per_block, start, stop, reuse=True):
        total.update(data, valid)
    return total


def _merge(a: BandStats, b: BandStats) -> BandStats:
    try:
        return a.merge(b)
    except ValueError as exc:
        raise UserError(f"products do not agree: {exc}") from None


@dataclass(frozen=True)
class Task:
    """One unit of work: lines [start, stop) of a product (stop None = to the end)."""

    product_id: str
    path: str
    start: int = 0
    stop: int | None = None


def make_tasks(
    source: str, refs: Sequence[Any], task_lines: int = 0, options: dict[str, Any] | None = None
) -> list[Task]:
    """One task per product (or strip of one: ``ref.meta["strip"]``), or per ``task_lines``
    lines of it when task_lines > 0."""
    from pipeline.products import open_product

    tasks = []
    for ref in refs:
        first, stop = (ref.meta.get("strip") if hasattr(ref, "meta") else None) or (0, None)
        if task_lines <= 0:
            tasks.append(Task(ref.product_id, str(ref.path), first, stop))
            continue
        if stop is None:
            stop = open_product(source, ref.path, options).lines
        for a in range(first, stop, task_lines):
            tasks.append(Task(ref.product_id, str(ref.path), a, min(stop, a + task_lines)))
    return tasks


def _delayed_tree(
    source: str, tasks: Sequence[Task], spec: HistogramSpec, chunk_mb: float,
    options: dict[str, Any] | None,
) -> tuple[list[Any], Any]:
    import dask

    parts = [
        dask.delayed(product_partial, pure=True)(
            source, t.path, spec, chunk_mb, t.start, t.stop, options,
            dask_key_name=f"stats-partial-{i}",
        )
        for i, t in enumerate(tasks)
    ]
    level, items = 0, list(parts)
    while len(items) > 1:
        items = [
            dask.delayed(_merge, pure=True)(items[i], items[i + 1],
                                            dask_key_name=f"stats-merge-{level}-{i}")
            if i + 1 < len(items) else items[i]
            for i in range(0, len(items), 2)
        ]
        level += 1
    return parts, items[0]


def compute_stats(
    source: str,
    tasks: Sequence[Task],
    spec: HistogramSpec,
    scheduler: str = "threads",
    workers: int = 0,
    chunk_mb: float = 32.0,
    options: dict[str, Any] | None = None,
    progress: bool = True,
) -> BandStats:
    """Run the partials of ``tasks`` on ``scheduler`` and merge them (fixed tree order)."""
    from tqdm import tqdm

    if not tasks:
        raise UserError("no products to compute statistics over (empty training split)")
    check_scheduler(scheduler)
    parts, total = _delayed_tree(source, tasks, spec, chunk_mb, options)
    bar = tqdm(total=len(parts), desc=f"stats {source}", unit="task", disable=not progress)
    try:
        if scheduler.startswith("tcp://"):
            return _compute_distributed(scheduler, parts, total, bar)
        from dask.callbacks import Callback

        class _Progress(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if isinstance(key, str) and key.startswith("stats-partial-"):
                    bar.update(1)

        kwargs = local_compute_kwargs(scheduler, workers)
        with _Progress():
            (result,) = _dask_compute(total, **kwargs)
        return result
    finally:
        bar.close()


def _dask_compute(total: Any, **kwargs: Any) -> tuple[Any, ...]:
    import dask

    return dask.compute(total, **kwargs)


def _compute_distributed(address: str, parts: list[Any], total: Any, bar: Any) -> BandStats:
    from distributed import as_completed

    with connect(address) as client:
        # Partials and the merge tree are one graph: the merge order (and so the result,
        # bit for bit) is the same as with the local schedulers.
        futures = client.compute([total, *parts])
        result_future, part_futures = futures[0], futures[1:]
        for _ in as_completed(part_futures):
            bar.update(1)
        del part_futures
        return result_future.result()


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
        "histogram": stats.spec.to_dict(),
    }
    doc.update(meta or {})
    return doc


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
        params.chunk_mb, options, progress=not args.no_progress,
    )
    meta = product_metadata(kind, refs[0], options)
    recorded = {k: v for k, v in to_dict(params).items() if k not in ("scheduler", "workers")}
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
