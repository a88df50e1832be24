"""Training CLI: end to end on tiny tile files, learning, resume, errors (devices, precision,
compile and DDP: test_device.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.synthetic.datasets import write_learnable_tiles as write_tiles
from training.models import load_checkpoint
from training.train import _loss_terms, main, split_train_val, tile_products

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TINY = ["--arch", "linear", "--latent", "16", "--widths", "4,4,4,8", "--workers", "0",
        "--device", "cpu", "--no-progress"]


def run(tiles: Path, out: Path, *extra: str, params: Path | None = None) -> int:
    argv = ["--source", "virtis", "--tiles", str(tiles), "--out", str(out), *TINY, *extra]
    if params is not None:
        argv = ["--params", str(params), *argv]
    return main(argv)


def metrics_history(out: Path, name: str = "train/loss") -> list[float]:
    tsv = out / "dvclive" / "plots" / "metrics" / f"{name}.tsv"
    rows = tsv.read_text().splitlines()[1:]
    return [float(r.split("\t")[-1]) for r in rows]


def test_tiny_run_end_to_end(tiles_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "models"
    assert run(tiles_dir, out, "--epochs", "2", "--batch-size", "16") == 0
    text = capsys.readouterr().out
    assert "parameters" in text and "epoch 2/2" in text
    assert "validation: 1 of 4 products (16 tiles)" in text
    for name in ("last.pt", "best.pt", "dvclive/metrics.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == 1 and {"train", "val"} <= set(summary)
    assert len(metrics_history(out, "val/psnr")) == 2
    model, ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["config"]["normalisation"] == "paper_minmax"
    assert ckpt["config"]["source"] == "virtis" and ckpt["stats"]["bands"] == 4
    assert ckpt["normaliser"]["mode"] == "paper_minmax" and len(ckpt["normaliser"]["scale"]) == 4
    assert model.latent_shape == (16,)
    last = torch.load(out / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng", "epoch", "sampler_epoch"} <= set(last)
    assert last["epoch"] == 2
    # cosine annealing reaches 0 at the end of the run
    assert last["scheduler"]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)
    assert not list(out.glob(".*.tmp"))


def test_loss_decreases_on_learnable_set(tiles_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert run(tiles_dir, out, "--epochs", "12", "--batch-size", "8", "--lr", "1e-2",
               "--loss", "mse", "--val-fraction", "0") == 0
    losses = metrics_history(out)
    assert losses[-1] < 0.4 * losses[0], losses


def test_resume_equals_uninterrupted(tiles_dir: Path, tmp_path: Path) -> None:
    common = ["--epochs", "4", "--batch-size", "16", "--deterministic", "--seed", "3",
              "--checkpoint-every", "1"]
    assert run(tiles_dir, tmp_path / "a", *common) == 0
    assert run(tiles_dir, tmp_path / "b", *common, "--stop-after-epoch", "2") == 0
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 2
    assert run(tiles_dir, tmp_path / "b", *common, "--resume") == 0
    for name in ("train/loss", "val/loss"):
        a, b = metrics_history(tmp_path / "a", name), metrics_history(tmp_path / "b", name)
        assert len(a) == len(b) == 4
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])


def test_resume_refuses_changed_settings(tiles_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m"
    assert run(tiles_dir, out, "--epochs", "2", "--batch-size", "16",
               "--stop-after-epoch", "1") == 0
    assert run(tiles_dir, out, "--epochs", "3", "--batch-size", "16", "--resume") == 2
    assert "epochs 2 -> 3" in capsys.readouterr().err
    assert run(tiles_dir, tmp_path / "none", "--epochs", "2", "--resume") == 2
    assert "not found" in capsys.readouterr().err


def test_params_file_and_cli_overrides(tiles_dir: Path, tmp_path: Path, capsys) -> None:
    params = tmp_path / "bands.yaml"
    params.write_text("train:\n  epochs: 1\n  batch_size: 32\ndatasets:\n  virtis:\n"
                      "    kind: virtis\n    products: raw\n"
                      "    train: {arch: conv, latent: [8, 4], loss: mse}\n")
    out = tmp_path / "m"
    assert run(tiles_dir, out, "--arch", "conv", "--latent", "8x2", params=params) == 0
    text = capsys.readouterr().out
    assert "-> 8x2x2" in text and "batch 32" in text and "loss mse" in text
    params.write_text("datasets:\n  virtis:\n    kind: virtis\n    products: raw\n"
                      "    train: {epoch: 3}\n")
    assert run(tiles_dir, out, params=params) == 2
    err = capsys.readouterr().err
    assert "datasets.virtis.train: unknown key 'epoch' (did you mean 'epochs'?)" in err
    params.write_text("datasets:\n  virtis:\n    kind: virtis\n    products: raw\n"
                      "    tiles: {size: 8}\n    trian: {epochs: 3}\n")
    assert run(tiles_dir, out, params=params) == 2
    err = capsys.readouterr().err
    assert "datasets.virtis: unknown key 'trian' (did you mean 'train'?)" in err
    assert run(tiles_dir, out, "--dataset", "virtsi", params=params) == 2
    assert "data set 'virtsi' is not in section 'datasets' (did you mean 'virtis'?)" in \
        capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("missing", [], "tile file not found"),
        ("empty", [], "holds no tiles"),
        ("notiles", [], "no 'tiles' dataset"),
        ("ok", ["--arch", "linear", "--latent", "8x2"], "integer latent"),
        ("ok", ["--batch-size", "0"], "batch_size must be >= 1"),
        ("ok", ["--loss", "bce", "--normalisation", "zscore"], "needs tiles in [0, 1]"),
    ],
)
def test_clear_errors(tmp_path: Path, capsys, setup: str, extra: list[str], message: str) -> None:
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    if setup == "empty":
        with h5py.File(tiles / "train.h5", "w") as f:
            f.create_dataset("tiles", shape=(0, 4, 8, 8), dtype="f4")
    elif setup == "notiles":
        with h5py.File(tiles / "train.h5", "w") as f:
            f.create_dataset("other", data=[1])
    elif setup == "ok":
        write_tiles(tiles / "train.h5", n=8)
    assert run(tiles, tmp_path / "m", "--epochs", "1", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_band_count_mismatch(tiles_dir: Path, tmp_path: Path, capsys) -> None:
    params = tmp_path / "bands.yaml"
    params.write_text("train:\n  bands: 432\n")
    assert run(tiles_dir, tmp_path / "m", params=params) == 2
    assert "tiles have 4 bands but params ask for bands=432" in capsys.readouterr().err
    out = tmp_path / "m2"
    assert run(tiles_dir, out, "--epochs", "2", "--stop-after-epoch", "1") == 0
    write_tiles(tmp_path / "other" / "train.h5", bands=5, n=8)
    assert run(tmp_path / "other", out, "--epochs", "2", "--resume") == 2
    assert "model is 4 bands" in capsys.readouterr().err


def test_product_split_holds_out_whole_products() -> None:
    products = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"])
    train, val, _ = split_train_val(products, 10, 0.2, seed=0)
    assert set(products[train]).isdisjoint(products[val])
    assert len(val) == 2 and sorted(np.concatenate([train, val]).tolist()) == list(range(10))
    with pytest.warns(UserWarning, match="single product"):
        train, val, _ = split_train_val(np.array(["a"] * 10), 10, 0.2, seed=0)
    assert len(val) == 2


def test_loss_ignores_invalid_values() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    x = torch.rand(2, 3, 4, 4)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, :, :2] = False
    x_bad = x.clone()
    x_bad[~mask] = 0.0
    for kind in ("bce", "mse"):
        a = _loss_terms(logits, x, mask, kind)
        b = _loss_terms(logits, x_bad, mask, kind)
        torch.testing.assert_close(a, b)
        full = _loss_terms(logits, x, None, kind)
        torch.testing.assert_close(_loss_terms(logits, x, torch.ones_like(mask), kind), full)
    bce, _ = _loss_terms(logits, x, None, "bce")
    ref = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), x)
    torch.testing.assert_close(bce, ref)


def test_tile_products_reads_compound_index(tmp_path: Path) -> None:
    path = write_tiles(tmp_path / "t.h5", n=6, products=3)
    assert tile_products(path, 6).tolist() == ["P0", "P1", "P2", "P0", "P1", "P2"]
