"""Metrics against hand computations and independent implementations (skimage, torchmetrics,
pytorch-msssim), NaN handling and all-zero spectra."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as ref_ms_ssim
from pytorch_msssim import ssim as ref_ssim
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.image import PeakSignalNoiseRatio, SpectralAngleMapper

from training import metrics as M


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    base = np.cumsum(np.cumsum(rng.normal(size=(3, 1, 48, 64)), axis=2), axis=3)
    x = base * np.linspace(1, 2, 4)[None, :, None, None]
    x = (x - x.min()) / np.ptp(x)
    y = np.clip(x + rng.normal(0, 0.03, x.shape), 0, 1)
    return x, y


# --------------------------------------------------------------------------- PSNR
def test_psnr_hand_computed() -> None:
    x = np.zeros((1, 2, 4, 4))
    y = np.full_like(x, 0.1)  # MSE 0.01 -> 20 dB at peak 1
    assert M.psnr(x, y) == pytest.approx(20.0)
    assert M.psnr(x, y, peak=2.0) == pytest.approx(20.0 + 20 * math.log10(2))
    per_band = M.psnr(x, y, peak=np.array([1.0, 10.0]), over="band")
    np.testing.assert_allclose(per_band, [20.0, 40.0])
    # pooled over bands with per-band peaks: mean of (0.01, 0.0001)
    assert M.psnr(x, y, peak=np.array([1.0, 10.0])) == pytest.approx(-10 * math.log10(0.00505))
    assert M.psnr(x, x) == np.inf


def test_psnr_matches_skimage_and_torchmetrics(pair) -> None:
    x, y = pair
    per_tile = M.psnr(x, y, over="tile")
    for i in range(x.shape[0]):
        assert per_tile[i] == pytest.approx(peak_signal_noise_ratio(x[i], y[i], data_range=1.0))
    tm = PeakSignalNoiseRatio(data_range=1.0, reduction="none", dim=(1, 2, 3))
    np.testing.assert_allclose(per_tile, tm(torch.from_numpy(y), torch.from_numpy(x)).numpy())
    pooled = PeakSignalNoiseRatio(data_range=1.0)(torch.from_numpy(y), torch.from_numpy(x))
    assert M.psnr(x, y) == pytest.approx(float(pooled))


def test_psnr_excludes_nan_pixels(pair) -> None:
    x, y = pair
    xn = x.copy()
    xn[0, 1, 5:9, 3] = np.nan
    yn = y.copy()
    yn[2, 0, 0, :] = np.nan
    ok = np.isfinite(xn) & np.isfinite(yn)
    mse = np.mean((x[ok] - y[ok]) ** 2)
    assert M.psnr(xn, yn) == pytest.approx(-10 * math.log10(mse))
    band = np.full(x.shape[1], np.nan)
    band[:] = M.psnr(xn, yn, over="band")
    assert np.all(np.isfinite(band))
    all_nan = x.copy()
    all_nan[:, 2] = np.nan
    assert np.isnan(M.psnr(all_nan, y, over="band")[2])


def test_abs_error_hand_computed() -> None:
    x = np.zeros((1, 1, 2, 2))
    y = np.array([[[[1.0, -3.0], [0.5, np.nan]]]])
    mae, mx = M.abs_error(x, y)
    assert mae == pytest.approx(1.5)
    assert mx == pytest.approx(3.0)


# --------------------------------------------------------------------------- SSIM family
def test_ssim_matches_pytorch_msssim_per_band(pair) -> None:
    x, y = pair
    ours = M.ssim(x, y, data_range=1.0)  # (N, B)
    for b in range(x.shape[1]):
        ref = ref_ssim(torch.from_numpy(x[:, b : b + 1]), torch.from_numpy(y[:, b : b + 1]),
                       data_range=1.0, win_size=7, size_average=False, nonnegative_ssim=False)
        np.testing.assert_allclose(ours[:, b], ref.numpy(), rtol=1e-4)  # it works in float32


def test_ssim_11px_matches_skimage(pair) -> None:
    x, y = pair
    ours = M.ssim(x, y, data_range=1.0, win_size=11)
    sk = structural_similarity(x[0, 0], y[0, 0], data_range=1.0, gaussian_weights=True,
                               sigma=1.5, use_sample_covariance=False)
    assert ours[0, 0] == pytest.approx(sk, abs=1e-9)


def test_ssim_drops_windows_touching_invalid_pixels(pair) -> None:
    x, y = pair
    a, b = x.copy(), x.copy()
    a[0, 0, 20, 30] = 5.0
    b[0, 0, 20, 30] = -7.0  # any value at an invalid pixel must not matter
    ya = y.copy()
    ya[0, 0, 20, 30] = np.nan
    sa, sb = M.ssim(a, ya), M.ssim(b, ya)
    assert np.isfinite(sa).all()
    np.testing.assert_allclose(sa, sb)
    # untouched tiles/bands keep the plain value
    np.testing.assert_allclose(sa[1:], M.ssim(x, y)[1:])
    assert M.ssim(x, x)[0, 0] == pytest.approx(1.0)


def test_ms_ssim_matches_pytorch_msssim_win3(pair) -> None:
    x, y = pair
    ours = M.ms_ssim(x, y, data_range=1.0)
    for b in range(x.shape[1]):
        ref = ref_ms_ssim(torch.from_numpy(x[:, b : b + 1]), torch.from_numpy(y[:, b : b + 1]),
                          data_range=1.0, win_size=3, size_average=False)
        np.testing.assert_allclose(ours[:, b], ref.numpy(), rtol=1e-4)
    assert M.ms_ssim(x, x) == pytest.approx(1.0)


def test_ms_ssim_refuses_too_small_images() -> None:
    x = np.zeros((1, 1, 32, 32))
    with pytest.raises(ValueError, match="larger than"):
        M.ms_ssim(x, x)


# --------------------------------------------------------------------------- FSIM
@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return skdata.camera().astype(np.float64)  # 512 x 512, 0..255


def test_fsim_identity_symmetry_range(camera) -> None:
    rng = np.random.default_rng(0)
    img = camera[None, None]
    noisy = np.clip(img + rng.normal(0, 10, img.shape), 0, 255)
    assert M.fsim(img, img, data_range=255.0)[0, 0] == pytest.approx(1.0)
    f1 = M.fsim(img, noisy, data_range=255.0)[0, 0]
    f2 = M.fsim(noisy, img, data_range=255.0)[0, 0]
    assert f1 == pytest.approx(f2, rel=1e-12)
    assert 0.85 < f1 < 0.99  # sigma 10 noise on a natural image: clearly < 1, far above 0


def test_fsim_monotone_with_noise_on_tiles(pair) -> None:
    x, _ = pair
    rng = np.random.default_rng(3)
    values = [M.fsim(x, np.clip(x + rng.normal(0, s, x.shape), 0, 1)).mean()
              for s in (0.0, 0.01, 0.03, 0.1, 0.3)]
    assert values[0] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(values))
    assert 0.0 < values[-1] < 1.0


def test_fsim_nan_pixels_ignored(pair) -> None:
    x, y = pair
    xn = x.copy()
    xn[0, 0, 10:12, 10:12] = np.nan
    f = M.fsim(xn, y)
    assert np.isfinite(f).all() and (f <= 1.0 + 1e-12).all()
    xn[1, 2] = np.nan
    assert np.isnan(M.fsim(xn, y)[1, 2])


def test_phase_congruency_peaks_at_an_edge() -> None:
    rng = np.random.default_rng(0)
    square = np.zeros((1, 64, 64))
    square[:, 16:48, 16:48] = 200.0
    pc = M.phase_congruency(square + rng.normal(0, 1, square.shape))
    assert pc.min() >= 0.0 and pc.max() <= 1.0
    assert pc[0, 32, 15:17].max() > 2 * pc[0, 32, 12]  # the edge vs 4 px outside it


# --------------------------------------------------------------------------- SAM
def test_sam_hand_computed_and_zero_spectra() -> None:
    x = np.zeros((1, 2, 1, 3))
    y = np.zeros((1, 2, 1, 3))
    x[0, :, 0, 0], y[0, :, 0, 0] = [1, 0], [1, 1]  # 45 degrees
    x[0, :, 0, 1], y[0, :, 0, 1] = [0, 2], [0, 5]  # 0 degrees
    # pixel 2: all-zero reference spectrum -> excluded, not NaN in the mean
    y[0, :, 0, 2] = [1, 1]
    ang = M.spectral_angle(x, y)
    np.testing.assert_allclose(ang[0, 0, :2], [45.0, 0.0], atol=1e-12)
    assert np.isnan(ang[0, 0, 2])
    assert M.sam(x, y) == pytest.approx(22.5)


def test_sam_nan_bands_and_torchmetrics(pair) -> None:
    x, y = pair
    xp, yp = x + 0.1, y + 0.1
    sam_rad = SpectralAngleMapper(reduction="none")  # returns radians
    ref = sam_rad(torch.from_numpy(yp), torch.from_numpy(xp))
    np.testing.assert_allclose(M.spectral_angle(xp, yp), np.degrees(ref.numpy()), atol=1e-9)
    xn = xp.copy()
    xn[0, 1, 4, 4] = np.nan  # that pixel uses the other 3 bands
    keep = [0, 2, 3]
    a, b = xp[0, keep, 4, 4], yp[0, keep, 4, 4]
    want = math.degrees(math.acos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    assert M.spectral_angle(xn, yp)[0, 4, 4] == pytest.approx(want)
    xn[0, :, 7, 7] = np.nan  # all-invalid spectrum: excluded
    assert np.isnan(M.spectral_angle(xn, yp)[0, 7, 7])
    assert np.isfinite(M.sam(xn, yp))
    assert M.sam(xp, xp) < 1e-5


# --------------------------------------------------------------------------- accumulator
def test_accumulator_matches_direct_functions(pair) -> None:
    x, y = pair
    peak = np.array([2.0, 3.0, 4.0, 5.0])
    scale = peak.reshape(1, -1, 1, 1)
    xp, yp = x * scale, y * scale
    xp[0, 0, 0, 0] = np.nan
    acc = M.MetricAccumulator(bands=4, peak_phys=peak)
    acc.update(xp[:2], yp[:2], xp[:2] / scale, yp[:2] / scale)
    acc.update(xp[2:], yp[2:], xp[2:] / scale, yp[2:] / scale)
    s = acc.summary()
    assert s["psnr"] == pytest.approx(float(M.psnr(xp / scale, yp / scale)))
    assert s["psnr_phys"] == pytest.approx(float(M.psnr(xp, yp, peak)))
    assert s["sam"] == pytest.approx(M.sam(xp, yp))
    mae, mx = M.abs_error(xp, yp)
    assert s["mae"] == pytest.approx(float(mae))
    assert s["max_abs_err"] == pytest.approx(float(mx))
    assert s["rmse"] == pytest.approx(float(np.sqrt(np.nanmean((xp - yp) ** 2))))
    assert s["psnr_tile_mean"] == pytest.approx(float(np.mean(M.psnr(xp / scale, yp / scale,
                                                                      over="tile"))))
    pb = acc.per_band()
    np.testing.assert_allclose(pb["psnr_phys"], M.psnr(xp, yp, peak, over="band"))
    np.testing.assert_allclose(pb["ssim"], np.nanmean(M.ssim(xp / scale, yp / scale), axis=0))
    assert acc.tiles == 3
