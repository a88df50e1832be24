"""Build small tile files from in-memory products (no reader needed), for the dataset tests."""

from __future__ import annotations

import json
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


def write_manifest(root: Path, source: str, files: dict[str, tuple[Path, dict]]) -> Path:
    """DIR/manifest.json for files already under ``root``: product id -> (path, meta)."""
    from pipeline.fetch import sha256_file
    from pipeline.manifest import Manifest, ManifestEntry

    entries = []
    for pid, (path, meta) in files.items():
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            rel = p.relative_to(root).as_posix()
            entries.append(ManifestEntry(pid, rel, f"http://127.0.0.1/{rel}", p.stat().st_size,
                                         sha256_file(p), dict(meta)))
    return Manifest(source, {}, entries).write(root / "manifest.json")


def virtis_download_dir(root: Path, n: int = 4, bands: int = 24, lines: int = 40,
                        samples: int = 32, extra: dict | None = None) -> Path:
    """A download folder of ``n`` synthetic calibrated VIRTIS-M VIS cubes (+ one geo cube)."""
    from pipeline.synthetic.virtis_products import write_virtis_product

    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(n):
        name = f"V1_{388238696 + 1000 * i:011d}.QUB"
        path = write_virtis_product(root / "DATA" / name, kind="cal", bands=bands, lines=lines,
                                    samples=samples, seed=i)
        files[name] = (path, {"kind": "cal", "channel": "VIRTIS_M_VIS"})
    geo = write_virtis_product(root / "GEOMETRY" / "V1_00388238696.GEO", kind="geo",
                               lines=lines, samples=samples, seed=0)
    files["V1_00388238696.GEO"] = (geo, {"kind": "geo", "channel": "VIRTIS_M_VIS"})
    files.update(extra or {})
    write_manifest(root, "virtis", files)
    return root


def s2_download_dir(root: Path, n: int = 3, size: int = 96) -> Path:
    """A download folder of ``n`` synthetic Sentinel-2 L2A SAFE folders."""
    import datetime as dt

    from pipeline.synthetic.sentinel2_products import write_safe_product

    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(n):
        date = dt.datetime(2017, 7, 3 + 5 * i, 10, 10, 31, tzinfo=dt.timezone.utc)
        path = write_safe_product(root, size_10m=size, seed=i, date=date,
                                  tile=("T32TNR", "T32TMR", "T32TNR")[i % 3])
        files[path.name.removesuffix(".SAFE")] = (path, {})
    write_manifest(root, "sentinel2", files)
    return root


def write_learnable_tiles(path: Path, n: int = 64, bands: int = 4, tile: int = 8,
                          products: int = 4, seed: int = 0) -> Path:
    """A tiny learnable tile file in pipeline.tiles' layout: smooth low-rank radiance.

    ``n`` float32 tiles (n, bands, tile, tile), products ``P0..P{products-1}`` in turn (so a
    product split has whole products to hold out), statistics in ``attrs["stats"]``,
    uncompressed: training tests can learn it in a few epochs on one CPU thread.
    """
    import h5py

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:tile, 0:tile] / tile
    spectra = np.stack([np.linspace(1, 2, bands), np.linspace(2, 0.5, bands)])  # (2, B)
    tiles = np.empty((n, bands, tile, tile), np.float32)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        spatial = np.stack([a + b * xx, c * (1 - yy)])  # (2, H, W)
        tiles[i] = 20 * np.einsum("kb,khw->bhw", spectra, spatial)
        tiles[i] += rng.normal(0, 0.05, tiles[i].shape)
    lo, hi = tiles.min(axis=(0, 2, 3)).tolist(), tiles.max(axis=(0, 2, 3)).tolist()
    stats = {"source": "virtis", "products": [f"P{k}" for k in range(products)], "bands": bands,
             "count": int(tiles.size // bands), "min": lo, "max": hi,
             "mean": tiles.mean(axis=(0, 2, 3)).tolist(), "std": tiles.std(axis=(0, 2, 3)).tolist(),
             "percentiles": {"0.1": lo, "99.9": hi}}
    index = np.zeros(n, dtype=[("product_id", "S32"), ("line0", "<i4"), ("sample0", "<i4")])
    index["product_id"] = [f"P{i % products}".encode() for i in range(n)]
    index["line0"] = np.arange(n) * tile
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("tiles", data=tiles, chunks=(1, bands, tile, tile))
        f.create_dataset("index", data=index)
        f.attrs["source"] = "virtis"
        f.attrs["stats"] = json.dumps(stats)
    return path


def write_stage_like_tiles(path: Path, source: str, n: int, bands: int | None = None,
                           size: int | None = None, compression: str = "blosc2-zstd") -> Path:
    """A tile file as the tiles stage writes it (TileWriter layout, filters, fletcher32,
    statistics), with synthetic content: smooth spectra times a random brightness per pixel,
    plus one block of noise reused for every 16 tiles (fast to write for benchmarks).

    Defaults are the paper's shapes: VIRTIS float32 432x64x64, Sentinel-2 uint16 9x48x48
    with a validity mask. ``n`` tiles in products of 64 (``P0``, ``P1``, ...).
    """
    from pipeline.tiles import TileWriter

    rng = np.random.default_rng(0)
    virtis = source == "virtis"
    bands = bands or (432 if virtis else 9)
    size = size or (64 if virtis else 48)
    dtype = np.dtype(np.float32 if virtis else np.uint16)
    spectrum = np.linspace(1.0, 2.0, bands, dtype=np.float32)[:, None, None]
    noise = rng.standard_normal((16, bands, size, size), dtype=np.float32) * 0.01  # reused
    lo, hi = [], []
    with TileWriter(path, bands=bands, size=size, dtype=dtype, id_length=16,
                    with_mask=not virtis, compression=compression) as w:
        for start in range(0, n, 16):
            k = min(16, n - start)
            base = rng.uniform(0.2, 1.0, (k, 1, size, size)).astype(np.float32)
            tiles = ((base * spectrum + noise[:k]) * (100 if virtis else 3000)).astype(dtype)
            lo.append(tiles.min(axis=(0, 2, 3)))
            hi.append(tiles.max(axis=(0, 2, 3)))
            masks = None if virtis else np.ones((k, size, size), bool)
            w.append(f"P{start // 64}", tiles, [(0, 0)] * k, np.zeros(k, np.float32), masks)
        mn = np.min(lo, axis=0).astype(float).tolist()
        mx = np.max(hi, axis=0).astype(float).tolist()
        stats = {"source": source, "products": [], "bands": bands, "count": n * size * size,
                 "min": mn, "max": mx, "mean": mn, "std": [1.0] * bands,
                 "percentiles": {"0.1": mn, "99.9": mx}}
        w.file.attrs["stats"] = json.dumps(stats)
        w.file.attrs["source"] = source
    return path
