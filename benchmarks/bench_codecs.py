"""Encode/decode throughput (MB/s of input) of SSCNet and every evaluation baseline.

Usage: ``python benchmarks/bench_codecs.py [--shape 432x64x64] [--dtype float32]
[--tiles 4] [--arch conv --latent 1024x8]``. Prints the machine, then one line per method:
MB/s of the input in its native dtype (float32 4 bytes, uint16 2 bytes per value), measured
rate in bpppc. Synthetic smooth cubes (spatially correlated, spectrally smooth), so the rates
are illustrative only; the speeds are what this machine does. SSCNet is untrained here (speed
does not depend on the weights) and runs on the CPU, and on CUDA when present.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from training import baselines as BL
from training.data import Normaliser
from training.evaluate import time_sscnet
from training.models import build_model


def synthetic(n: int, b: int, s: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.cumsum(np.cumsum(rng.normal(size=(n, 1, s, s)), axis=2), axis=3)
    spec = 1 + 0.5 * np.sin(np.linspace(0, 3, b))[None, :, None, None]
    x = base * spec + rng.normal(size=(n, b, s, s)) * 0.3
    x = (x - x.min()) / np.ptp(x)
    return (x * 4000 + 100).astype(np.uint16) if dtype == "uint16" else (x * 80).astype(
        np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="432x64x64")
    ap.add_argument("--dtype", choices=("float32", "uint16"), default="float32")
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--arch", choices=("conv", "linear"), default="conv")
    ap.add_argument("--latent", default="1024x8")
    ap.add_argument("--jpegxl-effort", type=int, default=7)
    a = ap.parse_args()
    b, h, w = (int(v) for v in a.shape.split("x"))
    tiles = synthetic(a.tiles, b, h, a.dtype)
    print(f"machine: {platform.platform()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"input: {a.tiles} tiles {b}x{h}x{w} {a.dtype} = {tiles.nbytes / 1e6:.2f} MB")
    lat = a.latent.split("x")
    latent = int(lat[0]) if a.arch == "linear" else (int(lat[0]), int(lat[1]))
    model = build_model(arch=a.arch, bands=b, tile=h, latent=latent).eval()
    lo = tiles.min(axis=(0, 2, 3)).astype(float)
    hi = tiles.max(axis=(0, 2, 3)).astype(float)
    norm = Normaliser("paper_minmax", lo, hi - lo)
    valid = np.ones(tiles.shape, bool)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                       else [])
    for dev in devices:
        t = time_sscnet(model, norm, tiles, valid, dev)
        print(f"{'sscnet ' + dev.type:34s} enc {t['encode_mbps']:8.2f} MB/s  "
              f"dec {t['decode_mbps']:8.2f} MB/s  (batch {a.tiles}, float32 latent)")
    fmt = BL.TileFormat(b, h, w, tiles.dtype)
    settings = BL.BaselineSettings(target_bpppc=(1.0,), requant_bits=(8,), pca=((8, 10),),
                                   jpegxl_distances=(1.0,), jpeg8_qualities=(95,),
                                   jpegxl_effort=a.jpegxl_effort, calibration_tiles=1)
    for codec in BL.build_codecs(settings, fmt, BL.BandRange(lo, hi), tiles):
        t0 = time.perf_counter()
        res = BL.code_tiles(codec, tiles)
        mb = res.input_bytes / 1e6
        print(f"{codec.label:34s} enc {mb / res.encode_s:8.2f} MB/s  dec "
              f"{mb / res.decode_s:8.2f} MB/s  {res.bpppc:7.3f} bpppc  "
              f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
