"""Distortion metrics for hyperspectral tiles, with invalid (NaN) pixels excluded everywhere.

Arrays are numpy or torch, shaped (N, B, H, W) tile batches or one (B, H, W) cube (treated as
N = 1). ``x`` is the reference, ``y`` the reconstruction. A pixel value counts only where both
are finite; every statistic is computed in float64.

Conventions (stated in every report this project writes):

- PSNR = -10 log10(mean(((x - y) / peak_b)^2)), with ``peak_b`` a fixed number per band (or one
  number for all bands); never the per-image maximum. Two scales are reported: the normalised
  scale with peak 1 (what the SSCNet paper reports) and physical units with peak = the band's
  training data range (max - min from the dataset statistics). "Pooled" means one mean squared
  error over everything; "tile mean" the mean of per-tile PSNRs.
- SSIM: Gaussian window 7 x 7, sigma 1.5, K1 = 0.01, K2 = 0.03, fixed ``data_range``, no padding;
  a window touching an invalid pixel is dropped. Per band and per tile.
- MS-SSIM: the same with a 3 x 3 window (sigma 1.5) and the 5 standard scale weights, so that
  48 and 64 pixel tiles fit (the default 11 pixel window needs more than 160 pixels).
- FSIM: grayscale FSIM of Zhang et al. (IEEE TIP 20(8), 2011) per band: phase congruency from
  log-Gabor filters (4 scales, 4 orientations) and Scharr gradient magnitude, on the image scaled
  to 0..255 by ``data_range``.
- Spectral angle: degrees, float64, over the bands valid in both spectra; spectra with no valid
  band or a zero norm are excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # torch is optional for the numpy functions; SSIM/MS-SSIM use it for convolutions.
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is a project dependency of training/
    torch = None  # type: ignore[assignment]

SSIM_WINDOW = 7
MSSSIM_WINDOW = 3
GAUSS_SIGMA = 1.5
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def as_numpy(a: Any) -> np.ndarray:
    """Return ``a`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _batch(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_numpy(x), as_numpy(y)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: reference {x.shape} vs reconstruction {y.shape}")
    if x.ndim == 3:
        x, y = x[None], y[None]
    if x.ndim != 4:
        raise ValueError(f"expected (N, B, H, W) or (B, H, W) arrays, got shape {x.shape}")
    return x.astype(np.float64), y.astype(np.float64)


def _peak(peak: float | np.ndarray, bands: int) -> np.ndarray:
    p = np.broadcast_to(np.asarray(peak, dtype=np.float64), (bands,))
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(f"PSNR peak must be finite and > 0 per band, got {p}")
    return p.reshape(1, bands, 1, 1)


def scaled_squared_error(x: Any, y: Any, peak: float | np.ndarray = 1.0) -> np.ndarray:
    """((x - y) / peak_b)^2 as float64 (N, B, H, W); NaN where either input is invalid."""
    x, y = _batch(x, y)
    return ((x - y) / _peak(peak, x.shape[1])) ** 2


def _psnr_from_mse(mse: np.ndarray | float) -> np.ndarray:
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mse > 0, -10.0 * np.log10(mse), np.inf)


def _nanmean(a: np.ndarray, axis: Any = None) -> np.ndarray:
    """Mean over finite entries; NaN (no warning) where nothing is finite."""
    finite = np.isfinite(a)
    total = np.where(finite, a, 0.0).sum(axis=axis)
    count = finite.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def psnr(x: Any, y: Any, peak: float | np.ndarray = 1.0, over: str = "all") -> np.ndarray:
    """PSNR in dB with a fixed ``peak`` (scalar or per band).

    ``over``: "all" -> one pooled value; "tile" -> (N,) pooled within each tile; "band" ->
    (B,) pooled over tiles; "tile_band" -> (N, B). Inf where the error is exactly zero, NaN
    where no pixel is valid.
    """
    e = scaled_squared_error(x, y, peak)
    axes = {"all": None, "tile": (1, 2, 3), "band": (0, 2, 3), "tile_band": (2, 3)}
    if over not in axes:
        raise ValueError(f"over must be one of {sorted(axes)}, got {over!r}")
    mse = _nanmean(e, axis=axes[over])
    return np.where(np.isnan(mse), np.nan, _psnr_from_mse(mse))


def abs_error(x: Any, y: Any, over: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(mean, max) absolute error in the units of the input; ``over`` as in :func:`psnr`."""
    x, y = _batch(x, y)
    a = np.abs(x - y)
    axes = {"all": None, "tile": (1, 2, 3), "band": (0, 2, 3), "tile_band": (2, 3)}[over]
    mae = _nanmean(a, axis=axes)
    mx = np.where(np.isfinite(a), a, -np.inf).max(axis=axes)
    return mae, np.where(np.isfinite(mx), mx, np.nan)


# --------------------------------------------------------------------------- spectral angle
def spectral_angle(x: Any, y: Any) -> np.ndarray:
    """Per-pixel spectral angle in degrees (float64), shape (N, H, W); bands on axis 1.

    Only bands finite in both spectra enter the dot product and norms. NaN marks excluded
    pixels: no valid band, or an all-zero spectrum on either side.
    """
    x, y = _batch(x, y)
    ok = np.isfinite(x) & np.isfinite(y)
    x0, y0 = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    dot = (x0 * y0).sum(axis=1)
    nx = np.sqrt((x0 * x0).sum(axis=1))
    ny = np.sqrt((y0 * y0).sum(axis=1))
    good = (nx > 0) & (ny > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(dot / (nx * ny), -1.0, 1.0)
    return np.where(good, np.degrees(np.arccos(cos)), np.nan)


def sam(x: Any, y: Any) -> float:
    """Mean spectral angle in degrees over the valid, non-zero spectra (NaN if none)."""
    return float(_nanmean(spectral_angle(x, y)))


# --------------------------------------------------------------------------- SSIM / MS-SSIM
def _gauss_1d(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(img: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of (M, 1, H, W) images with the 1-D window ``g``."""
    k = g.numel()
    out = F.conv2d(img, g.view(1, 1, 1, k))
    return F.conv2d(out, g.view(1, 1, k, 1))


def _ssim_maps(
    x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mx * mx
    syy = _filter(y * y, g) - my * my
    sxy = _filter(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return lum * cs, cs


def _prepare(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    xn, yn = _batch(x, y)
    n, b, h, w = xn.shape
    ok = np.isfinite(xn) & np.isfinite(yn)
    xt = torch.from_numpy(np.where(ok, xn, 0.0).reshape(n * b, 1, h, w))
    yt = torch.from_numpy(np.where(ok, yn, 0.0).reshape(n * b, 1, h, w))
    mt = torch.from_numpy(ok.reshape(n * b, 1, h, w).astype(np.float64))
    return xt, yt, mt, (n, b)


def _masked_mean(m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    count = valid.sum(dim=(1, 2, 3))
    total = torch.where(valid, m, torch.zeros_like(m)).sum(dim=(1, 2, 3))
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def _window_valid(mask: torch.Tensor, k: int) -> torch.Tensor:
    """True where the k x k window holds no invalid pixel."""
    return _filter(1.0 - mask, torch.ones(k, dtype=mask.dtype)) < 0.5


def ssim(
    x: Any, y: Any, data_range: float = 1.0, win_size: int = SSIM_WINDOW, sigma: float = GAUSS_SIGMA
) -> np.ndarray:
    """Per tile and band SSIM, shape (N, B); windows touching an invalid pixel are dropped."""
    xt, yt, mt, (n, b) = _prepare(x, y)
    if min(xt.shape[-2:]) < win_size:
        raise ValueError(f"SSIM window {win_size} larger than the image {tuple(xt.shape[-2:])}")
    g = _gauss_1d(win_size, sigma)
    s, _ = _ssim_maps(xt, yt, g, data_range)
    return _masked_mean(s, _window_valid(mt, win_size)).numpy().reshape(n, b)


def ms_ssim(
    x: Any,
    y: Any,
    data_range: float = 1.0,
    win_size: int = MSSSIM_WINDOW,
    sigma: float = GAUSS_SIGMA,
    weights: tuple[float, ...] = MSSSIM_WEIGHTS,
) -> np.ndarray:
    """Per tile and band MS-SSIM (Wang et al. 2003), shape (N, B).

    2x2 average pooling between scales (padding odd sizes), contrast-structure terms of the
    first scales and SSIM of the last, combined with ``weights``. The smallest scale must
    still hold one window: 64 and 48 pixel tiles work with ``win_size=3`` and 5 scales.
    """
    xt, yt, mt, (n, b) = _prepare(x, y)
    levels = len(weights)
    need = (win_size - 1) * 2 ** (levels - 1)
    if min(xt.shape[-2:]) <= need:
        raise ValueError(
            f"MS-SSIM with window {win_size} and {levels} scales needs images larger than "
            f"{need} px, got {tuple(xt.shape[-2:])}"
        )
    g = _gauss_1d(win_size, sigma)
    vals = []
    for level in range(levels):
        s, cs = _ssim_maps(xt, yt, g, data_range)
        valid = _window_valid(mt, win_size)
        term = s if level == levels - 1 else cs
        vals.append(torch.relu(_masked_mean(term, valid)))
        if level < levels - 1:
            pad = [d % 2 for d in xt.shape[-2:]]
            xt = F.avg_pool2d(xt, 2, padding=pad)
            yt = F.avg_pool2d(yt, 2, padding=pad)
            full = F.avg_pool2d(torch.ones_like(mt), 2, padding=pad)
            mt = (F.avg_pool2d(mt, 2, padding=pad) >= full - 1e-12).to(mt.dtype)
    stack = torch.stack(vals, dim=0)
    w = torch.tensor(weights, dtype=torch.float64).view(-1, 1)
    return torch.prod(stack**w, dim=0).numpy().reshape(n, b)


# --------------------------------------------------------------------------- FSIM
FSIM_T1 = 0.85  # phase congruency stability constant (Zhang et al. 2011)
FSIM_T2 = 160.0  # gradient magnitude stability constant, for a 0..255 intensity scale


@dataclass(frozen=True)
class PhaseCongruencySettings:
    """Log-Gabor filter bank of the FSIM paper's phase congruency (Kovesi's model)."""

    scales: int = 4
    orientations: int = 4
    min_wavelength: float = 6.0
    mult: float = 2.0
    sigma_on_f: float = 0.55
    d_theta_on_sigma: float = 1.2
    k: float = 2.0
    epsilon: float = 1e-4
    noise_rescale: float = 1.7  # the FSIM code divides the noise threshold by 1.7


def _filter_bank(h: int, w: int, s: PhaseCongruencySettings) -> tuple[list, list]:
    """Radial log-Gabor (per scale) and angular spread (per orientation) in FFT order."""
    fx = (np.arange(w) - (w // 2)) / (w - (w % 2)) if w > 1 else np.zeros(1)
    fy = (np.arange(h) - (h // 2)) / (h - (h % 2)) if h > 1 else np.zeros(1)
    u, v = np.meshgrid(fx, fy)
    radius = np.sqrt(u**2 + v**2)
    radius[h // 2, w // 2] = 1.0  # avoid log(0) at DC; the log-Gabor is forced to 0 there
    theta = np.arctan2(-v, u)
    sin_t, cos_t = np.sin(theta), np.cos(theta)
    lowpass = 1.0 / (1.0 + (radius / 0.45) ** 30)  # cutoff 0.45, order 15
    radial = []
    for i in range(s.scales):
        f0 = 1.0 / (s.min_wavelength * s.mult**i)
        lg = np.exp(-(np.log(radius / f0) ** 2) / (2 * np.log(s.sigma_on_f) ** 2)) * lowpass
        lg[h // 2, w // 2] = 0.0
        radial.append(np.fft.ifftshift(lg))
    theta_sigma = np.pi / s.orientations / s.d_theta_on_sigma
    angular = []
    for o in range(s.orientations):
        ang = o * np.pi / s.orientations
        ds = sin_t * np.cos(ang) - cos_t * np.sin(ang)
        dc = cos_t * np.cos(ang) + sin_t * np.sin(ang)
        dtheta = np.abs(np.arctan2(ds, dc))
        angular.append(np.fft.ifftshift(np.exp(-(dtheta**2) / (2 * theta_sigma**2))))
    return radial, angular


def phase_congruency(
    img: np.ndarray, settings: PhaseCongruencySettings | None = None
) -> np.ndarray:
    """Phase congruency (0..1) of (M, H, W) grayscale images, summed over orientations."""
    s = settings or PhaseCongruencySettings()
    img = np.asarray(img, dtype=np.float64)
    m, h, w = img.shape
    spec = np.fft.fft2(img)
    radial, angular = _filter_bank(h, w, s)
    energy_all = np.zeros_like(img)
    an_all = np.zeros_like(img)
    for spread in angular:
        sum_e = np.zeros_like(img)
        sum_o = np.zeros_like(img)
        sum_an = np.zeros_like(img)
        responses = []
        spatial = []
        for i, lg in enumerate(radial):
            filt = lg * spread
            eo = np.fft.ifft2(spec * filt)
            responses.append(eo)
            spatial.append(np.real(np.fft.ifft2(filt)) * math.sqrt(h * w))
            sum_an += np.abs(eo)
            sum_e += eo.real
            sum_o += eo.imag
            if i == 0:
                em_n = float((filt**2).sum())
                median_e2n = np.median(np.abs(eo).reshape(m, -1) ** 2, axis=1)
        x_energy = np.sqrt(sum_e**2 + sum_o**2) + s.epsilon
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = np.zeros_like(img)
        for eo in responses:
            e, o = eo.real, eo.imag
            energy += e * mean_e + o * mean_o - np.abs(e * mean_o - o * mean_e)
        # Noise threshold from the smallest scale (Rayleigh model of the noise amplitude).
        noise_power = (-median_e2n / math.log(0.5)) / em_n  # (M,)
        est_sum_an2 = sum(float((f**2).sum()) for f in spatial)
        est_sum_aiaj = sum(
            float((spatial[i] * spatial[j]).sum())
            for i in range(len(spatial))
            for j in range(i + 1, len(spatial))
        )
        est_noise_energy2 = 2 * noise_power * est_sum_an2 + 4 * noise_power * est_sum_aiaj
        tau = np.sqrt(est_noise_energy2 / 2)
        threshold = tau * math.sqrt(math.pi / 2) + s.k * np.sqrt((2 - math.pi / 2) * tau**2)
        threshold = (threshold / s.noise_rescale).reshape(m, 1, 1)
        energy_all += np.maximum(energy - threshold, 0.0)
        an_all += sum_an
    return energy_all / (an_all + s.epsilon)


def gradient_magnitude(img: np.ndarray) -> np.ndarray:
    """Scharr gradient magnitude of (M, H, W) images ('same' size, zero padding)."""
    img = np.asarray(img, dtype=np.float64)
    kx = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]], dtype=np.float64) / 16.0
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)))
    h, w = img.shape[1:]
    gx = np.zeros_like(img)
    gy = np.zeros_like(img)
    for i in range(3):
        for j in range(3):
            win = p[:, i : i + h, j : j + w]
            # 2-D convolution flips the kernel: weight kx[2-i, 2-j] for the window (i, j).
            gx += kx[2 - i, 2 - j] * win
            gy += kx.T[2 - i, 2 - j] * win
    return np.sqrt(gx**2 + gy**2)


def _fsim_downsample(img: np.ndarray) -> np.ndarray:
    """The FSIM paper's pre-scaling: average F x F blocks, F = max(1, round(min(H, W) / 256))."""
    f = max(1, round(min(img.shape[-2:]) / 256))
    if f == 1:
        return img
    m, h, w = img.shape
    h2, w2 = h // f, w // f
    return img[:, : h2 * f, : w2 * f].reshape(m, h2, f, w2, f).mean(axis=(2, 4))


def fsim(x: Any, y: Any, data_range: float = 1.0) -> np.ndarray:
    """Per tile and band grayscale FSIM, shape (N, B); 1 for identical images.

    Each band image is scaled to 0..255 by ``data_range`` (T2 = 160 assumes that scale).
    Invalid pixels are filled with the valid mean of their image before filtering and left
    out of the weighted average; a band with no valid pixel gives NaN.
    """
    xn, yn = _batch(x, y)
    n, b, h, w = xn.shape
    ok = (np.isfinite(xn) & np.isfinite(yn)).reshape(n * b, h, w)
    scale = 255.0 / data_range
    imgs = []
    for a in (xn, yn):
        a = a.reshape(n * b, h, w) * scale
        fill = _nanmean(np.where(ok, a, np.nan), axis=(1, 2))
        a = np.where(ok, a, np.nan_to_num(fill, nan=0.0)[:, None, None])
        imgs.append(_fsim_downsample(a))
    okd = _fsim_downsample(ok.astype(np.float64)) >= 1.0 - 1e-12
    pc1, pc2 = phase_congruency(imgs[0]), phase_congruency(imgs[1])
    g1, g2 = gradient_magnitude(imgs[0]), gradient_magnitude(imgs[1])
    s_pc = (2 * pc1 * pc2 + FSIM_T1) / (pc1**2 + pc2**2 + FSIM_T1)
    s_g = (2 * g1 * g2 + FSIM_T2) / (g1**2 + g2**2 + FSIM_T2)
    pcm = np.where(okd, np.maximum(pc1, pc2), 0.0)
    num = (s_pc * s_g * pcm).sum(axis=(1, 2))
    den = pcm.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / den, np.where(okd.any(axis=(1, 2)), 1.0, np.nan))
    return out.reshape(n, b)


# --------------------------------------------------------------------------- accumulation
@dataclass
class MetricAccumulator:
    """Streams (reference, reconstruction) batches and keeps per tile x band sums.

    ``update`` takes the physical-unit tiles and their normalised versions (N, B, H, W).
    ``peak_phys`` is the per-band training data range (max - min); the normalised scale has
    peak 1. ``structural`` turns SSIM / MS-SSIM / FSIM on (computed on the normalised scale
    with data_range 1).
    """

    bands: int
    peak_phys: np.ndarray
    structural: bool = True
    fsim: bool = True
    _rows: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)

    def _add(self, key: str, value: np.ndarray) -> None:
        self._rows.setdefault(key, []).append(np.asarray(value, dtype=np.float64))

    def update(self, x_phys: Any, y_phys: Any, x_norm: Any, y_norm: Any) -> None:
        xp, yp = _batch(x_phys, y_phys)
        xq, yq = _batch(x_norm, y_norm)
        if xp.shape[1] != self.bands:
            raise ValueError(f"expected {self.bands} bands, got {xp.shape[1]}")
        en = scaled_squared_error(xq, yq, 1.0)
        ep = scaled_squared_error(xp, yp, self.peak_phys)
        fin = np.isfinite(en) & np.isfinite(ep)
        self._add("count", fin.sum(axis=(2, 3)))
        self._add("sse_norm", np.where(fin, en, 0).sum(axis=(2, 3)))
        self._add("sse_phys", np.where(fin, ep, 0).sum(axis=(2, 3)))
        a = np.abs(xp - yp)
        self._add("sae_phys", np.where(fin, a, 0).sum(axis=(2, 3)))
        self._add("sse_raw", np.where(fin, a * a, 0).sum(axis=(2, 3)))
        self._add("max_phys", np.where(fin, a, 0).max(axis=(2, 3)))
        ang = spectral_angle(xp, yp)
        self._add("sam_sum", np.where(np.isfinite(ang), ang, 0).sum(axis=(1, 2)))
        self._add("sam_count", np.isfinite(ang).sum(axis=(1, 2)))
        if self.structural:
            self._add("ssim", ssim(xq, yq, 1.0))
            self._add("ms_ssim", ms_ssim(xq, yq, 1.0) if min(xq.shape[-2:]) > 32 else
                      np.full(xq.shape[:2], np.nan))
            if self.fsim:
                self._add("fsim", fsim(xq, yq, 1.0))

    def _cat(self, key: str) -> np.ndarray:
        return np.concatenate(self._rows[key], axis=0)

    @property
    def tiles(self) -> int:
        return 0 if "count" not in self._rows else int(self._cat("count").shape[0])

    def per_band(self) -> dict[str, np.ndarray]:
        """(B,) arrays: psnr, psnr_phys (pooled over tiles), mae, max_abs_err, ssim, ..."""
        c = self._cat("count").sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "psnr": _psnr_from_mse(self._cat("sse_norm").sum(0) / c),
                "psnr_phys": _psnr_from_mse(self._cat("sse_phys").sum(0) / c),
                "mae": self._cat("sae_phys").sum(0) / c,
                "rmse": np.sqrt(self._cat("sse_raw").sum(0) / c),
                "max_abs_err": self._cat("max_phys").max(axis=0),
            }
        for key in ("ssim", "ms_ssim", "fsim"):
            if key in self._rows:
                out[key] = _nanmean(self._cat(key), axis=0)
        return {k: np.where(c > 0, v, np.nan) for k, v in out.items()}

    def per_tile(self) -> dict[str, np.ndarray]:
        """(N,) arrays: psnr and psnr_phys pooled within each tile, SAM mean per tile."""
        c = self._cat("count").sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "psnr": _psnr_from_mse(self._cat("sse_norm").sum(1) / c),
                "psnr_phys": _psnr_from_mse(self._cat("sse_phys").sum(1) / c),
                "sam": self._cat("sam_sum") / self._cat("sam_count"),
            }

    def summary(self) -> dict[str, float]:
        """Scalars: pooled PSNRs, tile-mean PSNRs, SSIM-family means, SAM, MAE, RMSE, max error
        (MAE, RMSE and max error in physical units)."""
        c = self._cat("count")
        total = c.sum()
        tile = self.per_tile()
        out = {
            "psnr": float(_psnr_from_mse(self._cat("sse_norm").sum() / total)),
            "psnr_phys": float(_psnr_from_mse(self._cat("sse_phys").sum() / total)),
            "psnr_tile_mean": float(_nanmean(np.where(np.isinf(tile["psnr"]), np.nan,
                                                      tile["psnr"]))),
            "psnr_phys_tile_mean": float(_nanmean(np.where(np.isinf(tile["psnr_phys"]), np.nan,
                                                           tile["psnr_phys"]))),
            "sam": float(self._cat("sam_sum").sum() / max(self._cat("sam_count").sum(), 1)),
            "mae": float(self._cat("sae_phys").sum() / total),
            "rmse": float(np.sqrt(self._cat("sse_raw").sum() / total)),
            "max_abs_err": float(self._cat("max_phys").max()),
        }
        for key in ("ssim", "ms_ssim", "fsim"):
            if key in self._rows:
                out[key] = float(_nanmean(self._cat(key)))
        return out
