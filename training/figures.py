"""Evaluation figures (matplotlib, Agg backend): rate-distortion curves, band maps, spectra.

All functions write one PNG atomically and return its path. Inputs are plain numpy arrays
and the row dicts of rd.csv, so the figures can be redrawn from the CSV alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from parsers.atomic import atomic_path

LOSSLESS_METHODS = ("jpeg2000_lossless", "jpegxl_lossless", "ccsds121")
_STYLE = {
    "sscnet": dict(color="crimson", marker="*", markersize=13, lw=0),
    "requant": dict(color="0.35", marker="s", ls="-"),
    "pca": dict(color="tab:purple", marker="D", ls="-"),
    "jpeg2000_band": dict(color="tab:blue", marker="o", ls="-"),
    "jpeg2000_cube": dict(color="tab:cyan", marker="o", ls="--"),
    "jpegxl_band": dict(color="tab:green", marker="^", ls="-"),
    "sz3": dict(color="tab:brown", marker="h", ls="-"),
    "jpeg8_paper": dict(color="tab:orange", marker="v", ls=":", mfc="none"),
}


def _save(fig: plt.Figure, out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return out


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def requant_line_db(bits: np.ndarray) -> np.ndarray:
    """PSNR of uniform b-bit re-quantisation of uniformly spread [0, 1] data (peak 1)."""
    return 10 * np.log10(12) + 20 * np.log10(2.0**bits - 1)


def rd_plot(
    rows: Sequence[Mapping[str, Any]],
    out: str | os.PathLike[str],
    metric: str = "psnr",
    ylabel: str = "PSNR (dB, normalised scale, peak 1)",
    title: str = "",
    note: str = "",
) -> Path:
    """Metric against bpppc (log x), one curve per method.

    SSCNet points are red stars (fp32/fp16 latents) or a red curve (entropy-coded models,
    one point per checkpoint, e.g. a lambda sweep); lossless codecs are vertical lines at
    their rate (every lossy point to the right of the lowest one is dominated); flagged rows
    (the paper's 8-bit JPEG setting) are hollow and say so in the legend. For PSNR the
    uniform re-quantisation formula 10.79 + 6.02 b is drawn as a dotted reference.
    """
    fig, ax = plt.subplots(figsize=(10.0, 5.0))
    groups: dict[str, list[tuple[float, float, str]]] = {}
    lossless: list[tuple[str, float]] = []
    for r in rows:
        x = _finite(r.get("bpppc"))
        if x is None or x <= 0:
            continue
        method = str(r.get("method"))
        if method in LOSSLESS_METHODS:
            lossless.append((method, x))
            continue
        y = _finite(r.get(metric))
        if y is None:
            continue
        groups.setdefault(method, []).append((x, y, str(r.get("setting", ""))))
    xs_all = [p[0] for g in groups.values() for p in g] + [x for _, x in lossless]
    for method, pts in sorted(groups.items(), key=lambda kv: kv[0].startswith("sscnet")):
        pts.sort()
        style = dict(_STYLE.get(method.split("_fp")[0] if method.startswith("sscnet") else method,
                                dict(marker="x", ls="-")))
        label = method
        if method == "jpeg8_paper":
            label += " (paper setting: uint16 wrapped to 8 bit; vs wrapped data)"
        if method.startswith("sscnet"):
            style = dict(_STYLE["sscnet"])
            if "fp16" in method:
                style.update(marker="P", markersize=10)
            if method == "sscnet_rd":  # entropy-coded models (a lambda sweep): one curve
                style.update(marker="o", markersize=7, lw=1.5, ls="-")
                label += " (entropy-coded, real .sscz bytes)"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, zorder=5, **style)
            for x, y, setting in pts:
                text = (setting.split(",")[0] if method == "sscnet_rd"
                        else method.replace("sscnet_", ""))
                ax.annotate(text, (x, y), textcoords="offset points",
                            xytext=(6, 4), fontsize=7, color="crimson")
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
    for i, (method, x) in enumerate(sorted(lossless, key=lambda t: t[1])):
        ax.axvline(x, color="k", lw=1.0, ls=(0, (4, 2 + i)), alpha=0.7,
                   label=f"{method} (lossless) {x:.2f} bpppc")
    if metric == "psnr" and xs_all:
        b = np.linspace(max(1.0, min(xs_all)), min(16.0, max(xs_all) * 1.1), 50)
        if b.size and b[-1] > b[0]:
            ax.plot(b, requant_line_db(b), color="0.6", ls=":", lw=1.2,
                    label="uniform re-quantisation formula 10.79 + 6.02 b")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel per channel (bpppc: real encoded bytes; SSCNet fp32/fp16: "
                  "latent bits)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or f"Rate-distortion: {metric}", fontsize=10)
    if note:
        fig.text(0.01, -0.02, note, fontsize=7, ha="left", va="top", wrap=True)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)
    return _save(fig, out)


def band_maps(
    x: np.ndarray,
    y: np.ndarray,
    bands: Sequence[int],
    out: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Original / reconstruction / |error| for chosen bands of one tile (B, H, W).

    Original and reconstruction share colour limits (2-98 % of the original); the error map
    has its own scale, in the same physical units, with the colour bar.
    """
    rows = len(bands)
    fig, axes = plt.subplots(rows, 3, figsize=(9.0, 2.9 * rows), squeeze=False)
    for i, b in enumerate(bands):
        xo, yo = x[b].astype(np.float64), y[b].astype(np.float64)
        finite = xo[np.isfinite(xo)]
        lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        if hi <= lo:
            hi = lo + 1e-12
        err = np.abs(xo - yo)
        name = labels[i] if labels else f"band {b}"
        for j, (img, cap, kw) in enumerate((
            (xo, f"original, {name}", dict(vmin=lo, vmax=hi, cmap="gray")),
            (yo, "reconstruction", dict(vmin=lo, vmax=hi, cmap="gray")),
            (err, "|error|", dict(cmap="magma")),
        )):
            im = axes[i, j].imshow(img, **kw)
            axes[i, j].set_title(cap, fontsize=8)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            fig.colorbar(im, ax=axes[i, j], fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def spectra_plot(
    x: np.ndarray,
    y: np.ndarray,
    pixels: Sequence[tuple[int, int]],
    out: str | os.PathLike[str],
    wavelengths: np.ndarray | None = None,
    unit: str = "",
    title: str = "",
) -> Path:
    """Spectra of chosen pixels (line, sample) of one tile (B, H, W): original vs reconstructed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    axis = wavelengths if wavelengths is not None else np.arange(x.shape[0])
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    for i, (r, c) in enumerate(pixels):
        col = colors[i % 10]
        ax.plot(axis, x[:, r, c], color=col, lw=1.2, label=f"original ({r},{c})")
        ax.plot(axis, y[:, r, c], color=col, lw=1.0, ls="--", label=f"reconstructed ({r},{c})")
    ax.set_xlabel(f"wavelength ({unit})" if wavelengths is not None and unit else
                  "wavelength" if wavelengths is not None else "band index")
    ax.set_ylabel("value (physical units)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "Spectra: original (solid) vs reconstructed (dashed)", fontsize=10)
    return _save(fig, out)


def per_band_plot(
    values: Mapping[str, np.ndarray],
    out: str | os.PathLike[str],
    ylabel: str,
    wavelengths: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """One line per method of a per-band metric (e.g. PSNR per band)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for name, v in values.items():
        axis = wavelengths if wavelengths is not None else np.arange(len(v))
        ax.plot(axis, v, lw=1.0, marker="." if len(v) < 40 else None, label=name)
    ax.set_xlabel("wavelength" if wavelengths is not None else "band index")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return _save(fig, out)
