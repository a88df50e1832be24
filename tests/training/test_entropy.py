"""Entropy model: the learned prior, the integer tables and the ANS coding through constriction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.entropy import (
    PRECISION,
    CodingError,
    FactorizedPrior,
    IntegerTables,
    SymbolCoder,
    derive_tables,
    quantise_pmf,
    table_bits,
)

TOTAL = 1 << PRECISION
pytestmark = pytest.mark.usefixtures("one_thread")


def _tables(*freqs: list[int], lo: list[int] | None = None) -> IntegerTables:
    sizes = np.array([len(f) for f in freqs], np.int32)
    return IntegerTables(PRECISION, np.array(lo or [0] * len(freqs), np.int32), sizes,
                         np.concatenate([np.asarray(f, np.int32) for f in freqs]))


def _coded_bits(tables: IntegerTables, q: np.ndarray) -> int:
    words, _ = SymbolCoder(tables).encode(q)
    return 32 * words.size


def test_constriction_uses_our_integer_frequencies_exactly() -> None:
    # A symbol of frequency 1 costs exactly 24 bits, one of frequency 2**23 exactly 1 bit:
    # any other quantisation inside constriction would change these code lengths.
    rare = _tables([TOTAL - 3, 1, 1, 1])
    q = np.full((1, 4000), 1, np.int32)
    assert abs(_coded_bits(rare, q) - 24 * 4000) <= 64
    half = _tables([TOTAL // 2, TOTAL // 4, TOTAL // 4])
    q = np.array([[0] * 3000 + [1] * 1000 + [2] * 1000], np.int32)
    assert abs(_coded_bits(half, q) - (3000 + 2 * 2000)) <= 64


def test_quantise_pmf_sums_exactly_and_keeps_every_symbol() -> None:
    pmf = np.array([0.5, 0.25, 1e-12, 0.0, 0.2499])
    f = quantise_pmf(pmf, escape=1e-9)
    assert f.sum() == TOTAL and f.min() >= 1 and f.size == 6
    assert f[0] == pytest.approx(TOTAL * 0.5 / pmf.sum(), rel=1e-5)


def test_symbol_coder_round_trip_with_escapes() -> None:
    rng = np.random.default_rng(0)
    tables = _tables(quantise_pmf(np.full(9, 1 / 9), 1e-6), quantise_pmf(np.ones(3) / 3, 1e-6),
                     lo=[-4, 10])
    q = np.stack([rng.integers(-4, 5, 50), rng.integers(10, 13, 50)]).astype(np.int32)
    q[0, 7], q[1, 3], q[1, 40] = 1_000_000, -2**31 + 1, 13  # outside the tables: escaped
    coder = SymbolCoder(tables)
    words, escapes = coder.encode(q)
    assert escapes.tolist() == [1_000_000, -2**31 + 1, 13]
    assert np.array_equal(coder.decode(words, escapes, 50), q)
    with pytest.raises(CodingError):
        coder.decode(words, escapes[:2], 50)


def test_learned_prior_tables_code_near_the_entropy() -> None:
    """Fit the prior to two known distributions; the integer tables then code fresh samples
    within a few percent of their true entropy (after rounding to integers)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scales = (4.0, 0.7)
    prior = FactorizedPrior(2)
    opt = torch.optim.Adam(prior.parameters(), lr=0.02)
    for _ in range(400):
        y = torch.from_numpy(np.stack([rng.normal(0, s, 512) for s in scales], 1)).float()
        loss = prior.bits(y + torch.rand_like(y) - 0.5).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    tables = derive_tables(prior)
    assert tables.check() is None
    q = np.stack([np.round(rng.normal(0, s, 20000)) for s in scales]).astype(np.int32)
    for c, s in enumerate(scales):
        cdf = [0.5 * (1 + math.erf((k + 0.5) / (s * math.sqrt(2)))) for k in range(-61, 61)]
        p = np.diff(cdf)
        entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
        bits = table_bits(IntegerTables(PRECISION, tables.lo[c:c + 1], tables.sizes[c:c + 1],
                                        tables.channel(c)), q[c:c + 1]) / q.shape[1]
        assert entropy <= bits + 0.01 and bits < entropy * 1.05 + 0.02, (c, bits, entropy)
    coded = _coded_bits(tables, q)
    assert coded == pytest.approx(table_bits(tables, q), abs=64)


def test_tables_state_round_trip_and_check() -> None:
    prior = FactorizedPrior(3)
    tables = derive_tables(prior)
    back = IntegerTables.from_state(tables.state())
    assert np.array_equal(back.freq, tables.freq) and np.array_equal(back.lo, tables.lo)
    broken = tables.state()
    broken["freq"] = broken["freq"].clone()
    broken["freq"][0] += 1
    with pytest.raises(ValueError, match="sum"):
        IntegerTables.from_state(broken)


def test_likelihood_is_a_probability_per_bin() -> None:
    prior = FactorizedPrior(1)
    k = torch.arange(-400, 401, dtype=torch.float32).reshape(-1, 1)
    total = prior.likelihood(k).sum().item()
    assert math.isclose(total, 1.0, abs_tol=1e-3)


def test_new_codec_covers_its_latents_from_the_start() -> None:
    """init_from centres and scales the latents to the prior's initial width: no value sits
    far in the prior's tails, whatever the encoder's offset and scale."""
    from training.codec import INIT_STEPS, LatentCodec

    torch.manual_seed(0)
    z = 5.0 + 0.01 * torch.randn(16, 32, 4, 4) * torch.linspace(0.5, 3, 32).reshape(1, -1, 1, 1)
    codec = LatentCodec((32, 4, 4)).eval()
    codec.init_from(z)
    _, bits = codec(z)
    per_value = bits.sum().item() / z.numel()
    gaussian = math.log2(INIT_STEPS * math.sqrt(2 * math.pi * math.e))  # 5.05 bits
    assert gaussian <= per_value < gaussian + 3, per_value


def test_rate_gradient_reaches_the_prior_from_the_tails() -> None:
    prior = FactorizedPrior(1, init_scale=4.0)
    y = torch.tensor([[[300.0]]])  # far outside: its probability underflows in float32
    bits = prior.bits(y)
    bits.sum().backward()
    assert torch.isfinite(bits).all() and bits.item() > 100  # it costs, and more the farther
    assert prior.biases[-1].grad.abs().sum() > 1e-3
