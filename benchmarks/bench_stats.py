"""Benchmark of the dataset build: reading, statistics and tiling vs plain numpy reading.

    python benchmarks/bench_stats.py                 # 2 GB of calibrated VIRTIS-M cubes
    python benchmarks/bench_stats.py --gb 8          # the 4x run (linear time, flat memory)
    python benchmarks/bench_stats.py --gb 0.2        # a quick check
    python benchmarks/bench_stats.py --accuracy 4    # sampled percentiles vs exact ones
    python benchmarks/bench_stats.py --kernel        # the statistics kernel and its fixed cost

Synthetic calibrated VIRTIS-M VIS cubes (432 bands x 256 samples x ``--lines`` lines,
big-endian float32 with special values, as the reader sees real .CAL products) are written
once to ``--workdir`` (4 distinct cubes, copied under new names up to ``--gb``). Each phase
runs in its own process after one warm-up read of every file (so all phases read from the
page cache, and the numbers compare computation, not the disk). Peak memory is the highest
summed RSS of the phase's process tree (workers included), sampled every 50 ms. CPU
seconds are those of the phase's whole process tree less the start-up of an empty phase
process; MB per CPU second is what a machine shared with other jobs distorts least. The
``numpy-read`` reference runs again between the other phases (``--rounds`` times in all)
and every ratio is taken against the median of those runs, so that a change of machine
load during the run shows as spread instead of skewing one ratio; ``os.getloadavg`` is
printed with every phase.

Phases:
  numpy-read      np.fromfile of every file (the "simply read the files once" reference)
  reader-read     the files through the VIRTIS reader in blocks of chunk_mb (float32,
                  NaN at special values), buffer reused block after block
  stats-proc-1/2  pipeline.stats partials + merge, dask "processes" scheduler, 1 / 2 workers
  stats-thr-2     the same with the "threads" scheduler, 2 workers
  stats-*-s4      any stats phase with a suffix -sK: the histogram samples 1 pixel in K
                  (``hist_sample``; e.g. stats-proc-2-s4)
  tiles-proc-1/2  pipeline.tiles of every cube into one HDF5 (64 x 64 tiles, the default
                  codec of params.yaml), "processes" scheduler, 1 / 2 workers
  tiles-thr-2     the same with 2 threads (each compresses its own tiles; the GIL is released)
  write-buffered  the machine's floor for writing: as many bytes as the cubes hold, written
                  to a new file in 32 MB pieces through the page cache, then fsync
  write-direct    the same with O_DIRECT (what the tile writer uses where it can)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BANDS, SAMPLES = 432, 256


def make_cubes(workdir: Path, gb: float, lines: int) -> list[Path]:
    from pipeline.synthetic.virtis_products import write_virtis_product

    workdir.mkdir(parents=True, exist_ok=True)
    size = BANDS * SAMPLES * lines * 4
    n = max(1, round(gb * 1e9 / size))
    paths = []
    for i in range(n):
        path = workdir / f"V1_{388238696 + 1000 * i:011d}.QUB"
        if not path.exists() or path.stat().st_size < size:
            if i < 4:
                write_virtis_product(path, kind="cal", bands=BANDS, samples=SAMPLES, lines=lines,
                                     seed=i)
            else:
                shutil.copyfile(paths[i % 4], path)
        paths.append(path)
    return paths


class PeakRSS:
    """Highest summed RSS (bytes) of this process and its descendants while active, and the
    CPU seconds of every descendant seen (its last sample: worker processes forked by a
    forkserver are not this process's children, so RUSAGE_CHILDREN misses them)."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self.child_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a child that just exited
                total += p.memory_info().rss
                if p.pid != self.proc.pid:
                    t = p.cpu_times()
                    self.child_cpu[p.pid] = t.user + t.system
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def tile_params(workers: int, scheduler: str):
    from pipeline.params import load_stage
    from pipeline.tiles import TileParams

    root = Path(__file__).resolve().parents[1]
    return load_stage(TileParams, "tiles", "virtis", root / "params.yaml",
                      {"scheduler": scheduler, "workers": workers})


def run_phase(phase: str, paths: list[Path], chunk_mb: float, out: Path) -> dict:
    """Run one phase in this process; return seconds and peak RSS."""
    from pipeline.products import ProductRef, open_product
    from pipeline.stats import HistogramSpec, compute_stats, make_tasks

    refs = [ProductRef(p.name, p) for p in paths]
    doc = None
    if phase.startswith("tiles"):
        from pipeline.stats import StatsParams, product_metadata, stats_document

        st = compute_stats("virtis", make_tasks("virtis", refs[:1]), HistogramSpec(),
                           "synchronous", progress=False)
        doc = stats_document("virtis", st, [refs[0].product_id], StatsParams(),
                             product_metadata("virtis", refs[0]))
    load = os.getloadavg()[0]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if phase == "noop":  # start-up cost, subtracted from the CPU time of the others
            pass
        elif phase == "numpy-read":
            for p in paths:
                np.fromfile(p, dtype=np.uint8)
        elif phase == "reader-read":
            for r in refs:
                product = open_product("virtis", r.path)
                for _ in product.iter_blocks(product.lines_for_bytes(chunk_mb * 1e6),
                                             reuse=True):
                    pass
        elif phase.startswith("stats-"):  # stats-thr-2, or stats-thr-2-s4: sampled histogram
            _, kind, workers, *sample = phase.split("-")
            scheduler = {"proc": "processes", "thr": "threads"}[kind]
            spec = HistogramSpec(sample=int(sample[0][1:]) if sample else 1)
            tasks = make_tasks("virtis", refs)
            stats = compute_stats("virtis", tasks, spec, scheduler, int(workers), chunk_mb,
                                  progress=False)
            assert int(stats.count.sum()) > 0
        elif phase.startswith("write-"):
            write_floor(out / "floor.bin", sum(p.stat().st_size for p in paths),
                        direct=phase == "write-direct")
        elif phase.startswith("tiles-"):
            from pipeline.tiles import write_split_tiles

            _, kind, workers = phase.split("-")
            params = tile_params(int(workers), {"proc": "processes", "thr": "threads"}[kind])
            write_split_tiles(out / "tiles.h5", "virtis", "train", refs, params, doc,
                              progress=False)
        else:
            raise SystemExit(f"unknown phase {phase}")
        seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu = own.ru_utime + own.ru_stime + sum(mem.child_cpu.values())
    return {"phase": phase, "seconds": seconds, "peak_rss": mem.peak, "load_before": load,
            "load_after": os.getloadavg()[0], "cpu_s": cpu}


def write_floor(path: Path, total: int, direct: bool) -> None:
    """Write ``total`` bytes to a new file in 32 MB pieces, then fsync it."""
    import mmap

    piece = 32 << 20
    buf = mmap.mmap(-1, piece, flags=mmap.MAP_PRIVATE)  # page-aligned, as O_DIRECT needs
    buf.write(bytes(range(256)) * (piece // 256))  # not zeros: no layer may skip them
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if direct else 0), 0o644)
    try:
        for pos in range(0, total - total % piece, piece):
            os.pwrite(fd, buf, pos)
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink()


def sample_accuracy(paths: list[Path], every: int, chunk_mb: float) -> int:
    """Print, per percentile, the worst rank error (percentile points) over 8 bands of the
    sampled estimate against the exact values, beside the tolerance stats.json states."""
    from pipeline.products import ProductRef, open_product
    from pipeline.stats import StatsParams, compute_stats, make_tasks, stats_document

    refs = [ProductRef(p.name, p) for p in paths]
    docs = []
    for k in (every, 1):
        params = StatsParams(hist_sample=k)
        stats = compute_stats("virtis", make_tasks("virtis", refs), params.histogram,
                              "threads", progress=False)
        docs.append(stats_document("virtis", stats, [r.product_id for r in refs], params))
    doc, exact_doc = docs
    bands = np.linspace(0, BANDS - 1, 8).astype(int)
    values: list[np.ndarray] = []
    for r in refs:
        product = open_product("virtis", r.path)
        for _, data, _ in product.iter_blocks(product.lines_for_bytes(chunk_mb * 1e6)):
            values.append(data[bands].reshape(len(bands), -1).astype(np.float64))
    cube = np.concatenate(values, axis=1)
    print(f"{len(paths)} cubes, histogram of 1 pixel in {every}: "
          f"{doc['percentile_sample']['histogram_values_min']} values a band; bands "
          f"{bands.tolist()}")
    rows = [np.sort(cube[i][np.isfinite(cube[i])]) for i in range(len(bands))]
    print("worst over the bands of the rank error (percentile points) and of the relative "
          "error against np.percentile; exact = the exact mode (its error is the bins')")
    print(f"{'q':>6} {'rank: sampled':>14} {'exact':>8} {'stated':>8} "
          f"{'relative: sampled':>18} {'exact':>9}")
    for q in doc["percentiles"]:
        errs = [[rank_and_value_error(row, float(q), d["percentiles"][q][b])
                 for row, b in zip(rows, bands, strict=True)] for d in (doc, exact_doc)]
        (rank_s, rel_s), (rank_e, rel_e) = (np.max(np.array(e), axis=0) for e in errs)
        print(f"{q:>6} {rank_s:14.4f} {rank_e:8.4f} "
              f"{doc['percentile_sample']['rank_tolerance'][q]:8.4f} {rel_s:18.2e} "
              f"{rel_e:9.2e}")
    return 0


FRESH = """
import time
t0 = time.perf_counter()
import numpy as np
from pipeline.stats import HistogramSpec, StatsAccumulator
t1 = time.perf_counter()
import pipeline.stats_kernels
t2 = time.perf_counter()
StatsAccumulator(4, HistogramSpec()).add(np.ones((4, 2, 2), np.float32))
t3 = time.perf_counter()
print(f"fresh process: import pipeline.stats {t1 - t0:.2f} s, then numba + the kernels "
      f"module {t2 - t1:.2f} s, first call (cached kernels loaded) {t3 - t2:.2f} s")
"""


def kernel_times(paths: list[Path], chunk_mb: float) -> int:
    """Print numba's fixed cost, StatsAccumulator.add per cube (best of 7, one core) for
    hist_sample 1, 2, 4, 8, and compute_stats on 2 threads once everything is loaded."""
    from pipeline.products import ProductRef, open_product
    from pipeline.stats import HistogramSpec, StatsAccumulator, compute_stats, make_tasks

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    for _ in range(2):  # the first may compile and cache the kernels
        run = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True,
                             env=env, check=True)
    print(run.stdout.strip())
    product = open_product("virtis", paths[1])
    blocks = [(a, np.array(d, order="K")) for a, d, _ in
              product.iter_blocks(product.lines_for_bytes(chunk_mb * 1e6))]
    mb = sum(d.nbytes for _, d in blocks) / 1e6
    sampled = "sample" in HistogramSpec.__dataclass_fields__  # older commits: exact only
    for k in (1, 2, 4, 8) if sampled else (1,):
        best = np.inf
        spec = HistogramSpec(sample=k) if k > 1 else HistogramSpec()
        for _ in range(8):  # the first loads the kernels
            acc = StatsAccumulator(BANDS, spec)
            t = time.perf_counter()
            for a, d in blocks:
                acc.add(d, None, a) if k > 1 else acc.add(d, None)
            best = min(best, time.perf_counter() - t)
        print(f"hist_sample {k}: StatsAccumulator.add {best:.4f} s per {mb:.0f} MB cube "
              f"({mb / best:.0f} MB/s, one core)")
    refs = [ProductRef(p.name, p) for p in paths]
    total = sum(p.stat().st_size for p in paths) / 1e6
    for k in (1, 4) if sampled else (1,):
        best = np.inf
        spec = HistogramSpec(sample=k) if k > 1 else HistogramSpec()
        for _ in range(3):
            t = time.perf_counter()
            compute_stats("virtis", make_tasks("virtis", refs), spec,
                          "threads", 2, chunk_mb, progress=False)
            best = min(best, time.perf_counter() - t)
        print(f"hist_sample {k}: compute_stats on 2 threads, warm, {best:.2f} s "
              f"({total / best:.0f} MB/s)")
    return 0


def rank_and_value_error(row: np.ndarray, q: float, estimate: float) -> tuple[float, float]:
    """How far (percentile points) ``estimate`` lies from rank q of the sorted ``row``, and
    its relative error against np.percentile."""
    below = np.searchsorted(row, estimate, "left") / (row.size - 1)
    upto = (np.searchsorted(row, estimate, "right") - 1) / (row.size - 1)
    target = q / 100
    rank = 0.0 if below <= target <= upto else min(abs(below - target), abs(upto - target))
    exact = np.percentile(row, q)
    return 100 * rank, abs(estimate - exact) / max(abs(exact), 1e-30)


def run_in_child(phase: str, args: argparse.Namespace, total: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--gb", str(args.gb), "--lines",
         str(args.lines), "--chunk-mb", str(args.chunk_mb), "--workdir", str(args.workdir)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{phase}: failed\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["mb_per_s"] = total / 1e6 / res["seconds"]
    # res["cpu_s"]: CPU seconds of the phase's whole process tree (workers included; process
    # start-up and the warm-up of the tiles phase too), a figure that other jobs on the
    # machine distort much less than the wall clock.
    res["mb_per_cpu_s"] = total / 1e6 / res["cpu_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="total size of the cubes (GB)")
    ap.add_argument("--lines", type=int, default=400, help="lines per cube")
    ap.add_argument("--chunk-mb", type=float, default=32.0, help="block size of the readers")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "sscnet-bench-stats")
    ap.add_argument("--phases", default="reader-read,stats-proc-1,stats-proc-2,stats-thr-2,"
                                        "tiles-proc-1,tiles-proc-2,tiles-thr-2")
    ap.add_argument("--rounds", type=int, default=3, help="numpy-read runs, between phases")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--clean", action="store_true", help="delete --workdir at the end")
    ap.add_argument("--accuracy", type=int, metavar="K",
                    help="instead of timing: rank errors of the percentiles of a histogram "
                         "sampling 1 pixel in K, against the exact percentiles of 8 bands")
    ap.add_argument("--kernel", action="store_true",
                    help="instead of the phases: the statistics kernel per cube (exact and "
                         "sampled), numba's fixed cost in a fresh process, and the warm "
                         "2-thread statistics (no fixed cost)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase, print JSON
    args = ap.parse_args(argv)

    paths = make_cubes(args.workdir / "cubes", args.gb, args.lines)
    if args.phase:
        out = args.workdir / "out"
        out.mkdir(exist_ok=True)
        print(json.dumps(run_phase(args.phase, paths, args.chunk_mb, out)))
        return 0

    if args.accuracy:
        return sample_accuracy(paths, args.accuracy, args.chunk_mb)
    if args.kernel:
        return kernel_times(paths, args.chunk_mb)
    total = sum(p.stat().st_size for p in paths)
    import dask
    import h5py

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; python {platform.python_version()}, numpy {np.__version__}, "
          f"dask {dask.__version__}, h5py {h5py.__version__}")
    print(f"data: {len(paths)} calibrated VIRTIS-M cubes of {BANDS} x {args.lines} x {SAMPLES} "
          f"float32, {total / 1e9:.2f} GB in {args.workdir / 'cubes'}; "
          f"blocks of {args.chunk_mb} MB")
    for p in paths:  # warm the page cache so every phase reads from memory
        np.fromfile(p, dtype=np.uint8)
    phases = args.phases.split(",")
    order = ["numpy-read"]
    for i, phase in enumerate(phases):
        order.append(phase)
        if args.rounds > 1 and (i + 1) % max(1, len(phases) // (args.rounds - 1)) == 0:
            order.append("numpy-read")
    startup_cpu = run_in_child("noop", args, total)["cpu_s"]
    results = [run_in_child(phase, args, total) for phase in order]
    for r in results:
        r["cpu_s"] = max(r["cpu_s"] - startup_cpu, 1e-3)
        r["mb_per_cpu_s"] = total / 1e6 / r["cpu_s"]
    print(f"start-up of a phase process: {startup_cpu:.2f} CPU s (subtracted)")
    ref_runs = [r["mb_per_s"] for r in results if r["phase"] == "numpy-read"]
    ref = float(np.median(ref_runs))
    print(f"numpy-read reference: median {ref:.0f} MB/s of {len(ref_runs)} runs "
          f"({', '.join(f'{v:.0f}' for v in ref_runs)})")
    cpu_ref = float(np.median([r["mb_per_cpu_s"] for r in results
                               if r["phase"] == "numpy-read"]))
    print(f"{'phase':<14} {'seconds':>8} {'MB/s':>8} {'vs numpy':>9} {'CPU s':>7} "
          f"{'MB/CPU-s':>9} {'vs numpy':>9} {'peak RSS':>10}  load")
    for r in results:
        r["vs_numpy_read"] = r["mb_per_s"] / ref
        r["cpu_vs_numpy_read"] = r["mb_per_cpu_s"] / cpu_ref
        print(f"{r['phase']:<14} {r['seconds']:8.2f} {r['mb_per_s']:8.1f} "
              f"{r['vs_numpy_read']:8.0%} {r['cpu_s']:7.2f} {r['mb_per_cpu_s']:9.1f} "
              f"{r['cpu_vs_numpy_read']:8.0%} {r['peak_rss'] / 1e6:8.0f} MB  "
              f"{r['load_before']:.2f} -> {r['load_after']:.2f}")
    by = {r["phase"]: r for r in results}
    for stage in ("stats", "tiles", "stats-s4"):
        one, two = (stage.replace("-", f"-proc-{n}-") if "-" in stage else f"{stage}-proc-{n}"
                    for n in (1, 2))
        if one in by and two in by:
            speedup = by[one]["seconds"] / by[two]["seconds"]
            print(f"{stage}: speed-up 1 -> 2 worker processes {speedup:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"bytes": total, "files": len(paths),
                                         "numpy_read_mb_s": ref_runs, "results": results},
                                        indent=1))
    if args.clean:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
