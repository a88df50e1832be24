"""Summarise tile files: tiles per split, bands, statistics, dropped tiles, size on disk.

``python -m pipeline.describe data/tiles/virtis/train.h5 data/tiles/virtis/test.h5``
(a folder stands for the ``*.h5`` files in it). ``--json`` prints one JSON document;
``--all-bands`` prints the statistics of every band instead of the first and last few.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parsers.errors import UserError, cli_entry
from parsers.jsonsafe import from_attr

EDGE_BANDS = 3


def describe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts about one tile file as plain python values (UserError if it is not one)."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc2 filter)

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if "tiles" not in f:
            raise UserError(f"{path}: no 'tiles' dataset (not written by pipeline.tiles)")
        tiles = f["tiles"]
        attrs = {k: from_attr(v) for k, v in f.attrs.items()}
        params = attrs.get("params") or {}
        raw_bytes = int(np.prod(tiles.shape, dtype=np.int64)) * tiles.dtype.itemsize
        stored = tiles.id.get_storage_size()
        products = attrs.get("products") or []
        info = {
            "path": str(path),
            "source": attrs.get("source"), "split": attrs.get("split"),
            "tiles": int(tiles.shape[0]), "bands": int(tiles.shape[1]),
            "tile_shape": [int(tiles.shape[2]), int(tiles.shape[3])],
            "dtype": str(tiles.dtype), "chunks": list(tiles.chunks or []),
            "stride": attrs.get("stride"),
            "products": len(products),
            "tiles_dropped_invalid": attrs.get("tiles_dropped_invalid"),
            "max_invalid_fraction": params.get("max_invalid_fraction"),
            "compression": params.get("compression"),
            "fletcher32": bool(tiles.fletcher32),
            "size_on_disk": path.stat().st_size,
            "tiles_raw_bytes": raw_bytes,
            "compression_ratio": raw_bytes / stored if stored else None,
            "software_version": attrs.get("software_version"),
            "stats": attrs.get("stats"),
            "band_names": attrs.get("band_names"),
        }
        if "wavelength" in f:
            wl = f["wavelength"]
            info["wavelength"] = [float(v) for v in wl[()]]
            info["wavelength_unit"] = from_attr(wl.attrs.get("unit", ""))
        if "invalid_fraction" in f and tiles.shape[0]:
            info["mean_invalid_fraction"] = float(np.mean(f["invalid_fraction"][()]))
    return info


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.5g}"


def format_file(info: dict[str, Any], all_bands: bool = False) -> str:
    """Human-readable description of :func:`describe_file` output."""
    h, w = info["tile_shape"]
    lines = [
        f"{info['path']}",
        f"  source {info['source']}, split {info['split']}: {info['tiles']} tiles of "
        f"{info['bands']} x {h} x {w} {info['dtype']} (stride {info['stride']}) "
        f"from {info['products']} products",
        f"  dropped tiles (invalid fraction > {info['max_invalid_fraction']}): "
        f"{info['tiles_dropped_invalid']}",
        f"  size on disk {_size(info['size_on_disk'])} ({info['compression']}"
        f"{', fletcher32' if info['fletcher32'] else ''}; tiles "
        f"{_size(info['tiles_raw_bytes'])} raw, ratio "
        f"{_num(info['compression_ratio'])}), chunks {tuple(info['chunks'])}",
    ]
    wl = info.get("wavelength")
    if wl:
        lines.append(f"  wavelength {wl[0]:.4g} .. {wl[-1]:.4g} {info.get('wavelength_unit')}")
    stats = info.get("stats")
    if stats:
        pct = stats.get("percentiles", {})
        tol = stats.get("percentile_tolerance", {})
        sample = stats.get("percentile_sample") or {}
        ranks = [v for v in (sample.get("rank_tolerance") or {}).values() if v is not None]
        sampled = (f"; histogram of 1 pixel in {sample.get('every')}: rank within "
                   f"{max(ranks):.3g} percentile points" if ranks else "")
        lines.append(
            f"  statistics of the {len(stats.get('products', []))} training products "
            f"(percentile tolerance {tol.get('relative', 0):.3g} relative"
            f" + {tol.get('absolute', 0):.3g}{sampled}):"
        )
        names = info.get("band_names") or stats.get("band_names")
        head = ["band", "name/wl", "count", "min", "max", "mean", "std", "p0.1", "p99.9"]
        rows = [head]
        n = int(stats["bands"])
        show = range(n) if all_bands or n <= 2 * EDGE_BANDS else \
            [*range(EDGE_BANDS), -1, *range(n - EDGE_BANDS, n)]
        for b in show:
            if b < 0:
                rows.append(["..."] + [""] * (len(head) - 1))
                continue
            label = names[b] if names else (f"{wl[b]:.4g}" if wl else "")
            rows.append([
                str(b), label, str(stats["count"][b]), _num(stats["min"][b]),
                _num(stats["max"][b]), _num(stats["mean"][b]), _num(stats["std"][b]),
                _num(pct.get("0.1", [None] * n)[b]), _num(pct.get("99.9", [None] * n)[b]),
            ])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for r in rows:
            lines.append("    " + "  ".join(c.rjust(wd) for c, wd in zip(r, widths, strict=True)))
    return "\n".join(lines)


def expand(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            order = {"train.h5": 0, "test.h5": 1}
            found = sorted(p.glob("*.h5"), key=lambda q: (order.get(q.name, 2), q.name))
            if not found:
                raise UserError(f"{p}: folder holds no .h5 files")
            out += found
        elif not p.exists():
            raise UserError(f"{p}: no such file")
        else:
            out.append(p)
    return out


@cli_entry("python -m pipeline.describe")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.describe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("paths", nargs="+", help="tile files (or folders of them)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--all-bands", action="store_true", help="statistics of every band")
    args = parser.parse_args(argv)
    infos = [describe_file(p) for p in expand(args.paths)]
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=1))
        return 0
    total_tiles = sum(i["tiles"] for i in infos)
    for k, info in enumerate(infos):
        # the statistics are the same in every split file of a build: print them once
        if k and info.get("stats") == infos[0].get("stats"):
            info = {**info, "stats": None}
        print(format_file(info, args.all_bands))
    if len(infos) > 1:
        print(f"total: {total_tiles} tiles in {len(infos)} files, "
              f"{_size(sum(i['size_on_disk'] for i in infos))} on disk; per split: "
              + ", ".join(f"{i['split']} {i['tiles']}" for i in infos))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
