"""The whole dataset build through the CLIs (split -> stats -> tiles -> describe -> dataset)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline import describe, split, stats, tiles
from pipeline.synthetic.datasets import virtis_download_dir, write_manifest
from training.data import TileDataset

PARAMS = """
split: {seed: 1, test_fraction: 0.25}
stats: {scheduler: synchronous, chunk_mb: 0.5}
datasets:
  virtis: {kind: virtis, products: raw, tiles: {size: 16, max_invalid_fraction: 0.0}}
  sentinel2: {kind: sentinel2, products: raw, tiles: {size: 48, compression: gzip}}
"""


def build(tmp_path, source, raw):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    p = ["--params", str(params), "--source", source]
    assert split.main([*p, "--products", str(raw), "--out", str(tmp_path / "split.json")]) == 0
    assert stats.main([*p, "--split", str(tmp_path / "split.json"),
                       "--out", str(tmp_path / "stats.json"), "--no-progress"]) == 0
    assert tiles.main([*p, "--split", str(tmp_path / "split.json"), "--stats",
                       str(tmp_path / "stats.json"), "--out", str(tmp_path / "tiles"),
                       "--no-progress"]) == 0
    return tmp_path / "tiles"


def test_virtis_build_and_describe(tmp_path, capsys):
    raw = virtis_download_dir(tmp_path / "raw", n=4, bands=20, lines=40, samples=32)
    out = build(tmp_path, "virtis", raw)
    capsys.readouterr()
    assert describe.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "split train" in text and "split test" in text and "dropped tiles" in text
    assert "size on disk" in text and "p99.9" in text
    assert describe.main([str(out / "train.h5"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bands"] == 20 and info["tile_shape"] == [16, 16]
    # the synthetic cubes hold special values: with max_invalid_fraction 0 tiles are dropped
    assert info["tiles_dropped_invalid"] > 0
    ds = TileDataset(out / "train.h5", normalisation="robust", return_index=True)
    assert len(ds) == info["tiles"]
    x, where = ds[0]
    assert x.shape == (20, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert where["product_id"] in info["stats"]["products"]


def test_describe_rejects_non_tile_file(tmp_path, capsys):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5")
    assert describe.main([str(bad)]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err


def test_real_sentinel2_bigearthnet_build(realdata, tmp_path, capsys):
    """Four real BigEarthNet patches (120 x 120, 9 bands) through the Sentinel-2 path."""
    base = realdata("sentinel2/bigearthnet")
    raw = tmp_path / "raw"
    raw.mkdir()
    files = {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        os.symlink(folder, raw / folder.name)  # never copy real data
        files[folder.name] = (raw / folder.name, {})
    write_manifest(raw, "sentinel2", files)
    out = build(tmp_path, "sentinel2", raw)
    doc = json.loads((tmp_path / "stats.json").read_text())
    assert doc["bands"] == 9 and doc["percentile_tolerance"]["relative"] == 0.0
    assert doc["wavelength"][0] == pytest.approx(492.7)
    n = 0
    for name in ("train", "test"):
        ds = TileDataset(out / f"{name}.h5", normalisation="global_max", return_mask=True)
        n += len(ds)
        for i in range(len(ds)):
            x, mask = ds[i]
            assert mask.all()  # BigEarthNet patches have no no-data pixels
            assert x.shape == (9, 48, 48) and np.isfinite(x.numpy()).all()
    assert n == 4 * 4  # 120 x 120 -> 2 x 2 tiles of 48 per patch
    capsys.readouterr()
    describe.main([str(out)])
    assert "uint16" in capsys.readouterr().out
