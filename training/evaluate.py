"""Evaluate trained SSCNets against classical codecs on the same test tiles, one protocol.

``python -m training.evaluate --params params.yaml --dataset S --tiles data/tiles/S/test.h5
--checkpoint models/S/best.pt [--checkpoint OTHER.pt ...] --out eval/S [--max-tiles N]
[--device cpu|cuda|auto] [--precision fp32|bf16] [--rates 0.5,1,2] [--no-baselines]``

Several ``--checkpoint`` files (e.g. the models of a lambda sweep) become one curve each
method; the first one supplies the per-band table and the figures.

Protocol (also written into every report):

* Tiles: the test file's tiles in physical units; invalid values (NaN radiance, ``valid ==
  False`` Sentinel-2 pixels) are excluded from every metric, for every method.
* SSCNet, reconstruction-only checkpoints: tiles normalised with the checkpoint's training
  statistics (invalid -> 0, as in training), encoded, decoded, denormalised. Rate: the
  paper's value-count ratio ``B*H*W / latent values`` and the bits of a stored float32 (32
  per latent value) or float16 latent (16; the fp16 latent is really cast and decoded). No
  entropy coding.
* SSCNet, rate-distortion checkpoints (:mod:`training.codec`): the tiles go through the code
  of ``training.compress`` and ``training.decompress`` (in memory, batch by batch), so the
  reconstruction is what ``decompress`` writes and the rate is the size of the ``.sscz``
  stream for these tiles: one header, per-tile masks, framing and CRCs included. Three rates:
  that real rate (with the header's share), the entropy-coded latents alone, and the paper's
  value-count ratio.
* Baselines (:mod:`training.baselines`): real byte streams incl. side information; rate =
  bytes * 8 / (B*H*W).
* Metrics (:mod:`training.metrics`): PSNR pooled and per tile, on the normalised scale (peak 1,
  paper-compatible) and in physical units (peak = per-band training range max - min); SSIM
  (7 px Gaussian window) / MS-SSIM (3 px window) / FSIM on the normalised scale with
  data_range 1; SAM in degrees in physical units; MAE and max abs error in physical units.
  The paper's 8-bit JPEG setting is measured against the wrapped 8-bit data (peak 255) and
  flagged.
* Throughput: MB/s of input in its native dtype (float32 VIRTIS 4 bytes, uint16 S2 2 bytes
  per value), wall clock on this machine, single process; for rate-distortion models the
  whole compress / decompress path, with the entropy coder's time as a share of the
  network's.

Scoring lives here; rendering (CSV, figures, Markdown, HTML) in :mod:`training.report`.
Outputs in ``--out``: metrics.json, rd.csv, bands.csv, bands.md, tiles.csv (first SSCNet per
tile), rd_psnr.png, rd_sam.png, rd_psnr_phys.png, maps.png, spectra.png, per_band_psnr.png,
report.md, report.html.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from parsers.errors import ProductError, UserError, cli_entry
from parsers.locks import lock_output
from pipeline.params import flag_overrides, load_stage, stage_parser
from training import baselines as BL
from training import report as R
from training import sscz
from training.codec import Codec, has_entropy_model
from training.cube_io import InputCube, OutputArray, open_tiles
from training.data import Normaliser, TileDataset, read_tile_attrs
from training.decode import decode_stream
from training.device import Runtime, resolve_device
from training.encode import compress_cube, header_size
from training.metrics import MetricAccumulator
from training.models import SSCNet, load_checkpoint

RD_COLUMNS = ("method", "setting", "bpppc", "cr", "psnr", "psnr_phys", "ssim", "sam", "mae",
              "max_abs_err", "flagged", "cr_values", "ms_ssim", "psnr_tile_mean",
              "psnr_phys_tile_mean", "lossless", "encode_mbps", "decode_mbps", "tiles", "rmse",
              "latent_bpppc", "header_share", "coder_share")
SSCNET_METHODS = ("sscnet_fp32", "sscnet_fp16", "sscnet_rd")


@dataclass(frozen=True)
class EvaluateParams:
    """Settings of ``python -m training.evaluate`` (params ``evaluate`` merged with
    ``datasets.<name>.evaluate``)."""

    max_tiles: int | None = None  # the first N test tiles; None: all
    batch_size: int = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={
        "help": "SSCNet encode/decode in fp32 or under bf16 autocast (as a GPU would run it); "
                "entropy-coded models always run in fp32, as compress/decompress do"})
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


def load_params(path: str | Path | None, dataset: str,
                overrides: dict[str, Any] | None = None) -> EvaluateParams:
    """The ``evaluate`` settings of ``dataset`` (common layer, data set layer, overrides)."""
    return load_stage(EvaluateParams, "evaluate", dataset, path, overrides)


# --------------------------------------------------------------------------- inputs
@dataclass
class Candidate:
    """One checkpoint under evaluation; ``codec`` is set for rate-distortion checkpoints."""

    path: Path
    model: SSCNet
    ckpt: dict[str, Any]
    codec: Codec | None

    @property
    def latent(self) -> str:
        return "x".join(map(str, self.model.latent_shape))

    @property
    def label(self) -> str:
        cfg = self.ckpt["config"]
        if self.codec is None:
            return f"latent {self.latent}"
        lam = cfg.get("lambda")
        return f"lambda {lam:g}, latent {self.latent}" if lam is not None else \
            f"{self.path.name}, latent {self.latent}"


@dataclass
class Inputs:
    candidates: list[Candidate]
    dataset: TileDataset
    normaliser: Normaliser
    stats: dict[str, Any]
    peak_phys: np.ndarray  # (B,) training range max - min
    indices: list[int]
    fmt: BL.TileFormat
    native_bits: int

    @property
    def model(self) -> SSCNet:
        return self.candidates[0].model

    @property
    def ckpt(self) -> dict[str, Any]:
        return self.candidates[0].ckpt


def _stats_range(stats: dict[str, Any], bands: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        lo = np.array(stats["min"], dtype=np.float64)
        hi = np.array(stats["max"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ProductError(where, "statistics lack per-band 'min'/'max'") from None
    if lo.shape != (bands,) or hi.shape != (bands,):
        raise ProductError(where, f"statistics give {lo.size} band ranges for {bands} bands")
    return lo, hi


def _candidate(path: Path, bands: int, size: tuple[int, int], tiles: Path) -> Candidate:
    model, ckpt = load_checkpoint(path, map_location="cpu")
    cfg = ckpt["config"]
    if bands != cfg["bands"] or size != (cfg["tile"], cfg["tile"]):
        raise UserError(f"{tiles}: tiles are {bands} x {size[0]} x {size[1]} but the "
                        f"checkpoint {path} expects {cfg['bands']} x {cfg['tile']} x "
                        f"{cfg['tile']}")
    return Candidate(path, model, ckpt, Codec(path) if has_entropy_model(ckpt) else None)


def _normaliser(ckpt: dict[str, Any], stats: dict[str, Any], path: Path) -> Normaliser:
    """The exact normaliser training used when the checkpoint stores it, else from stats."""
    mode = ckpt["config"].get("normalisation") or "paper_minmax"
    try:
        state = ckpt.get("normaliser")
        return Normaliser.from_state_dict(state) if state else Normaliser.from_stats(stats, mode)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProductError(path, f"cannot build the {mode} normaliser ({exc})") from None


def open_inputs(tiles: Path, checkpoints: Sequence[Path], p: EvaluateParams) -> Inputs:
    """The test tiles and every checkpoint, checked against each other."""
    try:
        info = read_tile_attrs(tiles)
    except (OSError, ValueError) as exc:
        raise ProductError(tiles, f"cannot open the tile file ({exc})") from None
    _, first = load_checkpoint(checkpoints[0], map_location="cpu")
    stats = first.get("stats") or info.get("stats")
    if not stats:
        raise ProductError(checkpoints[0], "no training statistics in the checkpoint or "
                                           "tile file")
    normaliser = _normaliser(first, stats, checkpoints[0])
    if normaliser.bands != info["bands"]:
        raise UserError(f"{tiles}: {info['bands']} bands, but the checkpoint's statistics "
                        f"have {normaliser.bands}")
    ds = TileDataset(tiles, normaliser=normaliser)
    h, w = ds.info["tile_shape"]
    cands = [_candidate(Path(c), ds.bands, (h, w), tiles) for c in checkpoints]
    n = len(ds) if p.max_tiles is None else min(len(ds), p.max_tiles)
    if n == 0:
        raise ProductError(tiles, "the tile file holds no tiles")
    lo, hi = _stats_range(stats, ds.bands, str(checkpoints[0]))
    peak = hi - lo
    peak = np.where(np.isfinite(peak) & (peak > 0), peak, 1.0)
    dtype = np.dtype(ds.info["dtype"])
    return Inputs(cands, ds, normaliser, stats, peak, list(range(n)),
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
    latent_bits: float = math.nan  # entropy-coded models: the coded latents alone
    header_bits: float = math.nan  # entropy-coded models: the .sscz header
    coder_s: float = 0.0
    network_s: float = 0.0
    lam: float | None = None  # entropy-coded models: the lambda they were trained with

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
            "latent_bpppc": self.latent_bits / self.values if self.values else math.nan,
            "header_share": self.header_bits / self.bits if self.bits else math.nan,
            "coder_share": self.coder_s / self.network_s if self.network_s else math.nan,
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


def batch_cube(meta: InputCube, raw: np.ndarray) -> InputCube:
    """Tiles (n, B, H, W) in memory with the metadata of their tile file (``meta``)."""
    return dataclasses.replace(meta, shape=tuple(raw.shape), _read=lambda a, b: raw[a:b],
                               _close=None)


def coded_pass(codec: Codec, cube: InputCube) -> tuple[np.ndarray, Any, Any]:
    """(what decompress gives, compress report, decompress report) for an in-memory tile
    cube, through the ``.sscz`` stream in memory."""
    buf = io.BytesIO()
    crep = compress_cube(cube, codec, buf)
    buf.seek(0)
    out = np.empty(cube.shape, cube.dtype)

    def put(where: tuple[Any, ...], v: np.ndarray) -> None:
        out[where] = v

    def sink(header: Any, dtype: np.dtype) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(OutputArray(put))

    drep = decode_stream(buf, cube.path, codec, sink)
    return out, crep, drep


@dataclass
class Evaluation:
    results: list[MethodResult]
    figure_tile: tuple[np.ndarray, np.ndarray] | None  # (x phys, y phys) first SSCNet
    throughput: dict[str, dict[str, Any]]
    codecs_built_s: float


class Runner:
    """One pass over the test tiles: every SSCNet checkpoint and every baseline setting."""

    def __init__(self, inp: Inputs, p: EvaluateParams, rt: Runtime, log: Any) -> None:
        self.inp, self.p, self.rt, self.dev, self.log = inp, p, rt, rt.device, log
        self.band_values = inp.fmt.bands * inp.fmt.height * inp.fmt.width
        self.sscnet: list[tuple[Candidate, MethodResult, bool]] = []
        # SSIM needs a tile of at least its window (tiles of a few pixels: small cubes).
        self.structural = min(inp.fmt.height, inp.fmt.width) >= R.SSIM_WINDOW
        if not self.structural:
            log(f"evaluate: tiles {inp.fmt.height}x{inp.fmt.width} are smaller than the "
                f"{R.SSIM_WINDOW}-px SSIM window: no SSIM / MS-SSIM / FSIM")
        st = self.structural
        for i, c in enumerate(inp.candidates):
            cr = float(c.model.compression_ratio)
            fsim = p.fsim and i == 0 and st
            if c.codec is None:
                for half in (False, True):
                    bits = "fp16" if half else "fp32"
                    self.sscnet.append((c, MethodResult(f"sscnet_{bits}", f"{c.label} {bits}",
                                                        self.acc(st, fsim), cr_values=cr),
                                        half))
            else:
                self.sscnet.append((c, MethodResult("sscnet_rd", c.label, self.acc(st, fsim),
                                                    cr_values=cr,
                                                    lam=c.ckpt["config"].get("lambda")),
                                    False))
        self.codecs: list[BL.Codec] = []
        self.codec_results: list[MethodResult] = []
        self.built_s = 0.0
        self.figure_tile: tuple[np.ndarray, np.ndarray] | None = None
        self.fig_index = min(max(p.figure_tile, 0), len(inp.indices) - 1)
        self.meta: InputCube | None = None
        if any(c.codec is not None for c in inp.candidates):
            self.meta = open_tiles(inp.dataset.path)  # what compress would record
            self.meta.close()

    def acc(self, structural: bool, fsim: bool, peak: Any = None) -> MetricAccumulator:
        peak = self.inp.peak_phys if peak is None else peak
        b = self.inp.fmt.bands
        return MetricAccumulator(b, np.broadcast_to(np.asarray(peak, float), (b,)).copy(),
                                 structural=structural, fsim=fsim)

    def recon(self, c: Candidate, res: MethodResult, half: bool, raw: np.ndarray,
              valid: np.ndarray) -> np.ndarray:
        """A reconstruction-only checkpoint on a batch (fp32 or fp16 latent)."""
        y_phys, _, te, td = sscnet_pass(c.model, self.inp.normaliser, raw, valid, self.rt,
                                        half)
        res.bits += (16 if half else 32) * math.prod(c.model.latent_shape) * raw.shape[0]
        res.encode_s += te
        res.decode_s += td
        return y_phys

    def coded(self, c: Candidate, res: MethodResult, raw: np.ndarray) -> np.ndarray:
        """A rate-distortion checkpoint on a batch, through compress/decompress in memory."""
        assert c.codec is not None and self.meta is not None
        out, crep, drep = coded_pass(c.codec, batch_cube(self.meta, raw))
        stream_extra = crep.header_bytes + sscz.END_BYTES  # this batch's own header and end
        res.bits += 8 * (crep.bytes - stream_extra)
        res.latent_bits = np.nan_to_num(res.latent_bits) + 8 * crep.latent_bytes
        res.encode_s += crep.seconds
        res.decode_s += drep.seconds
        res.coder_s += crep.coder_s + drep.coder_s
        res.network_s += crep.network_s + drep.network_s
        return out.astype(np.float32)

    def sscnet_batch(self, raw: np.ndarray, valid: np.ndarray, x_phys: np.ndarray,
                     x_norm: np.ndarray, seen: int) -> None:
        for i, (c, res, half) in enumerate(self.sscnet):
            y_phys = (self.coded(c, res, raw) if c.codec is not None
                      else self.recon(c, res, half, raw, valid))
            y_phys[~valid] = np.nan
            res.acc.update(x_phys, y_phys, x_norm, self.inp.normaliser.normalise(y_phys))
            res.values += self.band_values * raw.shape[0]
            res.input_bytes += raw.nbytes
            if i == 0 and seen <= self.fig_index < seen + raw.shape[0]:
                k = self.fig_index - seen
                self.figure_tile = (x_phys[k], y_phys[k])

    def build_baselines(self, raw: np.ndarray) -> None:
        p, inp = self.p, self.inp
        t0 = time.perf_counter()
        settings = BL.BaselineSettings(
            target_bpppc=tuple(p.rates), requant_bits=tuple(p.requant_bits), pca=tuple(p.pca),
            jpegxl_distances=tuple(p.jpegxl_distances),
            jpeg8_qualities=tuple(p.jpeg8_qualities), jpegxl_effort=p.jpegxl_effort,
            sz3_relative=tuple(p.sz3_relative), calibration_tiles=p.calibration_tiles,
            lossless=p.lossless)
        band_range = BL.BandRange(*_stats_range(inp.stats, inp.fmt.bands, "statistics"))
        extra = tuple(r.bpppc for _, r, _ in self.sscnet[:2])
        self.codecs = BL.build_codecs(settings, inp.fmt, band_range, raw, extra_targets=extra)
        self.built_s = time.perf_counter() - t0
        self.log(f"evaluate: {len(self.codecs)} baseline settings (JPEG 2000 levels searched "
                 f"on {min(len(raw), settings.calibration_tiles)} tile(s) in "
                 f"{self.built_s:.1f} s)")
        for c in self.codecs:
            peak = 255.0 if c.reference is not None else None
            self.codec_results.append(MethodResult(
                c.method, c.setting,
                self.acc(p.structural_baselines and self.structural, False, peak),
                flagged=c.flagged, lossless=c.lossless))

    def baselines_batch(self, raw: np.ndarray, valid: np.ndarray, x_phys: np.ndarray,
                        x_norm: np.ndarray) -> None:
        for c, res in zip(self.codecs, self.codec_results, strict=True):
            coded = BL.code_tiles(c, raw)
            if c.reference is not None:
                ref = np.stack([c.reference(t) for t in raw]).astype(np.float32)
                xr, yr = _phys(ref, valid), _phys(coded.recon, valid)
                res.acc.update(xr, yr, xr / 255.0, yr / 255.0)
            else:
                y_phys = _phys(coded.recon, valid)
                res.acc.update(x_phys, y_phys, x_norm, self.inp.normaliser.normalise(y_phys))
            res.bits += 8 * coded.nbytes
            res.values += coded.values
            res.input_bytes += coded.input_bytes
            res.encode_s += coded.encode_s
            res.decode_s += coded.decode_s

    def finish_coded(self) -> None:
        """Count one header and one end marker per rate-distortion model: the size of the
        single .sscz file of all evaluated tiles."""
        if self.meta is None:
            return
        inp = self.inp
        shape = (len(inp.indices), inp.fmt.bands, inp.fmt.height, inp.fmt.width)
        whole = dataclasses.replace(self.meta, shape=shape)
        for c, res, _ in self.sscnet:
            if c.codec is not None:
                res.header_bits = 8 * header_size(c.codec, whole)
                res.bits += res.header_bits + 8 * sscz.END_BYTES

    def throughput(self) -> dict[str, dict[str, Any]]:
        """MB/s of the first model on this device (and the other device when there is one);
        the entropy-coded models with their coder share."""
        first = self.sscnet[0][1]
        out: dict[str, dict[str, Any]] = {}
        for c, res, half in self.sscnet:
            if c is self.sscnet[0][0] and half:
                continue
            row = res.row(self.inp.native_bits)
            key = self.dev.type if res is first else f"{res.method} {res.setting}"
            out[key] = {"encode_mbps": row["encode_mbps"], "decode_mbps": row["decode_mbps"],
                        "tiles": res.acc.tiles, "batch_size": self.p.batch_size,
                        "device": str(self.dev), "coder_share": row["coder_share"],
                        "precision": "fp32" if c.codec is not None else self.rt.precision}
        c0 = self.inp.candidates[0]
        other = torch.device("cpu") if self.dev.type == "cuda" else (
            torch.device("cuda") if torch.cuda.is_available() else None)
        if other is not None and c0.codec is None:
            raw0, valid0 = next(batches(self.inp, self.p.batch_size))
            out[other.type] = time_sscnet(c0.model, self.inp.normaliser, raw0, valid0, other,
                                          precision=self.p.precision)
            self.rt.prepare(c0.model)
        return out


def run(inp: Inputs, p: EvaluateParams, dev: torch.device, log: Any = print) -> Evaluation:
    """Score every checkpoint and baseline on the test tiles (see the module docstring)."""
    rt = Runtime.create(dev, p.precision)
    for c in inp.candidates:
        c.model = rt.prepare(c.model)
        if c.codec is not None:
            c.codec = Codec(c.path, dev)
    r = Runner(inp, p, rt, log)
    seen = 0
    for raw, valid in batches(inp, p.batch_size):
        x_phys = _phys(raw, valid)
        x_norm = inp.normaliser.normalise(x_phys)
        if seen == 0:  # warm-up so that timings do not include one-off initialisation
            sscnet_pass(inp.model, inp.normaliser, raw[:1], valid[:1], rt, False)
        r.sscnet_batch(raw, valid, x_phys, x_norm, seen)
        if seen == 0 and p.baselines:
            r.build_baselines(raw)
        r.baselines_batch(raw, valid, x_phys, x_norm)
        seen += raw.shape[0]
        log(f"evaluate: {seen}/{len(inp.indices)} tiles")
    r.finish_coded()
    results = [res for _, res, _ in r.sscnet] + r.codec_results
    return Evaluation(results, r.figure_tile, r.throughput(), r.built_s)


# --------------------------------------------------------------------------- scoring summary
def _nearest(results: Sequence[MethodResult], method: str, rate: float) -> MethodResult | None:
    cand = [r for r in results if r.method == method and r.values]
    if not cand or not rate > 0:
        return None
    return min(cand, key=lambda r: abs(math.log(r.bpppc / rate)))


def _sscnet_summary(r: MethodResult, native_bits: int) -> dict[str, Any]:
    row, s = r.row(native_bits), r.acc.summary()
    out = {"setting": r.setting, "bpppc": r.bpppc, "cr_values": r.cr_values,
           "cr_bits": row["cr"],
           **{k: s.get(k, math.nan) for k in (
               "psnr", "psnr_phys", "psnr_tile_mean", "psnr_phys_tile_mean", "ssim", "ms_ssim",
               "sam", "mae", "rmse", "max_abs_err")},
           **({"fsim": s["fsim"]} if "fsim" in s else {}),
           "encode_mbps": row["encode_mbps"], "decode_mbps": row["decode_mbps"]}
    if r.method == "sscnet_rd":
        out.update(latent_bpppc=row["latent_bpppc"], header_share=row["header_share"],
                   coder_share=row["coder_share"], **{"lambda": r.lam})
    return out


def summarise(ev: Evaluation, inp: Inputs, source: str) -> dict[str, Any]:
    """The content of metrics.json: protocol facts, the SSCNet models, lossless floor and
    the baselines nearest to the first SSCNet model's rate."""
    first = ev.results[0]
    metrics: dict[str, Any] = {
        "source": source, "tiles": first.acc.tiles, "tile_shape": list(inp.fmt.shape),
        "native_bits": inp.native_bits, "checkpoint_epoch": inp.ckpt.get("epoch"),
        "normalisation": inp.normaliser.mode,
        "psnr_peak": "normalised scale, peak 1 (paper-compatible)",
        "psnr_phys_peak": "per band training data range max-min, physical units",
        "ssim_window": f"gaussian {R.SSIM_WINDOW}px sigma 1.5; ms_ssim {R.MSSSIM_WINDOW}px, "
                       "5 scales",
        "sam_unit": "degrees",
    }
    # One model per method under stable keys (DVC compares experiments key by key); a sweep
    # evaluated together also lists every entropy-coded model under sscnet_rd_sweep.
    for r in ev.results:
        if r.method in SSCNET_METHODS and r.method not in metrics:
            metrics[r.method] = _sscnet_summary(r, inp.native_bits)
    coded = [_sscnet_summary(r, inp.native_bits) for r in ev.results if r.method == "sscnet_rd"]
    if len(coded) > 1:
        metrics["sscnet_rd_sweep"] = coded
    metrics["sscnet_throughput"] = ev.throughput
    lossless = {r.method: r.bpppc for r in ev.results if r.lossless}
    if lossless:
        metrics["lossless_floor_bpppc"] = min(lossless.values())
        metrics["lossless_bpppc"] = lossless
    matched = {}
    for method in sorted({r.method for r in ev.results if r.method not in SSCNET_METHODS
                          and not r.lossless}):
        near = _nearest(ev.results, method, first.bpppc)
        if near is not None:
            s = near.acc.summary()
            matched[method] = {"setting": near.setting, "bpppc": near.bpppc, "psnr": s["psnr"],
                               "psnr_phys": s["psnr_phys"], "sam": s["sam"],
                               "flagged": near.flagged}
    metrics["baselines_nearest_sscnet_rate"] = matched
    return metrics


def band_rows(ev: Evaluation, inp: Inputs) -> tuple[list[dict[str, Any]], str]:
    """Per-band errors of the first SSCNet model and of the nearest-rate JPEG 2000, and a
    sentence saying which JPEG 2000 setting that is."""
    first = ev.results[0]
    pb = first.acc.per_band()
    j2k = _nearest(ev.results, "jpeg2000_band", first.bpppc)
    j2k_pb = j2k.acc.per_band() if j2k is not None else None
    wl = inp.dataset.wavelength
    names = inp.dataset.info.get("band_names")
    rows = []
    for b in range(inp.fmt.bands):
        row = {"band": b, "name": names[b] if isinstance(names, list) and b < len(names) else "",
               "wavelength": float(wl[b]) if wl is not None else math.nan}
        for k in ("psnr", "psnr_phys", "ssim", "ms_ssim", "fsim", "mae", "rmse", "max_abs_err"):
            row[f"sscnet_{k}"] = pb[k][b] if k in pb else math.nan
        row["peak_phys"] = inp.peak_phys[b]
        if j2k_pb is not None:
            row["jpeg2000_band_psnr"] = j2k_pb["psnr"][b]
            row["jpeg2000_band_psnr_phys"] = j2k_pb["psnr_phys"][b]
        rows.append(row)
    note = (f"JPEG 2000 per band at {j2k.bpppc:.3f} bpppc ({j2k.setting}), the setting nearest "
            f"to SSCNet's {first.bpppc:.3f} bpppc." if j2k is not None else "")
    return rows, note


def tile_rows(ev: Evaluation, inp: Inputs) -> list[dict[str, Any]]:
    """Per-tile values of the first SSCNet model (to find the tiles it fails on)."""
    pt = ev.results[0].acc.per_tile()
    rows = []
    for k, i in enumerate(inp.indices):
        try:
            where = inp.dataset.index(i)
        except KeyError:  # a tile file without the 'index' dataset
            where = {"index": i}
        rows.append({**where, "psnr": pt["psnr"][k], "psnr_phys": pt["psnr_phys"][k],
                     "sam": pt["sam"][k]})
    return rows


def write_outputs(out: Path, ev: Evaluation, inp: Inputs, p: EvaluateParams, source: str,
                  args: argparse.Namespace) -> dict[str, Any]:
    """Score (metrics.json, the CSV tables) and hand the rendering to :mod:`training.report`."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row(inp.native_bits) for r in ev.results]
    R.write_csv(out / "rd.csv", RD_COLUMNS, rows)
    metrics = summarise(ev, inp, source)
    R.write_json(out / "metrics.json", metrics)
    bands, j2k_note = band_rows(ev, inp)
    R.write_csv(out / "bands.csv", list(bands[0]), bands)
    tiles = tile_rows(ev, inp)
    R.write_csv(out / "tiles.csv", list(tiles[0]), tiles)
    first = ev.results[0]
    context = R.Context(
        source=source, out=out, tiles=first.acc.tiles, shape=inp.fmt.shape,
        dtype=str(inp.fmt.dtype), native_bits=inp.native_bits, first=first.setting,
        first_method=first.method, checkpoint=str(args.checkpoint[0]),
        epoch=inp.ckpt.get("epoch"), model_config=inp.ckpt["config"],
        normalisation=inp.normaliser.mode, tiles_path=str(args.tiles),
        wavelengths=inp.dataset.wavelength, settings=p)
    R.render(context, rows, metrics, bands, j2k_note, ev.figure_tile,
             {"per_band": first.acc.per_band()["psnr"], "j2k": _j2k_curve(ev, first)},
             ev.throughput)
    return metrics


def _j2k_curve(ev: Evaluation, first: MethodResult) -> tuple[str, np.ndarray] | None:
    j2k = _nearest(ev.results, "jpeg2000_band", first.bpppc)
    if j2k is None:
        return None
    return f"jpeg2000_band {j2k.bpppc:.2f} bpppc", j2k.acc.per_band()["psnr"]


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = stage_parser("python -m training.evaluate", __doc__.split("\n")[0], EvaluateParams)
    ap.add_argument("--tiles", type=Path, required=True, help="test.h5 of pipeline.tiles")
    ap.add_argument("--checkpoint", type=Path, required=True, action="append",
                    help="best.pt of training.train; repeat it for several models (e.g. a "
                         "lambda sweep): the first one gets the per-band table and figures")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


@cli_entry("python -m training.evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    p = load_params(args.params, args.dataset, flag_overrides(args, EvaluateParams))
    if not args.tiles.is_file():
        raise ProductError(args.tiles, "tile file not found")
    dev = resolve_device(p.device)
    lock_output(args.out, "python -m training.evaluate")
    log = (lambda *a, **k: None) if args.quiet else print
    inp = open_inputs(args.tiles, args.checkpoint, p)
    ev = run(inp, p, dev, log)
    write_outputs(args.out, ev, inp, p, args.dataset, args)
    for r in ev.results:
        if r.method in SSCNET_METHODS:
            s = r.acc.summary()
            log(f"evaluate: {r.method} ({r.setting}) {r.bpppc:.4f} bpppc, PSNR "
                f"{R.fmt(s['psnr'])} dB (peak 1), {R.fmt(s['psnr_phys'])} dB (physical), SAM "
                f"{R.fmt(s['sam'])} deg")
    log(f"evaluate: report -> {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
