"""Peak memory of statistics and tiling on one full-size (10980 x 10980) Sentinel-2 L2A product.

    python benchmarks/bench_sentinel2_memory.py            # writes ~1.4 GB under --workdir
    python benchmarks/bench_sentinel2_memory.py --size 2196 --clean   # a quick check

The product is a band folder (BigEarthNet layout, one GeoTIFF per band at its native
resolution: B02 B03 B04 B08 at 10 m = 10980 px, B05 B06 B07 B11 B12 and the SCL at 20 m),
tiled 512 x 512 and DEFLATE-compressed, written strip by strip (synthetic content: smooth
ramps plus noise, 5 % cloud classes in the SCL). JPEG 2000 encoding of a full tile is too slow
here; the readers read both the same way, window by window.

Each case runs in its own process; the figure is that process's peak RSS (``ru_maxrss``),
i.e. the memory of one worker:

* ``whole``: ``parsers.sentinel2.read(folder)``: the product decoded at once (before issue 14);
* ``stats``: :func:`pipeline.stats.product_partial` (blocks of ``chunk_mb``, 1024 lines at least);
* ``tiles``: every tile task of the product (:func:`pipeline.tiles.make_tile_block`, 48 px
  tiles, params.yaml's codec) run one after another in this process, as one worker runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B11", "B12")


def write_product(folder: Path, size: int) -> Path:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for band in (*BANDS_10M, *BANDS_20M, "SCL"):
        res = 10 if band in BANDS_10M else 20
        n = size * 10 // res
        path = folder / f"T32TNR_20170703T101031_{band}.tif"
        if path.exists():
            continue
        profile = dict(driver="GTiff", width=n, height=n, count=1,
                       dtype="uint8" if band == "SCL" else "uint16", crs="EPSG:32632",
                       transform=from_origin(499980.0, 5000040.0, res, res), tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate")
        tmp = path.with_suffix(".part.tif")
        with rasterio.open(tmp, "w", **profile) as dst:
            for r0 in range(0, n, 512):
                h = min(512, n - r0)
                y, x = np.mgrid[r0:r0 + h, 0:n]
                if band == "SCL":
                    strip = np.where(rng.random((h, n)) < 0.05, 9, 4).astype(np.uint8)
                else:
                    ramp = 800 + (3 * x + 5 * y) % 3000
                    strip = (ramp + rng.integers(0, 50, (h, n))).astype(np.uint16)
                dst.write(strip, 1, window=Window(0, r0, n, h))
        tmp.rename(path)
    return folder


def run_case(case: str, folder: Path, chunk_mb: float) -> dict:
    from pipeline.products import ProductRef, open_product

    t0 = time.perf_counter()
    if case == "whole":
        from parsers import sentinel2

        shape = sentinel2.read(folder).data.shape
    elif case == "stats":
        from pipeline.stats import HistogramSpec, product_partial

        st = product_partial("sentinel2", folder, HistogramSpec(), chunk_mb)
        shape = (st.bands, int(st.count[0] + st.invalid[0]))
    elif case == "tiles":
        from pipeline.params import load_stage
        from pipeline.tiles import TileLayout, TileParams, make_tile_block, make_tile_tasks

        root = Path(__file__).resolve().parents[1]
        params = load_stage(TileParams, "tiles", "sentinel2", root / "params.yaml")
        product = open_product("sentinel2", folder)
        layout = TileLayout(product.bands, params.size, "<u2", True, params.compression,
                            params.compression_level, params.shuffle)
        ref = ProductRef(product.product_id, folder)
        tasks = make_tile_tasks([ref], params, product.bands,
                                lambda r: open_product("sentinel2", r.path))
        kept = sum(make_tile_block(t, "sentinel2", params, layout).kept for t in tasks)
        shape = (len(tasks), kept)
    else:
        raise SystemExit(f"unknown case {case}")
    return {"case": case, "seconds": time.perf_counter() - t0, "result": list(shape),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=10980, help="10 m grid size in pixels")
    ap.add_argument("--chunk-mb", type=float, default=32.0)
    ap.add_argument("--cases", default="stats,tiles,whole")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "sscnet-bench-s2-memory")
    ap.add_argument("--clean", action="store_true", help="delete --workdir at the end")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    folder = args.workdir / f"S2A_MSIL2A_20170703T101031_{args.size}"
    if args.case:
        print(json.dumps(run_case(args.case, folder, args.chunk_mb)))
        return 0
    t0 = time.perf_counter()
    write_product(folder, args.size)
    disk = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
    print(f"product: {args.size} x {args.size} px L2A band folder, 9 bands + SCL, "
          f"{disk:.0f} MB on disk ({time.perf_counter() - t0:.0f} s to write); decoded "
          f"9 x {args.size}^2 uint16 = {9 * args.size**2 * 2 / 1e9:.2f} GB")
    results = []
    for case in args.cases.split(","):
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--size",
                               str(args.size), "--chunk-mb", str(args.chunk_mb),
                               "--workdir", str(args.workdir)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{case}: failed\n{proc.stderr[-2000:]}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["load"] = os.getloadavg()[0]
        results.append(res)
        print(f"{case:<6} peak RSS {res['peak_rss_mb']:7.0f} MB  {res['seconds']:7.1f} s  "
              f"{res['result']}  load {res['load']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.clean:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
