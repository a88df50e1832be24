"""TileDataset and Normaliser: modes, NaN handling, provenance, DataLoader workers."""

from __future__ import annotations

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.synthetic.datasets import build
from training.data import MODES, Normaliser, TileDataset


@pytest.fixture(scope="module")
def virtis_file(tmp_path_factory):
    return build(tmp_path_factory.mktemp("v"), "virtis")


@pytest.fixture(scope="module")
def s2_file(tmp_path_factory):
    return build(tmp_path_factory.mktemp("s"), "sentinel2", max_invalid=0.6)


def raw_tiles(path):
    with h5py.File(path) as f:
        return f["tiles"][()], (f["valid"][()] if "valid" in f else None)


@pytest.mark.parametrize("mode", MODES)
def test_modes_match_their_formula(virtis_file, mode):
    path, _, stats, _ = virtis_file
    ds = TileDataset(path, normalisation=mode)
    raw, _ = raw_tiles(path)
    x = raw[1].astype(np.float64)
    lo, hi = np.array(stats["min"]), np.array(stats["max"])
    mean, std = np.array(stats["mean"]), np.array(stats["std"])
    p_lo, p_hi = np.array(stats["percentiles"]["0.1"]), np.array(stats["percentiles"]["99.9"])
    b = (slice(None), None, None)
    want = {
        "paper_minmax": (x - lo[b]) / (hi - lo)[b],
        "global_max": x / hi.max(),
        "robust": np.clip((x - p_lo[b]) / (p_hi - p_lo)[b], 0, 1),
        "zscore": (x - mean[b]) / std[b],
    }[mode]
    want = np.where(np.isfinite(x), want, 0.0)
    got = ds[1]
    assert got.dtype == torch.float32 and got.shape == (ds.bands, ds.tile_size, ds.tile_size)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(got).all()
    if mode == "paper_minmax":
        assert got.min() >= 0 and got.max() <= 1


@pytest.mark.parametrize("mode", ["paper_minmax", "global_max", "zscore"])
def test_denormalise_inverts_numpy_and_torch(virtis_file, mode):
    path, *_ = virtis_file
    norm = TileDataset(path, normalisation=mode).normaliser
    raw, _ = raw_tiles(path)
    x = np.nan_to_num(raw[:4])
    np.testing.assert_allclose(norm.denormalise(norm.normalise(x)), x, rtol=1e-5, atol=1e-4)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(norm.denormalise(norm.normalise(t)).numpy(), x, rtol=1e-5,
                               atol=1e-4)
    spectra = x[:, :, 0, 0]
    np.testing.assert_allclose(norm.denormalise_spectra(norm.normalise_spectra(spectra)),
                               spectra, rtol=1e-5, atol=1e-4)


def test_state_dict_roundtrip_and_degenerate_bands():
    stats = {"bands": 3, "min": [0.0, 5.0, None], "max": [2.0, 5.0, None],
             "mean": [1, 5, None], "std": [1, 0, None], "percentiles": {}}
    norm = Normaliser.from_stats(stats, "paper_minmax")
    assert norm.scale.tolist() == [2.0, 1.0, 1.0] and norm.offset.tolist() == [0.0, 5.0, 0.0]
    again = Normaliser.from_state_dict(norm.state_dict())
    assert again.state_dict() == norm.state_dict()
    with pytest.raises(ValueError, match="percentiles"):
        Normaliser.from_stats(stats, "robust")
    with pytest.raises(ValueError, match="expected one of"):
        Normaliser.from_stats(stats, "minmax")


def test_mask_and_index(s2_file):
    path, cubes, _, _ = s2_file
    ds = TileDataset(path, normalisation="global_max", return_index=True, return_mask=True)
    raw, valid = raw_tiles(path)
    first = int(np.flatnonzero(~valid.reshape(len(valid), -1).all(1))[0])
    x, mask, info = ds[first]
    assert mask.dtype == torch.bool and mask.shape == x.shape
    assert (x[~mask] == 0).all() and not mask.all()
    cube, _ = cubes[info["product_id"]]
    l0, s0 = info["line0"], info["sample0"]
    np.testing.assert_array_equal(raw[first], cube[:, l0:l0 + 16, s0:s0 + 16])
    assert info["index"] == first


def test_dataloader_two_workers_reads_everything(virtis_file):
    path, *_ = virtis_file
    ds = TileDataset(path, normalisation="robust", return_index=True)
    loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(0))
    seen, total = [], torch.zeros(())
    for x, info in loader:
        seen += info["index"].tolist()
        total += x.double().sum()
    assert sorted(seen) == list(range(len(ds)))
    serial = sum(ds[i][0].double().sum() for i in range(len(ds)))
    assert torch.isclose(total, serial.to(total.dtype))


def test_no_handle_opened_in_init(virtis_file):
    path, *_ = virtis_file
    ds = TileDataset(path)
    assert ds._h5 is None
    ds[0]
    assert ds._h5 is not None
    import pickle

    assert pickle.loads(pickle.dumps(ds))._h5 is None
