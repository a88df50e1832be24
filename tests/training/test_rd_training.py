"""Rate-distortion training: settings, --init fine-tuning, finalised checkpoints, and learning."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from parsers.errors import ParamsError
from tests.training.rd_helpers import smooth_cube, write_tile_file
from training import compress as C
from training import decompress as D
from training.codec import Codec, model_id
from training.data import Normaliser
from training.entropy import IntegerTables
from training.models import load_checkpoint
from training.train import load_params, main

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = ["--source", "virtis", "--workers", "0", "--device", "cpu", "--no-progress",
        "--arch", "conv", "--loss", "mse", "--val-fraction", "0"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """Runs in tmp_path so that DVCLive does not open the project's git repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def learnable_tiles(path: Path, n: int = 48, bands: int = 8, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(3)
    tiles = np.stack([smooth_cube(rng, bands, size, size) for _ in range(n)])
    write_tile_file(path, tiles)
    return tiles


def train(tiles: Path, out: Path, *extra: str) -> None:
    assert main([*BASE, "--tiles", str(tiles), "--out", str(out), *extra]) == 0


def test_lambda_and_objective_in_params(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("train: {}\ndatasets:\n  virtis:\n    kind: virtis\n    products: raw\n"
                 "    train: {objective: rate_distortion, lambda: 250}\n")
    params = load_params(p, "virtis")
    assert params.objective == "rate_distortion" and params.lmbda == 250.0
    assert load_params(p, "virtis", {"lambda": 10.0}).lmbda == 10.0
    p.write_text("train:\n  lambda: -1\n")
    with pytest.raises(ParamsError, match="lambda must be > 0"):
        load_params(p, "virtis")
    p.write_text("train:\n  lmbda: 3\n")
    with pytest.raises(ParamsError, match="unknown key"):
        load_params(p, "virtis")


def test_init_fine_tunes_into_a_finalised_rd_checkpoint(workdir: Path, capsys) -> None:
    tiles = workdir / "tiles.h5"
    learnable_tiles(tiles, n=16)
    small = ["--latent", "8x4", "--widths", "8,8,8,8", "--batch-size", "8"]
    train(tiles, workdir / "rec", *small, "--epochs", "1")
    train(tiles, workdir / "rd", *small, "--epochs", "2", "--objective", "rate_distortion",
          "--lambda", "100", "--init", str(workdir / "rec" / "best.pt"))
    out = capsys.readouterr().out
    assert "bpppc (estimated)" in out
    _, ckpt = load_checkpoint(workdir / "rd" / "best.pt")
    tables = IntegerTables.from_state(ckpt["entropy_tables"])
    assert tables.channels == 8
    assert ckpt["model_id"] == model_id(ckpt["model"], ckpt["entropy"], tables)
    assert ckpt["config"]["objective"] == "rate_distortion" and ckpt["config"]["lambda"] == 100
    assert ckpt["params"]["lambda"] == 100  # the params.yaml key, not the field name
    # resuming with another lambda is refused; --init and --resume together too
    code = main([*BASE, "--tiles", str(tiles), "--out", str(workdir / "rd"), *small,
                 "--epochs", "3", "--objective", "rate_distortion", "--lambda", "5",
                 "--resume"])
    assert code == 2 and "lambda 100.0 -> 5.0" in capsys.readouterr().err
    code = main([*BASE, "--tiles", str(tiles), "--out", str(workdir / "rd"), *small,
                 "--resume", "--init", str(workdir / "rec" / "best.pt")])
    assert code == 2 and "use one of them" in capsys.readouterr().err
    code = main([*BASE, "--tiles", str(tiles), "--out", str(workdir / "x"), "--latent", "4x4",
                 "--widths", "8,8,8,8", "--init", str(workdir / "rec" / "best.pt")])
    assert code == 2 and "model differs" in capsys.readouterr().err


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
    return 10 * math.log10(1.0 / float(np.mean((x - y) ** 2)))


@pytest.mark.slow
def test_rd_model_beats_the_fp16_latent_of_the_reconstruction_model(workdir: Path) -> None:
    """The reconstruction-only model (paper recipe, MSE, 20 epochs) fine-tuned for 12 epochs
    into a rate-distortion model (``--init``) writes real files (header, masks and framing
    included) smaller than the original model's fp16 latent, at a PSNR at least as good."""
    tiles_path = workdir / "tiles.h5"
    tiles = learnable_tiles(tiles_path)
    small = ["--latent", "16x4", "--widths", "8,8,16,16", "--batch-size", "4"]
    train(tiles_path, workdir / "rec", *small, "--epochs", "20", "--lr", "1e-2")
    train(tiles_path, workdir / "rd", *small, "--epochs", "12", "--lr", "1e-3", "--objective",
          "rate_distortion", "--lambda", "3000", "--init", str(workdir / "rec" / "best.pt"))

    model, ckpt = load_checkpoint(workdir / "rec" / "best.pt")
    norm = Normaliser.from_state_dict(ckpt["normaliser"])
    x = norm.normalise(tiles)
    with torch.inference_mode():
        z = model.encode(torch.from_numpy(x)).half().float()
        rec = model.decode(z).numpy()
    fp16_bpppc = 16 * math.prod(model.latent_shape) / math.prod(model.input_shape)
    rec_psnr = _psnr(x, rec)

    codec = Codec(workdir / "rd" / "best.pt")
    report = C.compress(tiles_path, codec, workdir / "t.sscz")
    D.decompress(workdir / "t.sscz", codec, workdir / "t.npy")
    rd_psnr = _psnr(x, norm.normalise(np.load(workdir / "t.npy")))
    real_bpppc = (workdir / "t.sscz").stat().st_size * 8 / tiles.size
    assert report.bpppc == pytest.approx(real_bpppc)
    assert real_bpppc < fp16_bpppc, (real_bpppc, fp16_bpppc)
    assert rd_psnr >= rec_psnr, (rd_psnr, rec_psnr, real_bpppc, fp16_bpppc)
