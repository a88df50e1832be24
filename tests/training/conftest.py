"""Fixtures of the training tests: tiny learnable tile files, a quiet single-thread CPU, and
for the codec tests a tile file with NaN and a tiny rate-distortion checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.synthetic.datasets import write_learnable_tiles
from tests.training.rd_helpers import rd_checkpoint, smooth_cube, write_tile_file


@pytest.fixture
def tiles_dir(tmp_path: Path) -> Path:
    """``tmp_path/tiles`` holding ``train.h5``: 64 learnable 4x8x8 tiles of 4 products."""
    write_learnable_tiles(tmp_path / "tiles" / "train.h5")
    return tmp_path / "tiles"


@pytest.fixture
def one_cpu_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster.
    Runs in tmp_path so that DVCLive does not open the project's own DVC/git repository."""
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def nan_tiles() -> np.ndarray:
    """Ten 6 x 16 x 16 float tiles with NaN: single values, whole spectra, one full tile."""
    rng = np.random.default_rng(1)
    tiles = np.stack([smooth_cube(rng, 6, 16, 16) for _ in range(10)])
    tiles[0, 2, 3, 4] = np.nan
    tiles[1, :, 5, 5] = np.nan
    tiles[2, :, :4, :] = np.nan
    tiles[3, 1] = -np.inf
    tiles[4] = np.nan
    return tiles


@pytest.fixture(scope="session")
def codec_files(tmp_path_factory, nan_tiles) -> dict[str, Path]:
    """A tile file with NaN and a rate-distortion checkpoint trained on it."""
    root = tmp_path_factory.mktemp("codec")
    stats = write_tile_file(root / "tiles.h5", nan_tiles, np.linspace(400, 900, 6))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    rd_checkpoint(root / "rd.pt", nan_tiles, stats)
    torch.set_num_threads(before)
    return {"root": root, "tiles": root / "tiles.h5", "ckpt": root / "rd.pt"}
