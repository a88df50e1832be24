"""Regenerate docs/rd_example.png: a TINY CPU demo of ``python -m training.evaluate``.

Real data, tiny model. Jasper Ridge (AVIRIS, 198 bands x 100 x 100 px, uint16; the classic
unmixing benchmark cube, expected at ``../shared/realdata/hyperspectral/unmixing_mat/Jasper.mat``
or ``$SSCNET_REALDATA/...``) is cut into 48 x 48 tiles: training tiles from the top half
(overlapping, stride 4), test tiles from the bottom half (spatially disjoint from training).
A small SSCNet (conv latent 32 x 12 x 12, widths 32) is trained for a few hundred Adam steps
on the CPU, then evaluated with the project's evaluation against every baseline. The numbers
say nothing about SSCNet at paper scale; the plot shows how to read the evaluation.

    python docs/make_rd_example.py [--workdir /tmp/rd_example] [--steps 300]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import torch

from training import evaluate, figures
from training.data import Normaliser
from training.models import build_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("SSCNET_REALDATA", REPO.parent / "shared" / "realdata"))


def load_jasper() -> np.ndarray:
    m = scipy.io.loadmat(REALDATA / "hyperspectral/unmixing_mat/Jasper.mat")
    y = m["Y"]  # (bands, pixels), MATLAB column-major pixel order
    bands, lines, cols = y.shape[0], int(m["lines"][0, 0]), int(m["cols"][0, 0])
    return np.ascontiguousarray(y.reshape(bands, cols, lines).transpose(0, 2, 1))  # (B, L, S)


def cut(cube: np.ndarray, rows: range, cols: range, size: int) -> np.ndarray:
    return np.stack([cube[:, r : r + size, c : c + size] for r in rows for c in cols])


def stats_of(tiles: np.ndarray) -> dict:
    t = tiles.astype(np.float64)
    per = lambda f: [float(v) for v in f(t, axis=(0, 2, 3))]  # noqa: E731
    return {"source": "jasper", "products": ["Jasper.mat"], "bands": int(t.shape[1]),
            "count": [int(t[:, b].size) for b in range(t.shape[1])], "min": per(np.min),
            "max": per(np.max), "mean": per(np.mean), "std": per(np.std),
            "percentiles": {"0.1": per(lambda a, axis: np.percentile(a, 0.1, axis=axis)),
                            "99.9": per(lambda a, axis: np.percentile(a, 99.9, axis=axis))}}


def write_tiles(path: Path, tiles: np.ndarray, stats: dict) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("tiles", data=tiles, chunks=(1, *tiles.shape[1:]))
        idx = np.zeros(len(tiles), dtype=[("product_id", "S6"), ("line0", "i4"),
                                          ("sample0", "i4")])
        idx["product_id"] = b"jasper"
        f.create_dataset("index", data=idx)
        f.attrs["source"] = "jasper"
        f.attrs["stats"] = json.dumps(stats)
        f.attrs["params"] = "{}"
        f.attrs["software_version"] = "docs/make_rd_example.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rd_example"))
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cube = load_jasper()  # (198, 100, 100) uint16
    size = 48
    train = cut(cube, range(0, 52 - size + 1, 4), range(0, 100 - size + 1, 4), size)
    test = cut(cube, range(52, 53), range(0, 100 - size + 1, 26), size)
    stats = stats_of(train)
    write_tiles(a.workdir / "test.h5", test, stats)

    model = build_model(arch="conv", bands=cube.shape[0], tile=size, latent=(32, 12),
                        widths=(32, 32, 32, 32))
    norm = Normaliser.from_stats(stats, "paper_minmax")
    x = torch.from_numpy(norm.normalise(train.astype(np.float32))).clamp(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
    for step in range(a.steps):
        batch = x[torch.randint(0, len(x), (8,))]
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(model(batch), batch)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"step {step} bce {loss.item():.5f}")
    cfg = model.config()
    cfg.update(normalisation="paper_minmax", source="jasper")
    save_checkpoint(a.workdir / "best.pt", {"model": model, "config": cfg, "epoch": a.steps,
                                            "stats": stats, "normaliser": norm.state_dict()})
    (a.workdir / "params.yaml").write_text(
        "evaluate: {rates: [0.25, 0.5, 1, 2, 4]}\n"
        f"datasets: {{jasper: {{kind: cube, products: {a.workdir}}}}}\n")
    out = a.workdir / "eval"
    evaluate.main(["--params", str(a.workdir / "params.yaml"), "--dataset", "jasper",
                   "--tiles", str(a.workdir / "test.h5"), "--checkpoint",
                   str(a.workdir / "best.pt"), "--out", str(out), "--device", "cpu"])
    rows = list(csv.DictReader((out / "rd.csv").open()))
    figures.rd_plot(
        rows, a.workdir / "rd_example.png", "psnr",
        title=f"TINY CPU DEMO MODEL ({a.steps} steps, {len(train)} overlapping training tiles)"
              f": Jasper Ridge AVIRIS, {len(test)} test tiles 198 x 48 x 48",
        note="Not a paper-scale result. SSCNet rates = latent bits, no entropy coding; "
             "baselines = real encoded bytes incl. side information. PSNR on the per-band "
             "min-max normalised scale (peak 1).",
    )
    shutil.copy(a.workdir / "rd_example.png", REPO / "docs" / "rd_example.png")
    print(f"wrote {REPO / 'docs' / 'rd_example.png'} (full report: {out / 'report.md'})")


if __name__ == "__main__":
    main()
