"""Benchmark the PDS3/VIRTIS reader against the practical floor and a VIRTISpy-style reader.

    python benchmarks/bench_reader.py                    # 432 x 256 x 400 calibrated cube
    python benchmarks/bench_reader.py --lines 40 --samples 64   # quick check

Writes a synthetic VIRTIS-M calibrated cube (BIP >f4 core, 1 backplane item in a 4-byte slot,
3 float32 bottomplanes; the real layout) to a temporary folder, then reports:

- open: ``parsers.virtis.read(path)`` (label only), median of many runs;
- load: ``read(path).load()`` -> native float32 (B, L, S), NaN at special values;
- floor: ``np.fromfile`` of the same data bytes + ``byteswap`` to native (no reshaping, no masks);
- struct: a VIRTISpy-style reader (``f.read()`` + ``struct.unpack_from`` into a tuple, then
  numpy), timed on ``--struct-lines`` lines and scaled linearly to the whole cube;
- peak memory of ``load()`` above its output array (tracemalloc), and the process max RSS.

Timings are wall-clock medians of ``--repeat`` runs with a warm page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import struct
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsers import virtis
from pipeline.synthetic.pds3_products import Suffix, quote, write_qube_product


def make_cube(path: Path, bands: int, lines: int, samples: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    core = rng.random((bands, lines, samples), dtype=np.float32) * 10
    core[:, 0, 0] = -1004.0  # one NULL spectrum
    back = Suffix(np.zeros((1, lines, samples), np.uint32), ">u4", 4)
    bottom = Suffix(rng.random((3, bands, samples), dtype=np.float32), ">f4", 4)
    kw = [("BAND_SUFFIX_NAME", quote("SCET")), ("BAND_SUFFIX_ITEM_BYTES", 2),
          ("BAND_SUFFIX_ITEM_TYPE", "MSB_UNSIGNED_INTEGER"),
          ("LINE_SUFFIX_NAME", (quote("WAVELENGTH"), quote("FWHM"), quote("UNCERTAINTY"))),
          ("LINE_SUFFIX_ITEM_BYTES", 4), ("LINE_SUFFIX_ITEM_TYPE", "REAL")]
    top = [("PRODUCT_ID", quote(path.name)), ("PROCESSING_LEVEL_ID", 3),
           ("INSTRUMENT_ID", quote("VIRTIS")), ("MISSION_ID", "ROSETTA"),
           ("ROSETTA:CHANNEL_ID", quote("VIRTIS_M_VIS")),
           ("STANDARD_DATA_PRODUCT_ID", quote("VIRTIS DATA"))]
    core_kw = [("CORE_VALID_MINIMUM", -999.0), ("CORE_NULL", -1004.0)]
    return write_qube_product(path, core, core_dtype=">f4", core_type="REAL", suffix={
        "BAND": back, "LINE": bottom}, suffix_keywords=kw, suffix_bytes_label=4,
        top_keywords=top, core_keywords=core_kw)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        result = None
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def struct_reader(path: Path, offset: int, bands: int, samples: int, lines: int) -> np.ndarray:
    """VIRTISpy style: read the file, unpack pixel by pixel-line with struct, build arrays."""
    with open(path, "rb") as fh:
        data = fh.read()
    per_line = samples * (bands + 1)
    values = struct.unpack_from(f">{per_line * lines}f", data, offset)
    arr = np.array(values, dtype=np.float32).reshape(lines, samples, bands + 1)[..., :bands]
    return arr.transpose(2, 0, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bands", type=int, default=432)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--lines", type=int, default=400)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--struct-lines", type=int, default=20,
                   help="lines decoded by the struct reader (scaled to the cube)")
    p.add_argument("--dir", type=Path, default=None, help="folder for the cube (default: tmp)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = p.parse_args(argv)
    b, s, n = args.bands, args.samples, args.lines

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = make_cube(Path(tmp) / "V1_BENCH.CAL", b, n, s)
        size = path.stat().st_size
        cube = virtis.read(path)
        offset, data_items = cube.offset, cube.layout.expected // 4
        path.read_bytes()  # warm the page cache

        opens = []
        for _ in range(max(20, args.repeat)):
            t0 = time.perf_counter()
            virtis.read(path)
            opens.append(time.perf_counter() - t0)
        t_open = statistics.median(opens)

        t_load, arr = timed(lambda: virtis.read(path).load(), args.repeat)
        assert arr.shape == (b, n, s) and arr.dtype == np.float32
        del arr

        def floor():
            x = np.fromfile(path, dtype=">f4", offset=offset, count=data_items)
            return x.byteswap().view(x.dtype.newbyteorder())

        t_floor, x = timed(floor, args.repeat)
        del x

        k = max(1, min(n, args.struct_lines))
        t_struct_part, part = timed(lambda: struct_reader(path, offset, b, s, k),
                                    max(1, min(3, args.repeat)))
        ref = virtis.read(path).read_lines(0, k)
        same = np.array_equal(np.nan_to_num(part, nan=-1004.0), np.nan_to_num(ref, nan=-1004.0))
        del part, ref
        t_struct = t_struct_part * n / k

        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        out = virtis.read(path).load()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out_bytes = out.nbytes
        del out
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    figures = {
        "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "cube": [b, n, s], "file_bytes": size,
        "open_ms": t_open * 1e3, "load_s": t_load, "floor_s": t_floor,
        "load_over_floor": t_load / t_floor,
        "struct_s_scaled": t_struct, "struct_lines_timed": k, "struct_agrees": bool(same),
        "struct_over_load": t_struct / t_load,
        "load_peak_mb": (peak - base) / 2**20, "output_mb": out_bytes / 2**20,
        "load_overhead_mb": (peak - base - out_bytes) / 2**20, "max_rss_mb": rss_mb,
    }
    print(f"machine: {figures['machine']} ({figures['processor']}, {figures['cpus']} CPUs), "
          f"Python {figures['python']}, numpy {figures['numpy']}")
    print(f"cube: {b} bands x {n} lines x {s} samples, calibrated BIP >f4 + suffixes, "
          f"{size / 2**20:.1f} MiB; medians of {args.repeat} runs, warm cache")
    print(f"  open (label only)               {t_open * 1e3:9.2f} ms")
    print(f"  read(path).load()               {t_load:9.3f} s")
    print(f"  np.fromfile + byteswap (floor)  {t_floor:9.3f} s   load/floor = "
          f"{t_load / t_floor:.2f}x")
    print(f"  struct.unpack (VIRTISpy style)  {t_struct:9.3f} s   (timed on {k} lines, scaled;"
          f" {'agrees' if same else 'DISAGREES'}); struct/load = {t_struct / t_load:.0f}x")
    print(f"  load() peak traced memory       {(peak - base) / 2**20:9.1f} MiB  (output "
          f"{out_bytes / 2**20:.1f} MiB, overhead {(peak - base - out_bytes) / 2**20:.1f} MiB)")
    print(f"  process max RSS                 {rss_mb:9.1f} MiB")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
