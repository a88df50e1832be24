"""How much of a COG does the ``stac`` backend read for one window? (loopback, synthetic)

Builds a one-item synthetic catalogue (``--size`` 10 m pixels a side, COG tiles of 256 px),
serves it on 127.0.0.1 and runs ``python -m pipeline.download_sentinel2`` with
``--window-px`` for each value given; prints, per window, the bytes the file server sent,
the total size of the item's COG files, the GET count and the wall time, plus the machine.

    python benchmarks/bench_stac_window.py [--size 1098] [--windows 48 480 960]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1098, help="item edge, 10 m pixels (x6)")
    ap.add_argument("--windows", type=int, nargs="+", default=[48, 480, 960])
    args = ap.parse_args()

    from pipeline.download_sentinel2 import main as download
    from pipeline.synthetic.servers.stac import build_stac_catalogue, serve_stac_catalogue

    print(f"machine: {platform.platform()}, python {platform.python_version()}, "
          f"{os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as tmp:
        root = build_stac_catalogue(Path(tmp) / "stac", n_items=1, size=args.size)
        total = sum(p.stat().st_size for p in (root / "data").rglob("*.tif"))
        print(f"item: {args.size} x {args.size} px at 10 m, 11 COG assets, {total / 1e6:.2f} MB")
        print(f"{'window_px':>9} {'sent MB':>8} {'% of COGs':>9} {'GETs':>5} {'seconds':>8}")
        for w in args.windows:
            with serve_stac_catalogue(root) as url:
                t0 = time.perf_counter()
                rc = download(["--stac-url", url, "--out", str(Path(tmp) / f"out{w}"),
                               "--window-px", str(w), "--max-products", "1", "--no-progress"])
                dt = time.perf_counter() - t0
                log = list(url.files.log)
            if rc != 0:
                print(f"window {w}: download failed (rc {rc})")
                return 1
            sent = sum(r.sent for r in log)
            gets = sum(1 for r in log if r.method == "GET")
            print(f"{w:>9} {sent / 1e6:>8.3f} {100 * sent / total:>8.1f}% {gets:>5} {dt:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
