"""SSCNet training throughput (tiles/s) and DataLoader throughput, GPU and CPU.

    python benchmarks/bench_train.py                      # GPU if present, plus a CPU reference
    python benchmarks/bench_train.py --quick              # a few steps, small sizes (smoke check)
    python benchmarks/bench_train.py --device cpu --cpu-batch 8

1. Train step: :func:`training.train.train_step` itself (forward, BCE-with-logits loss in
   float32, backward, Adam step), on random [0, 1] tiles already on the device, for the
   paper's models: Sentinel-2 linear 9x48x48 -> 1000 and VIRTIS conv 432x64x64 -> 1024x8x8
   (plus VIRTIS linear -> 10000 on the GPU). On CUDA at batch ``--batch`` (default 128):
   fp32 vs bf16 autocast, each with torch.compile off/on; channels-last on every device; the
   TF32 setting is left at PyTorch's default (off). On CPU at ``--cpu-batch`` (fp32, no
   compile) for reference.
2. DataLoader alone: a tile file written with ``pipeline.tiles.TileWriter`` (Blosc2-zstd +
   fletcher32, one chunk per tile, as the tiles stage writes it; uncompressed where
   hdf5plugin is missing), read through
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

import torch  # noqa: E402

from pipeline.synthetic.datasets import write_stage_like_tiles  # noqa: E402
from training.device import Runtime  # noqa: E402
from training.models import PAPER_VARIANTS, build_model, count_parameters  # noqa: E402
from training.train import train_step  # noqa: E402

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
               steps: int, warmup: int, model_kw: dict | None = None) -> dict:
    """Median tiles/s of :func:`training.train.train_step` on device-resident random tiles.

    ``model_kw`` (build_model keyword arguments) defaults to the paper variant's; channels-last
    as in training. Peak memory is the CUDA allocator's high-water mark (None on the CPU).
    """
    kw = model_kw or PAPER_VARIANTS[variant]
    torch.manual_seed(0)
    rt = Runtime.create(device, "bf16" if bf16 else "fp32", channels_last=True,
                        compile=compile_)
    model = rt.compiled(rt.prepare(build_model(**kw)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = rt.tiles(torch.rand(batch, kw["bands"], kw["tile"], kw["tile"]))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    t_first = time.perf_counter()
    first = 0.0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        train_step(model, opt, None, rt, x, None, "bce")
        _sync(device)
        if i == 0:
            first = time.perf_counter() - t_first
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = {"variant": variant, "device": str(device), "batch": batch,
           "precision": "bf16" if bf16 else "fp32", "compile": compile_,
           "params": count_parameters(model)["total"], "step_ms": med * 1e3,
           "tiles_per_s": batch / med, "first_step_s": first,
           "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else None)}
    del model, opt, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def loader_compression() -> str:
    """Blosc2-zstd as the tiles stage writes, or no compression where hdf5plugin is missing."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        return "none"
    return "blosc2-zstd"


def time_loader(path: Path, source: str, batch: int, workers: int, epochs: int,
                pin: bool) -> float:
    """Median tiles/s of a DataLoader over ``training.data.TileDataset`` (normalise + mask),
    after one warm-up epoch (page cache, worker start)."""
    from torch.utils.data import DataLoader

    from training.data import TileDataset

    norm = "paper_minmax" if source == "virtis" else "global_max"
    ds = TileDataset(path, normalisation=norm, return_mask=True)
    kw = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=pin, **kw)
    rates = []
    for epoch in range(epochs + 1):
        t0 = time.perf_counter()
        count = 0
        for x, _ in loader:
            count += x.shape[0]
        if epoch:
            rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_loader(source: str, n: int, batch: int, workers: int, epochs: int,
                 pin: bool) -> dict:
    compression = loader_compression()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_stage_like_tiles(Path(tmp) / "train.h5", source, n,
                                      compression=compression)
        rate = time_loader(path, source, batch, workers, epochs, pin)
        size = os.path.getsize(path)
    return {"source": source, "tiles": n, "batch": batch, "workers": workers,
            "pin_memory": pin, "file_mb": size / 1e6, "compression": compression,
            "tiles_per_s": rate}


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
        extra = f", peak {r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] else ""
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
                  f"{r['compression']}), batch {r['batch']}, {workers} workers: "
                  f"{r['tiles_per_s']:9.1f} tiles/s", flush=True)
            results["loader"].append(r)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
