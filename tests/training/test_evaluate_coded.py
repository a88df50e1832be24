"""training.evaluate on entropy-coded checkpoints: the real rate is the compress file size."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.rd_helpers import rd_checkpoint, stats_of
from training import compress as C
from training import decompress as D
from training import evaluate as EV
from training.codec import Codec
from training.data import Normaliser

pytestmark = pytest.mark.usefixtures("one_thread")


def test_evaluate_reports_the_real_rate_of_a_lambda_sweep(codec_files, nan_tiles,
                                                          tmp_path: Path) -> None:
    second = rd_checkpoint(tmp_path / "lam50.pt", nan_tiles, stats_of(nan_tiles), steps=20,
                           lam=50.0)
    (tmp_path / "p.yaml").write_text(
        "evaluate: {rates: [1], requant_bits: [4, 8], pca: [[2, 8]],"
        " jpegxl_distances: [], jpeg8_qualities: [], sz3_relative: [], lossless: false,"
        " structural_baselines: false, fsim: false, calibration_tiles: 1, batch_size: 4}\n")
    out = tmp_path / "eval"
    assert EV.main(["--params", str(tmp_path / "p.yaml"), "--source", "virtis", "--tiles",
                    str(codec_files["tiles"]), "--checkpoint", str(codec_files["ckpt"]),
                    "--checkpoint", str(second), "--out", str(out), "--quiet",
                    "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    first = metrics["sscnet_rd"]  # the first checkpoint, under keys DVC can compare
    sweep = metrics["sscnet_rd_sweep"]
    assert [m["setting"] for m in sweep] == ["lambda 1000, latent 8x4x4",
                                             "lambda 50, latent 8x4x4"]
    assert first == sweep[0] and [m["lambda"] for m in sweep] == [1000, 50]

    # the real rate is exactly the size of the file compress writes for the same tiles
    report = C.compress(codec_files["tiles"], Codec(codec_files["ckpt"]), tmp_path / "t.sscz")
    values = nan_tiles.size
    assert first["bpppc"] == pytest.approx(8 * (tmp_path / "t.sscz").stat().st_size / values,
                                           rel=1e-12)
    assert first["header_share"] == pytest.approx(report.header_bytes / report.bytes)
    assert first["latent_bpppc"] == pytest.approx(8 * report.latent_bytes / values)
    assert first["cr_values"] == pytest.approx(6 * 16 * 16 / (8 * 4 * 4))
    assert first["coder_share"] >= 0 and first["encode_mbps"] > 0

    # and the distortion is that of what decompress writes
    D.decompress(tmp_path / "t.sscz", Codec(codec_files["ckpt"]), tmp_path / "t.npy")
    norm = Normaliser.from_state_dict(Codec(codec_files["ckpt"]).ckpt["normaliser"])
    x, y = norm.normalise(nan_tiles), norm.normalise(np.load(tmp_path / "t.npy"))
    ok = np.isfinite(x)
    assert first["psnr"] == pytest.approx(-10 * np.log10(np.mean((x[ok] - y[ok]) ** 2)),
                                          abs=1e-4)

    rows = list(csv.DictReader((out / "rd.csv").open()))
    coded = [r for r in rows if r["method"] == "sscnet_rd"]
    assert len(coded) == 2 and all(float(r["latent_bpppc"]) < float(r["bpppc"]) for r in coded)
    assert {"requant", "pca"} <= {r["method"] for r in rows}
    text = (out / "report.md").read_text()
    assert "real rate" in text and "entropy coder" in text and "rd_psnr.png" in text
    assert (out / "maps.png").stat().st_size > 0 and (out / "bands.md").is_file()
