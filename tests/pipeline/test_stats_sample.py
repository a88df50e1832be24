"""The sampled histogram (``stats.hist_sample`` > 1): which pixels it counts, that nothing else
changes, that any blocking gives the same result, and the rank tolerance it promises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.stats import (
    BandStats,
    HistogramSpec,
    StatsAccumulator,
    StatsParams,
    rank_tolerance,
    sample_rows,
)
from tests.pipeline.test_stats import float_blocks, pixel_major


def partial_of(block: np.ndarray, spec: HistogramSpec, valid=None, line0: int = 0):
    acc = StatsAccumulator(block.shape[0], spec)
    acc.add(block, valid, line0)
    return acc.partial()


def dense(part) -> np.ndarray:
    hist = np.zeros(part.bands * part.spec.nbins, np.int64)
    hist[part.hist_index] = part.hist_count
    return hist.reshape(part.bands, part.spec.nbins)


def test_sample_rows_one_pick_per_run_and_independent_of_blocking():
    rows = sample_rows(10, 23, 0, 4)
    line, sample = np.divmod(rows, 23)
    runs = sample // 4
    for ln in range(10):  # at most one pick per run of 4 samples, never past the line
        r = runs[line == ln]
        assert len(r) == len(set(r.tolist())) and len(r) <= 6
    assert np.all(np.diff(rows) > 0)
    # lines [0, 10) as one block or as [0, 3) + [3, 10): the same pixels of the product
    split = np.concatenate([sample_rows(3, 23, 0, 4), 3 * 23 + sample_rows(7, 23, 3, 4)])
    np.testing.assert_array_equal(rows, split)
    # a different first line picks differently (the product line, not the block line)
    assert not np.array_equal(sample_rows(10, 23, 0, 4), sample_rows(10, 23, 10, 4))


def test_sample_rows_fraction_and_spread():
    rows = sample_rows(400, 256, 0, 4)
    assert rows.size == 400 * 64  # 256 samples: 64 full runs a line, one pick each
    picks = np.bincount(rows % 4, minlength=4) / rows.size
    assert np.all(np.abs(picks - 0.25) < 0.01)  # every offset in the run equally likely
    np.testing.assert_array_equal(sample_rows(5, 7, 2, 1), np.arange(35))


@settings(max_examples=60, deadline=None)
@given(
    data=float_blocks(4, 9, 13),
    mask=st.data(),
    bip=st.booleans(),
    every=st.sampled_from([2, 3, 4]),
    line0=st.integers(0, 50),
)
def test_sampled_histogram_counts_exactly_the_picked_values(data, mask, bip, every,
                                                            line0):
    """The histogram holds the bins of the picked pixels' valid values; counts, invalid
    counts, min, max and moments are those of every value, to the bit, as in exact mode."""
    valid = mask.draw(st.none() | hnp.arrays(bool, data.shape[1:]))
    block = pixel_major(data, bip)
    spec = HistogramSpec(sample=every)
    sampled = partial_of(block, spec, valid, line0)
    exact = partial_of(block, HistogramSpec(), valid, line0)
    for name in ("invalid", "minimum", "maximum", "counts", "means", "m2s"):
        np.testing.assert_array_equal(getattr(sampled, name), getattr(exact, name))
    ok = np.isfinite(data).reshape(data.shape[0], -1)
    if valid is not None:
        ok &= valid.reshape(1, -1)
    picked = np.zeros(ok.shape[1], bool)
    picked[sample_rows(data.shape[1], data.shape[2], line0, every)] = True
    flat = data.reshape(data.shape[0], -1)
    hist = dense(sampled)
    for b in range(data.shape[0]):
        want = np.bincount(spec.bin_index(flat[b][ok[b] & picked]), minlength=spec.nbins)
        np.testing.assert_array_equal(hist[b], want)


@settings(max_examples=30, deadline=None)
@given(
    data=hnp.arrays(np.uint16, st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 9))),
    mask=st.data(),
    bip=st.booleans(),
)
def test_sampled_uint16_histogram(data, mask, bip):
    valid = mask.draw(st.none() | hnp.arrays(bool, data.shape[1:]))
    block = pixel_major(data, bip)
    sampled = partial_of(block, HistogramSpec("uint16", sample=3), valid, 7)
    exact = partial_of(block, HistogramSpec("uint16"), valid, 7)
    np.testing.assert_array_equal(sampled.m2s, exact.m2s)
    picked = np.zeros(data[0].size, bool)
    picked[sample_rows(data.shape[1], data.shape[2], 7, 3)] = True
    if valid is not None:
        picked &= valid.reshape(-1)
    hist = dense(sampled)
    for b in range(data.shape[0]):
        np.testing.assert_array_equal(
            hist[b], np.bincount(data[b].reshape(-1)[picked], minlength=65536))


def test_large_pixel_major_block_with_a_mask_matches_exact_mode():
    """Blocks past one kernel pass (256 pixels), masked groups and a ragged end."""
    rng = np.random.default_rng(8)
    data = rng.lognormal(0, 1, size=(37, 61, 29)).astype(np.float32)
    data[:, 5:9, 3] = np.nan
    valid = rng.random((61, 29)) > 0.02
    block = pixel_major(data)
    exact = partial_of(block, HistogramSpec(), valid)
    sampled = partial_of(block, HistogramSpec(sample=4), valid)
    for name in ("invalid", "minimum", "maximum", "counts", "means", "m2s"):
        np.testing.assert_array_equal(getattr(sampled, name), getattr(exact, name))
    band_major = partial_of(data, HistogramSpec(), valid)
    np.testing.assert_array_equal(dense(band_major), dense(exact))
    np.testing.assert_allclose(band_major.means, exact.means, rtol=1e-12)


def test_rank_tolerance_bounds():
    m = 282_000
    assert rank_tolerance(50.0, m) == pytest.approx(100 * np.sqrt(np.log(4000) / (2 * m)))
    assert rank_tolerance(0.1, m) < rank_tolerance(1.0, m) < rank_tolerance(50.0, m)
    assert rank_tolerance(99.9, m) == pytest.approx(rank_tolerance(0.1, m))
    assert rank_tolerance(0.1, m) < 0.03  # percentile points
    assert rank_tolerance(50.0, 4 * m) == pytest.approx(rank_tolerance(50.0, m) / 2)
    assert rank_tolerance(50.0, 0) == np.inf


@pytest.fixture(scope="module")
def virtis_refs(tmp_path_factory):
    from pipeline.products import list_products
    from pipeline.synthetic.datasets import virtis_download_dir

    root = virtis_download_dir(tmp_path_factory.mktemp("raw"), n=3, bands=16, lines=160,
                               samples=64)
    return list_products(root, "virtis", ["cal"])


def test_sampled_stats_same_whatever_the_tasks_and_blocks(virtis_refs):
    from pipeline.stats import compute_stats, make_tasks

    spec = HistogramSpec(sample=4)
    one = compute_stats("virtis", make_tasks("virtis", virtis_refs), spec, "synchronous",
                        progress=False)
    other = compute_stats("virtis", make_tasks("virtis", virtis_refs, 37), spec, "threads",
                          workers=2, chunk_mb=0.01, progress=False)
    np.testing.assert_array_equal(one.hist, other.hist)
    np.testing.assert_array_equal(one.count, other.count)
    assert 0.2 < one.hist.sum() / one.count.sum() < 0.3


def test_sampled_percentiles_within_the_written_tolerance(virtis_refs):
    """On reader output (smooth spectra, noise, special values): every percentile of the
    sampled histogram lies between the exact ones at q -+ rank_tolerance (bins aside)."""
    from pipeline.products import open_product
    from pipeline.stats import compute_stats, make_tasks, stats_document

    params = StatsParams(hist_sample=4, percentiles=[0.1, 1.0, 25.0, 50.0, 99.0, 99.9])
    stats = compute_stats("virtis", make_tasks("virtis", virtis_refs), params.histogram,
                          "synchronous", progress=False)
    doc = stats_document("virtis", stats, [r.product_id for r in virtis_refs], params)
    sample = doc["percentile_sample"]
    assert sample["every"] == 4 and sample["confidence"] == 0.999
    cube = np.concatenate([open_product("virtis", r.path).read_block(0, 160)[0]
                           for r in virtis_refs], axis=1).reshape(16, -1).astype(np.float64)
    rel = doc["percentile_tolerance"]["relative"]
    for q, values in doc["percentiles"].items():
        t = sample["rank_tolerance"][q]
        assert t > 0
        for b in range(16):
            row = cube[b][np.isfinite(cube[b])]
            lo, hi = np.percentile(row, [max(float(q) - t, 0), min(float(q) + t, 100)])
            slack = rel * max(abs(lo), abs(hi)) + 2**-16
            assert lo - slack <= values[b] <= hi + slack, (q, b)


def test_hist_sample_setting_is_checked_and_recorded():
    with pytest.raises(ValueError, match="hist_sample"):
        StatsParams(hist_sample=0)
    assert StatsParams(hist_sample=4).histogram.sample == 4
    assert HistogramSpec(sample=4).to_dict()["sample"] == 4
    with pytest.raises(ValueError, match="cannot merge"):
        BandStats.empty(2, HistogramSpec(sample=4)).merge(BandStats.empty(2, HistogramSpec()))


def test_cli_sampled_stats_json_and_describe(tmp_path, capsys):
    """--hist-sample 4 through the stage CLI: stats.json says so and carries the rank
    tolerance; the tiles' description shows it."""
    import json

    from pipeline import describe, split, stats, tiles
    from pipeline.synthetic.datasets import virtis_download_dir

    raw = virtis_download_dir(tmp_path / "raw", n=4, bands=12, lines=64, samples=32)
    params = tmp_path / "params.yaml"
    params.write_text("split: {seed: 1, test_fraction: 0.25}\nstats: {scheduler: synchronous}\n"
                      "datasets:\n  virtis: {kind: virtis, products: raw, tiles: {size: 16}}\n")
    p = ["--params", str(params), "--source", "virtis"]
    assert split.main([*p, "--products", str(raw), "--out", str(tmp_path / "split.json")]) == 0
    assert stats.main([*p, "--split", str(tmp_path / "split.json"), "--hist-sample", "4",
                       "--out", str(tmp_path / "stats.json"), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "stats.json").read_text())
    assert doc["histogram"]["sample"] == 4 and doc["params"]["hist_sample"] == 4
    ranks = doc["percentile_sample"]["rank_tolerance"]
    assert set(ranks) == set(doc["percentiles"]) and all(0 < t < 10 for t in ranks.values())
    assert tiles.main([*p, "--split", str(tmp_path / "split.json"), "--stats",
                       str(tmp_path / "stats.json"), "--out", str(tmp_path / "tiles"),
                       "--no-progress"]) == 0
    capsys.readouterr()
    assert describe.main([str(tmp_path / "tiles")]) == 0
    assert "histogram of 1 pixel in 4: rank within" in capsys.readouterr().out
    assert stats.main([*p, "--split", str(tmp_path / "split.json"), "--hist-sample", "0",
                       "--out", str(tmp_path / "bad.json"), "--no-progress"]) == 2
    assert "hist_sample" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()


def test_products_do_not_share_a_pattern(tmp_path):
    from pipeline.stats import product_seed

    a, b = product_seed(tmp_path / "V1_0001.QUB"), product_seed("/elsewhere/V1_0001.QUB")
    assert a == b != product_seed(tmp_path / "V1_0002.QUB")
    assert not np.array_equal(sample_rows(8, 64, 0, 4, a),
                              sample_rows(8, 64, 0, 4, product_seed("V1_0002.QUB")))
