"""Entropy model of the latents: a learned factorized prior and its integer coding tables.

Quantisation. The latent ``y`` (already multiplied by the per-channel gain of
:class:`training.codec.LatentCodec`) is quantised to integers:

* training: the **rate** is computed on ``y + u``, ``u ~ U(-1/2, 1/2)`` (additive uniform
  noise, Ballé et al. 2017), while the **decoder** receives ``round(y)`` through a
  straight-through gradient (the "mixed" scheme of Minnen & Singh 2020), so the decoder is
  trained on exactly what it sees at inference;
* inference: ``round(y)`` (half to even, as ``torch.round``), nothing else.

Prior. :class:`FactorizedPrior` is the per-channel learned density of Ballé et al. 2018
(appendix 6.1): for every channel a small monotone network maps a value to the logit of its
cumulative distribution ``c(x)``; the probability of the integer ``k`` is ``c(k + 1/2) -
c(k - 1/2)``. Rate in bits is ``-sum log2`` of these likelihoods.

Integer tables. :func:`derive_tables` turns the learned density, once, into integer
frequency tables (precision 24 bits: every channel's frequencies sum to 2**24 and are >= 1):
symbols ``0 .. n-2`` stand for the values ``lo .. lo + n - 2`` and the last symbol is an
*escape* for values outside that range (their exact value is stored beside the ANS stream,
see :class:`SymbolCoder`). The tables are stored in the checkpoint; encoding and decoding
only ever read these integers, so no float decides a symbol at decode time.

Coding. :class:`SymbolCoder` codes symbols with ``constriction``'s ANS coder (32-bit words,
24-bit precision). Each channel's table becomes a ``constriction.stream.model.Categorical``
built with ``perfect=False`` from the weights ``frequency - 1``: constriction's fast
quantiser gives symbol ``i`` the left cumulative ``floor(W_i * scale) + i`` with ``W_i`` the
sum of the weights before ``i`` and ``scale = (2**24 - n) / sum(weights) = 1`` exactly, so
its internal fixed-point table is our integer table, bit for bit (integers below 2**24 are
exact in float32 and float64). ``tests/training/test_entropy.py`` checks this.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PRECISION = 24
TOTAL = 1 << PRECISION
#: Probability mass per channel left outside the table range (it goes to the escape symbol).
TAIL_MASS = 1e-6
#: Largest number of table entries per channel (values beyond are escaped).
MAX_SUPPORT = 1 << 14


class FactorizedPrior(nn.Module):
    """Learned per-channel density (Ballé et al. 2018, appendix 6.1).

    ``channels`` independent densities; ``filters`` the hidden widths of each channel's
    monotone network (the paper's (3, 3, 3)). Input of :meth:`likelihood`: ``(N, C, ...)``
    with the channel on axis 1.
    """

    def __init__(self, channels: int, filters: Sequence[int] = (3, 3, 3),
                 init_scale: float = 10.0) -> None:
        super().__init__()
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        dims = (1, *self.filters, 1)
        scale = init_scale ** (1.0 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for k in range(len(dims) - 1):
            init = math.log(math.expm1(1.0 / scale / dims[k + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[k + 1], dims[k]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[k + 1], 1) - 0.5))
            if k < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[k + 1], 1)))

    def cdf_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of the CDF at ``x`` of shape (C, 1, M) -> (C, 1, M)."""
        for k, (h, b) in enumerate(zip(self.matrices, self.biases, strict=True)):
            x = torch.matmul(F.softplus(h), x) + b
            if k < len(self.factors):
                x = x + torch.tanh(self.factors[k]) * torch.tanh(x)
        return x

    def log_likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """ln P(bin [y - 1/2, y + 1/2]) per value, same shape as ``y`` (N, C, ...).

        Computed in log space, ``ln(s(hi) - s(lo)) = ln s(hi) + ln(1 - exp(ln s(lo) -
        ln s(hi)))`` on the side of the sigmoid where both are small, and not floored: a value
        far in a tail costs what the prior says, growing with its distance, and keeps a useful
        gradient. (A floor such as 1e-9 caps the cost of any value at 30 bits; training then
        learns to push latents beyond it, where finer quantisation is free, while the real
        file pays escapes for every such value.)
        """
        n, c = y.shape[0], y.shape[1]
        if c != self.channels:
            raise ValueError(f"prior has {self.channels} channels, latent has {c}")
        flat = y.transpose(0, 1).reshape(c, 1, -1)
        upper = self.cdf_logits(flat + 0.5)
        lower = self.cdf_logits(flat - 0.5)
        sign = -torch.sign(upper + lower).detach()  # the flat tail of the sigmoid
        a, b = sign * upper, sign * lower
        log_hi = F.logsigmoid(torch.maximum(a, b))
        log_lo = F.logsigmoid(torch.minimum(a, b))
        gap = (log_hi - log_lo).clamp_min(1e-12)
        ll = log_hi + torch.log(-torch.expm1(-gap))
        return ll.reshape(c, n, *y.shape[2:]).transpose(0, 1)

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """P(bin [y - 1/2, y + 1/2]) per value, same shape as ``y`` (N, C, ...)."""
        return self.log_likelihood(y).exp()

    def bits(self, y: torch.Tensor) -> torch.Tensor:
        """Rate of each item of the batch in bits, shape (N,)."""
        return -self.log_likelihood(y).flatten(1).sum(dim=1) / math.log(2)


# --------------------------------------------------------------------------- integer tables
@dataclass(frozen=True)
class IntegerTables:
    """Per-channel integer frequency tables (see the module docstring).

    ``lo`` (C,) int32: value of symbol 0; ``sizes`` (C,) int32: symbols per channel including
    the escape (the last one); ``freq``: all channels' frequencies concatenated, int32, each
    channel's summing to ``2**precision``.
    """

    precision: int
    lo: np.ndarray
    sizes: np.ndarray
    freq: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.lo.size)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes.astype(np.int64))[:-1]])

    def channel(self, c: int) -> np.ndarray:
        start = int(self.offsets[c])
        return self.freq[start:start + int(self.sizes[c])]

    def state(self) -> dict[str, Any]:
        """Tensors for a checkpoint (``torch.load(weights_only=True)`` reads them)."""
        return {"precision": self.precision, "lo": torch.from_numpy(self.lo.copy()),
                "sizes": torch.from_numpy(self.sizes.copy()),
                "freq": torch.from_numpy(self.freq.copy())}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> IntegerTables:
        """Restore and check (ValueError when the tables are not valid coding tables)."""
        t = cls(int(state["precision"]), _int_array(state["lo"]), _int_array(state["sizes"]),
                _int_array(state["freq"]))
        t.check()
        return t

    def check(self) -> None:
        if self.precision != PRECISION:
            raise ValueError(f"tables have precision {self.precision}, the coder {PRECISION}")
        if self.lo.shape != self.sizes.shape or self.sizes.min(initial=2) < 2:
            raise ValueError("tables: lo/sizes disagree or a channel has < 2 symbols")
        if int(self.sizes.astype(np.int64).sum()) != self.freq.size or self.freq.min() < 1:
            raise ValueError("tables: frequency array size or a zero frequency")
        sums = np.add.reduceat(self.freq.astype(np.int64), self.offsets)
        if not (sums == (1 << self.precision)).all():
            raise ValueError("tables: a channel's frequencies do not sum to 2**precision")


def _int_array(v: Any) -> np.ndarray:
    arr = v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return np.ascontiguousarray(arr, dtype=np.int32)


def quantise_pmf(pmf: np.ndarray, escape: float, total: int = TOTAL) -> np.ndarray:
    """Float probabilities of the values plus the escape -> integer frequencies (int64),
    each >= 1, summing to ``total``; the leftover units go to the largest remainders."""
    p = np.append(np.clip(pmf, 0.0, None), max(escape, 0.0))
    n = p.size
    free = total - n
    exact = p / p.sum() * free
    f = np.floor(exact).astype(np.int64)
    deficit = free - int(f.sum())
    if deficit > 0:
        order = np.argsort(-(exact - f), kind="stable")
        f[order[:deficit]] += 1
    return f + 1


@torch.no_grad()
def _cdf_at(prior: FactorizedPrior, points: np.ndarray) -> np.ndarray:
    """CDF of every channel at ``points`` (M,), float64 (C, M)."""
    x = torch.as_tensor(points, dtype=torch.float64).reshape(1, 1, -1)
    x = x.expand(prior.channels, 1, -1)
    return torch.sigmoid(prior.cdf_logits(x)).reshape(prior.channels, -1).numpy()


def _search_range(prior: FactorizedPrior, tail: float) -> int:
    """Smallest power of two M >= 32 with all channels' tails beyond +-M below ``tail``/2."""
    m = 32
    while m < MAX_SUPPORT // 2:
        c = _cdf_at(prior, np.array([-m - 0.5, m + 0.5]))
        if (c[:, 0] < tail / 2).all() and (c[:, 1] > 1 - tail / 2).all():
            break
        m *= 2
    return m


@torch.no_grad()
def derive_tables(prior: FactorizedPrior, tail: float = TAIL_MASS) -> IntegerTables:
    """Integer tables of the learned density (run once, when a model is finalised).

    Per channel the range ``[lo, hi]`` keeps all but ``tail`` of the probability (at most
    :data:`MAX_SUPPORT` values); the rest is the escape symbol's probability.
    """
    p64 = copy.deepcopy(prior).double().cpu()
    m = _search_range(p64, tail)
    edges = np.arange(-m, m + 2, dtype=np.float64) - 0.5  # k - 1/2 for k in [-m, m + 1]
    cdf = _cdf_at(p64, edges)  # (C, 2m + 2)
    los, sizes, freqs = [], [], []
    for c in range(prior.channels):
        row = cdf[c]
        lo_i = int(np.searchsorted(row[1:], tail / 2, side="right"))
        hi_i = int(np.searchsorted(row[:-1], 1 - tail / 2, side="left")) - 1
        hi_i = max(hi_i, lo_i)
        pmf = row[lo_i + 1:hi_i + 2] - row[lo_i:hi_i + 1]
        escape = 1.0 - float(pmf.sum())
        f = quantise_pmf(pmf, escape)
        los.append(lo_i - m)
        sizes.append(f.size)
        freqs.append(f)
    tables = IntegerTables(PRECISION, np.array(los, np.int32), np.array(sizes, np.int32),
                           np.concatenate(freqs).astype(np.int32))
    tables.check()
    return tables


def table_bits(tables: IntegerTables, q: np.ndarray) -> float:
    """Ideal code length in bits of integer values ``q`` (C, K) under the tables."""
    sym = symbols_of(tables, q)
    total = 0.0
    for c in range(tables.channels):
        f = tables.channel(c)[sym[c]].astype(np.float64)
        total += float(-np.log2(f / (1 << tables.precision)).sum())
    return total


def symbols_of(tables: IntegerTables, q: np.ndarray) -> np.ndarray:
    """Integer values (C, K) -> symbols (C, K) int32 (escape = the last symbol)."""
    lo = tables.lo[:, None].astype(np.int64)
    esc = (tables.sizes - 1)[:, None].astype(np.int64)
    s = q.astype(np.int64) - lo
    return np.where((s < 0) | (s >= esc), esc, s).astype(np.int32)


# --------------------------------------------------------------------------- coding
class CodingError(ValueError):
    """The ANS payload does not decode to the expected number of symbols."""


class SymbolCoder:
    """Entropy-code integer latents (C, K) with the tables: one ANS stream per call.

    The stream holds channel 0 first (K symbols), then channel 1, ...; escaped values are
    returned separately (int32, in (channel, position) order) for the container to store.
    """

    def __init__(self, tables: IntegerTables) -> None:
        import constriction

        self.tables = tables
        cat = constriction.stream.model.Categorical
        self._models = [cat((tables.channel(c).astype(np.float64) - 1.0), perfect=False)
                        for c in range(tables.channels)]
        self._ans = constriction.stream.stack.AnsCoder

    def encode(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ANS words uint32, escaped values int32) of integer latents ``q`` (C, K)."""
        if q.shape[0] != self.tables.channels:
            raise ValueError(f"{q.shape[0]} channels, tables have {self.tables.channels}")
        sym = symbols_of(self.tables, q)
        esc_mask = sym == (self.tables.sizes - 1)[:, None]
        escapes = q[esc_mask].astype(np.int64)
        if escapes.size and (np.abs(escapes) >= 2**31).any():
            raise ValueError("a latent value does not fit in int32")
        coder = self._ans()
        for c in range(self.tables.channels - 1, -1, -1):  # a stack: last channel first
            coder.encode_reverse(sym[c], self._models[c])
        return coder.get_compressed(), escapes.astype(np.int32)

    def decode(self, words: np.ndarray, escapes: np.ndarray, k: int) -> np.ndarray:
        """Inverse of :meth:`encode`: integer latents (C, K) int32; CodingError when the
        stream is not exactly consumed or the escape count disagrees."""
        try:
            coder = self._ans(np.ascontiguousarray(words, dtype=np.uint32))
            sym = np.stack([coder.decode(m, k) for m in self._models]).astype(np.int64)
            empty = coder.is_empty()
        except (ValueError, RuntimeError, OverflowError) as exc:
            raise CodingError(f"ANS stream does not decode ({exc})") from None
        if not empty:
            raise CodingError("ANS stream has data left after the last symbol")
        esc = (self.tables.sizes - 1)[:, None].astype(np.int64)
        is_esc = sym == esc
        if int(is_esc.sum()) != escapes.size:
            raise CodingError(f"{int(is_esc.sum())} escape symbols but {escapes.size} values")
        q = sym + self.tables.lo[:, None]
        q[is_esc] = escapes
        return q.astype(np.int32)
