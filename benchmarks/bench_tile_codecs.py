"""HDF5 codec choices for the tile files: MB/s to write and read, and compression ratio.

    python benchmarks/bench_tile_codecs.py                 # 24 VIRTIS + 64 Sentinel-2 tiles
    python benchmarks/bench_tile_codecs.py --json out.json

Tiles, as the tile stage cuts them (one HDF5 chunk per tile, fletcher32 as in production):

* VIRTIS: 432 x 64 x 64 float32 from a synthetic calibrated VIRTIS-M VIS cube
  (:mod:`pipeline.synthetic.virtis_products`: smooth comet-like spectra, 1 % noise, big-endian
  file read back through the reader), NaN at the special values;
* Sentinel-2: 9 x 48 x 48 uint16 cut from the four real BigEarthNet L2A patches vendored
  under ``tests/data/sentinel2/bigearthnet`` (120 x 120 px, 10/20 m bands on the 10 m grid).

Every codec is the Blosc2 HDF5 filter of hdf5plugin (lz4; zstd at levels 1, 3, 5), each
without a pre-filter and with bitshuffle, plus no compression and gzip-4 + shuffle (the
portable fallback). Write = compress + write the chunks into a new file in one process
(page cache, no fsync); read = read every tile back. MB/s count raw tile bytes per second of
process CPU time (``time.process_time``: on a machine shared with other jobs, wall time
measures the neighbours too; the wall-clock figures are in the JSON); ratio is raw bytes /
stored chunk bytes. Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CODECS: dict[str, dict] = {"none": {}, "gzip-4 + shuffle": {
    "compression": "gzip", "compression_opts": 4, "shuffle": True}}
for _shuffle, _tag in ((hdf5plugin.Blosc2.NOFILTER, ""), (hdf5plugin.Blosc2.BITSHUFFLE,
                                                            " + bitshuffle")):
    CODECS[f"lz4{_tag}"] = dict(hdf5plugin.Blosc2(cname="lz4", clevel=5, filters=_shuffle))
    for _level in (1, 3, 5):
        CODECS[f"zstd-{_level}{_tag}"] = dict(
            hdf5plugin.Blosc2(cname="zstd", clevel=_level, filters=_shuffle))


def virtis_tiles(n: int, workdir: Path) -> np.ndarray:
    from parsers import virtis
    from pipeline.synthetic.virtis_products import write_virtis_product
    from pipeline.tiles import tile_array

    lines = 64 * max(1, -(-n // 4))
    path = write_virtis_product(workdir / "V1_00388238696.QUB", kind="cal", bands=432,
                                samples=256, lines=lines, seed=3)
    tiles, _ = tile_array(np.ascontiguousarray(virtis.read(path).load()), 64)
    return np.ascontiguousarray(tiles[:n])


def sentinel2_tiles() -> np.ndarray:
    from parsers import sentinel2
    from pipeline.tiles import tile_array

    out = []
    for folder in sorted((ROOT / "tests/data/sentinel2/bigearthnet").iterdir()):
        stack = sentinel2.read(folder)
        out.append(tile_array(stack.data, 48)[0])
    return np.ascontiguousarray(np.concatenate(out))


def measure(tiles: np.ndarray, kwargs: dict, path: Path, repeat: int) -> dict:
    raw = tiles.nbytes
    writes, reads, wall_w, wall_r = [], [], [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        with h5py.File(path, "w") as f:
            d = f.create_dataset("tiles", data=tiles, chunks=(1, *tiles.shape[1:]),
                                 fletcher32=True, **kwargs)
            stored = d.id.get_storage_size()
        writes.append(time.process_time() - c0)
        wall_w.append(time.perf_counter() - t0)
        c0, t0 = time.process_time(), time.perf_counter()
        with h5py.File(path, "r") as f:
            d = f["tiles"]
            for i in range(len(tiles)):
                d[i]
        reads.append(time.process_time() - c0)
        wall_r.append(time.perf_counter() - t0)
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["tiles"][()], tiles, equal_nan=tiles.dtype.kind == "f")
    return {"write_mb_s": raw / 1e6 / min(writes), "read_mb_s": raw / 1e6 / min(reads),
            "ratio": raw / stored, "write_mb_s_wall": raw / 1e6 / min(wall_w),
            "read_mb_s_wall": raw / 1e6 / min(wall_r)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--virtis-tiles", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--s2-copies", type=int, default=8,
                    help="repeat the 16 real Sentinel-2 tiles (timing; ratio is per chunk)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = {"VIRTIS 432x64x64 f4": virtis_tiles(args.virtis_tiles, work),
                "Sentinel-2 9x48x48 u2": np.tile(sentinel2_tiles(), (args.s2_copies, 1, 1, 1))}
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, h5py {h5py.__version__}"
              f" (HDF5 {h5py.version.hdf5_version}), hdf5plugin {hdf5plugin.version}; "
              f"load average {os.getloadavg()[0]:.2f}")
        results: dict[str, dict] = {}
        for name, tiles in sets.items():
            print(f"{name}: {len(tiles)} tiles, {tiles.nbytes / 1e6:.1f} MB")
        print(f"{'codec':<24}" + "".join(f"{s.split()[0]:>30}" for s in sets))
        print(f"{'':<24}" + "".join(f"{'write MB/s  read MB/s  ratio':>30}" for _ in sets))
        for codec, kwargs in CODECS.items():
            row = {s: measure(t, kwargs, work / "codec.h5", args.repeat) for s, t in sets.items()}
            results[codec] = row
            print(f"{codec:<24}" + "".join(
                f"{r['write_mb_s']:>11.0f}{r['read_mb_s']:>11.0f}{r['ratio']:>8.2f}"
                for r in row.values()))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
