"""SSCNet training throughput (tiles/s) and DataLoader throughput, GPU and CPU.

    python benchmarks/bench_train.py                      # GPU if present, plus a CPU reference
    python benchmarks/bench_train.py --quick              # a few steps, small sizes (smoke check)
    python benchmarks/bench_train.py --device cpu --cpu-batch 8

1. Train step (forward, BCE-with-logits loss in float32, backward, Adam step), on random
   [0, 1] tiles already on the device, for the paper's models: Sentinel-2 linear
   9x48x48 -> 1000 and VIRTIS conv 432x64x64 -> 1024x8x8 (plus VIRTIS linear -> 10000 on
   the GPU). On CUDA at batch ``--batch`` (default 128): fp32 vs bf16 autocast, each with
   torch.compile off/on, channels-last; the TF32 setting is left at PyTorch's default (off).
   On CPU at ``--cpu-batch`` (fp32, no compile) for reference.
2. DataLoader alone: a tile file written with ``pipeline.tiles.TileWriter`` (Blosc2-zstd +
   fletcher32, one chunk per tile, as the tiles stage writes it), read through
   ``training.data.TileDataset`` with ``--workers`` workers (pinned memory on CUDA) at the
   same batch size. If the loader's tiles/s exceeds the train step's, data loading is not the
   bottleneck.
Prints the machine first; figures are medians over timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.models import PAPER_VARIANTS, build_model, count_parameters  # noqa: E402

CASES = {
    "sentinel2": "sentinel2-linear-1000",
    "virtis": "virtis-conv-1024x8",
    "virtis-linear": "virtis-linear-10000",
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    text = (f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs, python "
            f"{platform.python_version()}, torch {torch.__version__}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        text += f", GPU {p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return text


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_step(variant: str, device: torch.device, batch: int, bf16: bool, compile_: bool,
               steps: int, warmup: int) -> dict:
    """Median tiles/s of full training steps on synthetic device-resident tiles."""
    kw = PAPER_VARIANTS[variant]
    torch.manual_seed(0)
    model = build_model(**kw).to(device)
    cl = device.type == "cuda"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model.compile()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, kw["bands"], kw["tile"], kw["tile"], device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16
           else torch.autocast(device_type=device.type, enabled=False))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    t_first = time.perf_counter()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with amp:
            logits = model(x, logits=True)
        loss = F.binary_cross_entropy_with_logits(logits.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i == 0:
            first = time.perf_counter() - t_first
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = {"variant": variant, "device": str(device), "batch": batch,
           "precision": "bf16" if bf16 else "fp32", "compile": compile_,
           "params": count_parameters(model)["total"], "step_ms": med * 1e3,
           "tiles_per_s": batch / med, "first_step_s": first}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, opt, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def write_tile_file(path: Path, source: str, n: int) -> Path:
    """A tile file like the tiles stage writes (synthetic content, real layout and filters)."""
    from pipeline.tiles import TileWriter

    rng = np.random.default_rng(0)
    if source == "virtis":
        bands, size, dtype, mask = 432, 64, np.float32, False
    else:
        bands, size, dtype, mask = 9, 48, np.uint16, True
    spectrum = np.linspace(1.0, 2.0, bands, dtype=np.float32)[:, None, None]
    lo, hi = [], []
    with TileWriter(path, bands=bands, size=size, dtype=np.dtype(dtype), id_length=16,
                    with_mask=mask) as w:
        for start in range(0, n, 16):
            k = min(16, n - start)
            base = rng.uniform(0.2, 1.0, (k, 1, size, size)).astype(np.float32)
            noise = rng.normal(0, 0.01, (k, bands, size, size)).astype(np.float32)
            tiles = (base * spectrum + noise) * (100 if source == "virtis" else 3000)
            tiles = tiles.astype(dtype)
            lo.append(tiles.min(axis=(0, 2, 3)))
            hi.append(tiles.max(axis=(0, 2, 3)))
            masks = np.ones((k, size, size), bool) if mask else None
            w.append(f"P{start // 64}", tiles, [(0, 0)] * k, np.zeros(k, np.float32), masks)
        mn = np.min(lo, axis=0).astype(float).tolist()
        mx = np.max(hi, axis=0).astype(float).tolist()
        stats = {"source": source, "products": [], "bands": bands, "count": n * size * size,
                 "min": mn, "max": mx, "mean": mn, "std": [1.0] * bands,
                 "percentiles": {"0.1": mn, "99.9": mx}}
        w.file.attrs["stats"] = json.dumps(stats)
        w.file.attrs["source"] = source
    return path


def bench_loader(source: str, n: int, batch: int, workers: int, epochs: int,
                 pin: bool) -> dict:
    from torch.utils.data import DataLoader

    from training.data import TileDataset

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tile_file(Path(tmp) / "train.h5", source, n)
        norm = "paper_minmax" if source == "virtis" else "global_max"
        ds = TileDataset(path, normalisation=norm, return_mask=True)
        kw = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                            pin_memory=pin, **kw)
        rates = []
        for epoch in range(epochs + 1):  # epoch 0 warms the page cache and the workers
            t0 = time.perf_counter()
            count = 0
            for x, _ in loader:
                count += x.shape[0]
            if epoch:
                rates.append(count / (time.perf_counter() - t0))
        size = os.path.getsize(path)
    return {"source": source, "tiles": n, "batch": batch, "workers": workers,
            "pin_memory": pin, "file_mb": size / 1e6, "tiles_per_s": statistics.median(rates)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--batch", type=int, default=128, help="GPU batch size")
    ap.add_argument("--cpu-batch", type=int, default=8, help="CPU reference batch size")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--loader-tiles", type=int, default=None,
                    help="tiles in the loader test file (default 2 x batch; 64 with --quick)")
    ap.add_argument("--cases", default="sentinel2,virtis,virtis-linear")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled runs")
    ap.add_argument("--quick", action="store_true", help="smoke check: 2+1 steps, tiny loader")
    ap.add_argument("--json", type=Path, help="also write all results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 2, 1
    print(machine())
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    results: dict[str, list] = {"train_step": [], "loader": []}

    def show(r: dict) -> None:
        extra = f", peak {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else ""
        print(f"  {r['variant']:<22} {r['device']:<6} batch {r['batch']:>3} {r['precision']} "
              f"compile={'on ' if r['compile'] else 'off'}: {r['tiles_per_s']:9.1f} tiles/s "
              f"({r['step_ms']:.1f} ms/step, first step {r['first_step_s']:.1f} s{extra})",
              flush=True)
        results["train_step"].append(r)

    if cuda:
        dev = torch.device("cuda")
        print(f"train step on {torch.cuda.get_device_name(0)}, batch {args.batch}:")
        for case in cases:
            for bf16 in (False, True):
                for comp in (False,) if args.no_compile else (False, True):
                    try:
                        show(bench_step(CASES[case], dev, args.batch, bf16, comp, args.steps,
                                        args.warmup))
                    except torch.cuda.OutOfMemoryError:
                        print(f"  {CASES[case]} bf16={bf16} compile={comp}: out of memory")
                        torch.cuda.empty_cache()
    print(f"train step on CPU ({torch.get_num_threads()} threads), batch {args.cpu_batch}:")
    for case in cases:
        if case == "virtis-linear":
            continue  # 332 M parameters (+ 2 x for Adam): GPU only
        show(bench_step(CASES[case], torch.device("cpu"), args.cpu_batch, False, False,
                        max(1, args.steps // 4), min(1, args.warmup)))
    loader_batch = args.batch if cuda else args.cpu_batch * 4
    print(f"DataLoader alone (TileDataset, normalise + mask, pin_memory={cuda}):")
    for source in ("sentinel2", "virtis"):
        n = args.loader_tiles or (64 if args.quick else 2 * loader_batch)
        for workers in sorted({0, args.workers}):
            r = bench_loader(source, n, loader_batch, workers, 1 if args.quick else 3, cuda)
            print(f"  DataLoader {source:<9} {r['tiles']} tiles ({r['file_mb']:.0f} MB "
                  f"blosc2), batch {r['batch']}, {workers} workers: "
                  f"{r['tiles_per_s']:9.1f} tiles/s", flush=True)
            results["loader"].append(r)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
