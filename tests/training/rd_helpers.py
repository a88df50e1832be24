"""Helpers of the codec tests: learnable cubes, tile files, tiny rate-distortion checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from training.codec import LatentCodec, RateDistortionNet, finalise_state
from training.data import Normaliser
from training.models import build_model, save_checkpoint


def smooth_cube(rng: np.random.Generator, bands: int, lines: int, samples: int) -> np.ndarray:
    """A learnable float32 cube (B, L, S): two smooth spatial fields times two spectra."""
    yy, xx = np.mgrid[0:lines, 0:samples] / max(lines, samples)
    a, b, c = rng.uniform(0.5, 1.5, 3)
    spatial = np.stack([a + b * np.sin(3 * xx + c), c + a * np.cos(2 * yy * b)])
    spectra = np.stack([np.linspace(1, 2, bands), np.linspace(2, 0.5, bands)])
    cube = 20 * np.einsum("kb,khw->bhw", spectra, spatial)
    return (cube + rng.normal(0, 0.02, cube.shape)).astype(np.float32)


def stats_of(tiles: np.ndarray, source: str = "virtis") -> dict:
    """Per-band statistics of tiles (N, B, H, W) or a cube (B, L, S), NaN ignored."""
    t = tiles.astype(np.float64)
    t[~np.isfinite(t)] = np.nan
    axes = (0, 2, 3) if t.ndim == 4 else (1, 2)
    per = lambda f: [float(v) for v in f(t, axis=axes)]  # noqa: E731
    return {"source": source, "products": ["P0"], "bands": int(t.shape[-3]),
            "min": per(np.nanmin), "max": per(np.nanmax), "mean": per(np.nanmean),
            "std": per(np.nanstd)}


def write_tile_file(path: Path, tiles: np.ndarray, wavelength: np.ndarray | None = None
                    ) -> dict:
    """A tile file in the pipeline.tiles layout (tiles, index, attrs)."""
    import h5py

    stats = stats_of(tiles)
    with h5py.File(path, "w") as f:
        f.create_dataset("tiles", data=tiles, chunks=(1, *tiles.shape[1:]))
        idx = np.zeros(len(tiles), dtype=[("product_id", "S8"), ("line0", "i4"),
                                          ("sample0", "i4")])
        idx["product_id"] = [f"P{i % 4}".encode() for i in range(len(tiles))]
        f.create_dataset("index", data=idx)
        if wavelength is not None:
            f.create_dataset("wavelength", data=wavelength.astype(np.float32))
        f.attrs["source"] = "virtis"
        f.attrs["stats"] = json.dumps(stats)
    return stats


def rd_checkpoint(path: Path, tiles: np.ndarray, stats: dict, *, arch: str = "conv",
                  latent=(8, 4), steps: int = 20, seed: int = 0,
                  normalisation: str = "paper_minmax", lam: float = 1000.0) -> Path:
    """A small rate-distortion checkpoint trained for ``steps`` Adam steps on ``tiles``
    (N, B, T, T) physical values (NaN allowed)."""
    torch.manual_seed(seed)
    bands, size = tiles.shape[1], tiles.shape[2]
    model = build_model(arch=arch, bands=bands, tile=size, latent=latent, widths=(8, 8, 8, 8))
    norm = Normaliser.from_stats(stats, normalisation)
    x = norm.normalise(tiles)
    x = torch.from_numpy(np.where(np.isfinite(x), x, 0.0).astype(np.float32))
    codec = LatentCodec(model.latent_shape)
    codec.init_from(model.encode(x).detach())
    net = RateDistortionNet(model, codec)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        y, bits = net(x)
        loss = lam * torch.mean((y - x) ** 2) + bits.mean() / x[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    cfg = model.config()
    cfg.update(normalisation=normalisation, source=stats.get("source", "virtis"),
               objective="rate_distortion", **{"lambda": lam})
    state = finalise_state({"model": model, "config": cfg, "epoch": steps, "stats": stats,
                            "normaliser": norm.state_dict()}, codec.eval())
    save_checkpoint(path, state)
    return path




def grid_tiles(cube: np.ndarray, size: int) -> np.ndarray:
    """Cut a cube (B, L, S) into (rows * cols, B, size, size) tiles in row-major grid order,
    after padding the cube to whole tiles by repeating its last line and sample."""
    b, lines, samples = cube.shape
    rows, cols = -(-lines // size), -(-samples // size)
    padded = np.pad(cube, ((0, 0), (0, rows * size - lines), (0, cols * size - samples)),
                    mode="edge")
    t = padded.reshape(b, rows, size, cols, size).transpose(1, 3, 0, 2, 4)
    return np.ascontiguousarray(t.reshape(rows * cols, b, size, size))
