"""Train SSCNet on a tile file: one process, or several GPUs/processes with torchrun + DDP.

    python -m training.train --params params.yaml --dataset virtis --tiles data/tiles/virtis \\
        --out models/virtis [--epochs N --batch-size B --lr LR --device auto|cpu|cuda ...]
    torchrun --standalone --nproc_per_node=4 -m training.train --dataset virtis ...

Writes (rank 0 only) ``OUT/last.pt`` (full training state, atomically, every
``checkpoint_every`` epochs and at the end), ``OUT/best.pt`` (weights with the lowest
validation loss) and ``OUT/dvclive/`` (per-epoch train/val loss and PSNR).

Recipe (paper defaults): BCE on [0, 1] tiles, Adam lr 1e-4, cosine annealing to 0 over all
steps of the run, global batch 128 (split evenly over the processes), 400 epochs.

``objective: rate_distortion`` (keys ``objective`` and ``lambda`` of params ``train`` or
``datasets.<name>.train``) adds an entropy model to the latent (:mod:`training.codec`) and
minimises ``lambda * D + R``: D is the ``loss`` setting (BCE or MSE on the normalised
scale, over valid values), R the estimated rate in bits per input value (bpppc). Its
checkpoints carry the integer coding tables that ``training.compress`` needs. ``--init
CKPT`` starts from a checkpoint's weights (e.g. a paper-recipe model, fine-tuned into a
rate-distortion one); the optimiser and the schedule start afresh.

Validation: a held-out fraction (``val_fraction``) of the *products* of ``train.h5`` (all
tiles of a product go to the same side, chosen by the seed), so ``test.h5`` stays untouched
for the final evaluation. A file with a single product falls back to a split over tiles
(with a warning). ``val_fraction: 0`` disables validation; ``best.pt`` then follows the
training loss. PSNR is ``10 log10(1 / MSE)`` on the normalised [0, 1] scale, with the MSE
pooled over all values of the epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from parsers.atomic import atomic_open
from parsers.errors import ParamsError, ProductError, UserError, cli_entry
from parsers.integrity import checkpoint_archive_problem
from parsers.locks import lock_output
from pipeline.params import flag_overrides, load_dataset, load_stage, stage_parser, to_dict
from training.codec import LatentCodec, RateDistortionNet, finalise_state, has_entropy_model
from training.data import tile_file_fingerprint
from training.device import (
    DeviceCache,
    Dist,
    Runtime,
    is_out_of_memory,
    release_cached_memory,
    setup_distributed,
    teardown_distributed,
)
from training.models import build_model, clean_state_dict, load_checkpoint, save_checkpoint

#: Normalisation used by the paper for each kind of data set ("auto"); any other cube: per band.
PAPER_NORMALISATION = {"virtis": "paper_minmax", "sentinel2": "global_max",
                       "cube": "paper_minmax"}
#: Settings that must not change between a checkpoint and a ``--resume``.
RESUME_KEYS = ("arch", "latent", "activation", "widths", "normalisation", "loss", "lr",
               "epochs", "batch_size", "val_fraction", "seed", "objective", "lambda")


@dataclass(frozen=True)
class TrainParams:
    """Params ``train`` (common) + ``datasets.<name>.train`` (the data set's layer).

    The model takes its band count and tile size from the tile file, which the tiles stage
    cut with the data set's band selection and tile size; a shape the architecture cannot
    handle is refused with one line (:func:`training.models.build_model`).

    ``batch_size`` is the global batch (all processes together); ``latent`` is an int for
    ``arch: linear`` and ``[channels, size]`` for ``arch: conv``; ``widths`` overrides the
    encoder channel widths (4 values); ``bands``/``tile``, when set, are checked against the
    tile file. ``precision: auto`` is bf16 autocast on a GPU with bf16 tensor cores and fp32
    elsewhere (``bf16`` forces it, also on the CPU). ``channels_last`` stores activations as
    NHWC on every device (faster for cuDNN bf16 and for the CPU's oneDNN convolutions).
    ``compile`` runs ``torch.compile`` (on the CPU it needs a C++ compiler).
    ``cache: device`` reads every normalised tile once into one float32 tensor on the
    training device (GPU memory, or RAM on CPU) and draws batches from it in the sampler's
    order, so the HDF5 reader stops being the bottleneck; each process holds the whole
    training set. ``objective``: ``reconstruction`` (the paper) or ``rate_distortion``
    (``lambda`` weighs the distortion against the rate; params key ``lambda``).
    """

    arch: Literal["linear", "conv"] = "linear"
    latent: int | tuple[int, int] = field(
        default=1000, metadata={"help": "1000 (arch linear) or 1024x8 (arch conv)"})
    activation: Literal["prelu", "relu"] = "prelu"
    widths: tuple[int, ...] | None = field(
        default=None, metadata={"help": "encoder widths, e.g. 64,128,256,256"})
    normalisation: Literal["auto", "paper_minmax", "global_max", "robust", "zscore"] = "auto"
    loss: Literal["bce", "mse"] = "bce"
    lr: float = 1e-4
    epochs: int = 400
    batch_size: int = field(default=128, metadata={"help": "global batch over all processes"})
    val_fraction: float = 0.1
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: bool = True
    compile: bool = False
    workers: int = 4
    checkpoint_every: int = 10
    cache: Literal["none", "device"] = field(
        default="none", metadata={"help": "device: hold all normalised tiles on the device"})
    bands: int | None = None
    tile: int | None = None
    objective: Literal["reconstruction", "rate_distortion"] = "reconstruction"
    lmbda: float = field(default=30.0, metadata={
        "key": "lambda", "help": "rate_distortion: loss = lambda * distortion + bpppc"})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.lmbda > 0:
            raise ValueError(f"lambda must be > 0, got {self.lmbda}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 0 or self.checkpoint_every < 1:
            raise ValueError("workers must be >= 0 and checkpoint_every >= 1")
        if self.loss == "bce" and self.normalisation == "zscore":
            raise ValueError("loss 'bce' needs tiles in [0, 1]; normalisation 'zscore' is not "
                             "(use loss: mse or another normalisation)")


# --- command line ------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = stage_parser("python -m training.train", __doc__.split("\n")[0], TrainParams)
    p.add_argument("--tiles", type=Path, required=True,
                   help="tile folder holding train.h5 (or the .h5 file itself)")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, dvclive)")
    p.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                   help="continue from OUT/last.pt (or the given checkpoint)")
    p.add_argument("--stop-after-epoch", type=int, default=None, metavar="N",
                   help="stop (with a checkpoint) after epoch N; resume later with --resume")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument("--init", type=Path, default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (fine-tuning; fresh optimiser)")
    return p.parse_args(argv)


def load_params(path: Path | None, dataset: str,
                overrides: dict[str, Any] | None = None) -> TrainParams:
    """The ``train`` settings of ``dataset`` (common layer, data set layer, ``overrides``);
    ``normalisation: auto`` becomes the paper's choice for the data set's kind."""
    params = load_stage(TrainParams, "train", dataset, path, overrides)
    if params.normalisation == "auto":
        kind = load_dataset(dataset, path).kind
        params = dataclasses.replace(params, normalisation=PAPER_NORMALISATION[kind])
    return params


# --- environment: seeds and RNG state (devices: training.device) ---------------------

def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        if torch.are_deterministic_algorithms_enabled():  # (the call imports inductor: slow)
            torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True  # CUDA-only: per-shape algorithm search


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def rng_state() -> dict[str, Any]:
    """Python/numpy/torch/CUDA RNG states in types that ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, key, pos, has_gauss, cached = state["numpy"]
    key = key.numpy().astype(np.uint32)
    np.random.set_state((kind, key, int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # fewer GPUs than when saved
            torch.cuda.set_rng_state_all(state["cuda"])


# --- data --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileFileInfo:
    path: Path
    count: int
    bands: int
    tile: int
    stats: dict[str, Any] | None


def resolve_tile_file(tiles: Path, name: str = "train.h5") -> Path:
    """``tiles`` is a folder holding ``name`` or the .h5 file itself."""
    path = tiles / name if tiles.is_dir() else tiles
    if not path.is_file():
        raise ProductError(path, "tile file not found (run the tiles stage first)")
    return path


def inspect_tile_file(path: Path) -> TileFileInfo:
    """Shape and statistics of a tile file; ProductError when it is unusable or empty."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "tiles" not in f:
                raise ProductError(path, "no 'tiles' dataset (not a tile file of pipeline.tiles)")
            shape = f["tiles"].shape
            stats_text = f.attrs.get("stats")
    except OSError as exc:
        raise ProductError(path, f"cannot open as HDF5 ({exc})") from None
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ProductError(path, f"'tiles' has shape {shape}, expected (N, bands, H, W), H == W")
    if shape[0] == 0:
        raise ProductError(path, "holds no tiles (0 tiles; check the split and tiles stages)")
    stats = None
    if stats_text is not None:
        if isinstance(stats_text, bytes):
            stats_text = stats_text.decode()
        with contextlib.suppress(ValueError, TypeError):
            stats = json.loads(stats_text)
    return TileFileInfo(path, int(shape[0]), int(shape[1]), int(shape[2]), stats)


def tile_products(path: Path, count: int) -> np.ndarray | None:
    """Product id of every tile from the ``index`` dataset, or None when there is none."""
    import h5py

    with h5py.File(path, "r") as f:
        if "index" not in f:
            return None
        index = f["index"]
        if index.dtype.names:
            names = index.dtype.names
            field = next((n for n in names if "product" in n.lower()), names[0])
            col = index.fields(field)[:] if hasattr(index, "fields") else index[field]
        elif index.ndim == 2:
            col = index[:, 0]
        else:
            col = index[:]
    if len(col) != count:
        return None
    return np.array([c.decode() if isinstance(c, bytes) else str(c) for c in col])


def split_train_val(
    products: np.ndarray | None, count: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Tile indices (train, val) with whole products held out; returns a description too."""
    all_idx = np.arange(count)
    if fraction <= 0:
        return all_idx, all_idx[:0], "no validation (val_fraction 0)"
    rng = np.random.default_rng(seed)
    if products is not None:
        unique = np.unique(products)
        if len(unique) >= 2:
            n_val = min(len(unique) - 1, max(1, round(fraction * len(unique))))
            held = set(rng.permutation(unique)[:n_val].tolist())
            mask = np.array([p in held for p in products])
            return (all_idx[~mask], all_idx[mask],
                    f"validation: {n_val} of {len(unique)} products ({mask.sum()} tiles)")
    if count < 2:
        warnings.warn("only one tile: training without validation", stacklevel=2)
        return all_idx, all_idx[:0], "no validation (1 tile)"
    n_val = min(count - 1, max(1, round(fraction * count)))
    perm = rng.permutation(count)
    warnings.warn("the tile file has a single product (or no index): validation tiles are drawn "
                  "at random and share products with training tiles", stacklevel=2)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val]), f"validation: {n_val} random tiles"


def make_dataset(path: Path, normalisation: str) -> Dataset:
    """:class:`training.data.TileDataset`; items are (tile, validity mask), both (B, H, W)."""
    from training.data import TileDataset

    try:
        return TileDataset(path, normalisation=normalisation, return_mask=True)
    except (ValueError, KeyError) as exc:  # missing/incomplete statistics
        raise ProductError(path, f"cannot normalise ({exc})") from None


# --- training ----------------------------------------------------------------------------

def _loss_terms(
    logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, loss: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mse) in float32, averaged over the valid values (``mask``; None = all).

    BCE is computed from logits (stable and autocast-safe; equal to BCE on the sigmoid
    output) against targets clamped to [0, 1]; the MSE is on the sigmoid output.
    """
    logits = logits.float()
    x = x.float()
    sq = (torch.sigmoid(logits) - x).square()
    if loss == "bce":
        per_value = F.binary_cross_entropy_with_logits(logits, x.clamp(0.0, 1.0),
                                                       reduction="none")
    if mask is None:
        mse = sq.mean()
        return (per_value.mean() if loss == "bce" else mse), mse
    w = mask.to(sq.dtype)
    count = w.sum().clamp_min(1.0)
    mse = (sq * w).sum() / count
    return ((per_value * w).sum() / count if loss == "bce" else mse), mse


def _psnr(mse: float) -> float:
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def _trim_dvclive_history(live_dir: Path, first_step: int) -> None:
    """Drop DVCLive history rows logged after the checkpoint we resume from."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        with open(tsv, newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        col = rows[0].index("step")
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[col]) < first_step]
        with atomic_open(tsv, "w", newline="") as fh:  # a kill here must not lose the history
            csv.writer(fh, delimiter="\t", lineterminator="\n").writerows(keep)


class _NullLive:
    """Stands in for DVCLive on ranks > 0 (and without dvclive): logs nothing."""

    step = 0

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def _atomic_dvclive_files() -> None:
    """Make DVCLive write ``metrics.json`` and ``params.yaml`` atomically.

    DVCLive (3.x) rewrites both in place: a kill between truncating and writing leaves a
    partial file under the final name, and the resumed run then fails reading it. Its two
    writers are replaced by equivalents going through :mod:`parsers.atomic`.
    """
    import dvclive.live
    from dvclive.serialize import get_yaml

    def dump_json(content: Any, output_file: str, indent: int = 4, **kwargs: Any) -> None:
        with atomic_open(output_file, "w", encoding="utf-8") as fh:
            json.dump(content, fh, indent=indent, **kwargs)
            fh.write("\n")

    def dump_yaml(content: Any, output_file: str) -> None:
        with atomic_open(output_file, "w", encoding="utf-8") as fh:
            get_yaml().dump(content, fh)

    dvclive.live.dump_json = dump_json
    dvclive.live.dump_yaml = dump_yaml


def _open_live(out: Path, resume: bool, first_step: int) -> Any:
    try:
        from dvclive import Live
    except ImportError:  # e.g. an offline GPU machine (benchmarks/gpu_check.sh)
        warnings.warn("dvclive is not installed: no OUT/dvclive; the per-epoch metrics are "
                      "printed and kept in last.pt ('history')", stacklevel=2)
        return _NullLive()

    _atomic_dvclive_files()
    live_dir = out / "dvclive"
    if resume:
        _trim_dvclive_history(live_dir, first_step)
    live = Live(dir=str(live_dir), resume=resume, report=None, save_dvc_exp=False,
                dvcyaml=None, monitor_system=False)
    live.step = first_step
    return live


Batches = Iterator[tuple[torch.Tensor, torch.Tensor | None]]


Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (loss, mse, bpppc) of a batch


def batch_terms(net: nn.Module, rt: Runtime, x: torch.Tensor, mask: torch.Tensor | None,
                loss: str = "bce", lmbda: float = 1.0) -> Terms:
    """(loss, mse, estimated bpppc) of tiles ``x`` (N, B, H, W) on the device.

    Forward under the runtime's autocast; the terms in float32 over the valid values. A
    net that also returns latent bits (:class:`training.codec.RateDistortionNet`) is
    trained on ``lmbda * distortion + bpppc``; otherwise the loss is the distortion and
    the bpppc is 0.
    """
    with rt.autocast():
        out = net(x, logits=True)
    logits, bits = out if isinstance(out, tuple) else (out, None)
    distortion, mse = _loss_terms(logits, x, mask, loss)
    if bits is None:
        return distortion, mse, torch.zeros((), device=distortion.device)
    rate = bits.float().mean() / x[0].numel()
    return lmbda * distortion + rate, mse, rate


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rt: Runtime,
               x: torch.Tensor, mask: torch.Tensor | None, loss: str = "bce",
               lmbda: float = 1.0) -> Terms:
    """One optimisation step on a batch already on the device, nanoGPT style: forward and
    loss (:func:`batch_terms`), backward, optimiser and schedule steps.

    Returns the batch's terms detached, on the device (no host synchronisation).
    ``benchmarks/bench_train.py`` times this same function.
    """
    terms = batch_terms(net, rt, x, mask, loss, lmbda)
    optimizer.zero_grad(set_to_none=True)
    terms[0].backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return terms[0].detach(), terms[1].detach(), terms[2].detach()


def _compile_failed(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


class Trainer:
    """The loop: one instance per process; only rank 0 writes files."""

    def __init__(self, params: TrainParams, source: str, tiles: Path, out: Path, dist_: Dist,
                 progress: bool | None = None) -> None:
        self.p = params
        self.source = source
        self.out = out
        self.d = dist_
        self.rt = Runtime.create(dist_.device, params.precision, params.channels_last,
                                 params.compile)
        self.progress = (sys.stderr.isatty() if progress is None else progress) and dist_.main
        self.info = self._inspect(resolve_tile_file(tiles))
        self.local_batch = params.batch_size // dist_.world
        self._open_data()
        self._make_loaders()
        self._build_model()
        self.start_epoch = 0
        self.best = math.inf
        self.history: list[dict[str, float]] = []

    # --- construction ---
    def _inspect(self, path: Path) -> TileFileInfo:
        """The tile file's shape, checked against the settings."""
        p, info = self.p, inspect_tile_file(path)
        if p.bands is not None and p.bands != info.bands:
            raise UserError(f"{info.path.name}: tiles have {info.bands} bands but params ask for "
                            f"bands={p.bands}")
        if p.tile is not None and p.tile != info.tile:
            raise UserError(f"{info.path.name}: tiles are {info.tile}x{info.tile} but params ask "
                            f"for tile={p.tile}")
        if p.batch_size % self.d.world:
            raise ParamsError(f"batch_size {p.batch_size} is not divisible by the "
                              f"{self.d.world} processes")
        return info

    def _open_data(self) -> None:
        """Normalised dataset and its train/validation split (whole products held out)."""
        p, info, d = self.p, self.info, self.d
        self.normalisation = (PAPER_NORMALISATION.get(self.source, "paper_minmax")
                              if p.normalisation == "auto"
                              else p.normalisation)
        if p.loss == "bce" and self.normalisation == "zscore":
            raise ParamsError("loss 'bce' needs tiles in [0, 1]; normalisation 'zscore' is not")
        dataset = make_dataset(info.path, self.normalisation)
        normaliser = getattr(dataset, "normaliser", None)
        self.normaliser_state = (normaliser.state_dict()
                                 if hasattr(normaliser, "state_dict") else None)
        if len(dataset) != info.count:
            raise ProductError(info.path,
                               f"dataset reports {len(dataset)} tiles, file {info.count}")
        products = tile_products(info.path, info.count)
        train_idx, val_idx, self.split_desc = split_train_val(
            products, info.count, p.val_fraction, p.seed)
        self.train_set = Subset(dataset, train_idx.tolist())
        self.val_set = Subset(dataset, val_idx[d.rank::d.world].tolist())
        self.n_val = len(val_idx)

    def _make_loaders(self) -> None:
        """DataLoaders (and, with ``cache: device``, the tiles on the device)."""
        p, d = self.p, self.d
        self.sampler = DistributedSampler(self.train_set, num_replicas=d.world, rank=d.rank,
                                          shuffle=True, seed=p.seed)
        self.generator = torch.Generator()
        kw: dict[str, Any] = {
            "batch_size": self.local_batch, "num_workers": p.workers,
            "pin_memory": self.rt.device.type == "cuda", "worker_init_fn": _seed_worker,
        }
        if p.workers > 0:
            kw["prefetch_factor"] = 4
        persist = {"persistent_workers": p.workers > 0}
        self.train_loader = DataLoader(self.train_set, sampler=self.sampler,
                                       generator=self.generator, **kw, **persist)
        self.val_loader = DataLoader(self.val_set, shuffle=False, **kw, **persist)
        self.train_cache = self.val_cache = None
        if p.cache == "device":
            dev = self.rt.device
            self.train_cache = DeviceCache(self.train_set, dev, kw, "training", self.progress)
            if len(self.val_set):
                self.val_cache = DeviceCache(self.val_set, dev, kw, "validation", self.progress)

    def _build_model(self) -> None:
        """Model on the device (plus an entropy model for ``rate_distortion``), Adam, cosine
        schedule over all steps, compile, DDP."""
        p, info = self.p, self.info
        torch.manual_seed(p.seed)
        self.model = self.rt.prepare(build_model(
            arch=p.arch, bands=info.bands, tile=info.tile, latent=p.latent,
            activation=p.activation, widths=p.widths))
        self.codec: LatentCodec | None = None
        self.infer: nn.Module = self.model  # what validation runs (no DDP wrapper)
        if p.objective == "rate_distortion":
            self.codec = LatentCodec(self.model.latent_shape).to(self.rt.device)
            self.infer = RateDistortionNet(self.model, self.codec)
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = torch.optim.Adam(self.infer.parameters(), lr=p.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=p.epochs * self.steps_per_epoch, eta_min=0.0)
        self.net: nn.Module = self.rt.compiled(self.infer)  # in place, before DDP wraps it
        if self.d.world > 1:
            cuda = self.rt.device.type == "cuda"
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.rt.device.index] if cuda else None)

    # --- config & checkpoints ---
    def config(self) -> dict[str, Any]:
        cfg = self.model.config()
        cfg.update(normalisation=self.normalisation, source=self.source, loss=self.p.loss,
                   lr=self.p.lr, epochs=self.p.epochs, batch_size=self.p.batch_size,
                   val_fraction=self.p.val_fraction, seed=self.p.seed,
                   tiles=str(self.info.path), objective=self.p.objective)
        if self.codec is not None:
            cfg["lambda"] = self.p.lmbda
        return cfg

    def _state(self, epoch: int, full: bool) -> dict[str, Any]:
        state: dict[str, Any] = {
            "config": self.config(), "model": self.model.state_dict(), "epoch": epoch,
            "stats": self.info.stats, "normaliser": self.normaliser_state,
            "metrics": self.history[-1] if self.history else {},
            "best": self.best, "params": to_dict(self.p), "torch_version": str(torch.__version__),
            "world": self.d.world,
            "resume_fingerprint": self.resume_fingerprint,
        }
        if self.codec is not None:
            state = finalise_state(state, self.codec)
        if full:
            state.update(optimizer=self.optimizer.state_dict(),
                         scheduler=self.scheduler.state_dict(), rng=rng_state(),
                         sampler_epoch=epoch, history=self.history)
        return state

    def save(self, name: str, epoch: int, full: bool = True) -> None:
        if self.d.main:
            save_checkpoint(self.out / name, self._state(epoch, full))
        self.d.barrier()

    @functools.cached_property
    def resume_fingerprint(self) -> str:
        """What a resumed run must share with the one it continues: the tile file's content
        and the training code (a run interrupted before a code change starts afresh)."""
        code = hashlib.sha256()
        for path in sorted(Path(__file__).parent.glob("*.py")):
            code.update(path.name.encode() + path.read_bytes())
        return f"{tile_file_fingerprint(self.info.path)}:{code.hexdigest()}"

    def interrupted_run(self, path: Path) -> str | None:
        """The log line when ``path`` (OUT/last.pt) holds an unfinished run of this training
        (same settings, same tile file content) to continue; None to start afresh."""
        if not path.is_file():
            return None
        problem = checkpoint_archive_problem(path)
        if problem:
            warnings.warn(f"{path}: {problem}; starting afresh", stacklevel=2)
            return None
        try:  # mmap: only the small entries are read
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return None
        if not isinstance(ckpt, dict) or "optimizer" not in ckpt:
            return None
        old, new = ckpt.get("config") or {}, self.config()
        done = int(ckpt.get("epoch", 0))
        if any(json.dumps(old.get(k)) != json.dumps(new.get(k))
               for k in (*RESUME_KEYS, "bands", "tile")) \
                or ckpt.get("resume_fingerprint") != self.resume_fingerprint \
                or not 0 < done < self.p.epochs:
            return None
        return (f"resuming from {path} after epoch {done} of {self.p.epochs}: an earlier run "
                "with the same settings, tiles and code stopped there (delete it to start "
                "afresh)")

    def resume(self, path: Path) -> None:
        """Continue from a ``last.pt`` written by any number of processes on any device.

        The global batch is fixed (``batch_size`` is a resume key), so the steps per epoch,
        the sampler's order and the cosine schedule do not depend on the process count.
        """
        if not path.is_file():
            raise ProductError(path, "checkpoint to resume from not found")
        problem = checkpoint_archive_problem(path)
        if problem:
            raise ProductError(path, f"{problem}; cannot resume from it")
        try:
            # CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ProductError(path, f"not a readable checkpoint ({type(exc).__name__})") from None
        if not isinstance(ckpt, dict) or "optimizer" not in ckpt:
            raise ProductError(path, "not a training checkpoint (use last.pt, not best.pt)")
        old = ckpt["config"]
        if old.get("bands") != self.info.bands or old.get("tile") != self.info.tile:
            raise UserError(f"{path.name}: model is {old.get('bands')} bands x "
                            f"{old.get('tile')} px "
                            f"but {self.info.path.name} has {self.info.bands} x {self.info.tile}")
        new = self.config()
        diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in RESUME_KEYS
                if json.dumps(old.get(k)) != json.dumps(new.get(k))]
        if diff:
            raise UserError(f"{path.name}: settings differ from the checkpoint "
                            f"({'; '.join(diff)}); "
                            "resume with the same settings or start afresh without --resume")
        self.model.load_state_dict(clean_state_dict(ckpt["model"]))
        if self.codec is not None:
            self.codec.load_state_dict(ckpt["entropy"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.start_epoch = int(ckpt["epoch"])
        self.best = float(ckpt.get("best", math.inf))
        self.history = list(ckpt.get("history", []))
        set_rng_state(ckpt["rng"])

    def initialise(self, init: Path | None) -> None:
        """Before the first epoch: weights from ``init`` (``--init``); the center and gain
        of a new entropy model from the latents of a few training tiles."""
        has_codec = self._load_init(init) if init is not None else False
        if self.codec is None or has_codec:
            return
        n = min(8, len(self.train_set))
        x = self.rt.tiles(torch.stack([self.train_set[i][0] for i in range(n)]))
        with torch.no_grad():
            self.codec.init_from(self.model.encode(x))
        if self.d.world > 1:
            dist.broadcast(self.codec.center.data, 0)
            dist.broadcast(self.codec.log_gain.data, 0)

    def _load_init(self, path: Path) -> bool:
        """Copy a checkpoint's weights (and entropy model, if any); True if it had one."""
        model, ckpt = load_checkpoint(path)
        ours = self.model.config()
        diff = [f"{k} {v!r} vs {ours[k]!r}" for k, v in model.config().items() if v != ours[k]]
        if diff:
            raise UserError(f"--init {path.name}: model differs from these settings "
                            f"({'; '.join(diff)})")
        self.model.load_state_dict(model.state_dict())
        if self.codec is not None and has_entropy_model(ckpt):
            self.codec.load_state_dict(ckpt["entropy"])
            return True
        return False

    # --- loop ---
    def _batches(self, train: bool) -> Batches:
        """(tiles, mask or None) on the device: from the cache, or read by the DataLoader."""
        cache = self.train_cache if train else self.val_cache
        if cache is not None:
            order = list(iter(self.sampler)) if train else range(len(self.val_set))
            yield from cache.batches(order, self.local_batch, self.rt)
            return
        for x, mask in (self.train_loader if train else self.val_loader):
            mask = None if bool(mask.all()) else mask.to(self.rt.device, non_blocking=True)
            yield self.rt.tiles(x), mask

    def _mean(self, batches: Batches, step: Callable[..., Terms]) -> tuple[float, float, float]:
        """(loss, mse, bpppc) of ``step(x, mask)`` averaged over every tile of every process."""
        sums = torch.zeros(4, dtype=torch.float64, device=self.rt.device)
        for x, mask in batches:
            n = x.shape[0]
            for i, term in enumerate(step(x, mask)):
                sums[i] += term.double() * n
            sums[3] += n
        total = self.d.all_sum(sums)
        return float(total[0] / total[3]), float(total[1] / total[3]), float(total[2] / total[3])

    def train_epoch(self, epoch: int, bar: Any = None) -> tuple[float, float, float]:
        self.net.train()
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(self.p.seed + epoch)

        def step(x: torch.Tensor, mask: torch.Tensor | None) -> Terms:
            if bar is not None:
                bar.update(x.shape[0] * self.d.world)
            return train_step(self.net, self.optimizer, self.scheduler, self.rt, x, mask,
                              self.p.loss, self.p.lmbda)

        return self._mean(self._batches(train=True), step)

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float] | None:
        if self.n_val == 0:
            return None
        self.net.eval()

        def step(x: torch.Tensor, mask: torch.Tensor | None) -> Terms:
            # self.infer: no DDP hooks needed for inference
            return batch_terms(self.infer, self.rt, x, mask, self.p.loss, self.p.lmbda)

        return self._mean(self._batches(train=False), step)

    def _explain(self, exc: BaseException) -> UserError | None:
        """A one-line UserError for running out of memory or a failed compile; else None."""
        p, d, rt = self.p, self.d, self.rt
        if _compile_failed(exc) and rt.compile:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            return UserError(f"torch.compile failed on {rt.device} ({type(exc).__name__}: "
                             f"{first}); rerun with --no-compile")
        if not is_out_of_memory(exc):
            return None
        release_cached_memory(rt.device)
        tips = [f"--batch-size {max(d.world, p.batch_size // 2 // d.world * d.world)}"]
        tips += ["--precision bf16"] if rt.amp_dtype is None else []
        tips += ["--cache none"] if p.cache == "device" else []
        tips += ["more GPUs (torchrun)" if rt.device.type == "cuda" else "more memory"]
        where = f"{rt.device}" + (f" x{d.world}" if d.world > 1 else "")
        return UserError(
            f"out of memory on {where} at batch size {p.batch_size} ({self.local_batch} per "
            f"process, {self.info.bands}x{self.info.tile}x{self.info.tile} tiles, arch "
            f"{p.arch}, {rt.precision}); try {', '.join(tips[:-1])} or {tips[-1]}")

    def run_epoch(self, epoch: int, bar: Any = None) -> dict[str, float]:
        """Train and validate one epoch; the epoch's metrics (appended to the history)."""
        t0 = time.perf_counter()
        try:
            train_loss, train_mse, train_rate = self.train_epoch(epoch, bar)
            train_seconds = time.perf_counter() - t0
            val = self.validate()
        except Exception as exc:
            problem = self._explain(exc)
            if problem is None:
                raise
            raise problem from None
        last = {"epoch": epoch + 1, "train_loss": train_loss, "train_psnr": _psnr(train_mse),
                "lr": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t0,
                "tiles_per_s": len(self.train_set) / max(train_seconds, 1e-9)}
        if val is not None:
            last.update(val_loss=val[0], val_psnr=_psnr(val[1]))
        if self.codec is not None:
            last["train_bpppc"] = train_rate
            if val is not None:
                last["val_bpppc"] = val[2]
        self.history.append(last)
        return last

    def _log(self, live: Any, last: dict[str, float], bar: Any) -> None:
        """Rank 0: DVCLive metrics and one line per epoch."""
        live.step = int(last["epoch"]) - 1
        for key, name in (("train_loss", "train/loss"), ("train_psnr", "train/psnr"),
                          ("val_loss", "val/loss"), ("val_psnr", "val/psnr"),
                          ("train_bpppc", "train/bpppc"), ("val_bpppc", "val/bpppc"),
                          ("lr", "lr")):
            if key in last:
                live.log_metric(name, last[key])
        live.next_step()
        msg = (f"epoch {int(last['epoch'])}/{self.p.epochs}: train loss "
               f"{last['train_loss']:.6f} psnr {last['train_psnr']:.2f} dB")
        if "val_loss" in last:
            msg += f" | val loss {last['val_loss']:.6f} psnr {last['val_psnr']:.2f} dB"
        if "train_bpppc" in last:
            msg += f" {last.get('val_bpppc', last['train_bpppc']):.4f} bpppc (estimated)"
        msg += f" | {last['tiles_per_s']:.1f} tiles/s"
        (bar.write if bar is not None else print)(msg)

    def fit(self, live: Any, stop_after: int | None = None) -> dict[str, float]:
        p = self.p
        remaining = p.epochs - self.start_epoch
        bar = None
        if self.progress and remaining > 0:
            from tqdm import tqdm

            bar = tqdm(total=remaining * len(self.sampler) * self.d.world,
                       unit="tile", unit_scale=True, dynamic_ncols=True, desc="train")
        last: dict[str, float] = self.history[-1] if self.history else {}
        try:
            for epoch in range(self.start_epoch, p.epochs):
                last = self.run_epoch(epoch, bar)
                if self.d.main:
                    self._log(live, last, bar)
                done = epoch + 1
                score = last.get("val_loss", last["train_loss"])
                if score < self.best:
                    self.best = score
                    self.save("best.pt", done, full=False)
                stopping = stop_after is not None and done >= stop_after
                if done % p.checkpoint_every == 0 or done == p.epochs or stopping:
                    self.save("last.pt", done)
                if stopping and done < p.epochs:
                    if self.d.main:
                        print(f"stopped after epoch {done} of {p.epochs}; continue with --resume")
                    break
        finally:
            if bar is not None:
                bar.close()
        return last

    def describe(self, resumed: bool) -> str:
        """Three lines (model, data, run) that rank 0 prints before the first epoch."""
        p, info, d = self.p, self.info, self.d
        extras = [self.rt.describe()]
        extras += ["tiles cached on the device"] if p.cache == "device" else []
        extras += ["deterministic"] if p.deterministic else []
        extras += [f"resuming after epoch {self.start_epoch}"] if resumed else []
        return "\n".join([
            self.model.describe(),
            f"data: {info.path} {info.count} tiles ({info.bands}x{info.tile}x{info.tile}), "
            f"normalisation {self.normalisation}, {self.split_desc}; "
            f"train {len(self.train_set)} tiles",
            f"run: {p.epochs} epochs, batch {p.batch_size} ({d.world} x {self.local_batch}), "
            f"loss {p.loss}, Adam lr {p.lr}, cosine to 0; {'; '.join(extras)}",
        ])


def train(params: TrainParams, source: str, tiles: Path, out: Path, resume: str | None = None,
          stop_after: int | None = None, progress: bool | None = None,
          init: Path | None = None) -> dict[str, float]:
    """Run (or continue) a training; returns the last epoch's metrics. ``init``: start
    from that checkpoint's weights (not with ``resume``)."""
    if init is not None and resume is not None:
        raise ParamsError("--init starts a new run from weights; --resume continues one: "
                          "use one of them")
    seed_everything(params.seed, params.deterministic)
    d = setup_distributed(params.device)
    trainer = None
    try:
        trainer = Trainer(params, source, tiles, out, d, progress=progress)
        note = trainer.interrupted_run(out / "last.pt") if resume is None else None
        if note is not None:
            resume = "last"
            if d.main:
                print(note)
        if resume is not None:
            trainer.resume(out / "last.pt" if resume == "last" else Path(resume))
        else:
            trainer.initialise(init)
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
            print(trainer.describe(resume is not None))
        live = (_open_live(out, resume is not None, trainer.start_epoch) if d.main
                else _NullLive())
        if d.main and resume is None:
            live.log_params({"source": source, **to_dict(params),
                             "normalisation": trainer.normalisation})
        try:
            return trainer.fit(live, stop_after=stop_after)
        finally:
            if d.main:
                live.end()
    finally:
        if trainer is not None:
            trainer.net = trainer.model  # drop the DDP wrapper before the process group
        teardown_distributed(d)


@cli_entry("python -m training.train")
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_params(args.params, args.dataset, flag_overrides(args, TrainParams))
    if args.stop_after_epoch is not None and args.stop_after_epoch < 1:
        raise ParamsError("--stop-after-epoch must be >= 1")
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 writes
        lock_output(args.out, "python -m training.train")
    train(params, args.dataset, args.tiles, args.out, resume=args.resume,
          stop_after=args.stop_after_epoch, progress=args.progress, init=args.init)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
