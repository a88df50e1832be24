"""HDF5 tile files: content, order, chunking, attributes, dropped tiles, atomic writes."""

from __future__ import annotations

import json

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from pipeline.products import ArrayProduct, ProductRef
from pipeline.synthetic.datasets import build
from pipeline.tiles import TileParams, tile_array, write_split_tiles


def expected_tiles(cubes, size, stride, max_invalid):
    """Tiles cut with numpy from the whole arrays, in product-id order."""
    tiles, where, dropped = [], [], 0
    for pid in sorted(cubes):
        cube, valid = cubes[pid]
        t, offsets = tile_array(cube, size, stride)
        bad = ~np.isfinite(t) if t.dtype.kind == "f" else np.zeros(t.shape, bool)
        if valid is not None:
            m, _ = tile_array(valid[None], size, stride)
            bad |= ~m
        frac = bad.reshape(len(t), -1).mean(1)
        keep = frac <= max_invalid
        dropped += int((~keep).sum())
        tiles.append(t[keep])
        where += [(pid, *o) for o, k in zip(offsets, keep, strict=True) if k]
    return np.concatenate(tiles), where, dropped


@pytest.mark.parametrize("source", ["virtis", "sentinel2"])
@pytest.mark.parametrize("stride", [None, 10])
def test_content_order_chunking_attrs(tmp_path, source, stride):
    path, cubes, _doc, counts = build(tmp_path, source, size=16, stride=stride)
    want, where, dropped = expected_tiles(cubes, 16, stride, 0.05)
    assert dropped > 0 and counts["dropped_invalid"] == dropped
    with h5py.File(path, "r") as f:
        tiles = f["tiles"]
        assert tiles.shape == want.shape and tiles.chunks == (1, *want.shape[1:])
        assert tiles.dtype == (np.float32 if source == "virtis" else np.uint16)
        assert tiles.fletcher32
        np.testing.assert_array_equal(tiles[()], want)  # NaN compare equal here
        idx = f["index"][()]
        got = [(r["product_id"].decode(), int(r["line0"]), int(r["sample0"])) for r in idx]
        assert got == where
        assert f.attrs["source"] == source and f.attrs["split"] == "train"
        assert f.attrs["tiles_kept"] == len(want)
        assert f.attrs["tiles_dropped_invalid"] == dropped
        assert json.loads(f.attrs["stats"])["bands"] == want.shape[1]
        assert json.loads(f.attrs["params"])["size"] == 16
        assert f.attrs["software_version"]
        assert f["wavelength"].shape == (want.shape[1],)
        assert ("valid" in f) == (source == "sentinel2")
        assert np.all(f["invalid_fraction"][()] <= 0.05)


def test_same_inputs_same_file_content(tmp_path):
    a, *_ = build(tmp_path / "a", "virtis")
    b, *_ = build(tmp_path / "b", "virtis")
    with h5py.File(a) as fa, h5py.File(b) as fb:
        np.testing.assert_array_equal(fa["tiles"][()], fb["tiles"][()])
        assert (fa["index"][()] == fb["index"][()]).all()


@pytest.mark.parametrize("compression", ["gzip", "none", "blosc2-lz4"])
def test_other_compressions_roundtrip(tmp_path, compression):
    path, cubes, *_ = build(tmp_path, "sentinel2", compression=compression)
    want, _, _ = expected_tiles(cubes, 16, None, 0.05)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["tiles"][()], want)


def test_exception_mid_write_leaves_no_file(tmp_path):
    cube = np.ones((2, 40, 40), np.float32)

    class Boom(ArrayProduct):
        def read_block(self, start, stop, out=None):
            if start >= 16:
                raise RuntimeError("disk on fire")
            return super().read_block(start, stop, out)

    out = tmp_path / "t" / "train.h5"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_split_tiles(
            out, "virtis", "train", [ProductRef("p", tmp_path / "p")], TileParams(size=16),
            {"bands": 2, "dtype": "float32"}, progress=False,
            opener=lambda ref: Boom("p", cube),
        )
    assert list((tmp_path / "t").iterdir()) == []


def test_band_mismatch_is_a_user_error(tmp_path):
    from parsers.errors import UserError

    with pytest.raises(UserError, match="bands"):
        write_split_tiles(
            tmp_path / "x.h5", "virtis", "train", [ProductRef("p", tmp_path / "p")],
            TileParams(size=8), {"bands": 3, "dtype": "float32"}, progress=False,
            opener=lambda ref: ArrayProduct("p", np.zeros((2, 8, 8), np.float32)),
        )
    assert not (tmp_path / "x.h5").exists()


def test_tile_array_edges_are_not_padded():
    cube = np.arange(2 * 10 * 7, dtype=np.float32).reshape(2, 10, 7)
    tiles, where = tile_array(cube, 4, 3)
    assert where == [(0, 0), (0, 3), (3, 0), (3, 3), (6, 0), (6, 3)]
    np.testing.assert_array_equal(tiles[3], cube[:, 3:7, 3:7])


def test_raw_virtis_dark_lines_are_left_out(tmp_path):
    from parsers import virtis
    from pipeline.products import open_product
    from pipeline.synthetic.virtis_products import write_virtis_product

    path = write_virtis_product(tmp_path / "V1_00388238696.QUB", kind="raw", bands=8,
                                samples=16, lines=40, dark_rate=5)
    cube = virtis.read(path)
    keep = np.flatnonzero(cube.valid_lines)
    assert 0 < keep.size < 40
    product = open_product("virtis", path)
    assert product.lines == keep.size and list(product.line_numbers) == list(keep)
    data, _ = product.read_block(2, 9)
    np.testing.assert_array_equal(data, cube.load()[:, keep[2:9]])


def test_stats_and_tiles_stream_lines_never_load_whole_cubes(tmp_path, monkeypatch):
    from parsers import pds3
    from pipeline.products import list_products
    from pipeline.stats import (
        HistogramSpec,
        StatsParams,
        compute_stats,
        make_tasks,
        product_metadata,
        stats_document,
    )
    from pipeline.synthetic.datasets import virtis_download_dir
    from pipeline.tiles import TileParams

    def no_load(self):
        raise AssertionError("whole cube loaded")

    monkeypatch.setattr(pds3.Cube, "load", no_load)
    refs = list_products(virtis_download_dir(tmp_path / "raw", n=2, bands=8, lines=40), "virtis",
                         ["cal"])
    st = compute_stats("virtis", make_tasks("virtis", refs), HistogramSpec(), "synchronous",
                       chunk_mb=0.01, progress=False)
    doc = stats_document("virtis", st, [r.product_id for r in refs], StatsParams(),
                         product_metadata("virtis", refs[0]))
    counts = write_split_tiles(tmp_path / "t.h5", "virtis", "train", refs,
                               TileParams(size=16), doc, progress=False)
    assert counts["kept"] + counts["dropped_invalid"] == 2 * 2 * 2


def test_sentinel2_clouds_count_as_invalid_pixels(tmp_path):
    """L2A scene classes for clouds/shadows/no data make pixels invalid for the tile threshold."""
    from parsers import sentinel2
    from pipeline.products import open_product
    from pipeline.synthetic.sentinel2_products import write_safe_product

    safe = write_safe_product(tmp_path, level="L2A", size_10m=96, cloud_fraction=0.3, seed=3)
    stack = sentinel2.read(safe)
    assert stack.scl is not None
    cloudy = np.isin(stack.scl, sentinel2.SCL_REJECT) & stack.valid
    assert cloudy.any()
    product = open_product("sentinel2", safe)
    _, valid = product.read_block(0, product.lines)
    np.testing.assert_array_equal(valid, stack.valid & ~np.isin(stack.scl, sentinel2.SCL_REJECT))
    assert not valid[cloudy].any()


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
@pytest.mark.parametrize("with_mask", [False, True])
def test_row_invalid_fraction_equals_the_per_tile_rule(dtype, with_mask):
    from pipeline.tiles import cut_rows, cut_tiles, invalid_fraction, row_invalid_fraction

    rng = np.random.default_rng(4)
    row = rng.integers(1, 99, (5, 8, 30)).astype(dtype)
    if dtype == np.float32:
        row[:, 2, 3] = np.nan
        row[1, 5:, 20:] = np.nan
        row[3, 0, 9] = -np.inf
    valid = rng.random((8, 30)) > 0.3 if with_mask else None
    view = np.ascontiguousarray(row.transpose(1, 2, 0)).transpose(2, 0, 1)  # file order
    tiles, masks, want_offsets = cut_rows(row, valid, 8, 7)
    for layout in (view, row):  # pixel-major (BIP) and band-major blocks
        offsets, frac = row_invalid_fraction(layout, valid, 8, 7)
        assert offsets == want_offsets
        np.testing.assert_allclose(frac, invalid_fraction(tiles, masks), rtol=0, atol=1e-12)
    got, got_masks = cut_tiles(view, valid, 8, offsets[1:])
    np.testing.assert_array_equal(got, tiles[1:])
    if with_mask:
        np.testing.assert_array_equal(got_masks, masks[1:])
