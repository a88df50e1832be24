"""SSCNet, the fully convolutional hyperspectral autoencoder of La Grassa et al. (2022).

Two families, both mapping float tiles (N, bands, tile, tile) in [0, 1] to reconstructions
of the same shape through a sigmoid output:

* ``arch="linear"``: convolutional trunk, three 2x2 max-pools, flatten and a linear layer to
  a latent vector of ``latent`` values (Sentinel-2 9x48x48 -> 1000, ratio 20.7; VIRTIS
  432x64x64 -> 10000 / 5000 / 1000, ratios 177 / 354 / 1769). The decoder mirrors it with a
  linear layer, an element-wise PReLU on the flattened vector, a reshape and transposed
  convolutions (k2, s2).
* ``arch="conv"``: the "last convolution" model whose latent is a feature map
  ``(channels, size, size)`` (VIRTIS 1024x8x8, ratio 27; 1024x16x16, ratio 6.75 ~ 7, which
  drops one pool / one upsampling stage).

Channel widths. The paper gives them for the Sentinel-2 model (64, 128, 256, 256) and the
VIRTIS convolutional model (256, 256, 256, 512, latent 1024; ~8.1 M encoder / 6.8 M decoder
parameters, as the paper's ~8 M / 6.7 M). For the VIRTIS linear model it gives only the
parameter totals (171 M encoder / 168 M decoder at latent 10000); we use widths
(256, 256, 256, 256), which flattens 256x8x8 = 16384 values into the linear layer and gives
~166.6 M / ~165.7 M parameters at latent 10000. ``widths`` overrides these (tests use tiny
ones).

Activations are PReLU with one learnable slope per channel (``activation="relu"`` for the
paper's ReLU comparison). The decoder computes logits; :meth:`SSCNet.decode` and
:meth:`SSCNet.forward` apply the sigmoid, and ``forward(x, logits=True)`` returns the
logits so that training can use the numerically stable (and autocast-safe)
``binary_cross_entropy_with_logits``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from parsers.atomic import atomic_open
from parsers.errors import ProductError, UserError
from parsers.integrity import checkpoint_archive_problem

Arch = Literal["linear", "conv"]
Activation = Literal["prelu", "relu"]

#: Encoder widths (conv1, conv2, conv3, conv4) per (arch, dataset family).
WIDTHS_S2 = (64, 128, 256, 256)
WIDTHS_VIRTIS_LINEAR = (256, 256, 256, 256)
WIDTHS_VIRTIS_CONV = (256, 256, 256, 512)

#: The variants of the paper: name -> build_model keyword arguments.
PAPER_VARIANTS: dict[str, dict[str, Any]] = {
    "sentinel2-linear-1000": {"arch": "linear", "bands": 9, "tile": 48, "latent": 1000},
    "virtis-linear-10000": {"arch": "linear", "bands": 432, "tile": 64, "latent": 10000},
    "virtis-linear-5000": {"arch": "linear", "bands": 432, "tile": 64, "latent": 5000},
    "virtis-linear-1000": {"arch": "linear", "bands": 432, "tile": 64, "latent": 1000},
    "virtis-conv-1024x8": {"arch": "conv", "bands": 432, "tile": 64, "latent": (1024, 8)},
    "virtis-conv-1024x16": {"arch": "conv", "bands": 432, "tile": 64, "latent": (1024, 16)},
}


def default_widths(arch: str, bands: int) -> tuple[int, int, int, int]:
    """The encoder widths used when none are given (see the module docstring)."""
    if arch == "conv":
        return WIDTHS_VIRTIS_CONV
    return WIDTHS_S2 if bands <= 16 else WIDTHS_VIRTIS_LINEAR


def _act(kind: str, channels: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    if kind == "relu":
        return nn.ReLU(inplace=False)
    raise UserError(f"activation {kind!r} is not one of 'prelu', 'relu'")


def _conv_block(cin: int, cout: int, activation: str) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), _act(activation, cout)]


def _up_block(cin: int, cout: int, activation: str) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2), _act(activation, cout)]


class SSCNet(nn.Module):
    """One SSCNet autoencoder; build it with :func:`build_model`.

    Attributes: ``arch``, ``bands``, ``tile``, ``latent`` (int, or (channels, size)),
    ``activation``, ``widths``, ``encoder`` and ``decoder`` (``nn.Sequential``; the linear
    model's decoder starts with ``decoder_linear`` + ``decoder_act`` before the reshape).
    """

    def __init__(
        self,
        arch: Arch,
        bands: int,
        tile: int,
        latent: int | tuple[int, int],
        activation: Activation = "prelu",
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.bands = int(bands)
        self.tile = int(tile)
        self.activation = activation
        w = tuple(int(v) for v in (widths or default_widths(arch, bands)))
        _check_config(arch, self.bands, self.tile, latent, activation, w)
        self.widths = w
        if arch == "linear":
            self.latent: int | tuple[int, int] = int(latent)  # type: ignore[arg-type]
            n_pools = 3
        else:
            channels, size = (int(v) for v in latent)  # type: ignore[union-attr]
            self.latent = (channels, size)
            n_pools = round(math.log2(self.tile // size))
        self.n_pools = n_pools

        enc: list[nn.Module] = []
        cin = self.bands
        for i, cout in enumerate(w):
            enc += _conv_block(cin, cout, activation)
            if i >= 1 and i - 1 < n_pools:  # pools after conv2, conv3, conv4
                enc.append(nn.MaxPool2d(2))
            cin = cout
        self.inner = self.tile // 2**n_pools  # spatial size at the end of the trunk
        if arch == "linear":
            self.flat = w[3] * self.inner * self.inner
            enc += [nn.Flatten(1), nn.Linear(self.flat, self.latent)]  # type: ignore[arg-type]
            self.decoder_linear: nn.Module | None = nn.Linear(self.latent, self.flat)  # type: ignore[arg-type]
            # One slope per element of the flattened vector, as in the paper.
            self.decoder_act: nn.Module | None = _act(activation, self.flat)
            dec: list[nn.Module] = []
            c = w[3]
        else:
            channels = self.latent[0]  # type: ignore[index]
            enc += _conv_block(w[3], channels, activation)
            self.decoder_linear = None
            self.decoder_act = None
            dec = [nn.ConvTranspose2d(channels, w[3], kernel_size=3, padding=1),
                   _act(activation, w[3])]
            c = w[3]
        for i in range(n_pools):
            cout = w[2 - i]
            dec += _up_block(c, cout, activation)
            c = cout
        dec.append(nn.ConvTranspose2d(c, self.bands, kernel_size=3, padding=1))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    # --- shapes -------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(bands, tile, tile) of one input tile."""
        return (self.bands, self.tile, self.tile)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one tile's latent, without the batch axis: (L,) or (C, S, S)."""
        if self.arch == "linear":
            return (self.latent,)  # type: ignore[return-value]
        c, s = self.latent  # type: ignore[misc]
        return (c, s, s)

    @property
    def compression_ratio(self) -> float:
        """Input values per latent value (value count; ignores bit depths)."""
        return math.prod(self.input_shape) / math.prod(self.latent_shape)

    def describe(self) -> str:
        """One line: variant, shapes, ratio and parameter counts."""
        counts = count_parameters(self)
        lat = "x".join(str(v) for v in self.latent_shape)
        return (
            f"SSCNet {self.arch} {self.bands}x{self.tile}x{self.tile} -> {lat} "
            f"(ratio {self.compression_ratio:.2f}:1, {self.activation}, widths "
            f"{'/'.join(map(str, self.widths))}): encoder {counts['encoder']:,} + decoder "
            f"{counts['decoder']:,} = {counts['total']:,} parameters"
        )

    # --- computation --------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            want = "x".join(map(str, self.input_shape))
            raise UserError(
                f"SSCNet expects tiles (N, {want.replace('x', ', ')}) ({want}), got shape "
                f"{tuple(x.shape)}"
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Tiles (N, B, H, W) in [0, 1] -> latents (N, *latent_shape)."""
        self._check_input(x)
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, *latent_shape) -> pre-sigmoid reconstructions (N, B, H, W)."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise UserError(
                f"SSCNet decoder expects latents (N, {', '.join(map(str, self.latent_shape))}),"
                f" got shape {tuple(z.shape)}"
            )
        if self.decoder_linear is not None:
            assert self.decoder_act is not None
            z = self.decoder_act(self.decoder_linear(z))
            z = z.reshape(z.shape[0], self.widths[3], self.inner, self.inner)
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, *latent_shape) -> reconstructions (N, B, H, W) in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """Reconstruct tiles; ``logits=True`` returns the values before the sigmoid."""
        y = self.decode_logits(self.encode(x))
        return y if logits else torch.sigmoid(y)

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this model with :func:`build_model`."""
        return {
            "arch": self.arch,
            "bands": self.bands,
            "tile": self.tile,
            "latent": self.latent if self.arch == "linear" else list(self.latent),  # type: ignore[arg-type]
            "activation": self.activation,
            "widths": list(self.widths),
        }


def _check_config(
    arch: str, bands: int, tile: int, latent: Any, activation: str, widths: tuple[int, ...]
) -> None:
    if arch not in ("linear", "conv"):
        raise UserError(f"arch {arch!r} is not one of 'linear', 'conv'")
    if activation not in ("prelu", "relu"):
        raise UserError(f"activation {activation!r} is not one of 'prelu', 'relu'")
    if bands < 1 or tile < 1:
        raise UserError(f"bands and tile must be positive, got bands={bands}, tile={tile}")
    if len(widths) != 4 or min(widths) < 1:
        raise UserError(f"widths must be 4 positive channel counts, got {list(widths)}")
    if arch == "linear":
        if isinstance(latent, (tuple, list)) or not isinstance(latent, int) or latent < 1:
            raise UserError(
                f"the linear model needs an integer latent size (e.g. 1000), got {latent!r}"
            )
        if tile % 8:
            raise UserError(
                f"tile size {tile} is not divisible by 8 (the linear model max-pools 3 times)"
            )
        return
    if not isinstance(latent, (tuple, list)) or len(latent) != 2:
        raise UserError(
            f"the conv model needs latent (channels, size), e.g. (1024, 8), got {latent!r}"
        )
    channels, size = latent
    if not (isinstance(channels, int) and isinstance(size, int)) or channels < 1 or size < 1:
        raise UserError(f"latent (channels, size) must be positive integers, got {latent!r}")
    allowed = [tile // 2**k for k in (1, 2, 3) if tile % 2**k == 0]
    if size not in allowed:
        raise UserError(
            f"conv latent size {size} does not fit tile {tile}: it must be tile/2, tile/4 or "
            f"tile/8 (here {', '.join(map(str, allowed)) or 'none: tile is odd'})"
        )


def build_model(
    arch: Arch = "linear",
    bands: int = 9,
    tile: int = 48,
    latent: int | Sequence[int] = 1000,
    activation: Activation = "prelu",
    widths: Sequence[int] | None = None,
) -> SSCNet:
    """Build an SSCNet variant; :class:`~parsers.errors.UserError` for an impossible shape.

    ``latent`` is an int for ``arch="linear"`` and ``(channels, size)`` for ``arch="conv"``.
    """
    if isinstance(latent, list):
        latent = tuple(latent)
    return SSCNet(arch, bands, tile, latent, activation, widths)  # type: ignore[arg-type]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts: ``{"encoder", "decoder", "total"}`` (decoder includes
    the linear model's ``decoder_linear`` / ``decoder_act``)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    total = sum(p.numel() for p in inner.parameters() if p.requires_grad)
    enc = inner.encoder if hasattr(inner, "encoder") else None
    n_enc = sum(p.numel() for p in enc.parameters() if p.requires_grad) if enc is not None else 0
    return {"encoder": n_enc, "decoder": total - n_enc, "total": total}


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) key prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key.replace("._orig_mod.", ".")] = value
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically (temp file, fsync, rename). ``state["model"]`` may
    be an ``nn.Module`` (its cleaned state_dict is stored) or a state_dict. A full disk
    raises :class:`parsers.atomic.DiskFullError` and leaves the previous file in place."""
    state = dict(state)
    model = state.get("model")
    if isinstance(model, nn.Module):
        state.setdefault("config", unwrap(model).config())  # type: ignore[operator]
        model = unwrap(model).state_dict()
    if model is not None:
        state["model"] = clean_state_dict(model)
    path = Path(path)
    with atomic_open(path, "wb", needed=_tensor_bytes(state)) as fh:
        writer = _KeepWriteError(fh)
        try:
            torch.save(state, writer)
        except RuntimeError as exc:
            if writer.error is not None:  # libtorch hides the OSError (and its errno)
                raise writer.error from exc
            raise
    return path


class _KeepWriteError:
    """File wrapper that remembers the OSError of a failed write for :func:`save_checkpoint`."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the tensor storages in a nested checkpoint dict (its size, give or take)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        key = storage.data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[SSCNet, dict[str, Any]]:
    """Load a checkpoint written by training: ``(model in eval mode, checkpoint dict)``.

    The dict holds ``config`` (arch, bands, tile, latent, activation, widths,
    normalisation, source, ...), ``epoch``, ``stats`` (the tile file's statistics JSON, for
    the normaliser) and, for training checkpoints, optimiser/scheduler/RNG states.
    """
    path = Path(path)
    if not path.is_file():
        raise ProductError(path, "checkpoint file not found")
    problem = checkpoint_archive_problem(path)
    if problem:
        raise ProductError(path, problem)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors: not a checkpoint of ours
        problem = f"not a readable torch checkpoint ({type(exc).__name__})"
        raise ProductError(path, problem) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ProductError(path, "not an SSCNet checkpoint (no 'model'/'config' entries)")
    cfg = ckpt["config"]
    model = build_model(
        arch=cfg["arch"], bands=cfg["bands"], tile=cfg["tile"], latent=cfg["latent"],
        activation=cfg.get("activation", "prelu"), widths=cfg.get("widths"),
    )
    try:
        model.load_state_dict(clean_state_dict(ckpt["model"]))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ProductError(path, f"weights do not match the stored config ({first})") from None
    model.to(map_location).eval()
    return model, ckpt
