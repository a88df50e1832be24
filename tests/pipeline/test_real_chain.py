"""Real cubes through the whole chain: register -> split -> stats -> tiles -> train -> evaluate.

The real AVIRIS-NG radiance chunk (ENVI, 425 bands, 10 x 10 pixels: one product, so the split
cuts it into two strips; the water-vapour bands left out by wavelength) and the two real
Cassini VIMS cubes (PDS3, 352 bands; their wavelength calibrations differ, so they are
registered with --allow-mixed), 4 x 4 tiles, two epochs of a tiny model. Every CLI runs
in-process through its ``main``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("rasterio")
h5py = pytest.importorskip("h5py")

from pipeline import register, split, stats, tiles  # noqa: E402
from training import evaluate, train  # noqa: E402

pytestmark = pytest.mark.slow

PARAMS = """
split: {seed: 1, test_fraction: 0.5}
stats: {scheduler: synchronous}
tiles: {size: 4, compression: gzip}
train: {arch: conv, latent: [8, 2], widths: [8, 8, 8, 8], epochs: 2, batch_size: 4,
        workers: 0, device: cpu, val_fraction: 0.0, lr: 1.0e-3}
evaluate: {device: cpu, rates: [1.0], requant_bits: [8], pca: [[3, 8]],
           jpegxl_distances: [1.0], jpeg8_qualities: [95], sz3_relative: [1.0e-3],
           calibration_tiles: 1}
datasets:
  avirisng:
    kind: cube
    products: raw/avirisng
    bands: {wavelength_nm: [380, 2450], exclude_nm: [[1340, 1450], [1790, 1960]]}
    split: {strip_lines: 5}
  vims:
    kind: cube
    products: raw/vims
    allow_mixed: true
    tiles: {max_invalid_fraction: 0.5}   # raw EDR: null pixels in a few bands
"""


def run_chain(name: str, ws: Path) -> None:
    p = ["--params", str(ws / "params.yaml"), "--dataset", name]
    s, st, t = ws / f"split/{name}.json", ws / f"stats/{name}.json", ws / f"tiles/{name}"
    assert split.main([*p, "--out", str(s)]) == 0
    assert stats.main([*p, "--split", str(s), "--out", str(st), "--no-progress"]) == 0
    assert tiles.main([*p, "--split", str(s), "--stats", str(st), "--out", str(t),
                       "--no-progress"]) == 0
    assert train.main([*p, "--tiles", str(t), "--out", str(ws / f"models/{name}"),
                       "--no-progress"]) == 0
    assert evaluate.main([*p, "--tiles", str(t / "test.h5"), "--checkpoint",
                          str(ws / f"models/{name}/best.pt"), "--out",
                          str(ws / f"eval/{name}"), "--quiet"]) == 0


def test_real_cubes_register_split_tile_train_evaluate(realdata, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS)
    aviris = realdata("hyperspectral/avirisng")
    assert register.main(["avirisng", str(aviris / "*_rdn_*.hdr"), "--out", "raw/avirisng"]) == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*FILE_RECORDS x RECORD_BYTES.*")
        assert register.main(["vims", str(realdata("cassini_vims") / "*.qub"),
                              "--out", "raw/vims", "--allow-mixed"]) == 0
        for name in ("avirisng", "vims"):
            run_chain(name, tmp_path)

    wl = np.array(json.loads((tmp_path / "raw/avirisng/manifest.json").read_text())
                  ["files"][0]["meta"]["wavelength_nm"])
    keep = (wl >= 380) & (wl <= 2450) & ~((wl >= 1340) & (wl <= 1450)) \
        & ~((wl >= 1790) & (wl <= 1960))
    expected = {"avirisng": int(keep.sum()), "vims": 352}
    for name, bands in expected.items():
        with h5py.File(tmp_path / f"tiles/{name}/train.h5", "r") as f:
            assert f["tiles"].shape[1:] == (bands, 4, 4) and f["tiles"].shape[0] > 0
            if name == "avirisng":
                np.testing.assert_allclose(f["wavelength"][:], wl[keep], atol=1e-3)
        metrics = json.loads((tmp_path / f"eval/{name}/metrics.json").read_text())
        sscnet = metrics["sscnet_fp32"]
        assert np.isfinite(sscnet["psnr"]) and sscnet["ssim"] is None  # 4 px < SSIM window
        assert sscnet["cr_values"] == pytest.approx(bands * 16 / (8 * 2 * 2))
        assert (tmp_path / f"eval/{name}/report.md").stat().st_size > 0
    split_doc = json.loads((tmp_path / "split/avirisng.json").read_text())
    assert [e["strip"] for e in split_doc["train"] + split_doc["test"]] in (
        [[0, 5], [5, 10]], [[5, 10], [0, 5]])
