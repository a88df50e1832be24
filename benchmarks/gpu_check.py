"""The GPU check: every accelerator code path and the training figures, in one bounded run.

Run it through ``benchmarks/gpu_check.sh`` (which installs the carried wheels first):

    benchmarks/gpu_check.sh --out DIR            # on a GPU machine: at most ~8 minutes
    benchmarks/gpu_check.sh --dry-run --out DIR  # on a CPU: the same phases, tiny sizes

Phases, each in its own process with a time limit, in this order (a failing phase is
recorded and the next one runs):

1. ``env``: GPU model, driver, torch, CUDA and cuDNN versions, package versions.
2. ``tests``: the ``gpu``-marked tests (skipped on a CPU).
3. ``train_step``: :func:`training.train.train_step` at batch 128 for the VIRTIS conv model
   (432x64x64 -> 1024x8x8) and the Sentinel-2 linear model (9x48x48 -> 1000): fp32 vs bf16,
   compile off vs on; tiles/s, step time, first-step (compile) time, peak memory.
4. ``data``: tile files as the tiles stage writes them; the DataLoader alone vs full
   training epochs (``training.train.train``) reading through the DataLoader vs from the
   device cache.
5. ``evaluate``: ``python -m training.evaluate`` on the device on a few tiles (its metrics
   run on the CPU), then its encode/decode MB/s at the full batch, fp32 and bf16.
6. ``ddp``: with two or more GPUs, two NCCL processes under torchrun (the dry run uses
   gloo on the CPU); skipped with one GPU.
7. ``profile``: when the VIRTIS conv model stays under 3,600 tiles/s (the target of issue
   17), a profiler summary of one bf16 step: the operators that take the time.

Writes ``DIR/gpu_check.json`` (every figure), ``DIR/summary.txt`` and ``DIR/log.txt`` (the
phases' output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_TILES_PER_S = 3600.0  # VIRTIS conv, bf16, one H100/H200-class GPU (issue 17)
PHASES = ("env", "tests", "train_step", "data", "evaluate", "ddp", "profile")
#: Longest run of each phase (s); the whole check also stops at --budget.
CAPS = {"env": 60, "tests": 120, "train_step": 170, "data": 90, "evaluate": 60, "ddp": 60,
        "profile": 30}


@dataclass(frozen=True)
class Sizes:
    """What the check runs at: the real sizes on a GPU, tiny ones for ``--dry-run``."""

    batch: int = 128
    steps: int = 20
    warmup: int = 5
    compile: bool = True
    #: name -> (source, build_model keyword arguments)
    models: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=lambda: {
        "virtis-conv-1024x8": ("virtis", {"arch": "conv", "bands": 432, "tile": 64,
                                          "latent": (1024, 8)}),
        "sentinel2-linear-1000": ("sentinel2", {"arch": "linear", "bands": 9, "tile": 48,
                                                "latent": 1000}),
    })
    #: tiles in the data phase's files (VIRTIS tiles are 7 MB each as float32)
    tiles: dict[str, int] = field(default_factory=lambda: {"virtis": 512, "sentinel2": 4096})
    workers: int = 8
    epochs: int = 3
    #: tiles the evaluate CLI scores per source (its metrics run on the CPU: FSIM and SSIM
    #: of one 432-band VIRTIS tile take seconds, so the CLI run checks the code path and
    #: the MB/s come from training.evaluate.time_sscnet at the full batch)
    eval_tiles: dict[str, int] = field(default_factory=lambda: {"virtis": 4, "sentinel2": 64})


DRY = Sizes(
    batch=8, steps=2, warmup=1, compile=False,
    models={
        "virtis-conv-1024x8": ("virtis", {"arch": "conv", "bands": 8, "tile": 16,
                                          "latent": (8, 2), "widths": (4, 4, 4, 8)}),
        "sentinel2-linear-1000": ("sentinel2", {"arch": "linear", "bands": 9, "tile": 16,
                                                "latent": 32, "widths": (4, 4, 4, 8)}),
    },
    tiles={"virtis": 24, "sentinel2": 24}, workers=0, epochs=2,
    eval_tiles={"virtis": 4, "sentinel2": 8},
)


def _sizes(dry: bool) -> Sizes:
    return DRY if dry else Sizes()


def _device(dry: bool) -> Any:
    from training.device import resolve_device

    return resolve_device("cpu" if dry else "cuda")


def _time_left(deadline: float) -> float:
    return deadline - time.time()


# --- phases (each runs in its own process: python gpu_check.py --phase NAME) -------------

def phase_env(sizes: Sizes, dry: bool, work: Path, deadline: float) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    out: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "dry_run": dry,
    }
    if torch.cuda.is_available():
        out["gpus"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["gpus"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                "memory_gib": round(p.total_memory / 2**30, 1),
                                "multiprocessors": p.multi_processor_count})
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi"] = f"not available ({exc.__class__.__name__})"
    packages = {}
    for name in ("numpy", "h5py", "hdf5plugin", "imagecodecs", "matplotlib", "pytest",
                 "dvclive", "tqdm", "pyyaml", "triton"):
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            packages[name] = None
    out["packages"] = packages
    return out


def phase_tests(sizes: Sizes, dry: bool, work: Path, deadline: float) -> dict[str, Any]:
    """The gpu-marked tests: only the files that hold some (others need more packages)."""
    import xml.etree.ElementTree as ET

    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if "mark.gpu" in p.read_text(encoding="utf-8"))
    report = work / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           f"--junitxml={report}", *files]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=max(10.0, _time_left(deadline)))
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n")
    out: dict[str, Any] = {"files": files, "exit_code": proc.returncode}
    if report.is_file():
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        for key in ("tests", "failures", "errors", "skipped"):
            out[key] = int(suite.get(key, 0))
        out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
        out["problems"] = [
            f"{case.get('classname')}::{case.get('name')}: {_first_line(bad.get('message'))}"
            for case in suite.iter("testcase")
            for bad in [*case.findall("failure"), *case.findall("error")]]
    return out


def _first_line(text: str | None, limit: int = 300) -> str:
    return ((text or "").strip().splitlines() or [""])[0][:limit]


def _last_line(text: str, limit: int = 300) -> str:
    return (text.strip().splitlines() or ["?"])[-1][:limit]


def _tile_file(work: Path, sizes: Sizes, name: str) -> Path:
    """The phase's tile file for a model (written once per check, as the tiles stage would)."""
    from benchmarks.bench_train import loader_compression
    from pipeline.synthetic.datasets import write_stage_like_tiles

    source, kw = sizes.models[name]
    path = work / f"{source}.h5"
    if not path.is_file():
        write_stage_like_tiles(path, source, sizes.tiles[source], bands=kw["bands"],
                               size=kw["tile"], compression=loader_compression())
    return path


def _params_file(work: Path) -> Path:
    path = work / "params.yaml"  # all defaults: the command lines say the rest
    path.write_text("{}\n")
    return path


def phase_train_step(sizes: Sizes, dry: bool, work: Path, deadline: float) -> dict[str, Any]:
    """Eager runs of both models first, then the compiled ones (bf16 first), while time is
    left (a first compiled step takes tens of seconds)."""
    import torch

    from benchmarks.bench_train import bench_step

    dev = _device(dry)
    plan = [(name, bf16, False) for name in sizes.models for bf16 in (False, True)]
    if sizes.compile:
        plan += [(name, bf16, True) for bf16 in (True, False) for name in sizes.models]
    runs, skipped = [], []
    for name, bf16, comp in plan:
        if _time_left(deadline) < (60 if comp else 10):
            skipped.append(f"{name} bf16={bf16} compile={comp}: out of time")
            continue
        try:
            r = bench_step(name, dev, sizes.batch, bf16, comp, sizes.steps, sizes.warmup,
                           model_kw=sizes.models[name][1])
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            r = {"variant": name, "precision": "bf16" if bf16 else "fp32", "compile": comp,
                 "error": "out of memory"}
        print(json.dumps(r), flush=True)
        runs.append(r)
    return {"runs": runs, "skipped": skipped}


def _train_params(sizes: Sizes, name: str, cache: str, dry: bool) -> Any:
    from training.train import TrainParams

    kw = sizes.models[name][1]
    return TrainParams(arch=kw["arch"], latent=kw["latent"], widths=kw.get("widths"),
                       epochs=sizes.epochs, batch_size=sizes.batch, val_fraction=0.0,
                       device="cpu" if dry else "cuda", workers=sizes.workers,
                       checkpoint_every=sizes.epochs, cache=cache, lr=1e-4)


def phase_data(sizes: Sizes, dry: bool, work: Path, deadline: float) -> dict[str, Any]:
    """DataLoader alone vs training epochs through the DataLoader vs from the device cache."""
    import torch

    from benchmarks.bench_train import loader_compression, time_loader
    from training.train import train

    dev = _device(dry)
    compression = loader_compression()
    out: dict[str, Any] = {"compression": compression, "workers": sizes.workers, "runs": []}
    for name, (source, _) in sizes.models.items():
        t0 = time.perf_counter()
        path = _tile_file(work, sizes, name)
        row: dict[str, Any] = {"variant": name, "tiles": sizes.tiles[source],
                               "file_mb": round(path.stat().st_size / 1e6, 1),
                               "write_s": round(time.perf_counter() - t0, 1)}
        row["loader_alone_tiles_per_s"] = time_loader(
            path, source, sizes.batch, sizes.workers, 2, pin=dev.type == "cuda")
        for cache in ("none", "device"):
            if _time_left(deadline) < 15:
                row[f"train_{cache}"] = "skipped: out of time"
                continue
            t0 = time.perf_counter()
            run_dir = work / f"{source}-{cache}"
            train(_train_params(sizes, name, cache, dry), source, path, run_dir,
                  progress=False)
            hist = torch.load(run_dir / "last.pt", weights_only=True)["history"]
            row[f"train_{cache}"] = {
                "tiles_per_s_by_epoch": [round(h["tiles_per_s"], 1) for h in hist],
                "wall_s": round(time.perf_counter() - t0, 1)}
            if dev.type == "cuda":
                row[f"train_{cache}"]["peak_mem_gib"] = round(
                    torch.cuda.max_memory_allocated(dev) / 2**30, 2)
                torch.cuda.reset_peak_memory_stats(dev)
                torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        out["runs"].append(row)
    return out


def phase_evaluate(sizes: Sizes, dry: bool, work: Path, deadline: float) -> dict[str, Any]:
    """Per model: the evaluate CLI on the device on a few tiles (no baselines, no FSIM), then
    evaluate's encode/decode MB/s at the full batch in fp32 and bf16."""
    import numpy as np

    from training.data import TileDataset
    from training.evaluate import time_sscnet
    from training.models import load_checkpoint

    dev = _device(dry)
    params = work / "evaluate.yaml"
    params.write_text("evaluate: {fsim: false}\n")
    out: dict[str, Any] = {"runs": []}
    for name, (source, _) in sizes.models.items():
        ckpt, tiles = work / f"{source}-device" / "last.pt", _tile_file(work, sizes, name)
        if not ckpt.is_file():
            out["runs"].append({"variant": name, "error": f"no checkpoint {ckpt.name} "
                                                          "(the data phase did not finish)"})
            continue
        eval_dir = work / f"eval-{source}"
        cmd = [sys.executable, "-m", "training.evaluate", "--params", str(params), "--dataset",
               source, "--tiles", str(tiles), "--checkpoint", str(ckpt), "--out",
               str(eval_dir), "--no-baselines", "--quiet", "--device", dev.type,
               "--max-tiles", str(sizes.eval_tiles[source]), "--batch-size",
               str(sizes.eval_tiles[source])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              timeout=max(10.0, _time_left(deadline) - 10))
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        row: dict[str, Any] = {"variant": name, "exit_code": proc.returncode,
                               "wall_s": round(time.perf_counter() - t0, 1)}
        if proc.returncode == 0:
            metrics = json.loads((eval_dir / "metrics.json").read_text())
            row["cli_tiles"] = sizes.eval_tiles[source]
            row["cli_throughput"] = metrics["sscnet_throughput"]
            row["cli_psnr"] = metrics["sscnet_fp32"]["psnr"]
        else:
            row["error"] = _last_line(proc.stderr)
        model, state = load_checkpoint(ckpt)
        ds = TileDataset(tiles, normalisation=state["config"]["normalisation"])
        items = [ds.raw(i) for i in range(min(sizes.batch, len(ds)))]
        raw, valid = np.stack([a for a, _ in items]), np.stack([v for _, v in items])
        for precision in ("fp32", "bf16"):
            row[precision] = time_sscnet(model, ds.normaliser, raw, valid, dev,
                                         precision=precision)
        print(json.dumps(row), flush=True)
        out["runs"].append(row)
    return out


def phase_ddp(sizes: Sizes, dry: bool, work: Path, deadline: float) -> dict[str, Any]:
    """Two processes under torchrun: NCCL on two GPUs, or gloo on the CPU in the dry run."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not dry and gpus < 2:
        return {"skipped": f"{gpus} GPU(s): the NCCL step needs 2"}
    name = "sentinel2-linear-1000"
    source, kw = sizes.models[name]
    out_dir = work / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.train", "--params", str(_params_file(work)), "--dataset",
           source, "--tiles", str(_tile_file(work, sizes, name)), "--out", str(out_dir),
           "--arch", kw["arch"], "--latent", str(kw["latent"]), "--epochs", "2",
           "--batch-size", str(sizes.batch), "--val-fraction", "0", "--workers", "0",
           "--device", "cpu" if dry else "cuda", "--no-progress"]
    if kw.get("widths"):
        cmd += ["--widths", ",".join(map(str, kw["widths"]))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=max(10.0, _time_left(deadline) - 5),
                          start_new_session=True)
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    row: dict[str, Any] = {"backend": "gloo" if dry else "nccl", "processes": 2,
                           "exit_code": proc.returncode}
    if proc.returncode == 0:
        hist = torch.load(out_dir / "last.pt", weights_only=True)["history"]
        row["tiles_per_s_by_epoch"] = [round(h["tiles_per_s"], 1) for h in hist]
    else:
        row["error"] = _last_line(proc.stderr)
    return row


def phase_profile(sizes: Sizes, dry: bool, work: Path, deadline: float) -> dict[str, Any]:
    """Where one bf16 step of the VIRTIS conv model goes, when it misses the target."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from training.device import Runtime
    from training.models import build_model
    from training.train import train_step

    best = _best_conv_bf16(work)
    if not dry and best is not None and best >= TARGET_TILES_PER_S:
        return {"skipped": f"target met ({best:.0f} >= {TARGET_TILES_PER_S:.0f} tiles/s)"}
    dev = _device(dry)
    kw = sizes.models["virtis-conv-1024x8"][1]
    rt = Runtime.create(dev, "bf16", channels_last=True)
    model = rt.prepare(build_model(**kw))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = rt.tiles(torch.rand(sizes.batch, kw["bands"], kw["tile"], kw["tile"]))
    for _ in range(3):
        train_step(model, opt, None, rt, x, None, "bce")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_step(model, opt, None, rt, x, None, "bce")
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return {"conv_bf16_best_tiles_per_s": best, "eager_bf16": True,
            **summarise_profile(prof.key_averages(), dev.type == "cuda")}


def summarise_profile(events: Any, cuda: bool, rows: int = 15) -> dict[str, Any]:
    """Top operators by self device time (self CPU time on a CPU), and time per category."""
    def self_ms(e: Any) -> float:
        if cuda:
            us = getattr(e, "self_device_time_total", None)
            if us is None:
                us = getattr(e, "self_cuda_time_total", 0.0)
        else:
            us = e.self_cpu_time_total
        return float(us) / 1e3

    ranked = sorted(events, key=self_ms, reverse=True)
    total = sum(self_ms(e) for e in events)
    groups = {"convolution": ("conv", "cudnn", "winograd", "implicit_gemm", "xmma", "sm90"),
              "matmul": ("gemm", "mm", "linear", "cublas", "cutlass"),
              "optimizer": ("adam", "foreach", "multi_tensor"),
              "layout and copies": ("copy", "contiguous", "transpose", "nchw", "nhwc", "to_"),
              "pooling": ("pool",), "activation and loss": ("prelu", "sigmoid", "binary_cross")}
    by_group: dict[str, float] = {}
    for e in events:
        key = e.key.lower()
        group = next((g for g, words in groups.items() if any(w in key for w in words)), "other")
        by_group[group] = by_group.get(group, 0.0) + self_ms(e)
    return {
        "clock": "self device time" if cuda else "self CPU time",
        "total_ms": round(total, 3),
        "by_category_ms": {k: round(v, 3) for k, v in sorted(by_group.items(),
                                                             key=lambda kv: -kv[1])},
        "top": [{"op": e.key[:120], "calls": e.count, "self_ms": round(self_ms(e), 3)}
                for e in ranked[:rows] if self_ms(e) > 0],
    }


# --- orchestration ----------------------------------------------------------------------

def _best_conv_bf16(work: Path) -> float | None:
    path = work / "phase_train_step.json"
    if not path.is_file():
        return None
    runs = json.loads(path.read_text()).get("runs", [])
    rates = [r["tiles_per_s"] for r in runs if r.get("variant") == "virtis-conv-1024x8"
             and r.get("precision") == "bf16" and "tiles_per_s" in r]
    return max(rates) if rates else None


def run_phase(name: str, dry: bool, work: Path, deadline: float) -> int:
    """Child process: run one phase and write ``work/phase_NAME.json``."""
    result = globals()[f"phase_{name}"](_sizes(dry), dry, work, deadline)
    (work / f"phase_{name}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


def _work_parent() -> str | None:
    """/dev/shm when it has room for the tile files (3.6 GB of VIRTIS tiles are written and
    read back), else the default temporary folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 16 * 2**30:
        return str(shm)
    return None


def orchestrate(out: Path, dry: bool, budget: float, only: list[str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    end = start + budget
    report: dict[str, Any] = {"dry_run": dry, "budget_s": budget, "sizes": asdict(_sizes(dry)),
                              "phases": {}}
    log = (out / "log.txt").open("w", encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=_work_parent()) as tmp:
        work = Path(tmp)
        for name in PHASES:
            if only and name not in only:
                continue
            left = end - time.time()
            if left < 5:
                report["phases"][name] = {"status": "skipped: time budget spent"}
                continue
            limit = min(CAPS[name] * (1 if not dry else 1.5), left)
            t0 = time.time()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name,
                   "--work", str(work), "--deadline", str(t0 + limit - 5)]
            cmd += ["--dry-run"] if dry else []
            print(f"[gpu_check] {name} (limit {limit:.0f} s)", flush=True)
            log.write(f"===== {name} =====\n")
            log.flush()
            try:
                rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=limit, start_new_session=True).returncode
            except subprocess.TimeoutExpired:
                rc = None
            seconds = round(time.time() - t0, 1)
            result_file = work / f"phase_{name}.json"
            entry: dict[str, Any] = {"seconds": seconds}
            if rc == 0 and result_file.is_file():
                entry.update(status="ok", **json.loads(result_file.read_text()))
            else:
                entry["status"] = ("failed: timed out" if rc is None else
                                   f"failed: exit code {rc} (see log.txt)")
            report["phases"][name] = entry
            print(f"[gpu_check] {name}: {entry['status']} in {seconds} s", flush=True)
        report["seconds"] = round(time.time() - start, 1)
    log.close()
    report["summary"] = summary_lines(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "summary.txt").write_text("\n".join(report["summary"]) + "\n")
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short text summary of the JSON report."""
    ph = report["phases"]
    env = ph.get("env", {})
    gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU"
    lines = [f"gpu_check{' (DRY RUN, tiny sizes, CPU)' if report['dry_run'] else ''}: {gpus}; "
             f"driver/nvidia-smi: {env.get('nvidia_smi', '?')}; torch {env.get('torch')}, "
             f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; {report['seconds']} s in all"]
    t = ph.get("tests", {})
    lines.append(f"tests: {t.get('status')}; passed {t.get('passed')}, failed "
                 f"{t.get('failures')}, errors {t.get('errors')}, skipped {t.get('skipped')}")
    lines += [f"  {p}" for p in t.get("problems", [])]
    lines.append(f"train step: {ph.get('train_step', {}).get('status')}")
    for r in ph.get("train_step", {}).get("runs", []):
        if "error" in r:
            lines.append(f"  {r['variant']:<22} {r['precision']} compile={r['compile']}: "
                         f"{r['error']}")
            continue
        mem = f", peak {r['peak_mem_gib']:.1f} GiB" if r.get("peak_mem_gib") else ""
        lines.append(f"  {r['variant']:<22} batch {r['batch']} {r['precision']} "
                     f"compile={'on ' if r['compile'] else 'off'}: {r['tiles_per_s']:10.1f} "
                     f"tiles/s ({r['step_ms']:.1f} ms/step, first {r['first_step_s']:.1f} s"
                     f"{mem})")
    best = [r["tiles_per_s"] for r in ph.get("train_step", {}).get("runs", [])
            if r.get("variant") == "virtis-conv-1024x8" and r.get("precision") == "bf16"
            and "tiles_per_s" in r]
    if best and not report["dry_run"]:
        verdict = "met" if max(best) >= TARGET_TILES_PER_S else "MISSED (see profile)"
        lines.append(f"  target {TARGET_TILES_PER_S:.0f} VIRTIS tiles/s (conv, bf16): "
                     f"{verdict} at {max(best):.0f}")
    d = ph.get("data", {})
    lines.append(f"data ({d.get('compression')} tiles, {d.get('workers')} workers): "
                 f"{d.get('status')}")
    for r in d.get("runs", []):
        parts = [f"DataLoader alone {r['loader_alone_tiles_per_s']:.0f}"]
        for cache in ("none", "device"):
            v = r.get(f"train_{cache}")
            if isinstance(v, dict):
                parts.append(f"train via {'loader' if cache == 'none' else 'device cache'} "
                             f"{v['tiles_per_s_by_epoch'][-1]:.0f}")
        lines.append(f"  {r['variant']:<22} tiles/s: " + ", ".join(parts))
    e = ph.get("evaluate", {})
    lines.append(f"evaluate: {e.get('status')}")
    for r in e.get("runs", []):
        bits = [f"{r[k]['device']} {k} batch {r[k]['batch_tiles']} encode "
                f"{r[k]['encode_mbps']:.1f} / decode {r[k]['decode_mbps']:.1f} MB/s"
                for k in ("fp32", "bf16") if k in r]
        bits += [f"CLI on {r['cli_tiles']} tiles ok"] if "cli_throughput" in r else []
        bits += [r["error"]] if "error" in r else []
        lines.append(f"  {r['variant']:<22} " + "; ".join(bits))
    dd = ph.get("ddp", {})
    lines.append(f"ddp: {dd.get('status')} {dd.get('skipped', '')}".rstrip()
                 + (f"; {dd.get('backend')} x2 tiles/s by epoch {dd['tiles_per_s_by_epoch']}"
                    if "tiles_per_s_by_epoch" in dd else ""))
    pr = ph.get("profile", {})
    lines.append(f"profile: {pr.get('status')} {pr.get('skipped', '')}".rstrip())
    for op in pr.get("top", [])[:5]:
        lines.append(f"  {op['self_ms']:9.3f} ms  {op['calls']:4d} x  {op['op']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check_out"),
                    help="folder for gpu_check.json, summary.txt, log.txt")
    ap.add_argument("--dry-run", action="store_true",
                    help="on the CPU with tiny sizes: checks the script end to end")
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds for all phases together (default %(default)s)")
    ap.add_argument("--only", default="", help="comma-separated phases to run")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        return run_phase(args.phase, args.dry_run, args.work, args.deadline)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device; use --dry-run on a CPU", file=sys.stderr)
            return 2
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    report = orchestrate(args.out, args.dry_run, args.budget, only)
    print("\n".join(report["summary"]))
    failed = [n for n, p in report["phases"].items() if p["status"].startswith("failed")]
    tests = report["phases"].get("tests", {})
    return 1 if failed or tests.get("failures") or tests.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
