"""Sentinel-2 reader timings: whole synthetic SAFE zip, and one 48 x 48 window over HTTP.

    python benchmarks/bench_sentinel2_read.py [--size 1098] [--repeat 3]

1. Writes a synthetic L2A SAFE zip (lossless JP2, ``--size`` 10 m pixels a side; a real tile
   is 10980) and times ``parsers.sentinel2.read`` of the 9 default bands (nearest, bilinear).
2. Writes the same bands as single-band COGs, serves them on 127.0.0.1 and reads one 48 x 48
   window through ``/vsicurl/``: prints the time, the number of HTTP requests and the bytes
   sent, against the total size of the files.
Prints the machine (platform, CPU count) first; numbers on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsers import sentinel2
from pipeline.synthetic.sentinel2_products import write_band_files, write_safe_product


def _time(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1098, help="10 m pixels a side (x6)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    import rasterio

    print(f"rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        product = write_safe_product(root, size_10m=args.size, zip=True)
        print(f"wrote {product.name} ({product.stat().st_size / 1e6:.1f} MB, "
              f"{args.size} x {args.size} px) in {time.perf_counter() - t0:.2f} s")
        for resampling in ("nearest", "bilinear"):
            seconds, stack = _time(lambda r=resampling: sentinel2.read(product, resampling=r),
                                   args.repeat)
            mpix = stack.data.shape[1] * stack.data.shape[2] / 1e6
            print(f"read SAFE zip, 9 bands, {resampling:<8}: {seconds:.3f} s median of "
                  f"{args.repeat} ({9 * mpix / seconds:.1f} Mpixel/s on the 10 m grid)")

        try:
            from pipeline.synthetic.servers.files import serve_directory
        except ImportError:
            print("pipeline.synthetic.servers.files not available: HTTP window read skipped")
            return 0
        cogs = root / "cogs"
        files = write_band_files(cogs, stem="item", size_10m=args.size, cog=True)
        total = sum(p.stat().st_size for p in files.values())
        with serve_directory(cogs) as base:
            assets = {b: f"{base}{p.name}" for b, p in files.items()}
            row = col = (args.size // 2) // 48 * 48
            before = len(base.log)
            t0 = time.perf_counter()
            stack = sentinel2.read(assets, window=(row, col, 48, 48))
            seconds = time.perf_counter() - t0
            log = base.log[before:]
        sent = sum(r.sent for r in log)
        print(f"HTTP window 48 x 48 (9 COGs): {seconds:.3f} s, {len(log)} requests, "
              f"{sent / 1e3:.1f} kB sent of {total / 1e6:.2f} MB in the files; "
              f"shape {stack.data.shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
