"""The accelerator code paths, rehearsed on the CPU (training.device and the training runtime).

bf16 autocast (train and evaluate), channels-last, torch.compile, the device-resident cache,
gloo DDP with resume across process counts, the out-of-memory and compile-failure messages
and the cuda-requested-but-absent error all run here without a GPU. What only CUDA can check
(NCCL, cuDNN/cuBLAS kernels, a real allocator failure, pinned non-blocking copies) is in the
``gpu``-marked tests at the end, which ``benchmarks/gpu_check.sh`` runs on a GPU machine.
"""

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
from torch.utils.data import TensorDataset

import training.device as D
import training.train as T
from parsers.errors import UserError
from pipeline.synthetic.datasets import write_learnable_tiles
from training import evaluate as EV
from training.models import build_model, load_checkpoint

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.usefixtures("one_cpu_thread")

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
TINY = ["--arch", "linear", "--latent", "16", "--widths", "4,4,4,8", "--workers", "0",
        "--device", "cpu", "--no-progress", "--batch-size", "16"]
TINY_CONV = ["--arch", "conv", "--latent", "8x2"]


def train(tiles: Path, out: Path, *extra: str) -> int:
    return T.main(["--source", "virtis", "--tiles", str(tiles), "--out", str(out), *TINY, *extra])


def history(out: Path, key: str = "train_loss") -> list[float]:
    """Per-epoch metric from last.pt (written with or without dvclive)."""
    return [h[key] for h in torch.load(out / "last.pt", weights_only=True)["history"]]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- the one device resolver ----------------------------------------------------------------

def test_one_resolver_for_train_and_evaluate(monkeypatch, tmp_path: Path, tiles_dir: Path,
                                             capsys) -> None:
    """``--device cuda`` without CUDA: the same one-line error from both CLIs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("auto") == CPU and D.resolve_device("cpu") == CPU
    with pytest.raises(UserError, match="no CUDA device available"):
        D.resolve_device("cuda")
    assert train(tiles_dir, tmp_path / "m", "--epochs", "1", "--device", "cuda") == 2
    err_train = one_line_error(capsys)
    assert "--device cuda: no CUDA device available" in err_train
    assert train(tiles_dir, tmp_path / "m", "--epochs", "1") == 0
    capsys.readouterr()
    (tmp_path / "p.yaml").write_text("evaluate: {}\n")
    rc = EV.main(["--params", str(tmp_path / "p.yaml"), "--source", "virtis", "--tiles",
                  str(tiles_dir / "train.h5"), "--checkpoint", str(tmp_path / "m" / "best.pt"),
                  "--out", str(tmp_path / "e"), "--no-baselines", "--quiet", "--device", "cuda"])
    assert rc == 2
    err_eval = one_line_error(capsys)
    assert err_eval.split(": ", 1)[1] == err_train.split(": ", 1)[1]
    assert not (tmp_path / "e").exists()


def test_resolver_checks_the_local_rank_against_the_gpu_count(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert D.resolve_device("auto", 1) == torch.device("cuda", 1)
    with pytest.raises(UserError, match="LOCAL_RANK 2 but only 2 GPU"):
        D.resolve_device("cuda", 2)
    with pytest.raises(UserError, match="not one of auto, cpu, cuda"):
        D.resolve_device("gpu")


def test_precision_auto_wants_bf16_tensor_cores(monkeypatch) -> None:
    gpu = torch.device("cuda", 0)
    assert D.amp_dtype("auto", CPU) is None
    assert D.amp_dtype("bf16", CPU) is torch.bfloat16  # the CPU rehearsal of the GPU path
    assert D.amp_dtype("fp32", gpu) is None
    for capability, expected in (((7, 0), None), ((8, 0), torch.bfloat16),
                                 ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d, c=capability: c)
        assert D.amp_dtype("auto", gpu) is expected, capability


# --- precision and memory format ------------------------------------------------------------

def test_bf16_autocast_training_on_cpu(tiles_dir: Path, tmp_path: Path, capsys) -> None:
    """The GPU's bf16 autocast path on the CPU (conv model): finite, learning, fp32 weights."""
    out = tmp_path / "m"
    assert train(tiles_dir, out, *TINY_CONV, "--precision", "bf16", "--epochs", "3",
                 "--lr", "3e-3") == 0
    assert "cpu, bf16 autocast, channels_last" in capsys.readouterr().out
    losses = history(out)
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_bf16_autocast_evaluation_on_cpu(tiles_dir: Path, tmp_path: Path) -> None:
    """evaluate --precision bf16 runs encode/decode under autocast; quality stays close."""
    assert train(tiles_dir, tmp_path / "m", *TINY_CONV, "--epochs", "2", "--lr", "3e-3") == 0
    (tmp_path / "p.yaml").write_text("evaluate: {}\n")
    psnr = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert EV.main(["--params", str(tmp_path / "p.yaml"), "--source", "virtis", "--tiles",
                        str(tiles_dir / "train.h5"), "--checkpoint",
                        str(tmp_path / "m" / "best.pt"), "--out", str(out), "--no-baselines",
                        "--quiet", "--device", "cpu", "--precision", precision]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["sscnet_throughput"]["cpu"]["precision"] == (
            "fp32" if precision == "fp32" else "bf16 autocast")
        psnr[precision] = metrics["sscnet_fp32"]["psnr"]
    assert np.isfinite(psnr["bf16"]) and abs(psnr["bf16"] - psnr["fp32"]) < 1.0, psnr


def test_channels_last_computes_the_same_model(tiles_dir: Path, tmp_path: Path) -> None:
    rt = D.Runtime.create(CPU, "fp32", channels_last=True)
    model = rt.prepare(build_model("conv", bands=4, tile=8, latent=(8, 2), widths=(4, 4, 4, 8)))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = rt.tiles(torch.rand(3, 4, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    common = [*TINY_CONV, "--epochs", "2", "--deterministic"]
    assert train(tiles_dir, tmp_path / "nhwc", *common, "--channels-last") == 0
    assert train(tiles_dir, tmp_path / "nchw", *common, "--no-channels-last") == 0
    for key in ("train_loss", "val_loss"):
        assert history(tmp_path / "nhwc", key) == pytest.approx(
            history(tmp_path / "nchw", key), rel=1e-4), key


# --- torch.compile --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(D.c_compiler() is None, reason="torch.compile on the CPU needs a C++ "
                                                   "compiler and none is on PATH")
def test_compile_on_cpu_saves_plain_keys(tiles_dir: Path, tmp_path: Path) -> None:
    """Inductor's CPU backend (C++) stands in for Triton; the checkpoint keys stay plain."""
    out = tmp_path / "m"
    assert train(tiles_dir, out, *TINY_CONV, "--compile", "--precision", "bf16",
                 "--epochs", "1") == 0
    for name in ("last.pt", "best.pt"):
        keys = torch.load(out / name, weights_only=True)["model"]
        assert keys and not any("_orig_mod" in k for k in keys)
    load_checkpoint(out / "best.pt")


def test_compile_without_a_compiler_is_one_line(tiles_dir: Path, tmp_path: Path, capsys,
                                                monkeypatch) -> None:
    monkeypatch.setattr(D, "c_compiler", lambda: None)
    assert train(tiles_dir, tmp_path / "m", "--compile", "--epochs", "1") == 2
    assert "needs a C++ compiler" in one_line_error(capsys)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's import, not ours
def test_compile_failure_is_one_line(tiles_dir: Path, tmp_path: Path, capsys,
                                     monkeypatch) -> None:
    from torch._dynamo.exc import InternalTorchDynamoError

    def fails(*args, **kwargs):
        raise InternalTorchDynamoError("backend exploded\nlong inductor log ...")

    monkeypatch.setattr(T, "train_step", fails)
    monkeypatch.setattr(D, "c_compiler", lambda: "g++")
    assert train(tiles_dir, tmp_path / "m", "--compile", "--epochs", "1") == 2
    err = one_line_error(capsys)
    assert "torch.compile failed on cpu" in err and "backend exploded" in err
    assert "--no-compile" in err


# --- the device-resident cache --------------------------------------------------------------

def test_device_cache_holds_tiles_and_masks_in_sampler_order() -> None:
    x = torch.rand(10, 3, 4, 4)
    mask = torch.ones(10, 3, 4, 4, dtype=torch.bool)
    kw = {"batch_size": 4, "num_workers": 0}
    clean = D.DeviceCache(TensorDataset(x, mask), CPU, kw, "training", progress=False)
    assert clean.mask is None and torch.equal(clean.x, x) and clean.nbytes == x.numel() * 4
    mask[7, 0, 0, 0] = False
    cache = D.DeviceCache(TensorDataset(x, mask), CPU, kw, "training", progress=False)
    rt = D.Runtime(CPU, channels_last=True)
    order = [7, 2, 9, 0, 5]
    got = list(cache.batches(order, 2, rt))
    assert [b[0].shape[0] for b in got] == [2, 2, 1]
    assert all(b[0].is_contiguous(memory_format=torch.channels_last) for b in got)
    torch.testing.assert_close(torch.cat([b[0] for b in got]), x[order])
    assert torch.equal(torch.cat([b[1] for b in got]), mask[order])
    assert list(D.DeviceCache(TensorDataset(x[:0], mask[:0]), CPU, kw, "v", False)
                .batches([], 2, rt)) == []


def test_device_cache_gives_the_same_run(tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    path = write_learnable_tiles(tiles / "train.h5", n=40)
    with h5py.File(path, "a") as f:  # some invalid values: the cache keeps their mask
        data = f["tiles"][3]
        data[:, 0, :3] = np.nan
        f["tiles"][3] = data
    common = ["--epochs", "2", "--batch-size", "8", "--deterministic"]
    assert train(tiles, tmp_path / "a", *common) == 0
    assert train(tiles, tmp_path / "b", *common, "--cache", "device") == 0
    for key in ("train_loss", "val_loss"):
        assert history(tmp_path / "a", key) == pytest.approx(history(tmp_path / "b", key),
                                                              rel=1e-6), key


# --- out of memory --------------------------------------------------------------------------

@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    MemoryError(),
], ids=["cuda-allocator", "cpu-allocator", "cudaMalloc", "cublas", "numpy"])
def test_out_of_memory_errors_are_recognised(error: BaseException) -> None:
    assert D.is_out_of_memory(error)


def test_other_errors_are_not_out_of_memory() -> None:
    assert not D.is_out_of_memory(RuntimeError("CUDA error: an illegal memory access"))
    assert not D.is_out_of_memory(ValueError("out of memory"))


@pytest.mark.parametrize("cache", ["none", "device"])
def test_out_of_memory_is_one_line_with_advice(tiles_dir: Path, tmp_path: Path, capsys,
                                               monkeypatch, cache: str) -> None:
    def allocator_fails(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(T, "train_step", allocator_fails)
    assert train(tiles_dir, tmp_path / "m", "--epochs", "1", "--cache", cache) == 2
    err = one_line_error(capsys)
    assert "out of memory on cpu at batch size 16" in err
    assert "--batch-size 8" in err and "--precision bf16" in err
    assert ("--cache none" in err) == (cache == "device")
    assert not (tmp_path / "m" / "last.pt").exists()


def test_out_of_memory_while_filling_the_cache(tiles_dir: Path, tmp_path: Path, capsys,
                                               monkeypatch) -> None:
    def allocator_fails(self, *args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "7340032000 bytes")

    monkeypatch.setattr(D.DeviceCache, "_fill", allocator_fails)
    assert train(tiles_dir, tmp_path / "m", "--epochs", "1", "--cache", "device") == 2
    err = one_line_error(capsys)
    assert "cache: out of memory on cpu" in err and "use cache: none" in err


# --- DDP over gloo, resuming across process counts ------------------------------------------

def _run_group(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run torchrun in its own process group. On timeout: SIGTERM first (torchrun passes it
    to its workers, which run in sessions of their own), then SIGKILL the group."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_ddp_resumes_across_process_counts(tiles_dir: Path, tmp_path: Path) -> None:
    """1 process -> 2 gloo processes and 2 -> 1, each equal to one uninterrupted run.

    The global batch is fixed, so the sampler order, the steps per epoch and the cosine
    schedule do not depend on the process count; only rank 0 prints and writes.
    """
    common = ["--epochs", "2", "--deterministic", "--checkpoint-every", "1"]
    assert train(tiles_dir, tmp_path / "ref", *common) == 0
    assert train(tiles_dir, tmp_path / "one_two", *common, "--stop-after-epoch", "1") == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "training.train", "--source", "virtis", "--tiles",
                str(tiles_dir), *TINY, *common]
    two = _run_group([*torchrun, "--out", str(tmp_path / "one_two"), "--resume"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "(2 x 8)" in two.stdout and "resuming after epoch 1" in two.stdout
    assert two.stdout.count("epoch 2/2") == 1  # only rank 0 prints
    first = _run_group([*torchrun, "--out", str(tmp_path / "two_one"), "--stop-after-epoch", "1"],
                       tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert torch.load(tmp_path / "two_one" / "last.pt", weights_only=True)["world"] == 2
    assert train(tiles_dir, tmp_path / "two_one", *common, "--resume") == 0
    ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    for name in ("one_two", "two_one"):
        for key in ("train_loss", "val_loss"):
            assert history(tmp_path / name, key) == pytest.approx(
                history(tmp_path / "ref", key), rel=1e-4), (name, key)
        got = torch.load(tmp_path / name / "last.pt", weights_only=True)
        assert got["epoch"] == 2
        for k, w in ref["model"].items():
            torch.testing.assert_close(got["model"][k], w, rtol=1e-4, atol=1e-5)
        assert got["scheduler"]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)


# --- CUDA only (run by benchmarks/gpu_check.sh) ---------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_gpu_bf16_channels_last_compile(tiles_dir: Path, tmp_path: Path) -> None:
    """Triton kernels, cuDNN bf16 NHWC convolutions, pinned non-blocking loader copies."""
    out = tmp_path / "m"
    assert T.main(["--source", "virtis", "--tiles", str(tiles_dir), "--out", str(out),
                   *TINY_CONV, "--widths", "4,4,4,8", "--workers", "2", "--device", "cuda",
                   "--no-progress", "--epochs", "2", "--batch-size", "16", "--compile"]) == 0
    _, ckpt = load_checkpoint(out / "best.pt", map_location="cuda")
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    assert len(history(out)) == 2 and all(np.isfinite(history(out)))


@pytest.mark.gpu
@needs_cuda
def test_gpu_resume_equals_uninterrupted_deterministic(tiles_dir: Path, tmp_path: Path) -> None:
    common = ["--source", "virtis", "--tiles", str(tiles_dir), *TINY, "--device", "cuda",
              "--epochs", "3", "--deterministic", "--precision", "fp32"]
    assert T.main([*common, "--out", str(tmp_path / "a")]) == 0
    assert T.main([*common, "--out", str(tmp_path / "b"), "--stop-after-epoch", "1"]) == 0
    assert T.main([*common, "--out", str(tmp_path / "b"), "--resume"]) == 0
    assert history(tmp_path / "a") == pytest.approx(history(tmp_path / "b"))


@pytest.mark.gpu
@needs_cuda
def test_gpu_device_cache_gives_the_same_run(tiles_dir: Path, tmp_path: Path) -> None:
    common = ["--source", "virtis", "--tiles", str(tiles_dir), *TINY, "--device", "cuda",
              "--epochs", "2", "--deterministic", "--precision", "fp32"]
    assert T.main([*common, "--out", str(tmp_path / "a")]) == 0
    assert T.main([*common, "--out", str(tmp_path / "b"), "--cache", "device"]) == 0
    assert history(tmp_path / "a") == pytest.approx(history(tmp_path / "b"), rel=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_gpu_real_out_of_memory_is_one_line(tiles_dir: Path, tmp_path: Path, capsys,
                                            monkeypatch) -> None:
    """A real failure of the CUDA caching allocator (a 1 PiB request) inside a step."""
    real_step = T.train_step

    def greedy(net, *args, **kwargs):
        torch.empty(2**50, dtype=torch.uint8, device="cuda")
        return real_step(net, *args, **kwargs)

    monkeypatch.setattr(T, "train_step", greedy)
    assert T.main(["--source", "virtis", "--tiles", str(tiles_dir), "--out",
                   str(tmp_path / "m"), *TINY, "--device", "cuda", "--epochs", "1"]) == 2
    err = one_line_error(capsys)
    assert "out of memory on cuda:0 at batch size 16" in err and "more GPUs" in err
    assert torch.cuda.memory_reserved() < 2**30
