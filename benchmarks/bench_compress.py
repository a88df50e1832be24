"""Entropy-coded SSCNet on the CPU: compress/decompress MB/s, the entropy coder's share of the
time, and the file overhead (header + masks + framing) for a 432 x 100 x 256 VIRTIS cube.

    python benchmarks/bench_compress.py [--threads 2] [--repeats 3] [--steps 8,2] [--quick]

1. Writes a synthetic VIRTIS-M VIS calibrated cube with :mod:`pipeline.synthetic` (432 bands,
   100 lines, 256 samples, float32, with the label's special values: NaN after reading),
   44.2 MB of float32 input: 2 x 4 tiles of 64 px, the last tile row padded from 36 lines.
2. Builds the paper's VIRTIS conv model (432x64x64 -> 1024x8x8, untrained weights: the
   timings do not depend on the weights), centres its latent and sets the gains so that a
   latent's standard deviation spans ``--steps`` quantisation steps (two rates), fits the
   factorized prior to those latents (200 Adam steps, encoder frozen) and finalises the
   integer tables, as training does.
3. Runs ``training.compress.compress`` and ``training.decompress.decompress`` (the CLIs' own
   functions: reader, normalisation, network, entropy coder, container, output file),
   ``--repeats`` times, and reports the best run.

MB/s counts the input's native bytes (float32: 4 bytes per value). "coder / network" is the
entropy coder's time (ANS encode or decode of every tile) over the network's time (encoder or
decoder). Prints the machine and the load average first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from parsers import virtis  # noqa: E402
from pipeline.synthetic.virtis_products import write_virtis_product  # noqa: E402
from training.codec import Codec, LatentCodec, finalise_state  # noqa: E402
from training.compress import compress  # noqa: E402
from training.data import Normaliser  # noqa: E402
from training.decompress import decompress  # noqa: E402
from training.models import PAPER_VARIANTS, build_model, save_checkpoint  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs, python "
            f"{platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def stats_of(cube: np.ndarray) -> dict:
    t = cube.astype(np.float64)
    per = lambda f: [float(v) for v in f(t, axis=(1, 2))]  # noqa: E731
    return {"source": "virtis", "bands": int(cube.shape[0]), "min": per(np.nanmin),
            "max": per(np.nanmax), "mean": per(np.nanmean), "std": per(np.nanstd)}


def checkpoint(path: Path, cube: np.ndarray, variant: str, steps: float) -> Path:
    """A finalised rate-distortion checkpoint: untrained SSCNet, prior fitted to its latents."""
    torch.manual_seed(0)
    model = build_model(**PAPER_VARIANTS[variant]).eval()
    stats = stats_of(cube)
    norm = Normaliser.from_stats(stats, "paper_minmax")
    size = model.tile
    cols = max(1, min(4, cube.shape[2] // size))  # tiles of the first tile row
    row = cube[:, :size, :cols * size].reshape(cube.shape[0], size, cols, size)
    x = np.nan_to_num(norm.normalise(np.ascontiguousarray(row.transpose(2, 0, 1, 3))), nan=0.0)
    with torch.no_grad():
        z = model.encode(torch.from_numpy(np.ascontiguousarray(x)))
    codec = LatentCodec(model.latent_shape)
    codec.init_from(z, steps=steps)
    opt = torch.optim.Adam(codec.prior.parameters(), lr=0.02)
    y = ((z - codec.center.detach().reshape(1, -1, 1, 1))
         * codec.log_gain.detach().exp().reshape(1, -1, 1, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: one thread is fastest
    for _ in range(200):
        loss = codec.prior.bits(y + torch.rand_like(y) - 0.5).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    cfg = model.config()
    cfg.update(normalisation="paper_minmax", source="virtis", objective="rate_distortion")
    state = finalise_state({"model": model, "config": cfg, "stats": stats,
                            "normaliser": norm.state_dict()}, codec.eval())
    return save_checkpoint(path, state)


def run(product: Path, ckpt: Path, work: Path, repeats: int) -> dict:
    codec = Codec(ckpt)
    best_c = best_d = None
    for _ in range(repeats):
        c = compress(product, codec, work / "cube.sscz")
        d = decompress(work / "cube.sscz", codec, work / "cube.npy")
        best_c = c if best_c is None or c.seconds < best_c.seconds else best_c
        best_d = d if best_d is None or d.seconds < best_d.seconds else best_d
    s = best_c.summary()
    values = s["values"]
    return {
        "bytes": s["bytes"], "bpppc": s["bpppc"], "header_bytes": s["header_bytes"],
        "mask_bytes": s["mask_bytes"], "framing_bytes": s["framing_bytes"],
        "latent_bytes": s["latent_bytes"], "overhead_share": s["overhead_share"],
        "header_mask_share": (s["header_bytes"] + s["mask_bytes"]) / s["bytes"],
        "compress_mbps": s["encode_mbps"], "compress_s": best_c.seconds,
        "encode_network_s": best_c.network_s, "encode_coder_s": best_c.coder_s,
        "encode_coder_share": best_c.coder_s / best_c.network_s,
        "decompress_mbps": best_d.summary()["decode_mbps"], "decompress_s": best_d.seconds,
        "decode_network_s": best_d.network_s, "decode_coder_s": best_d.coder_s,
        "decode_coder_share": best_d.coder_s / best_d.network_s,
        "input_mb": values * 4 / 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", default="8,2",
                    help="latent standard deviation in quantisation steps, one run each")
    ap.add_argument("--quick", action="store_true", help="a 64 x 64 cube, one repeat")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines, samples = (64, 64) if args.quick else (100, 256)
    repeats = 1 if args.quick else args.repeats
    print(machine())
    print(load(), "(before)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        product = write_virtis_product(work / "V1_00000000000.QUB", bands=432, lines=lines,
                                       samples=samples)
        cube = virtis.read(product).load(contiguous=True)
        print(f"cube: {product.name} {cube.shape} float32, {int(np.isnan(cube).sum())} NaN")
        results = {}
        for steps in (float(s) for s in args.steps.split(",")):
            t0 = time.perf_counter()
            ckpt = checkpoint(work / f"rd{steps:g}.pt", cube, "virtis-conv-1024x8", steps)
            fit_s = time.perf_counter() - t0
            r = run(product, ckpt, work, repeats)
            results[f"{steps:g} steps"] = r
            print(f"\nlatent std = {steps:g} quantisation steps (prior fitted in {fit_s:.1f} s)")
            print(f"  file {r['bytes']:,} bytes = {r['bpppc']:.4f} bpppc; header "
                  f"{r['header_bytes']:,} + masks {r['mask_bytes']:,} bytes = "
                  f"{100 * r['header_mask_share']:.2f} % of the file (with per-tile framing "
                  f"{100 * r['overhead_share']:.2f} %)")
            print(f"  compress   {r['compress_mbps']:6.2f} MB/s ({r['compress_s']:.2f} s for "
                  f"{r['input_mb']:.1f} MB); network {r['encode_network_s']:.2f} s, entropy "
                  f"coder {r['encode_coder_s']:.3f} s = {100 * r['encode_coder_share']:.1f} % "
                  "of the network")
            print(f"  decompress {r['decompress_mbps']:6.2f} MB/s ({r['decompress_s']:.2f} s);"
                  f" network {r['decode_network_s']:.2f} s, entropy coder "
                  f"{r['decode_coder_s']:.3f} s = {100 * r['decode_coder_share']:.1f} % of the "
                  "network")
    print(load(), "(after)")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
