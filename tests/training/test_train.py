"""Training CLI: end to end on tiny tile files, learning, resume, DDP, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.models import load_checkpoint
from training.train import _loss_terms, main, split_train_val, tile_products

h5py = pytest.importorskip("h5py")

REPO = Path(__file__).resolve().parents[2]
TINY = ["--arch", "linear", "--latent", "16", "--widths", "4,4,4,8", "--workers", "0",
        "--device", "cpu", "--no-progress"]


def write_tiles(path: Path, n: int = 64, bands: int = 4, tile: int = 8, products: int = 4,
                seed: int = 0) -> Path:
    """A tiny learnable tile file in pipeline.tiles' layout: smooth low-rank radiance."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:tile, 0:tile] / tile
    spectra = np.stack([np.linspace(1, 2, bands), np.linspace(2, 0.5, bands)])  # (2, B)
    tiles = np.empty((n, bands, tile, tile), np.float32)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        spatial = np.stack([a + b * xx, c * (1 - yy)])  # (2, H, W)
        tiles[i] = 20 * np.einsum("kb,khw->bhw", spectra, spatial)
        tiles[i] += rng.normal(0, 0.05, tiles[i].shape)
    stats = {"source": "virtis", "products": [f"P{k}" for k in range(products)], "bands": bands,
             "count": int(tiles.size // bands), "min": tiles.min(axis=(0, 2, 3)).tolist(),
             "max": tiles.max(axis=(0, 2, 3)).tolist(), "mean": tiles.mean(axis=(0, 2, 3)).tolist(),
             "std": tiles.std(axis=(0, 2, 3)).tolist(),
             "percentiles": {"0.1": tiles.min(axis=(0, 2, 3)).tolist(),
                             "99.9": tiles.max(axis=(0, 2, 3)).tolist()}}
    index = np.zeros(n, dtype=[("product_id", "S32"), ("line0", "<i4"), ("sample0", "<i4")])
    index["product_id"] = [f"P{i % products}".encode() for i in range(n)]
    index["line0"] = np.arange(n) * tile
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("tiles", data=tiles, chunks=(1, bands, tile, tile))
        f.create_dataset("index", data=index)
        f.attrs["source"] = "virtis"
        f.attrs["stats"] = json.dumps(stats)
    return path


@pytest.fixture(autouse=True)
def _one_thread(tmp_path: Path, monkeypatch):
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster.
    Runs in tmp_path so that DVCLive does not open the project's own DVC/git repository."""
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiles_dir(tmp_path: Path) -> Path:
    write_tiles(tmp_path / "tiles" / "train.h5")
    return tmp_path / "tiles"


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


def test_device_cache_gives_the_same_run(tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    path = write_tiles(tiles / "train.h5", n=40)
    with h5py.File(path, "a") as f:  # some invalid values: the cache keeps their mask
        data = f["tiles"][3]
        data[:, 0, :3] = np.nan
        f["tiles"][3] = data
    common = ["--epochs", "2", "--batch-size", "8", "--deterministic"]
    assert run(tiles, tmp_path / "a", *common) == 0
    assert run(tiles, tmp_path / "b", *common, "--cache", "device") == 0
    for name in ("train/loss", "val/loss"):
        a, b = metrics_history(tmp_path / "a", name), metrics_history(tmp_path / "b", name)
        assert a == pytest.approx(b, rel=1e-6), name


def test_bf16_autocast_path_on_cpu(tiles_dir: Path, tmp_path: Path, capsys) -> None:
    """The GPU's bf16 autocast code path, exercised on the CPU (conv model)."""
    out = tmp_path / "m"
    assert run(tiles_dir, out, "--arch", "conv", "--latent", "8x2", "--precision", "bf16",
               "--epochs", "2", "--batch-size", "16") == 0
    assert "bf16 autocast" in capsys.readouterr().out
    losses = metrics_history(out)
    assert len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.slow
def test_compile_on_cpu_saves_plain_keys(tiles_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert run(tiles_dir, out, "--compile", "--epochs", "1", "--batch-size", "16") == 0
    for name in ("last.pt", "best.pt"):
        keys = torch.load(out / name, weights_only=True)["model"]
        assert keys and not any("_orig_mod" in k for k in keys)
    load_checkpoint(out / "best.pt")


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
    params.write_text("train:\n  common:\n    epochs: 1\n    batch_size: 32\n"
                      "  virtis:\n    arch: conv\n    latent: [8, 4]\n    loss: mse\n")
    out = tmp_path / "m"
    assert run(tiles_dir, out, "--arch", "conv", "--latent", "8x2", params=params) == 0
    text = capsys.readouterr().out
    assert "-> 8x2x2" in text and "batch 32" in text and "loss mse" in text
    params.write_text("train:\n  virtis:\n    epoch: 3\n")
    assert run(tiles_dir, out, params=params) == 2
    assert "train.virtis: unknown key 'epoch' (did you mean 'epochs'?)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("missing", [], "tile file not found"),
        ("empty", [], "holds no tiles"),
        ("notiles", [], "no 'tiles' dataset"),
        ("ok", ["--device", "cuda"], "no CUDA device available"),
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
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("CUDA is present")
    assert run(tiles, tmp_path / "m", "--epochs", "1", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_out_of_memory_is_one_line_with_the_batch_size(tiles_dir: Path, tmp_path: Path,
                                                        capsys, monkeypatch) -> None:
    import training.train as tt

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tt, "_loss_terms", boom)
    assert run(tiles_dir, tmp_path / "m", "--epochs", "1", "--batch-size", "16") == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "batch size 16" in err and "--batch-size 8" in err
    assert len(err.strip().splitlines()) == 1


def test_band_count_mismatch(tiles_dir: Path, tmp_path: Path, capsys) -> None:
    params = tmp_path / "bands.yaml"
    params.write_text("train:\n  virtis:\n    bands: 432\n")
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


def _run_group(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on timeout kill the whole group (torchrun
    workers included) so that nothing is left running."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_ddp_two_processes_matches_single(tiles_dir: Path, tmp_path: Path) -> None:
    common = [*TINY, "--source", "virtis", "--tiles", str(tiles_dir), "--epochs", "2",
              "--batch-size", "16", "--deterministic"]
    single = _run_group([sys.executable, "-m", "training.train", *common, "--out",
                         str(tmp_path / "one")], cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    ddp = _run_group([sys.executable, "-m", "torch.distributed.run", "--standalone",
                      "--nproc_per_node=2", "-m", "training.train", *common, "--out",
                      str(tmp_path / "two")], cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("epoch 2/2") == 1  # only rank 0 prints
    assert "(2 x 8)" in ddp.stdout
    for name in ("train/loss", "val/loss"):
        a = metrics_history(tmp_path / "one", name)
        b = metrics_history(tmp_path / "two", name)
        assert a == pytest.approx(b, rel=1e-4), name
    wa = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_channels_last_compile(tiles_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    argv = ["--source", "virtis", "--tiles", str(tiles_dir), "--out", str(out), "--arch", "conv",
            "--latent", "8x2", "--widths", "4,4,4,8", "--workers", "2", "--device", "cuda",
            "--no-progress", "--epochs", "2", "--batch-size", "16", "--compile"]
    assert main(argv) == 0
    _, ckpt = load_checkpoint(out / "best.pt", map_location="cuda")
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    assert len(metrics_history(out)) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_resume_equals_uninterrupted_deterministic(tiles_dir: Path, tmp_path: Path) -> None:
    common = ["--source", "virtis", "--tiles", str(tiles_dir), "--arch", "linear", "--latent",
              "16", "--widths", "4,4,4,8", "--workers", "0", "--device", "cuda", "--no-progress",
              "--epochs", "3", "--batch-size", "16", "--deterministic", "--precision", "fp32"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--stop-after-epoch", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--resume"]) == 0
    assert metrics_history(tmp_path / "a") == pytest.approx(metrics_history(tmp_path / "b"))
