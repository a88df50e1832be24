"""Per-band statistics: chunked partials + exact merge equal numpy on the whole array."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.stats import BandStats, HistogramSpec, format_q, tree_merge

SPEC = HistogramSpec()
QS = [0.0, 0.1, 1.0, 25.0, 50.0, 99.0, 99.9, 100.0]


def pixel_major(data: np.ndarray, yes: bool = True) -> np.ndarray:
    """``data`` (B, L, S) as a view of a BIP buffer (bands contiguous), like the reader's
    VIRTIS blocks; ``yes=False``: ``data`` itself."""
    return np.ascontiguousarray(data.transpose(1, 2, 0)).transpose(2, 0, 1) if yes else data


def reference(x: np.ndarray, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Full-array numpy statistics in float64 (NaN/inf and masked values ignored)."""
    x64 = x.astype(np.float64).reshape(x.shape[0], -1)
    ok = np.isfinite(x64)
    if valid is not None:
        ok &= np.broadcast_to(valid, x.shape[1:]).reshape(1, -1)
    x64 = np.where(ok, x64, np.nan)
    return {"count": ok.sum(1), "x": x64}


def check_against_numpy(stats: BandStats, x: np.ndarray, valid: np.ndarray | None = None) -> None:
    ref = reference(x, valid)
    np.testing.assert_array_equal(stats.count, ref["count"])
    np.testing.assert_array_equal(stats.invalid, x[0].size - ref["count"])
    np.testing.assert_array_equal(stats.hist.sum(axis=1), ref["count"])
    for b in range(x.shape[0]):
        row = ref["x"][b]
        row = row[np.isfinite(row)]
        if row.size == 0:
            assert np.isnan(stats.minimum[b]) and np.isnan(stats.mean[b])
            continue
        assert stats.minimum[b] == row.min()
        assert stats.maximum[b] == row.max()
        scale = max(1.0, float(np.abs(row).max()))
        assert abs(stats.mean[b] - row.mean()) <= 1e-9 * scale
        assert abs(stats.std[b] - row.std()) <= 1e-6 * scale
        check_percentiles(stats, b, row)


def check_percentiles(stats: BandStats, b: int, row: np.ndarray) -> None:
    """The promised tolerance, with x_k, x_k+1 the order statistics around the rank."""
    est, unbounded = stats.percentiles(QS)
    srt = np.sort(row)
    n = srt.size
    exact = np.percentile(row, QS)
    for i, q in enumerate(QS):
        rank = q / 100 * (n - 1)
        k = int(np.floor(rank))
        xk, xk1 = srt[k], srt[min(k + 1, n - 1)]
        if unbounded[i, b]:
            assert srt[0] <= est[i, b] <= srt[-1]
            continue
        big = max(abs(xk), abs(xk1))
        tol = (stats.spec.relative_tolerance * big + stats.spec.absolute_tolerance) * (1 + 1e-9)
        tol += 1e-12 * max(big, 1.0)  # float64 rounding of the interpolation
        assert abs(est[i, b] - exact[i]) <= tol, (q, b, est[i, b], exact[i], tol)


floats = st.one_of(
    st.floats(-1e4, 1e4, width=32),
    st.sampled_from([np.nan, np.nan, 0.0, -0.0, 1e-7, -3e5, 2.5e5, np.inf, -np.inf]),
)


def float_blocks(bands: int, lines: int, samples: int) -> st.SearchStrategy[np.ndarray]:
    """float32 (B, L, S) blocks of up to these sizes, NaN, inf and signed zeros included."""
    shape = st.tuples(st.integers(1, bands), st.integers(1, lines), st.integers(1, samples))
    return hnp.arrays(np.float32, shape, elements=floats)


@settings(max_examples=60, deadline=None)
@given(
    data=float_blocks(4, 9, 7),
    cuts=st.lists(st.integers(0, 9), max_size=4),
)
def test_chunked_merge_equals_numpy(data, cuts):
    lines = data.shape[1]
    edges = sorted({0, lines, *[c for c in cuts if c <= lines]})
    parts = [BandStats.from_block(data[:, a:b], SPEC) for a, b in itertools.pairwise(edges)]
    check_against_numpy(tree_merge(parts), data)
    # merge order does not matter (up to rounding): reverse fold
    folded = parts[-1]
    for p in reversed(parts[:-1]):
        folded = folded.merge(p)
    np.testing.assert_array_equal(folded.count, tree_merge(parts).count)
    np.testing.assert_array_equal(folded.hist, tree_merge(parts).hist)


@settings(max_examples=40, deadline=None)
@given(
    data=float_blocks(5, 6, 6),
    mask=st.data(),
    pixel_major_order=st.booleans(),
)
def test_fused_histogram_equals_the_numpy_bin_rule(data, mask, pixel_major_order):
    """The one-pass kernel bins every value as HistogramSpec.bin_index does, in any layout."""
    valid = mask.draw(st.none() | hnp.arrays(bool, data.shape[1:]))
    block = pixel_major(data, pixel_major_order)
    stats = BandStats.from_block(block, SPEC, valid)
    ok = np.isfinite(data)
    if valid is not None:
        ok &= valid[None]
    for b in range(data.shape[0]):
        want = np.bincount(SPEC.bin_index(data[b][ok[b]]), minlength=SPEC.nbins)
        np.testing.assert_array_equal(stats.hist[b], want)
    np.testing.assert_array_equal(stats.invalid, (~ok).reshape(data.shape[0], -1).sum(1))


@settings(max_examples=40, deadline=None)
@given(
    data=hnp.arrays(np.uint16, st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 6))),
    mask=st.data(),
)
def test_uint16_with_mask_exact_percentiles(data, mask):
    valid = mask.draw(hnp.arrays(bool, data.shape[1:]))
    half = data.shape[1] // 2
    parts = [BandStats.from_block(data[:, :half], HistogramSpec("uint16"), valid[:half]),
             BandStats.from_block(data[:, half:], HistogramSpec("uint16"), valid[half:])]
    stats = tree_merge(parts)
    check_against_numpy(stats, data, valid)
    ref = reference(data, valid)["x"]
    for b in range(data.shape[0]):
        row = ref[b][np.isfinite(ref[b])]
        if row.size:
            np.testing.assert_allclose(stats.percentiles(QS)[0][:, b], np.percentile(row, QS),
                                       rtol=0, atol=1e-9)


def test_percentile_tolerance_on_realistic_radiance():
    """Large lognormal sample: relative error stays under 2**-(m+1) (0.39 % by default)."""
    rng = np.random.default_rng(3)
    x = rng.lognormal(0.0, 1.5, size=(3, 400, 250)).astype(np.float32)
    x[1] -= 2.0  # values of both signs
    x[:, ::17, ::5] = np.nan
    stats = tree_merge([BandStats.from_block(x[:, i:i + 64], SPEC) for i in range(0, 400, 64)])
    check_against_numpy(stats, x)
    est, _ = stats.percentiles([0.1, 99.9])
    exact = np.nanpercentile(x.reshape(3, -1).astype(np.float64), [0.1, 99.9], axis=1)
    assert np.all(np.abs(est - exact) <= 2**-8 * np.abs(exact) + 2**-16)


def test_values_outside_window_are_flagged_not_wrong():
    x = np.array([[[1e6, 2e6, 3e6, 4e6]]], dtype=np.float32)
    stats = BandStats.from_block(x, HistogramSpec(max_exponent=10))
    est, unbounded = stats.percentiles([50.0])
    assert unbounded.all()
    assert 1e6 <= est[0, 0] <= 4e6


def test_empty_band_and_merge_with_empty():
    x = np.full((2, 3, 3), np.nan, dtype=np.float32)
    x[1, 0, 0] = 5.0
    stats = BandStats.empty(2, SPEC).merge(BandStats.from_block(x, SPEC))
    assert stats.count.tolist() == [0, 1]
    assert np.isnan(stats.mean[0]) and stats.mean[1] == 5.0 and stats.std[1] == 0.0
    est, _ = stats.percentiles([0.1, 99.9])
    assert np.isnan(est[:, 0]).all() and (est[:, 1] == 5.0).all()


def test_merge_rejects_other_band_count():
    a = BandStats.empty(2, SPEC)
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(BandStats.empty(3, SPEC))


def test_format_q_keys():
    assert [format_q(q) for q in (0.1, 99.9, 50.0, 1.0)] == ["0.1", "99.9", "50", "1"]
    json.dumps({format_q(0.1): 1})


# --------------------------------------------------------------------------------------
# Over real reader output (synthetic VIRTIS cubes with special values, Sentinel-2 SAFE)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def virtis_refs(tmp_path_factory):
    from pipeline.products import list_products
    from pipeline.synthetic.datasets import virtis_download_dir

    root = virtis_download_dir(tmp_path_factory.mktemp("raw"), n=4, bands=24, lines=40)
    return list_products(root, "virtis", ["cal"])


def whole_array(source, refs, options=None):
    from pipeline.products import open_product

    cubes, masks = [], []
    for r in refs:
        p = open_product(source, r.path, options)
        data, valid = p.read_block(0, p.lines)
        cubes.append(data)
        masks.append(np.ones(data.shape[1:], bool) if valid is None else valid)
    return np.concatenate(cubes, axis=1), np.concatenate(masks, axis=0)


@pytest.mark.parametrize(
    ("scheduler", "task_lines", "chunk_mb"),
    [("synchronous", 0, 32.0), ("threads", 7, 0.01), ("processes", 0, 0.02)],
)
def test_product_stats_equal_numpy_any_chunking_scheduler(virtis_refs, scheduler, task_lines,
                                                          chunk_mb):
    from pipeline.stats import compute_stats, make_tasks

    cube, _ = whole_array("virtis", virtis_refs)
    assert np.isnan(cube).any()  # the reader's special values are in there
    tasks = make_tasks("virtis", virtis_refs, task_lines)
    stats = compute_stats("virtis", tasks, SPEC, scheduler, workers=2, chunk_mb=chunk_mb,
                          progress=False)
    check_against_numpy(stats, cube)


@pytest.mark.slow
def test_distributed_two_workers_equal_serial(virtis_refs):
    distributed = pytest.importorskip("distributed")
    from pipeline.stats import compute_stats, make_tasks

    tasks = make_tasks("virtis", virtis_refs, 13)
    serial = compute_stats("virtis", tasks, SPEC, "synchronous", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = compute_stats("virtis", tasks, SPEC, cluster.scheduler_address,
                               progress=False)
    for name in ("count", "minimum", "maximum", "mean", "m2", "hist"):
        np.testing.assert_array_equal(getattr(remote, name), getattr(serial, name))


def test_unreachable_scheduler_is_a_user_error(virtis_refs, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr("pipeline.schedulers.CONNECT_TIMEOUT", "0.5s")
    from parsers.errors import UserError
    from pipeline.stats import compute_stats, make_tasks

    with pytest.raises(UserError, match="cannot reach"):
        compute_stats("virtis", make_tasks("virtis", virtis_refs[:1]), SPEC,
                      "tcp://127.0.0.1:9", progress=False)


def write_split_file(tmp_path, source, root, test_fraction=0.25):
    from pipeline.split import main as split_main

    params = tmp_path / "params.yaml"
    params.write_text(f"split: {{test_fraction: {test_fraction}, seed: 5}}\n"
                      "stats: {scheduler: synchronous}\n")
    out = tmp_path / "split.json"
    assert split_main(["--params", str(params), "--source", source, "--products", str(root),
                       "--out", str(out)]) == 0
    return params, out


def test_cli_stats_json_train_only(tmp_path, capsys):
    from pipeline.split import read_split
    from pipeline.stats import main
    from pipeline.synthetic.datasets import virtis_download_dir

    root = virtis_download_dir(tmp_path / "raw", n=4, bands=16, lines=24, samples=16)
    params, split_path = write_split_file(tmp_path, "virtis", root)
    out = tmp_path / "stats.json"
    assert main(["--params", str(params), "--source", "virtis", "--split", str(split_path),
                 "--out", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    split = read_split(split_path)
    assert doc["products"] == [p.product_id for p in split.train]
    assert doc["bands"] == 16 and len(doc["wavelength"]) == 16
    for key in ("count", "min", "max", "mean", "std", "percentiles"):
        assert key in doc
    assert set(doc["percentiles"]) >= {"0.1", "99.9"}
    assert all(len(v) == 16 for v in doc["percentiles"].values())
    cube, _ = whole_array("virtis", split.train)
    np.testing.assert_allclose(doc["mean"], np.nanmean(cube.reshape(16, -1).astype(float), 1),
                               rtol=1e-9)
    assert doc["percentile_tolerance"]["relative"] == 2**-8


def test_sentinel2_synthetic_through_the_s2_path(tmp_path):
    from pipeline.products import list_products
    from pipeline.stats import compute_stats, make_tasks
    from pipeline.synthetic.datasets import s2_download_dir

    refs = list_products(s2_download_dir(tmp_path / "raw", n=2, size=48), "sentinel2")
    cube, valid = whole_array("sentinel2", refs)
    assert cube.dtype == np.uint16 and not valid.all()
    stats = compute_stats("sentinel2", make_tasks("sentinel2", refs), SPEC, "threads",
                          chunk_mb=0.01, progress=False)
    assert stats.spec.kind == "uint16"
    check_against_numpy(stats, cube, valid)


@pytest.mark.parametrize("relative", [
    "sentinel2/bigearthnet/S2A_MSIL2A_20170613T101031_87_48",
    "sentinel2/ukis_pysat/S2B_MSIL1C_20200406T101559_N0209_R065_T32UPC_20200406T130159.tif",
])
def test_real_sentinel2_samples(realdata, relative):

    from pipeline.products import ProductRef
    from pipeline.stats import product_partial

    path = realdata(relative)
    ref = ProductRef(path.name, path)
    cube, valid = whole_array("sentinel2", [ref])
    stats = product_partial("sentinel2", path, SPEC, chunk_mb=0.05)
    assert stats.bands == cube.shape[0] == 9
    check_against_numpy(stats, cube, valid)


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_task_size_does_not_change_a_bit(virtis_refs, scheduler):
    """Tasks of one product each or all products in one task: the same statistics, bit for
    bit (block moments are folded in read order, whatever the grouping)."""
    from pipeline.stats import compute_stats, make_tasks

    tasks = make_tasks("virtis", virtis_refs, 11)
    runs = [compute_stats("virtis", tasks, SPEC, scheduler, workers=2, chunk_mb=0.01,
                          progress=False, task_mb=mb) for mb in (1e-6, 0.05, 1e6)]
    for other in runs[1:]:
        for name in ("count", "invalid", "minimum", "maximum", "mean", "m2", "hist"):
            np.testing.assert_array_equal(getattr(other, name), getattr(runs[0], name))


def test_int32_histogram_spills_into_int64(monkeypatch):
    """Before a bin of the int32 histogram could overflow it is moved into an int64 sum."""
    import pipeline.stats as stats_module
    from pipeline.stats import StatsAccumulator

    rng = np.random.default_rng(1)
    blocks = [rng.normal(5, 2, size=(3, 4, 5)).astype(np.float32) for _ in range(4)]
    blocks[1][0, 0, :] = np.nan
    plain = StatsAccumulator(3, SPEC)
    for b in blocks:
        plain.add(b)
    monkeypatch.setattr(stats_module, "_INT32_MAX", 25)  # spill every block or so
    spilled = StatsAccumulator(3, SPEC)
    for b in blocks:
        spilled.add(b)
    assert spilled._hist64 is not None
    a = BandStats.empty(3, SPEC).add(plain.partial())
    b = BandStats.empty(3, SPEC).add(spilled.partial())
    for name in ("count", "invalid", "minimum", "maximum", "mean", "m2", "hist"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    check_against_numpy(a, np.concatenate(blocks, axis=1))
