"""Build small tile files from in-memory products (no reader needed), for the dataset tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.products import ArrayProduct, ProductRef
from pipeline.stats import BandStats, HistogramSpec, StatsParams, stats_document, tree_merge
from pipeline.tiles import TileParams, write_split_tiles


def fake_cubes(source: str = "virtis", n: int = 3, bands: int = 6, lines: int = 40,
               samples: int = 36, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Product id -> (cube (B, L, S), pixel mask or None); VIRTIS-like cubes carry NaN."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        if source == "virtis":
            cube = (rng.gamma(2.0, 3.0, (bands, lines, samples)) - 1.0).astype(np.float32)
            cube[:, 3, 5] = np.nan  # one invalid pixel
            cube[:, 20:, :9] = np.nan  # a block of invalid values: some tiles get dropped
            out[f"V1_{i:011d}.QUB"] = (cube, None)
        else:
            cube = rng.integers(1, 5000, (bands, lines, samples)).astype(np.uint16)
            valid = np.ones((lines, samples), bool)
            valid[:12, :12] = False
            cube[:, ~valid] = 0
            out[f"S2A_MSIL2A_2017070{i}T101031_N0205_R022_T32TNR_2017070{i}T101030"] = (cube, valid)
    return out


def build(tmp_path: Path, source: str = "virtis", size: int = 16, stride: int | None = None,
          max_invalid: float = 0.05, compression: str = "blosc2-zstd", **kw):
    """Write train.h5 from fake cubes; return (path, cubes, stats document)."""
    cubes = fake_cubes(source, **kw)
    spec = HistogramSpec("uint16") if source == "sentinel2" else HistogramSpec()
    stats = tree_merge([BandStats.from_block(c, spec, v) for c, v in cubes.values()])
    doc = stats_document(source, stats, list(cubes), StatsParams(),
                         {"dtype": str(next(iter(cubes.values()))[0].dtype),
                          "wavelength": [400.0 + 10 * b for b in range(stats.bands)],
                          "wavelength_unit": "nm", "band_names": None})
    refs = [ProductRef(pid, tmp_path / pid) for pid in sorted(cubes, reverse=True)]
    out = tmp_path / "tiles" / "train.h5"
    params = TileParams(size=size, stride=stride, max_invalid_fraction=max_invalid,
                        compression=compression)

    def opener(ref: ProductRef) -> ArrayProduct:
        cube, valid = cubes[ref.product_id]
        return ArrayProduct(ref.product_id, cube, valid)

    counts = write_split_tiles(out, source, "train", refs, params, doc, progress=False,
                               opener=opener)
    return out, cubes, doc, counts
