"""Where training and evaluation run: the one device resolver, precision, memory format,
process group, out-of-memory advice and the device-resident tile cache.

Every function here runs on the CPU in the test suite (``tests/training/test_device.py``
rehearses bf16 autocast, channels-last, ``torch.compile``, the cache, gloo DDP and the
out-of-memory message on the CPU). What only a CUDA device can check is marked
``CUDA-only:`` below; ``benchmarks/gpu_check.sh`` exercises those lines on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from parsers.errors import UserError

#: Substrings (lower case) of allocator errors that mean "out of memory" on some device:
#: the CUDA caching allocator, cudaMalloc outside it, cuBLAS/cuDNN workspaces, the CPU.
_OOM_TEXT = ("out of memory", "can't allocate memory", "not enough memory", "alloc_failed")


def resolve_device(kind: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a CUDA device, or a
    ``local_rank`` beyond the GPU count, is a one-line :class:`UserError`.

    The one resolver of the project: training (``LOCAL_RANK`` under torchrun) and
    evaluation (rank 0) both call it.
    """
    if kind not in ("auto", "cpu", "cuda"):
        raise UserError(f"device {kind!r} is not one of auto, cpu, cuda")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise UserError(f"--device cuda: no CUDA device available (torch {torch.__version__}, "
                        f"{build}); use --device cpu or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"LOCAL_RANK {local_rank} but only {count} GPU(s) visible; start at "
                        f"most {count} processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 runs on tensor cores: CUDA compute capability >= 8.0 (CUDA-only: the CPU answer
    is False, and the CPU rehearsal asks for bf16 explicitly)."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` (``auto`` | ``bf16`` | ``fp32``); None = plain fp32.

    ``auto`` is bf16 on a GPU with bf16 tensor cores and fp32 elsewhere. ``bf16`` is honoured
    on every device (on the CPU it rehearses the GPU's code path).
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"precision {precision!r} is not one of auto, bf16, fp32")
    if precision == "bf16" or (precision == "auto" and bf16_is_fast(device)):
        return torch.bfloat16
    return None


def c_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would call, or None when there is none."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return name
    return None


@dataclass(frozen=True)
class Runtime:
    """How tensors meet the device: autocast dtype, memory format and compilation.

    ``channels_last`` stores 4-D activations as NHWC, which cuDNN's bf16 convolutions want
    and which also speeds up the CPU's oneDNN convolutions (2.5x for the VIRTIS conv model
    on the 2-core development VM).
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def create(cls, device: torch.device, precision: str = "auto", channels_last: bool = True,
               compile: bool = False) -> Runtime:
        """A Runtime for ``device``; refuses ``compile`` on a CPU without a C++ compiler."""
        if compile and device.type == "cpu" and c_compiler() is None:
            raise UserError("--compile on the CPU needs a C++ compiler (g++, clang++ or $CXX) "
                            "and none is on PATH; install one or use --no-compile")
        return cls(device, amp_dtype(precision, device), channels_last, compile)

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.amp_dtype is not None else "fp32"

    def describe(self) -> str:
        parts = [str(self.device), self.precision]
        parts += ["channels_last"] if self.channels_last else []
        parts += ["compiled"] if self.compile else []
        return ", ".join(parts)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes: bf16 autocast, or nothing for fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device in the memory format, in place; returns it.

        Compilation (:meth:`compiled`) is separate: a compiled wrapper must not replace the
        module whose plain ``state_dict`` checkpoints store.
        """
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def compiled(self, model: nn.Module) -> nn.Module:
        """``model.compile()`` in place when asked (call before DDP wraps it)."""
        if self.compile:
            model.compile()
        return model

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        """A tile batch (N, B, H, W) on the device in the runtime's memory format.

        CUDA-only: ``non_blocking`` overlaps the copy with compute only from pinned memory.
        """
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


# --- process group -------------------------------------------------------------------------

@dataclass
class Dist:
    """This process's place under torchrun (rank 0 of 1 without it) and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    _sums: torch.Tensor | None = dataclasses.field(default=None, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of the 1-D ``values`` over all processes, returned on the CPU.

        The reduction runs in a buffer that lives as long as this object: gloo's worker
        threads may drop their reference to a reduced tensor late, and dropping the last
        reference of a Python-owned tensor there needs the GIL (see
        :func:`teardown_distributed`).
        """
        if self.world == 1:
            return values.cpu()
        if self._sums is None or self._sums.shape != values.shape:
            self._sums = torch.zeros_like(values, device=self.device)
        self._sums.copy_(values)
        dist.all_reduce(self._sums)
        return self._sums.to("cpu", copy=True)


def setup_distributed(kind: str) -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on GPUs, gloo on CPUs).

    CUDA-only: NCCL, ``device_id`` binding and one GPU per local rank; the CPU rehearsal
    runs the same code with gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(kind, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def teardown_distributed(d: Dist) -> None:
    """Leave the process group; call it after the DDP wrapper has been dropped.

    DDP's reducer holds a reference to the process group. If the reducer is the last
    holder, the group's destructor runs under the GIL and joins gloo's worker threads,
    which may need the GIL themselves: the process hangs at exit (seen here with torch
    2.13 and gloo). Collecting the dropped wrapper first leaves the last reference to
    ``destroy_process_group``, which releases the GIL while it waits.
    """
    if d.world > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


# --- out of memory -------------------------------------------------------------------------

def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocator failure on any device (CUDA, cuBLAS/cuDNN, CPU, numpy).

    CUDA-only: a real ``torch.cuda.OutOfMemoryError``; the tests raise fake ones.
    """
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


def release_cached_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error (CUDA-only; no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- the device-resident tile cache --------------------------------------------------------

def check_free_memory(device: torch.device, need: int, what: str) -> None:
    """UserError when ``need`` bytes would take more than 70 % of the device's free memory.

    CUDA-only: ``mem_get_info``; on the CPU the allocator reports a shortage itself.
    """
    if device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    if need > 0.7 * free:
        raise UserError(f"cache: device needs {need / 2**30:.1f} GiB for the {what} tiles but "
                        f"{device} has {free / 2**30:.1f} GiB free; use cache: none")


class DeviceCache:
    """All tiles of a dataset, normalised, in one float32 tensor (N, B, H, W) on the device,
    plus their validity masks (N, B, H, W) when any value is invalid.

    Filled once through a DataLoader (``loader_kw``), then :meth:`batches` draws batches by
    index on the device: no HDF5 reads, no host-to-device copies per step.
    """

    def __init__(self, dataset: Dataset, device: torch.device, loader_kw: dict[str, Any],
                 what: str, progress: bool) -> None:
        self.what = what
        self.x: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            return
        try:
            self._fill(DataLoader(dataset, shuffle=False, **loader_kw), n, device, progress)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self.x = self.mask = None
            release_cached_memory(device)
            raise UserError(f"cache: out of memory on {device} while caching {n} {what} tiles; "
                            "use cache: none") from None

    def _fill(self, loader: DataLoader, n: int, device: torch.device, progress: bool) -> None:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="tile", desc=f"cache {self.what}", dynamic_ncols=True)
        start = 0
        for item in loader:
            x, mask = item if isinstance(item, (list, tuple)) else (item, None)
            if self.x is None:
                check_free_memory(device, n * x[0].numel() * 4, self.what)
                self.x = torch.empty((n, *x.shape[1:]), dtype=torch.float32, device=device)
            k = x.shape[0]
            self.x[start:start + k] = x.to(device, non_blocking=True)
            if mask is not None and not bool(mask.all()):
                if self.mask is None:
                    self.mask = torch.ones((n, *mask.shape[1:]), dtype=torch.bool, device=device)
                self.mask[start:start + k] = mask.to(device, non_blocking=True)
            start += k
            if bar is not None:
                bar.update(k)
        if bar is not None:
            bar.close()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x, self.mask) if t is not None)

    def batches(self, indices: Sequence[int], batch: int, rt: Runtime
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(tiles, mask or None) batches in the order of ``indices`` (the sampler's)."""
        if self.x is None:
            return
        order = torch.as_tensor(list(indices), dtype=torch.long, device=self.x.device)
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            x = self.x.index_select(0, idx)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, (None if self.mask is None else self.mask.index_select(0, idx))
