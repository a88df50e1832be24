"""training.evaluate end to end on tiny trained models (CPU), plus its error paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from training import evaluate as EV
from training.models import build_model, save_checkpoint

OUTPUTS = ("metrics.json", "rd.csv", "bands.csv", "bands.md", "tiles.csv", "rd_psnr.png",
           "rd_sam.png", "rd_psnr_phys.png", "maps.png", "spectra.png", "per_band_psnr.png",
           "report.md", "report.html")


def _scene(rng: np.random.Generator, n: int, bands: int, size: int) -> np.ndarray:
    base = np.cumsum(np.cumsum(rng.normal(size=(n, 1, size, size)), axis=2), axis=3)
    spectrum = np.linspace(1.0, 2.0, bands)[None, :, None, None]
    return base * spectrum + rng.normal(size=(n, bands, size, size)) * 0.2


def _stats(tiles: np.ndarray, source: str) -> dict:
    t = tiles.astype(np.float64)
    per = lambda f: [float(v) for v in f(t, axis=(0, 2, 3))]  # noqa: E731
    return {"source": source, "products": ["P1"], "bands": int(t.shape[1]),
            "count": [int(np.isfinite(t[:, b]).sum()) for b in range(t.shape[1])],
            "min": per(np.nanmin), "max": per(np.nanmax), "mean": per(np.nanmean),
            "std": per(np.nanstd),
            "percentiles": {"0.1": per(lambda a, axis: np.nanpercentile(a, 0.1, axis=axis)),
                            "99.9": per(lambda a, axis: np.nanpercentile(a, 99.9, axis=axis))}}


def write_tiles(path: Path, tiles: np.ndarray, source: str, valid: np.ndarray | None = None,
                wavelength: np.ndarray | None = None) -> dict:
    """A tile file in the pipeline.tiles layout (tiles, index, wavelength, valid, attrs)."""
    stats = _stats(np.where(valid[:, None], tiles, np.nan) if valid is not None else tiles,
                   source)
    with h5py.File(path, "w") as f:
        f.create_dataset("tiles", data=tiles, chunks=(1, *tiles.shape[1:]))
        idx = np.zeros(len(tiles), dtype=[("product_id", "S8"), ("line0", "i4"),
                                          ("sample0", "i4")])
        idx["product_id"] = b"P1"
        idx["line0"] = np.arange(len(tiles)) * tiles.shape[2]
        f.create_dataset("index", data=idx)
        if valid is not None:
            f.create_dataset("valid", data=valid)
        if wavelength is not None:
            f.create_dataset("wavelength", data=wavelength.astype(np.float32))
        f.attrs["source"] = source
        f.attrs["stats"] = json.dumps(stats)
        f.attrs["params"] = json.dumps({})
        f.attrs["software_version"] = "test"
    return stats


def tiny_checkpoint(path: Path, tiles: np.ndarray, stats: dict, source: str, normalisation: str,
                    arch: str, latent, steps: int = 30) -> None:
    """Train a tiny SSCNet for a few Adam steps on the tiles and save a checkpoint."""
    from training.data import Normaliser

    torch.manual_seed(0)
    b, s = tiles.shape[1], tiles.shape[2]
    model = build_model(arch=arch, bands=b, tile=s, latent=latent, widths=(8, 8, 8, 8))
    norm = Normaliser.from_stats(stats, normalisation)
    x = torch.from_numpy(np.nan_to_num(norm.normalise(tiles.astype(np.float32)), nan=0.0))
    x = x.clamp(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), x)
        loss.backward()
        opt.step()
    cfg = model.config()
    cfg.update(normalisation=normalisation, source=source)
    save_checkpoint(path, {"model": model, "config": cfg, "epoch": steps, "stats": stats})


FAST = ["--rates", "1,4", "--batch-size", "3"]


def _params(tmp: Path) -> Path:
    p = tmp / "params.yaml"
    p.write_text(
        "evaluate:\n"
        "  requant_bits: [4, 8]\n"
        "  pca: [[1, 8], [3, 8]]\n"
        "  jpegxl_distances: [0.5, 2.0]\n"
        "  jpeg8_qualities: [90]\n"
        "  jpegxl_effort: 3\n"
        "  calibration_tiles: 1\n"
        "datasets:\n"
        "  sentinel2:\n"
        "    kind: sentinel2\n"
        "    products: data/raw/sentinel2\n"
        "    evaluate: {figure_bands: [0, 4]}\n"
    )
    return p


@pytest.mark.slow
def test_evaluate_end_to_end_sentinel2_like(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    tiles = np.clip(_scene(rng, 5, 5, 48) * 60 + 3000, 0, 65535).astype(np.uint16)
    valid = np.ones((5, 48, 48), bool)
    valid[1, :3, :] = False  # a no-data strip
    stats = write_tiles(tmp_path / "test.h5", tiles, "sentinel2", valid,
                        wavelength=np.linspace(490, 2190, 5))
    tiny_checkpoint(tmp_path / "best.pt", tiles, stats, "sentinel2", "global_max",
                    "linear", 64)
    out = tmp_path / "eval"
    rc = EV.main(["--params", str(_params(tmp_path)), "--source", "sentinel2",
                  "--tiles", str(tmp_path / "test.h5"), "--checkpoint",
                  str(tmp_path / "best.pt"), "--out", str(out), "--device", "cpu", *FAST])
    assert rc == 0, capsys.readouterr().err
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*tmp"))

    m = json.loads((out / "metrics.json").read_text())
    s32, s16 = m["sscnet_fp32"], m["sscnet_fp16"]
    values = 5 * 48 * 48
    assert s32["cr_values"] == pytest.approx(values / 64)
    assert s32["bpppc"] == pytest.approx(32 * 64 / values)
    assert s16["bpppc"] == pytest.approx(s32["bpppc"] / 2)
    assert s32["cr_bits"] == pytest.approx(16 / s32["bpppc"])
    assert abs(s16["psnr"] - s32["psnr"]) < 1.0  # fp16 latent decoded, close to fp32
    assert 0 < s32["sam"] < 90 and 0 < s32["ssim"] <= 1 and 0 < s32["fsim"] <= 1
    assert m["lossless_floor_bpppc"] < 16
    assert "cpu" in m["sscnet_throughput"]

    rows = list(csv.DictReader((out / "rd.csv").open()))
    assert list(rows[0])[:11] == list(EV.RD_COLUMNS[:11])
    methods = {r["method"] for r in rows}
    assert {"sscnet_fp32", "sscnet_fp16", "requant", "pca", "jpeg2000_band", "jpeg2000_cube",
            "jpegxl_band", "jpeg8_paper", "jpeg2000_lossless", "jpegxl_lossless",
            "ccsds121"} <= methods
    flagged = {r["method"] for r in rows if r["flagged"]}
    assert flagged == {"jpeg8_paper"}
    for r in rows:
        assert float(r["bpppc"]) > 0
        if r["method"] in ("jpeg2000_lossless", "jpegxl_lossless", "ccsds121"):
            assert r["psnr"] == "inf" and float(r["max_abs_err"]) == 0.0
    req8 = next(r for r in rows if r["method"] == "requant" and r["setting"] == "b=8")
    assert float(req8["bpppc"]) == pytest.approx(8.0, abs=0.01)
    per_tile = list(csv.DictReader((out / "tiles.csv").open()))
    assert [r["product_id"] for r in per_tile] == ["P1"] * 5
    bands = list(csv.DictReader((out / "bands.csv").open()))
    assert len(bands) == 5 and float(bands[0]["wavelength"]) == pytest.approx(490)
    report = (out / "report.md").read_text()
    assert "rd_psnr.png" in report and "paper" in report and "peak 1" in report
    assert "<table>" in (out / "report.html").read_text()


@pytest.mark.slow
def test_evaluate_float_tiles_with_nan(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tiles = (_scene(rng, 3, 8, 32) * 2 + 40).astype(np.float32)
    tiles[0, :, 5, 5] = np.nan
    tiles[2, 3, 10, :] = np.nan
    stats = write_tiles(tmp_path / "t.h5", tiles, "virtis")
    tiny_checkpoint(tmp_path / "m.pt", tiles, stats, "virtis", "paper_minmax", "conv", (4, 8),
                    steps=10)
    (tmp_path / "p.yaml").write_text(
        "evaluate: {jpegxl_effort: 3, calibration_tiles: 1, rates: [2],"
        " requant_bits: [8], pca: [[2, 8]], jpegxl_distances: [1.0], jpeg8_qualities: [90],"
        " sz3_relative: [0.001]}\n")
    args = ["--params", str(tmp_path / "p.yaml"), "--source", "virtis", "--tiles",
            str(tmp_path / "t.h5"), "--checkpoint", str(tmp_path / "m.pt"), "--quiet",
            "--device", "cpu"]
    assert EV.main([*args, "--out", str(tmp_path / "full")]) == 0
    full = list(csv.DictReader((tmp_path / "full" / "rd.csv").open()))
    sz3 = next(r for r in full if r["method"] == "sz3")
    span = np.median(np.array(stats["max"]) - np.array(stats["min"]))
    assert float(sz3["max_abs_err"]) <= 1e-3 * span * (1 + 1e-4)
    out = tmp_path / "e"
    assert EV.main([*args, "--out", str(out), "--no-baselines"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["native_bits"] == 32
    assert m["sscnet_fp32"]["bpppc"] == pytest.approx(32 * 4 * 8 * 8 / (8 * 32 * 32))
    assert np.isfinite(m["sscnet_fp32"]["psnr"]) and np.isfinite(m["sscnet_fp32"]["sam"])
    # paper_minmax: both PSNR scales coincide (peak = training range on both)
    assert m["sscnet_fp32"]["psnr"] == pytest.approx(m["sscnet_fp32"]["psnr_phys"], abs=1e-3)
    rows = list(csv.DictReader((out / "rd.csv").open()))
    assert {r["method"] for r in rows} == {"sscnet_fp32", "sscnet_fp16"}


def test_evaluate_user_errors_are_one_line(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(2)
    tiles = (_scene(rng, 2, 4, 16) + 10).astype(np.float32)
    stats = write_tiles(tmp_path / "t.h5", tiles, "virtis")
    other = (_scene(rng, 2, 5, 16) + 10).astype(np.float32)
    write_tiles(tmp_path / "other.h5", other, "virtis")
    tiny_checkpoint(tmp_path / "m.pt", tiles, stats, "virtis", "paper_minmax", "conv", (4, 8),
                    steps=1)
    (tmp_path / "p.yaml").write_text("evaluate: {}\n")
    base = ["--params", str(tmp_path / "p.yaml"), "--source", "virtis", "--out",
            str(tmp_path / "e")]
    cases = [
        (["--tiles", str(tmp_path / "missing.h5"), "--checkpoint", str(tmp_path / "m.pt")],
         "missing.h5"),
        (["--tiles", str(tmp_path / "t.h5"), "--checkpoint", str(tmp_path / "nope.pt")],
         "nope.pt"),
        (["--tiles", str(tmp_path / "other.h5"), "--checkpoint", str(tmp_path / "m.pt")],
         "bands"),
    ]
    for extra, word in cases:
        assert EV.main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert word in err and "\n" not in err and "Traceback" not in err
    (tmp_path / "bad.yaml").write_text("evaluate: {virtis: {max_tile: 3}}\n")
    rc = EV.main(["--params", str(tmp_path / "bad.yaml"), *base[2:], "--tiles",
                  str(tmp_path / "t.h5"), "--checkpoint", str(tmp_path / "m.pt")])
    assert rc == 2 and "max_tile" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluate_on_cuda_reports_both_devices(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tiles = (_scene(rng, 4, 8, 32) * 2 + 40).astype(np.float32)
    stats = write_tiles(tmp_path / "t.h5", tiles, "virtis")
    tiny_checkpoint(tmp_path / "m.pt", tiles, stats, "virtis", "paper_minmax", "conv", (4, 8),
                    steps=5)
    (tmp_path / "p.yaml").write_text("evaluate: {}\n")
    out = tmp_path / "e"
    rc = EV.main(["--params", str(tmp_path / "p.yaml"), "--source", "virtis", "--tiles",
                  str(tmp_path / "t.h5"), "--checkpoint", str(tmp_path / "m.pt"), "--out",
                  str(out), "--no-baselines", "--quiet", "--device", "cuda"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"cuda", "cpu"} <= set(m["sscnet_throughput"])
    assert np.isfinite(m["sscnet_fp32"]["psnr"])
