"""Rendering of an evaluation: CSV tables, figures, report.md and report.html.

:mod:`training.evaluate` scores (runs the methods, accumulates metrics, writes metrics.json);
this module only renders what it computed. A report is a list of blocks, rendered twice:
``("h", level, text)``, ``("p", text)``, ``("ul", [items])``, ``("table", headers, rows)``,
``("img", src, alt)``.
"""

from __future__ import annotations

import csv
import html
import json
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parsers.atomic import atomic_open
from parsers.jsonsafe import json_safe
from training import figures
from training.metrics import MSSSIM_WINDOW, SSIM_WINDOW

Block = tuple
SUMMARY_COLUMNS = ["method", "setting", "bpppc", "cr", "cr_values", "psnr", "psnr_phys", "ssim",
                   "ms_ssim", "sam", "mae", "rmse", "max_abs_err", "encode_mbps",
                   "decode_mbps", "latent_bpppc", "header_share", "flagged"]
FIGURE_NOTE = ("SSCNet fp32/fp16: latent bits, no entropy coding; SSCNet rd: real .sscz bytes "
               "(header, masks, framing included); baselines: real encoded bytes incl. side "
               "information.")


# --------------------------------------------------------------------------- formatting
def fmt(v: Any, nd: int = 3) -> str:
    """A table cell: ints as they are, floats with ``nd`` decimals, NaN as n/a."""
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


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (fmt(r.get(k), 6) if not isinstance(r.get(k), str) else r.get(k))
                        for k in columns})


def write_json(path: Path, data: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(json_safe(data), fh, indent=2, sort_keys=False)
        fh.write("\n")


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
            lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
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
            out += ["<tr>" + "".join(f"<td>{e(fmt(c))}</td>" for c in r) + "</tr>"
                    for r in b[2]]
            out.append("</table>")
        elif b[0] == "img":
            out.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(out: Path, blocks: Sequence[Block], title: str) -> None:
    """report.md and report.html from the same blocks."""
    with atomic_open(out / "report.md", "w", encoding="utf-8") as fh:
        fh.write(render_markdown(blocks))
    with atomic_open(out / "report.html", "w", encoding="utf-8") as fh:
        fh.write(render_html(blocks, title))


# --------------------------------------------------------------------------- sections
def band_section(source: str, rows: list[dict[str, Any]], max_rows: int, lead: str,
                 note: str) -> tuple[Block, list[Block]]:
    """(the per-band table block, the blocks of bands.md); every ``step``-th band shown."""
    cols = list(rows[0].keys())
    step = max(1, math.ceil(len(rows) / max_rows))
    table = ("table", cols, [[r[c] for c in cols] for r in rows[::step]])
    text = (f"{lead}. PSNR: normalised scale peak 1; psnr_phys: peak = peak_phys (training "
            f"range). {note}" + (f" Every {step}th band shown; bands.csv has all."
                                 if step > 1 else ""))
    return table, [("h", 1, f"Per-band errors, {source}"), ("p", text), table]


def write_figures(out: Path, rows: list[dict[str, Any]], source: str, tiles: int,
                  shape: Sequence[int]) -> list[str]:
    """The three rate-distortion plots; returns their file names."""
    note = f"{source}: {tiles} test tiles {tuple(shape)}. {FIGURE_NOTE}"
    figures.rd_plot(rows, out / "rd_psnr.png", "psnr",
                    title=f"{source}: PSNR vs rate (normalised scale, peak 1)", note=note)
    figures.rd_plot(rows, out / "rd_psnr_phys.png", "psnr_phys",
                    ylabel="PSNR (dB, physical units, peak = band training range)",
                    title=f"{source}: PSNR vs rate (physical units)", note=note)
    figures.rd_plot(rows, out / "rd_sam.png", "sam",
                    ylabel="spectral angle (degrees, lower is better)",
                    title=f"{source}: spectral angle vs rate", note=note)
    return ["rd_psnr.png", "rd_psnr_phys.png", "rd_sam.png"]


def headline(metrics: Mapping[str, Any], native_bits: int) -> list[str]:
    """The bullet points at the top of the report."""
    items = []
    for key in ("sscnet_fp32", "sscnet_fp16"):
        m = metrics.get(key)
        if m:
            items.append(f"SSCNet {key[-4:]} latent ({m['setting']}): {m['bpppc']:.4f} bpppc "
                         f"(latent bits, no entropy coding; value-count ratio "
                         f"{fmt(m['cr_values'], 2)}:1, bit ratio against {native_bits}-bit "
                         f"input {fmt(m['cr_bits'], 2)}:1); PSNR {fmt(m['psnr'])} dB (peak 1), "
                         f"{fmt(m['psnr_phys'])} dB (physical), SAM {fmt(m['sam'])} deg.")
    coded = metrics.get("sscnet_rd_sweep") or ([metrics["sscnet_rd"]]
                                                if metrics.get("sscnet_rd") else [])
    for m in coded:
        items.append(
            f"SSCNet entropy-coded ({m['setting']}): real rate {m['bpppc']:.4f} bpppc (the .sscz "
            f"bytes; header {100 * m['header_share']:.2f} % of them), latent bits "
            f"{m['latent_bpppc']:.4f} bpppc, value-count ratio {fmt(m['cr_values'], 2)}:1; "
            f"PSNR {fmt(m['psnr'])} dB (peak 1), {fmt(m['psnr_phys'])} dB (physical), SAM "
            f"{fmt(m['sam'])} deg (throughput and the entropy coder's share of the time: "
            "Throughput of SSCNet, below).")
    lossless = metrics.get("lossless_bpppc") or {}
    if lossless:
        items.append(f"Lossless floor: {metrics['lossless_floor_bpppc']:.3f} bpppc ("
                     + ", ".join(f"{k} {v:.3f}" for k, v in lossless.items())
                     + "); a lossy point at a higher rate is dominated.")
    for m, v in (metrics.get("baselines_nearest_sscnet_rate") or {}).items():
        flag = f" [{v['flagged']}]" if v["flagged"] else ""
        items.append(f"{m} nearest SSCNet's rate: {v['bpppc']:.3f} bpppc, PSNR "
                     f"{fmt(v['psnr'])} dB{flag}")
    return items


def protocol() -> list[str]:
    return [
        "Same test tiles and the same metric code for every method; invalid pixels excluded "
        "everywhere.",
        "psnr: normalised scale with peak 1 (what the SSCNet paper reports); psnr_phys: "
        "physical units, peak = each band's training data range (max - min of the training "
        "statistics). Pooled MSE over all tiles; *_tile_mean in rd.csv averages per-tile "
        "PSNRs.",
        f"SSIM: Gaussian {SSIM_WINDOW} px window, sigma 1.5; MS-SSIM: {MSSSIM_WINDOW} px window,"
        " 5 scales (n/a for tiles of 32 px or less); FSIM grayscale per band; all on the "
        "normalised scale, data_range 1. SAM in degrees (float64) in physical units, zero and"
        " invalid spectra excluded.",
        "Rates: bpppc = stored bits / (bands x pixels). SSCNet fp32/fp16: 32 or 16 bits per "
        "latent value, no entropy coding. SSCNet rd (entropy-coded): the bytes of the .sscz "
        "stream training.compress writes for these tiles (one header, invalid masks, per-tile "
        "framing and CRC included), decoded by training.decompress; latent_bpppc = the "
        "entropy-coded latents alone; header_share = header bytes / all bytes. Baselines: "
        "real encoded bytes incl. side information (float tiles mapped to uint16 per tile and "
        "band, min/max counted). cr = native bits / bpppc; cr_values = the paper's "
        "value-count ratio.",
        "jpeg8_paper is the SSCNet paper's JPEG setting (uint16 wrapped mod 256), measured "
        "against the wrapped 8-bit data with peak 255: for comparability only, flagged.",
        "Throughput: MB/s of input in its native dtype, wall clock, this machine, "
        f"{platform.machine()} {platform.system()}, torch threads {torch.get_num_threads()}. "
        "SSCNet rd: the whole compress / decompress path (normalisation, network, entropy "
        "coder, container); coder_share = entropy coder time / network time.",
    ]


def throughput_table(throughput: Mapping[str, Mapping[str, Any]]) -> Block:
    return ("table", ["model / device", "encode MB/s", "decode MB/s", "tiles", "coder share"],
            [[k, v["encode_mbps"], v["decode_mbps"], v.get("tiles", v.get("batch_tiles")),
              v.get("coder_share", "")] for k, v in throughput.items()])


# --------------------------------------------------------------------------- the report
@dataclass
class Context:
    """What the report says about the run besides the scores."""

    source: str
    out: Path
    tiles: int
    shape: Sequence[int]
    dtype: str
    native_bits: int
    first: str  # setting of the first SSCNet model
    first_method: str
    checkpoint: str
    epoch: Any
    model_config: Mapping[str, Any]
    normalisation: str
    tiles_path: str
    wavelengths: np.ndarray | None
    settings: Any  # EvaluateParams


def pick_bands(chosen: Sequence[int], bands: int) -> list[int]:
    picked = [b for b in chosen if 0 <= b < bands]
    if picked:
        return picked
    return sorted({round(v) for v in np.linspace(0, bands - 1, min(3, bands) + 2)[1:-1]})


def pick_pixels(chosen: Sequence[tuple[int, int]], x: np.ndarray) -> list[tuple[int, int]]:
    h, w = x.shape[1:]
    picked = [(r, c) for r, c in chosen if 0 <= r < h and 0 <= c < w]
    if picked:
        return picked
    bright = np.nan_to_num(np.nanmean(x, axis=0), nan=-np.inf)
    order = np.argsort(bright.ravel())
    return [divmod(int(i), w) for i in (order[-1], order[len(order) // 2], order[0])]


def write_tile_figures(ctx: Context, figure_tile: tuple[np.ndarray, np.ndarray]) -> list[str]:
    """Band maps and spectra of one tile (paper Figs 5-8 style)."""
    x, y = figure_tile
    p, wl = ctx.settings, ctx.wavelengths
    bands = pick_bands(p.figure_bands, x.shape[0])
    labels = [f"band {b}" + (f" ({wl[b]:.4g})" if wl is not None else "") for b in bands]
    what = f"SSCNet {ctx.first_method.removeprefix('sscnet_')} ({ctx.first})"
    figures.band_maps(x, y, bands, ctx.out / "maps.png", labels,
                      title=f"{ctx.source} tile {p.figure_tile}: {what} reconstruction")
    figures.spectra_plot(x, y, pick_pixels(p.figure_pixels, x), ctx.out / "spectra.png",
                         wavelengths=wl, title=f"{ctx.source} tile {p.figure_tile}: spectra, "
                         f"original (solid) vs {what} (dashed)")
    return ["maps.png", "spectra.png"]


def report_blocks(ctx: Context, rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any],
                  band_table: Block, j2k_note: str, throughput: Mapping[str, Any],
                  tile_figures: bool) -> list[Block]:
    cfg = ctx.model_config
    ordered = sorted(rows, key=lambda r: (not str(r["method"]).startswith("sscnet"),
                                          r["method"], r["bpppc"]))
    blocks: list[Block] = [
        ("h", 1, f"SSCNet evaluation: {ctx.source}"),
        ("p", f"Checkpoint {ctx.checkpoint} (epoch {ctx.epoch}, {cfg.get('arch')} latent "
              f"{cfg.get('latent')}, objective {cfg.get('objective', 'reconstruction')}, "
              f"normalisation {ctx.normalisation}); tiles {ctx.tiles_path}: {ctx.tiles} tiles "
              f"of {' x '.join(map(str, ctx.shape))}, {ctx.dtype} ({ctx.native_bits} bits per "
              "value)."),
        ("h", 2, "Headline"), ("ul", headline(metrics, ctx.native_bits)),
        ("h", 2, "Protocol"), ("ul", protocol()),
        ("h", 2, "Rate-distortion"),
        ("img", "rd_psnr.png", "PSNR vs bpppc"),
        ("img", "rd_psnr_phys.png", "physical PSNR vs bpppc"),
        ("img", "rd_sam.png", "SAM vs bpppc"),
        ("table", SUMMARY_COLUMNS, [[r.get(c, "") for c in SUMMARY_COLUMNS] for r in ordered]),
        ("h", 2, "Throughput of SSCNet"), throughput_table(throughput),
        ("h", 2, "Per band"), ("p", "Full table: bands.csv / bands.md. " + j2k_note),
        ("img", "per_band_psnr.png", "PSNR per band"), band_table,
    ]
    if tile_figures:
        blocks += [("h", 2, "Reconstructions (paper Figs 5-8 style)"),
                   ("img", "maps.png", "original / reconstruction / error"),
                   ("img", "spectra.png", "spectra")]
    blocks += [("h", 2, "Settings"), ("p", json.dumps(json_safe(ctx.settings)))]
    return blocks


def render(ctx: Context, rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any],
           bands: list[dict[str, Any]], j2k_note: str,
           figure_tile: tuple[np.ndarray, np.ndarray] | None,
           per_band: Mapping[str, Any], throughput: Mapping[str, Any]) -> None:
    """bands.md, the figures, report.md and report.html of one evaluation."""
    lead = f"SSCNet {ctx.first_method.removeprefix('sscnet_')} ({ctx.first}) on {ctx.tiles} " \
           "test tiles"
    band_table, band_md = band_section(ctx.source, bands, ctx.settings.markdown_band_rows,
                                       lead, j2k_note)
    with atomic_open(ctx.out / "bands.md", "w", encoding="utf-8") as fh:
        fh.write(render_markdown(band_md))
    write_figures(ctx.out, list(rows), ctx.source, ctx.tiles, ctx.shape)
    if figure_tile is not None:
        write_tile_figures(ctx, figure_tile)
    curves = {ctx.first_method: per_band["per_band"]}
    if per_band.get("j2k") is not None:
        curves[per_band["j2k"][0]] = per_band["j2k"][1]
    figures.per_band_plot(curves, ctx.out / "per_band_psnr.png", "PSNR (dB, peak 1)",
                          wavelengths=ctx.wavelengths, title=f"{ctx.source}: PSNR per band")
    write_report(ctx.out, report_blocks(ctx, rows, metrics, band_table, j2k_note, throughput,
                                        figure_tile is not None),
                 f"SSCNet evaluation: {ctx.source}")
