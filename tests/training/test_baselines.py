"""Each baseline: real round trip through its codec, measured rate from the real bytes."""

from __future__ import annotations

import numpy as np
import pytest

from training import baselines as BL
from training import metrics as M

N, B, H, W = 2, 6, 24, 32


def _smooth(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.cumsum(np.cumsum(rng.normal(size=(N, 1, H, W)), axis=2), axis=3)
    return base * np.linspace(1, 2, B)[None, :, None, None] + rng.normal(size=(N, B, H, W)) * 0.3


@pytest.fixture(scope="module")
def float_tiles() -> np.ndarray:
    t = (_smooth(0) * 3 + 50).astype(np.float32)
    t[0, :, 2, 3] = np.nan  # a no-data pixel in every band
    t[1, 4, 7, :] = np.nan  # a bad line in one band
    return t


@pytest.fixture(scope="module")
def uint_tiles() -> np.ndarray:
    return np.clip(_smooth(1) * 40 + 3000, 0, 65535).astype(np.uint16)


def _fmt(t: np.ndarray) -> BL.TileFormat:
    return BL.TileFormat(B, H, W, t.dtype)


def _range(t: np.ndarray) -> BL.BandRange:
    return BL.BandRange(np.nanmin(t, axis=(0, 2, 3)).astype(float),
                        np.nanmax(t, axis=(0, 2, 3)).astype(float))


def _check_rate(codec: BL.Codec, tiles: np.ndarray, res: BL.CodedBatch) -> None:
    real = sum(BL.payload_bytes(codec.encode(t)) for t in tiles)
    assert res.nbytes == real > 0
    assert res.bpppc == pytest.approx(8 * real / tiles.size)
    assert res.recon.shape == tiles.shape


@pytest.mark.parametrize("kind", ["float", "uint"])
def test_lossless_codecs_round_trip(kind, float_tiles, uint_tiles) -> None:
    tiles = float_tiles if kind == "float" else uint_tiles
    fmt = _fmt(tiles)
    for codec in (BL.jpeg2000_lossless(fmt), BL.jpegxl_lossless(fmt, effort=3), BL.ccsds121(fmt)):
        res = BL.code_tiles(codec, tiles)
        _check_rate(codec, tiles, res)
        assert codec.lossless
        if kind == "uint":
            np.testing.assert_array_equal(res.recon, tiles)
            assert res.bpppc < 16
        else:
            # lossless w.r.t. the uint16 map: at most half a step of each tile band's range
            np.testing.assert_array_equal(np.isnan(res.recon), np.isnan(tiles))
            step = (np.nanmax(tiles, axis=(2, 3)) - np.nanmin(tiles, axis=(2, 3))) / 65535
            err = np.nanmax(np.abs(res.recon.astype(np.float64) - tiles), axis=(2, 3))
            assert np.all(err <= step * 0.5 + 1e-5 * np.nanmax(np.abs(tiles)))


def test_uint16_map_side_information_is_counted(float_tiles) -> None:
    q, side = BL.to_uint16(float_tiles[0])
    assert q.dtype == np.uint16 and q.max() == 65535
    assert len(side[1]) == 2 * 4 * B  # float32 min and max per band
    assert side[0][:1] == b"\x01"  # this tile has NaNs: mask stored
    back = BL.from_uint16(q, side, _fmt(float_tiles))
    np.testing.assert_array_equal(np.isnan(back), np.isnan(float_tiles[0]))
    assert BL.to_uint16(np.zeros((B, H, W), np.uint16))[1] == []


@pytest.mark.parametrize("kind", ["float", "uint"])
def test_requant_rate_and_error(kind, float_tiles, uint_tiles) -> None:
    tiles = float_tiles if kind == "float" else uint_tiles
    rng_ = _range(tiles)
    prev = -np.inf
    for bits in (2, 4, 8):
        codec = BL.requant(bits, _fmt(tiles), rng_)
        res = BL.code_tiles(codec, tiles)
        _check_rate(codec, tiles, res)
        assert res.bpppc == pytest.approx(bits, abs=0.05)  # + mask / flag bytes
        step = rng_.span / (2**bits - 1)
        err = np.nanmax(np.abs(res.recon.astype(np.float64) - tiles), axis=(0, 2, 3))
        assert np.all(err <= step / 2 + 0.51 * (kind == "uint") + 1e-3)
        p = M.psnr(tiles.astype(float), res.recon.astype(float), rng_.span)
        assert p > prev
        prev = p


def test_pca_side_information_and_quality(uint_tiles) -> None:
    fmt = _fmt(uint_tiles)
    low = BL.code_tiles(BL.pca(1, 8, fmt), uint_tiles)
    high = BL.code_tiles(BL.pca(B, 12, fmt), uint_tiles)
    side = 4 * B + 2 * B * 1 + 8  # mean f32, basis f16, score min/max
    assert low.nbytes > N * side
    assert high.bpppc > low.bpppc
    rng_ = _range(uint_tiles)
    assert M.psnr(uint_tiles, high.recon, rng_.span) > M.psnr(uint_tiles, low.recon, rng_.span)
    assert M.psnr(uint_tiles, high.recon, rng_.span) > 60


@pytest.mark.parametrize("cube", [False, True])
def test_jpeg2000_rate_search_hits_target(cube, uint_tiles) -> None:
    fmt = _fmt(uint_tiles)
    found = BL.search_level(lambda lv: BL.jpeg2000(lv, fmt, cube=cube), uint_tiles, 3.0)
    assert found is not None
    codec, rate = found
    res = BL.code_tiles(codec, uint_tiles)
    _check_rate(codec, uint_tiles, res)
    assert res.bpppc == pytest.approx(rate)
    assert 2.4 <= rate <= 3.0
    assert BL.search_level(lambda lv: BL.jpeg2000(lv, fmt, cube=cube), uint_tiles, 1e-4) is None


def test_jpegxl_band_round_trip(float_tiles) -> None:
    fmt = _fmt(float_tiles)
    rates, psnrs = [], []
    rng_ = _range(float_tiles)
    for d in (0.2, 2.0):
        codec = BL.jpegxl_band(d, fmt, effort=3)
        res = BL.code_tiles(codec, float_tiles)
        _check_rate(codec, float_tiles, res)
        np.testing.assert_array_equal(np.isnan(res.recon), np.isnan(float_tiles))
        rates.append(res.bpppc)
        psnrs.append(M.psnr(float_tiles, res.recon, rng_.span))
    assert rates[0] > rates[1] and psnrs[0] > psnrs[1]


def test_jpeg8_paper_setting_is_flagged_and_wraps(uint_tiles) -> None:
    codec = BL.jpeg8_paper(95, _fmt(uint_tiles))
    assert codec.flagged == "paper_8bit_wrap"
    ref = codec.reference(uint_tiles[0])
    np.testing.assert_array_equal(ref, (uint_tiles[0] % 256).astype(np.uint8))
    res = BL.code_tiles(codec, uint_tiles)
    _check_rate(codec, uint_tiles, res)
    assert res.recon.dtype == np.uint8


def test_build_codecs_default_set(uint_tiles) -> None:
    settings = BL.BaselineSettings(target_bpppc=(2.0,), jpegxl_distances=(1.0,),
                                   jpeg8_qualities=(90,), jpegxl_effort=3)
    codecs = BL.build_codecs(settings, _fmt(uint_tiles), _range(uint_tiles), uint_tiles,
                             extra_targets=(3.0,))
    methods = {c.method for c in codecs}
    assert methods == {"requant", "pca", "jpeg2000_band", "jpeg2000_cube", "jpegxl_band",
                       "jpeg8_paper", "jpeg2000_lossless", "jpegxl_lossless", "ccsds121"}
    assert sum(c.method == "jpeg2000_cube" for c in codecs) == 2


def test_sz3_error_bound_and_rate(float_tiles) -> None:
    fmt = _fmt(float_tiles)
    rates = []
    for tol in (0.5, 0.01):
        codec = BL.sz3(tol, fmt)
        res = BL.code_tiles(codec, float_tiles)
        _check_rate(codec, float_tiles, res)
        np.testing.assert_array_equal(np.isnan(res.recon), np.isnan(float_tiles))
        assert np.nanmax(np.abs(res.recon.astype(np.float64) - float_tiles)) <= tol * (1 + 1e-5)
        rates.append(res.bpppc)
    assert rates[0] < rates[1]
    with pytest.raises(ValueError):
        BL.sz3(0.1, BL.TileFormat(B, H, W, np.dtype(np.uint16)))
    codecs = BL.build_codecs(BL.BaselineSettings(target_bpppc=(), jpegxl_distances=(),
                                                 jpeg8_qualities=(), lossless=False,
                                                 sz3_relative=(1e-3,)),
                             fmt, _range(float_tiles), float_tiles)
    assert [c.method for c in codecs].count("sz3") == 1
