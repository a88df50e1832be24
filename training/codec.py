"""SSCNet with an entropy-coded latent: the rate-distortion model and its inference codec.

:class:`LatentCodec` sits between SSCNet's encoder and decoder. It maps the latent ``z`` to
``y = (z - center) * gain`` (learned per-channel center and gain), quantises
(:mod:`training.entropy`: uniform noise for the rate in training, rounding at inference) and
models the integers with a factorized prior. A
"channel" is a feature map of the conv latent (C, S, S) (S*S values share one density) or
one element of the linear latent (L,) (each its own density).

Checkpoints of rate-distortion models carry, besides SSCNet's ``model`` and ``config``:

* ``entropy``: the LatentCodec state dict (gain, prior);
* ``entropy_config``: ``{"kind": "factorized", "filters": [...]}``;
* ``entropy_tables``: the integer coding tables, derived once when the checkpoint is written
  (:func:`finalise_state`);
* ``model_id``: sha256 of the weights and tables (:func:`model_id`), which every ``.sscz``
  file records, so a file is never decoded with other weights.

:class:`Codec` is the inference side used by ``training.compress`` / ``decompress`` and
``training.evaluate``: tiles (N, B, H, W) normalised -> integer latents -> bytes and back.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from parsers.errors import ProductError
from training.entropy import FactorizedPrior, IntegerTables, SymbolCoder, derive_tables
from training.models import SSCNet, clean_state_dict, load_checkpoint

#: Initial latent spread in quantisation steps (std of gain * latent) for a new codec.
INIT_STEPS = 8.0
#: Tiles per network call in :class:`Codec`, always (the last call is padded with zeros).
#: Float results of torch's CPU kernels can depend on the batch size (other kernels for
#: N = 1), not on a tile's position in a batch of fixed size nor, in our checks, on the
#: thread count: a fixed micro-batch makes the output independent of ``--batch-size``.
NET_BATCH = 8
ENTROPY_KIND = "factorized"


class LatentCodec(nn.Module):
    """Center, gain, quantisation and factorized prior of one SSCNet latent shape."""

    def __init__(self, latent_shape: tuple[int, ...], filters: tuple[int, ...] = (3, 3, 3)
                 ) -> None:
        super().__init__()
        self.latent_shape = tuple(int(v) for v in latent_shape)
        channels = self.latent_shape[0]
        self.center = nn.Parameter(torch.zeros(channels))
        self.log_gain = nn.Parameter(torch.zeros(channels))
        # The prior starts about as wide as init_from spreads the latents (+-4 std).
        self.prior = FactorizedPrior(channels, filters, init_scale=4 * INIT_STEPS)

    @property
    def channels(self) -> int:
        return self.latent_shape[0]

    def config(self) -> dict[str, Any]:
        return {"kind": ENTROPY_KIND, "filters": list(self.prior.filters)}

    def _per_channel(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.reshape(1, -1, *([1] * (like.dim() - 2))).to(like.dtype)

    @torch.no_grad()
    def init_from(self, z: torch.Tensor, steps: float = INIT_STEPS) -> None:
        """Center each channel of ``z`` (N, C, ...) on its mean and set its gain so that
        its standard deviation spans ``steps`` quantisation steps."""
        flat = z.float().transpose(0, 1).reshape(self.channels, -1)
        std = flat.std(dim=1) if flat.shape[1] > 1 else torch.ones(self.channels)
        std = torch.where(torch.isfinite(std) & (std > 1e-6), std, torch.ones_like(std))
        self.center.copy_(flat.mean(dim=1))
        self.log_gain.copy_(torch.log(steps / std))

    def _y(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self._per_channel(self.center, z)) * self._per_channel(self.log_gain.exp(), z)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent the decoder sees, bits per item (N,)). Training mode: rate on ``y + u``,
        decoder input ``round(y)`` with a straight-through gradient; eval: rounding."""
        y = self._y(z)
        rounded = y + (torch.round(y) - y).detach()
        if self.training:
            noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            bits = self.prior.bits(noisy)
        else:
            bits = self.prior.bits(torch.round(y))
        return self._from_y(rounded), bits

    def _from_y(self, y: torch.Tensor) -> torch.Tensor:
        return (y / self._per_channel(self.log_gain.exp(), y)
                + self._per_channel(self.center, y))

    def quantise(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, ...) -> integers (N, C, ...) int32 (rounding, half to even)."""
        return torch.round(self._y(z)).to(torch.int32)

    def dequantise(self, q: torch.Tensor) -> torch.Tensor:
        """Integers (N, C, ...) -> the latent values the decoder receives (float32)."""
        return self._from_y(q.to(torch.float32))


class RateDistortionNet(nn.Module):
    """SSCNet + LatentCodec for training: ``forward(x)`` -> (logits or sigmoid output,
    bits per tile (N,))."""

    def __init__(self, model: SSCNet, codec: LatentCodec) -> None:
        super().__init__()
        self.model = model
        self.codec = codec

    def forward(self, x: torch.Tensor, logits: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.model.encode(x)
        with torch.autocast(device_type=z.device.type, enabled=False):  # prior in float32
            z_hat, bits = self.codec(z.float())
        y = self.model.decode_logits(z_hat.to(z.dtype))
        return (y if logits else torch.sigmoid(y)), bits


# --------------------------------------------------------------------------- checkpoints
def _canonical_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        buf.write(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        buf.write(t.numpy().tobytes() if t.dtype != torch.bfloat16 else
                  t.view(torch.int16).numpy().tobytes())
    return buf.getvalue()


def model_id(model_state: Mapping[str, torch.Tensor], entropy_state: Mapping[str, torch.Tensor],
             tables: IntegerTables) -> str:
    """sha256 (hex) of the SSCNet weights, the LatentCodec weights and the integer tables."""
    h = hashlib.sha256()
    h.update(_canonical_bytes(clean_state_dict(model_state)))
    h.update(_canonical_bytes({f"entropy.{k}": v for k, v in entropy_state.items()}))
    h.update(_canonical_bytes({f"tables.{k}": v for k, v in tables.state().items()
                               if isinstance(v, torch.Tensor)}))
    return h.hexdigest()


def finalise_state(state: dict[str, Any], codec: LatentCodec) -> dict[str, Any]:
    """Add the codec, its integer tables (derived now, once) and the model id to a
    checkpoint dict whose ``model`` is SSCNet's state dict or module."""
    model = state["model"]
    model_state = model.state_dict() if isinstance(model, nn.Module) else model
    entropy_state = {k: v.detach().cpu().clone() for k, v in codec.state_dict().items()}
    tables = derive_tables(codec.prior)
    state = dict(state)
    state.update(entropy=entropy_state, entropy_config=codec.config(),
                 entropy_tables=tables.state(),
                 model_id=model_id(model_state, entropy_state, tables))
    return state


def codec_from_state(model: SSCNet, ckpt: Mapping[str, Any]) -> LatentCodec:
    """The LatentCodec stored in a checkpoint dict (for ``--init`` / resume / inference)."""
    cfg = ckpt.get("entropy_config") or {}
    codec = LatentCodec(model.latent_shape, tuple(cfg.get("filters", (3, 3, 3))))
    codec.load_state_dict(ckpt["entropy"])
    return codec


def has_entropy_model(ckpt: Mapping[str, Any]) -> bool:
    return "entropy" in ckpt and "entropy_tables" in ckpt


# --------------------------------------------------------------------------- inference
class Codec:
    """A finalised rate-distortion checkpoint, ready to code tiles.

    ``encode_batch``: normalised tiles (N, B, H, W) float32 in [0, 1] -> integer latents
    (N, C, K) int32; ``decode_batch``: integers -> reconstructions (N, B, H, W) in [0, 1].
    Both run the network on :data:`NET_BATCH` tiles at a time, whatever N is.
    ``pack`` / ``unpack`` turn one tile's integers into (ANS words, escapes) and back.
    """

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu"
                 ) -> None:
        path = Path(path)
        model, ckpt = load_checkpoint(path, map_location="cpu")
        if not has_entropy_model(ckpt):
            raise ProductError(path, "has no entropy model (a reconstruction-only checkpoint);"
                                     " .sscz coding needs a rate-distortion checkpoint: train "
                                     "with objective rate_distortion, or fine-tune this one "
                                     "with training.train --init")
        try:
            self.latent = codec_from_state(model, ckpt).eval()
            self.tables = IntegerTables.from_state(ckpt["entropy_tables"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ProductError(path, f"broken entropy model ({str(exc).splitlines()[0]})"
                               ) from None
        if self.tables.channels != self.latent.channels:
            raise ProductError(path, "entropy tables do not match the latent channels")
        self.model_id = model_id(ckpt["model"], ckpt["entropy"], self.tables)
        stored = ckpt.get("model_id")
        if stored is not None and stored != self.model_id:
            raise ProductError(path, "weights do not match the stored model id (modified "
                                     "checkpoint?)")
        self.path = path
        self.ckpt = ckpt
        self.model = model
        self.device = torch.device(device)
        self.model.to(self.device)
        self.latent.to(self.device)
        self.coder = SymbolCoder(self.tables)

    @property
    def tile_shape(self) -> tuple[int, int, int]:
        return self.model.input_shape

    @property
    def symbols_per_channel(self) -> int:
        return math.prod(self.model.latent_shape[1:])

    def _fixed(self, fn: Any, a: np.ndarray) -> np.ndarray:
        """``fn`` over ``a`` (N, ...) in zero-padded chunks of exactly NET_BATCH items."""
        out = []
        for start in range(0, a.shape[0], NET_BATCH):
            chunk = a[start:start + NET_BATCH]
            n = chunk.shape[0]
            if n < NET_BATCH:
                chunk = np.concatenate([chunk, np.zeros((NET_BATCH - n, *a.shape[1:]),
                                                        a.dtype)])
            out.append(fn(chunk)[:n])
        return np.concatenate(out)

    @torch.inference_mode()
    def _encode(self, x: np.ndarray) -> np.ndarray:
        q = self.latent.quantise(self.model.encode(torch.from_numpy(x).to(self.device)))
        return q.reshape(q.shape[0], self.latent.channels, -1).cpu().numpy()

    @torch.inference_mode()
    def _decode(self, q: np.ndarray) -> np.ndarray:
        qt = torch.from_numpy(q).reshape(q.shape[0], *self.model.latent_shape)
        y = self.model.decode(self.latent.dequantise(qt.to(self.device)))
        return y.float().cpu().numpy()

    def encode_batch(self, x: np.ndarray) -> np.ndarray:
        return self._fixed(self._encode, np.ascontiguousarray(x, dtype=np.float32))

    def decode_batch(self, q: np.ndarray) -> np.ndarray:
        return self._fixed(self._decode, np.ascontiguousarray(q, dtype=np.int32))

    def pack(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One tile's integers (C, K) -> (ANS words uint32, escaped values int32)."""
        return self.coder.encode(q)

    def unpack(self, words: np.ndarray, escapes: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`pack` (CodingError on a stream that does not fit)."""
        return self.coder.decode(words, escapes, self.symbols_per_channel)

    def normaliser_state(self) -> dict[str, Any] | None:
        return self.ckpt.get("normaliser")
