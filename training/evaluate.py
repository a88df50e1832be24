"""Evaluate a trained SSCNet against classical codecs on the same test tiles, one protocol.

``python -m training.evaluate --params params.yaml --source S --tiles data/tiles/S/test.h5
--checkpoint models/S/best.pt --out eval/S [--max-tiles N] [--device cpu|cuda|auto]
[--precision fp32|bf16] [--rates 0.5,1,2] [--no-baselines]``

Protocol (also written into every report):

* Tiles: the test file's tiles in physical units; invalid values (NaN radiance, ``valid ==
  False`` Sentinel-2 pixels) are excluded from every metric, for every method.
* SSCNet: tiles normalised with the checkpoint's training statistics (invalid -> 0, as in
  training), encoded, decoded, denormalised. Rate, both ways: the paper's value-count ratio
  ``B*H*W / latent values`` and bits per pixel per channel of what would be stored
  (float32 latent: 32 bits per value; float16 latent: 16 bits, and the fp16 latent is really
  cast and decoded, so its distortion is measured, not assumed). No entropy coding.
* Baselines (:mod:`training.baselines`): real byte streams incl. side information; rate =
  bytes * 8 / (B*H*W).
* Metrics (:mod:`training.metrics`): PSNR pooled and per tile, on the normalised scale (peak 1,
  paper-compatible) and in physical units (peak = per-band training range max - min); SSIM
  (7 px Gaussian window) / MS-SSIM (3 px window) / FSIM on the normalised scale with
  data_range 1; SAM in degrees in physical units; MAE and max abs error in physical units.
  The paper's 8-bit JPEG setting is measured against the wrapped 8-bit data (peak 255) and
  flagged.
* Throughput: MB/s of input in its native dtype (float32 VIRTIS 4 bytes, uint16 S2 2 bytes
  per value), wall clock on this machine, single process.

Outputs in ``--out``: metrics.json, rd.csv, bands.csv, bands.md, tiles.csv (SSCNet per tile),
rd_psnr.png, rd_sam.png, rd_psnr_phys.png, maps.png, spectra.png, per_band_psnr.png, report.md,
report.html.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from parsers.atomic import atomic_open
from parsers.errors import ProductError, UserError, cli_entry
from parsers.jsonsafe import json_safe
from parsers.locks import lock_output
from pipeline.params import SOURCES, add_flags, flag_overrides, load_stage, to_dict
from training import baselines as BL
from training import figures
from training.data import Normaliser, TileDataset, read_tile_attrs
from training.device import Runtime, resolve_device
from training.metrics import MSSSIM_WINDOW, SSIM_WINDOW, MetricAccumulator
from training.models import load_checkpoint

RD_COLUMNS = ("method", "setting", "bpppc", "cr", "psnr", "psnr_phys", "ssim", "sam", "mae",
              "max_abs_err", "flagged", "cr_values", "ms_ssim", "psnr_tile_mean",
              "psnr_phys_tile_mean", "lossless", "encode_mbps", "decode_mbps", "tiles", "rmse")


@dataclass(frozen=True)
class EvaluateParams:
    """Settings of ``python -m training.evaluate`` (params ``evaluate.common`` merged with
    ``evaluate.<source>``)."""

    max_tiles: int | None = None  # the first N test tiles; None: all
    batch_size: int = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={
        "help": "SSCNet encode/decode in fp32 or under bf16 autocast (as a GPU would run it)"})
    baselines: bool = True
    rates: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0],
        metadata={"help": "target bpppc list for the JPEG 2000 rate search, e.g. 0.5,1,2"})
    requant_bits: list[int] = field(default_factory=lambda: [2, 4, 6, 8, 10])
    pca: list[tuple[int, int]] = field(default_factory=lambda: [(1, 8), (3, 8), (8, 10)])
    jpegxl_distances: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0, 3.0])
    jpeg8_qualities: list[int] = field(default_factory=lambda: [50, 95])
    sz3_relative: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4])
    jpegxl_effort: int = 7
    calibration_tiles: int = 2  # tiles used to search the JPEG 2000 level for each rate
    lossless: bool = True
    structural_baselines: bool = True  # SSIM / MS-SSIM for the baselines too
    fsim: bool = True  # FSIM for SSCNet (per-band table)
    figure_tile: int = 0
    figure_bands: list[int] = field(default_factory=list)  # empty: 3 spread over the bands
    figure_pixels: list[tuple[int, int]] = field(default_factory=list)  # empty: 3 automatic
    markdown_band_rows: int = 40  # bands.md shows at most this many rows (CSV has all)

    def __post_init__(self) -> None:
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ValueError("max_tiles must be >= 1 or null")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if any(r <= 0 for r in self.rates):
            raise ValueError("rates must be positive bpppc values")
        if any(not 1 <= b <= 16 for b in self.requant_bits):
            raise ValueError("requant_bits must lie in 1..16")


def load_params(path: str | Path | None, source: str,
                overrides: dict[str, Any] | None = None) -> EvaluateParams:
    """The ``evaluate`` settings of ``source`` (common layer, source layer, ``overrides``)."""
    return load_stage(EvaluateParams, "evaluate", source, path, overrides)


# --------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    model: torch.nn.Module
    ckpt: dict[str, Any]
    dataset: TileDataset
    normaliser: Normaliser
    stats: dict[str, Any]
    peak_phys: np.ndarray  # (B,) training range max - min
    indices: list[int]
    fmt: BL.TileFormat
    native_bits: int


def _stats_range(stats: dict[str, Any], bands: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        lo = np.array(stats["min"], dtype=np.float64)
        hi = np.array(stats["max"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ProductError(where, "statistics lack per-band 'min'/'max'") from None
    if lo.shape != (bands,) or hi.shape != (bands,):
        raise ProductError(where, f"statistics give {lo.size} band ranges for {bands} bands")
    return lo, hi


def open_inputs(tiles: Path, checkpoint: Path, p: EvaluateParams) -> Inputs:
    model, ckpt = load_checkpoint(checkpoint, map_location="cpu")
    cfg = ckpt["config"]
    try:
        info = read_tile_attrs(tiles)
    except (OSError, ValueError) as exc:
        raise ProductError(tiles, f"cannot open the tile file ({exc})") from None
    stats = ckpt.get("stats") or info.get("stats")
    if not stats:
        raise ProductError(checkpoint, "no training statistics in the checkpoint or tile file")
    mode = cfg.get("normalisation") or "paper_minmax"
    try:
        # The exact normaliser training used, when the checkpoint stores it.
        state = ckpt.get("normaliser")
        normaliser = (Normaliser.from_state_dict(state) if state
                      else Normaliser.from_stats(stats, mode))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProductError(checkpoint, f"cannot build the {mode} normaliser ({exc})") from None
    if normaliser.bands != info["bands"]:
        raise UserError(f"{tiles}: {info['bands']} bands, but the checkpoint's statistics "
                        f"have {normaliser.bands}")
    ds = TileDataset(tiles, normaliser=normaliser)
    h, w = ds.info["tile_shape"]
    if ds.bands != cfg["bands"] or (h, w) != (cfg["tile"], cfg["tile"]):
        raise UserError(
            f"{tiles}: tiles are {ds.bands} x {h} x {w} but the checkpoint {checkpoint} "
            f"expects {cfg['bands']} x {cfg['tile']} x {cfg['tile']}"
        )
    n = len(ds) if p.max_tiles is None else min(len(ds), p.max_tiles)
    if n == 0:
        raise ProductError(tiles, "the tile file holds no tiles")
    lo, hi = _stats_range(stats, ds.bands, str(checkpoint))
    peak = hi - lo
    peak = np.where(np.isfinite(peak) & (peak > 0), peak, 1.0)
    dtype = np.dtype(ds.info["dtype"])
    return Inputs(model, ckpt, ds, normaliser, stats, peak, list(range(n)),
                  BL.TileFormat(ds.bands, h, w, dtype), 8 * dtype.itemsize)


def batches(inp: Inputs, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(raw tiles (n, B, H, W) native dtype, valid mask (n, B, H, W))."""
    for start in range(0, len(inp.indices), size):
        items = [inp.dataset.raw(i) for i in inp.indices[start : start + size]]
        yield np.stack([a for a, _ in items]), np.stack([v for _, v in items])


def _phys(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = a.astype(np.float32, copy=True)
    out[~valid] = np.nan
    return out


# --------------------------------------------------------------------------- running
@dataclass
class MethodResult:
    method: str
    setting: str
    acc: MetricAccumulator
    flagged: str = ""
    lossless: bool = False
    bits: float = 0.0  # total stored bits
    values: int = 0
    input_bytes: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    cr_values: float | None = None

    @property
    def bpppc(self) -> float:
        return self.bits / self.values if self.values else math.nan

    def row(self, native_bits: int) -> dict[str, Any]:
        s = self.acc.summary()
        mb = self.input_bytes / 1e6
        return {
            "method": self.method, "setting": self.setting, "bpppc": self.bpppc,
            "cr": native_bits / self.bpppc if self.bpppc > 0 else math.nan,
            "psnr": s["psnr"], "psnr_phys": s["psnr_phys"], "ssim": s.get("ssim", math.nan),
            "sam": s["sam"], "mae": s["mae"], "max_abs_err": s["max_abs_err"],
            "flagged": self.flagged,
            "cr_values": self.cr_values if self.cr_values is not None else "",
            "ms_ssim": s.get("ms_ssim", math.nan), "psnr_tile_mean": s["psnr_tile_mean"],
            "psnr_phys_tile_mean": s["psnr_phys_tile_mean"], "lossless": int(self.lossless),
            "encode_mbps": mb / self.encode_s if self.encode_s > 0 else math.nan,
            "decode_mbps": mb / self.decode_s if self.decode_s > 0 else math.nan,
            "tiles": self.acc.tiles, "rmse": s["rmse"],
        }


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def sscnet_pass(
    model: torch.nn.Module, normaliser: Normaliser, raw: np.ndarray, valid: np.ndarray,
    rt: Runtime, half_latent: bool,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(reconstruction physical, normalised reconstruction, encode s, decode s) of a batch.

    ``model`` is already on ``rt.device`` (:meth:`Runtime.prepare`); encode and decode run
    under the runtime's autocast, their outputs are cast back to float32.
    """
    dev = rt.device
    with torch.inference_mode():
        _sync(dev)
        t0 = time.perf_counter()
        x = torch.from_numpy(raw.astype(np.float32)).to(dev)
        xn = normaliser.normalise(x)
        xn = rt.tiles(torch.where(torch.from_numpy(valid).to(dev), xn, torch.zeros_like(xn)))
        with rt.autocast():
            z = model.encode(xn).float()
        if half_latent:
            z = z.half()
        _sync(dev)
        t1 = time.perf_counter()
        with rt.autocast():
            y = model.decode(z.float()).float()
        yp = normaliser.denormalise(y)
        _sync(dev)
        t2 = time.perf_counter()
    return yp.float().cpu().numpy(), y.float().cpu().numpy(), t1 - t0, t2 - t1


def time_sscnet(model: torch.nn.Module, normaliser: Normaliser, raw: np.ndarray,
                valid: np.ndarray, dev: torch.device, repeats: int = 3,
                precision: str = "fp32") -> dict[str, float]:
    """Encode/decode MB/s (of native input bytes) of SSCNet on ``dev``, best of ``repeats``."""
    rt = Runtime.create(dev, precision)
    m = rt.prepare(model)
    sscnet_pass(m, normaliser, raw, valid, rt, False)  # warm-up
    enc, dec = [], []
    for _ in range(repeats):
        _, _, te, td = sscnet_pass(m, normaliser, raw, valid, rt, False)
        enc.append(te)
        dec.append(td)
    mb = raw.nbytes / 1e6
    return {"encode_mbps": mb / min(enc), "decode_mbps": mb / min(dec),
            "batch_tiles": int(raw.shape[0]), "device": str(dev), "precision": rt.precision}


@dataclass
class Evaluation:
    results: list[MethodResult]
    figure_tile: tuple[np.ndarray, np.ndarray] | None  # (x phys, y phys) SSCNet fp32
    throughput: dict[str, dict[str, float]]
    codecs_built_s: float


def run(inp: Inputs, p: EvaluateParams, dev: torch.device, log: Any = print) -> Evaluation:
    rt = Runtime.create(dev, p.precision)
    model = rt.prepare(inp.model)
    cr_values = float(model.compression_ratio)
    latent_values = math.prod(model.latent_shape)
    band_values = inp.fmt.bands * inp.fmt.height * inp.fmt.width

    def acc(structural: bool, fsim: bool, peak: np.ndarray | float) -> MetricAccumulator:
        return MetricAccumulator(inp.fmt.bands, np.broadcast_to(np.asarray(peak, float),
                                                                (inp.fmt.bands,)).copy(),
                                 structural=structural, fsim=fsim)

    ss32 = MethodResult("sscnet_fp32", f"latent {'x'.join(map(str, model.latent_shape))} fp32",
                        acc(True, p.fsim, inp.peak_phys), cr_values=cr_values)
    ss16 = MethodResult("sscnet_fp16", f"latent {'x'.join(map(str, model.latent_shape))} fp16",
                        acc(True, p.fsim, inp.peak_phys), cr_values=cr_values)
    results = [ss32, ss16]
    codecs: list[BL.Codec] = []
    codec_results: list[MethodResult] = []
    built_s = 0.0
    figure_tile = None
    fig_index = min(max(p.figure_tile, 0), len(inp.indices) - 1)
    seen = 0
    first = True
    for raw, valid in batches(inp, p.batch_size):
        n = raw.shape[0]
        x_phys = _phys(raw, valid)
        x_norm = inp.normaliser.normalise(x_phys)
        if first:  # warm-up so that timings do not include one-off initialisation
            sscnet_pass(model, inp.normaliser, raw[:1], valid[:1], rt, False)
        for res, half in ((ss32, False), (ss16, True)):
            y_phys, y_norm, te, td = sscnet_pass(model, inp.normaliser, raw, valid, rt, half)
            y_phys[~valid] = np.nan
            y_norm[~valid] = np.nan
            res.acc.update(x_phys, y_phys, x_norm, y_norm)
            res.bits += (16 if half else 32) * latent_values * n
            res.values += band_values * n
            res.input_bytes += raw.nbytes
            res.encode_s += te
            res.decode_s += td
            if not half and seen <= fig_index < seen + n:
                figure_tile = (x_phys[fig_index - seen], y_phys[fig_index - seen])
        if first and p.baselines:
            t0 = time.perf_counter()
            settings = BL.BaselineSettings(
                target_bpppc=tuple(p.rates), requant_bits=tuple(p.requant_bits),
                pca=tuple(p.pca), jpegxl_distances=tuple(p.jpegxl_distances),
                jpeg8_qualities=tuple(p.jpeg8_qualities), jpegxl_effort=p.jpegxl_effort,
                sz3_relative=tuple(p.sz3_relative),
                calibration_tiles=p.calibration_tiles, lossless=p.lossless,
            )
            band_range = BL.BandRange(*_stats_range(inp.stats, inp.fmt.bands, "statistics"))
            extra = (ss32.bpppc, ss16.bpppc)
            codecs = BL.build_codecs(settings, inp.fmt, band_range, raw, extra_targets=extra)
            built_s = time.perf_counter() - t0
            log(f"evaluate: {len(codecs)} baseline settings (JPEG 2000 levels searched on "
                f"{min(n, settings.calibration_tiles)} tile(s) in {built_s:.1f} s)")
            for c in codecs:
                peak = 255.0 if c.reference is not None else inp.peak_phys
                codec_results.append(MethodResult(
                    c.method, c.setting, acc(p.structural_baselines, False, peak),
                    flagged=c.flagged, lossless=c.lossless))
            results += codec_results
        for c, res in zip(codecs, codec_results, strict=True):
            coded = BL.code_tiles(c, raw)
            if c.reference is not None:
                ref = np.stack([c.reference(t) for t in raw]).astype(np.float32)
                xr, yr = _phys(ref, valid), _phys(coded.recon, valid)
                res.acc.update(xr, yr, xr / 255.0, yr / 255.0)
            else:
                y_phys = _phys(coded.recon, valid)
                res.acc.update(x_phys, y_phys, x_norm, inp.normaliser.normalise(y_phys))
            res.bits += 8 * coded.nbytes
            res.values += coded.values
            res.input_bytes += coded.input_bytes
            res.encode_s += coded.encode_s
            res.decode_s += coded.decode_s
        seen += n
        first = False
        log(f"evaluate: {seen}/{len(inp.indices)} tiles")

    throughput = {dev.type: {"encode_mbps": ss32.input_bytes / 1e6 / ss32.encode_s,
                             "decode_mbps": ss32.input_bytes / 1e6 / ss32.decode_s,
                             "tiles": ss32.acc.tiles, "batch_size": p.batch_size,
                             "device": str(dev), "precision": rt.precision}}
    raw0, valid0 = next(batches(inp, p.batch_size))
    other = torch.device("cpu") if dev.type == "cuda" else (
        torch.device("cuda") if torch.cuda.is_available() else None)
    if other is not None:
        throughput[other.type] = time_sscnet(model, inp.normaliser, raw0, valid0, other,
                                             precision=p.precision)
        rt.prepare(model)
    return Evaluation(results, figure_tile, throughput, built_s)


# --------------------------------------------------------------------------- outputs
def _fmt(v: Any, nd: int = 3) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = float(v)
    if math.isnan(f):
        return "n/a"
    if math.isinf(f):
        return "inf"
    return f"{f:.{nd}f}" if abs(f) >= 10 ** -nd or f == 0 else f"{f:.{nd}g}"


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (_fmt(r.get(k), 6) if not isinstance(r.get(k), str) else r.get(k))
                        for k in columns})


Block = tuple  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", src, alt)


def render_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "table":
            head, rows = b[1], b[2]
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
            out.append("\n".join(lines))
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: Sequence[Block], title: str) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
           "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
           "padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>"]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "ul":
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in r) + "</tr>"
                    for r in b[2]]
            out.append("</table>")
        elif b[0] == "img":
            out.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _pick_bands(p: EvaluateParams, bands: int) -> list[int]:
    chosen = [b for b in p.figure_bands if 0 <= b < bands]
    if chosen:
        return chosen
    return sorted({round(v) for v in np.linspace(0, bands - 1, min(3, bands) + 2)[1:-1]})


def _pick_pixels(p: EvaluateParams, x: np.ndarray) -> list[tuple[int, int]]:
    h, w = x.shape[1:]
    chosen = [(r, c) for r, c in p.figure_pixels if 0 <= r < h and 0 <= c < w]
    if chosen:
        return chosen
    bright = np.nan_to_num(np.nanmean(x, axis=0), nan=-np.inf)
    order = np.argsort(bright.ravel())
    picks = [order[-1], order[len(order) // 2], order[0]]  # brightest, median, darkest
    return [divmod(int(i), w) for i in picks]


def _nearest(results: Sequence[MethodResult], method: str, rate: float) -> MethodResult | None:
    cand = [r for r in results if r.method == method and r.values]
    if not cand:
        return None
    return min(cand, key=lambda r: abs(math.log(r.bpppc / rate)))


def write_outputs(out: Path, ev: Evaluation, inp: Inputs, p: EvaluateParams, source: str,
                  args: argparse.Namespace) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row(inp.native_bits) for r in ev.results]
    write_csv(out / "rd.csv", RD_COLUMNS, rows)

    ss32, ss16 = ev.results[0], ev.results[1]
    lossless = {r.method: r.bpppc for r in ev.results if r.lossless}
    matched = {}
    for method in sorted({r.method for r in ev.results[2:] if not r.lossless}):
        near = _nearest(ev.results, method, ss32.bpppc)
        if near is not None:
            matched[method] = {"setting": near.setting, "bpppc": near.bpppc,
                               "psnr": near.acc.summary()["psnr"],
                               "psnr_phys": near.acc.summary()["psnr_phys"],
                               "sam": near.acc.summary()["sam"], "flagged": near.flagged}
    model_cfg = inp.ckpt["config"]
    metrics: dict[str, Any] = {
        "source": source,
        "tiles": ss32.acc.tiles,
        "tile_shape": list(inp.fmt.shape),
        "native_bits": inp.native_bits,
        "checkpoint_epoch": inp.ckpt.get("epoch"),
        "normalisation": inp.normaliser.mode,
        "psnr_peak": "normalised scale, peak 1 (paper-compatible)",
        "psnr_phys_peak": "per band training data range max-min, physical units",
        "ssim_window": f"gaussian {SSIM_WINDOW}px sigma 1.5; ms_ssim {MSSSIM_WINDOW}px, 5 scales",
        "sam_unit": "degrees",
    }
    for r in (ss32, ss16):
        row = r.row(inp.native_bits)
        s = r.acc.summary()
        metrics[r.method] = {
            "bpppc": r.bpppc, "cr_values": r.cr_values, "cr_bits": row["cr"],
            **{k: s[k] for k in ("psnr", "psnr_phys", "psnr_tile_mean", "psnr_phys_tile_mean",
                                 "ssim", "ms_ssim", "sam", "mae", "rmse", "max_abs_err")},
            **({"fsim": s["fsim"]} if "fsim" in s else {}),
            "encode_mbps": row["encode_mbps"], "decode_mbps": row["decode_mbps"],
        }
    metrics["sscnet_throughput"] = ev.throughput
    if lossless:
        metrics["lossless_floor_bpppc"] = min(lossless.values())
        metrics["lossless_bpppc"] = lossless
    metrics["baselines_nearest_sscnet_fp32_rate"] = matched
    with atomic_open(out / "metrics.json", "w", encoding="utf-8") as fh:
        json.dump(json_safe(metrics), fh, indent=2, sort_keys=False)
        fh.write("\n")

    # Per-band table (paper Tables 1-5): SSCNet fp32 and the nearest-rate JPEG 2000 per band.
    pb = ss32.acc.per_band()
    j2k = _nearest(ev.results, "jpeg2000_band", ss32.bpppc)
    j2k_pb = j2k.acc.per_band() if j2k is not None else None
    wl = inp.dataset.wavelength
    names = inp.dataset.info.get("band_names")
    band_rows = []
    for b in range(inp.fmt.bands):
        row = {"band": b,
               "name": (names[b] if isinstance(names, list) and b < len(names) else ""),
               "wavelength": float(wl[b]) if wl is not None else math.nan}
        for k in ("psnr", "psnr_phys", "ssim", "ms_ssim", "fsim", "mae", "rmse", "max_abs_err"):
            row[f"sscnet_{k}"] = pb[k][b] if k in pb else math.nan
        row["peak_phys"] = inp.peak_phys[b]
        if j2k_pb is not None:
            row["jpeg2000_band_psnr"] = j2k_pb["psnr"][b]
            row["jpeg2000_band_psnr_phys"] = j2k_pb["psnr_phys"][b]
        band_rows.append(row)
    band_cols = list(band_rows[0].keys())
    write_csv(out / "bands.csv", band_cols, band_rows)
    step = max(1, math.ceil(inp.fmt.bands / p.markdown_band_rows))
    shown = band_rows[::step]
    band_table = ("table", band_cols, [[r[c] for c in band_cols] for r in shown])
    j2k_note = (f"JPEG 2000 per band at {j2k.bpppc:.3f} bpppc ({j2k.setting}), the setting "
                f"nearest to SSCNet's {ss32.bpppc:.3f} bpppc." if j2k is not None else "")
    band_md = [("h", 1, f"Per-band errors, {source}"),
               ("p", f"SSCNet fp32 ({ss32.setting}) on {ss32.acc.tiles} test tiles. PSNR: "
                     "normalised scale peak 1; psnr_phys: peak = peak_phys (training range). "
                     f"{j2k_note}" + (f" Every {step}th band shown; bands.csv has all."
                                      if step > 1 else "")),
               band_table]
    with atomic_open(out / "bands.md", "w", encoding="utf-8") as fh:
        fh.write(render_markdown(band_md))

    # Per-tile values of SSCNet fp32 (to find the tiles it fails on).
    pt = ss32.acc.per_tile()
    tile_rows = []
    for k, i in enumerate(inp.indices):
        try:
            where = inp.dataset.index(i)
        except KeyError:  # a tile file without the 'index' dataset
            where = {"index": i}
        tile_rows.append({**where, "psnr": pt["psnr"][k], "psnr_phys": pt["psnr_phys"][k],
                          "sam": pt["sam"][k]})
    write_csv(out / "tiles.csv", list(tile_rows[0].keys()), tile_rows)

    # Figures.
    note = (f"{source}: {ss32.acc.tiles} test tiles {inp.fmt.shape}; SSCNet rates are "
            "latent bits (no entropy coding); baselines are real encoded bytes incl. side info.")
    figures.rd_plot(rows, out / "rd_psnr.png", "psnr",
                    title=f"{source}: PSNR vs rate (normalised scale, peak 1)", note=note)
    figures.rd_plot(rows, out / "rd_psnr_phys.png", "psnr_phys",
                    ylabel="PSNR (dB, physical units, peak = band training range)",
                    title=f"{source}: PSNR vs rate (physical units)", note=note)
    figures.rd_plot(rows, out / "rd_sam.png", "sam",
                    ylabel="spectral angle (degrees, lower is better)",
                    title=f"{source}: spectral angle vs rate", note=note)
    pics = ["rd_psnr.png", "rd_psnr_phys.png", "rd_sam.png"]
    if ev.figure_tile is not None:
        x, y = ev.figure_tile
        bands = _pick_bands(p, inp.fmt.bands)
        labels = [f"band {b}" + (f" ({wl[b]:.4g})" if wl is not None else "") for b in bands]
        figures.band_maps(x, y, bands, out / "maps.png", labels,
                          title=f"{source} tile {p.figure_tile}: SSCNet fp32 reconstruction")
        figures.spectra_plot(x, y, _pick_pixels(p, x), out / "spectra.png",
                             wavelengths=wl, title=f"{source} tile {p.figure_tile}: spectra, "
                             "original (solid) vs SSCNet fp32 (dashed)")
        pics += ["maps.png", "spectra.png"]
    per_band = {"sscnet_fp32": pb["psnr"]}
    if j2k_pb is not None:
        per_band[f"jpeg2000_band {j2k.bpppc:.2f} bpppc"] = j2k_pb["psnr"]
    figures.per_band_plot(per_band, out / "per_band_psnr.png", "PSNR (dB, peak 1)",
                          wavelengths=wl, title=f"{source}: PSNR per band")
    pics.append("per_band_psnr.png")

    # Report.
    summary_cols = ["method", "setting", "bpppc", "cr", "cr_values", "psnr", "psnr_phys",
                    "ssim", "ms_ssim", "sam", "mae", "rmse", "max_abs_err", "encode_mbps",
                    "decode_mbps", "flagged"]
    ordered = sorted(rows, key=lambda r: (r["method"] != "sscnet_fp32",
                                          r["method"] != "sscnet_fp16", r["method"], r["bpppc"]))
    floor = metrics.get("lossless_floor_bpppc")
    blocks: list[Block] = [
        ("h", 1, f"SSCNet evaluation: {source}"),
        ("p", f"Checkpoint {args.checkpoint} (epoch {inp.ckpt.get('epoch')}, "
              f"{model_cfg.get('arch')} latent {model_cfg.get('latent')}, normalisation "
              f"{inp.normaliser.mode}); tiles {args.tiles}: {ss32.acc.tiles} tiles of "
              f"{' x '.join(map(str, inp.fmt.shape))}, {inp.fmt.dtype} "
              f"({inp.native_bits} bits per value)."),
        ("h", 2, "Headline"),
        ("ul", [
            f"SSCNet fp32 latent: {ss32.bpppc:.4f} bpppc (paper-style value-count ratio "
            f"{ss32.cr_values:.2f}:1, bit ratio against {inp.native_bits}-bit input "
            f"{inp.native_bits / ss32.bpppc:.2f}:1); PSNR {_fmt(metrics['sscnet_fp32']['psnr'])}"
            f" dB (peak 1), {_fmt(metrics['sscnet_fp32']['psnr_phys'])} dB (physical), "
            f"SAM {_fmt(metrics['sscnet_fp32']['sam'])} deg.",
            f"SSCNet fp16 latent: {ss16.bpppc:.4f} bpppc, PSNR "
            f"{_fmt(metrics['sscnet_fp16']['psnr'])} dB (the fp16 cast really decoded).",
            *([f"Lossless floor: {floor:.3f} bpppc "
               f"({', '.join(f'{k} {v:.3f}' for k, v in lossless.items())}); a lossy point at "
               "a higher rate is dominated."] if floor else []),
            *[f"{m} nearest SSCNet's rate: {v['bpppc']:.3f} bpppc, PSNR {_fmt(v['psnr'])} dB"
              f"{' [' + v['flagged'] + ']' if v['flagged'] else ''}"
              for m, v in matched.items()],
        ]),
        ("h", 2, "Protocol"),
        ("ul", [
            "Same test tiles and the same metric code for every method; invalid pixels "
            "excluded everywhere.",
            "psnr: normalised scale with peak 1 (what the SSCNet paper reports); psnr_phys: "
            "physical units, peak = each band's training data range (max - min of the "
            "training statistics). Pooled MSE over all tiles; *_tile_mean in rd.csv averages "
            "per-tile PSNRs.",
            f"SSIM: Gaussian {SSIM_WINDOW} px window, sigma 1.5; MS-SSIM: {MSSSIM_WINDOW} px "
            "window, 5 scales (n/a for tiles of 32 px or less); FSIM grayscale per band; "
            "all on the normalised scale, "
            "data_range 1. SAM in degrees (float64) in physical units, zero and invalid "
            "spectra excluded.",
            "Rates: bpppc = stored bits / (bands x pixels). SSCNet: 32 (fp32) or 16 (fp16) "
            "bits per latent value, no entropy coding. Baselines: real encoded bytes incl. "
            "side information (float tiles mapped to uint16 per tile and band, min/max "
            "counted). cr = native bits / bpppc; cr_values = the paper's value-count ratio.",
            "jpeg8_paper is the SSCNet paper's JPEG setting (uint16 wrapped mod 256), measured "
            "against the wrapped 8-bit data with peak 255: for comparability only, flagged.",
            "Throughput: MB/s of input in its native dtype, wall clock, this machine, "
            f"{platform.machine()} {platform.system()}, torch threads "
            f"{torch.get_num_threads()}.",
        ]),
        ("h", 2, "Rate-distortion"),
        ("img", "rd_psnr.png", "PSNR vs bpppc"),
        ("img", "rd_psnr_phys.png", "physical PSNR vs bpppc"),
        ("img", "rd_sam.png", "SAM vs bpppc"),
        ("table", summary_cols, [[r[c] for c in summary_cols] for r in ordered]),
        ("h", 2, "Throughput of SSCNet"),
        ("table", ["device", "encode MB/s", "decode MB/s", "tiles"],
         [[k, v["encode_mbps"], v["decode_mbps"], v.get("tiles", v.get("batch_tiles"))]
          for k, v in ev.throughput.items()]),
        ("h", 2, "Per band"),
        ("p", "Full table: bands.csv / bands.md. " + j2k_note),
        ("img", "per_band_psnr.png", "PSNR per band"),
        band_table,
    ]
    if ev.figure_tile is not None:
        blocks += [("h", 2, "Reconstructions (paper Figs 5-8 style)"),
                   ("img", "maps.png", "original / reconstruction / error"),
                   ("img", "spectra.png", "spectra")]
    blocks.append(("h", 2, "Settings"))
    blocks.append(("p", json.dumps(to_dict(p))))
    with atomic_open(out / "report.md", "w", encoding="utf-8") as fh:
        fh.write(render_markdown(blocks))
    with atomic_open(out / "report.html", "w", encoding="utf-8") as fh:
        fh.write(render_html(blocks, f"SSCNet evaluation: {source}"))
    return metrics


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=None,
                    help="params file (default: ./params.yaml when present, else defaults)")
    ap.add_argument("--source", required=True, choices=SOURCES,
                    help="the data set (its evaluate layer of the params)")
    ap.add_argument("--tiles", type=Path, required=True, help="test.h5 of pipeline.tiles")
    ap.add_argument("--checkpoint", type=Path, required=True, help="best.pt of training.train")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--quiet", action="store_true")
    add_flags(ap.add_argument_group("overrides of the params (one flag per EvaluateParams key)"),
              EvaluateParams)
    return ap.parse_args(argv)


@cli_entry("python -m training.evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    p = load_params(args.params, args.source, flag_overrides(args, EvaluateParams))
    if not args.tiles.is_file():
        raise ProductError(args.tiles, "tile file not found")
    dev = resolve_device(p.device)
    lock_output(args.out, "python -m training.evaluate")
    log = (lambda *a, **k: None) if args.quiet else print
    inp = open_inputs(args.tiles, args.checkpoint, p)
    ev = run(inp, p, dev, log)
    metrics = write_outputs(args.out, ev, inp, p, args.source, args)
    m = metrics["sscnet_fp32"]
    log(f"evaluate: SSCNet fp32 {m['bpppc']:.4f} bpppc, PSNR {_fmt(m['psnr'])} dB (peak 1), "
        f"{_fmt(m['psnr_phys'])} dB (physical), SAM {_fmt(m['sam'])} deg -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

