"""The command-line front shared by the cube readers (``python -m parsers.pds3``,
``python -m parsers.virtis``, ``python -m parsers.cube``).

``FILE`` prints a summary; ``--json`` one JSON object; ``--export OUT.npy|OUT.h5`` writes
``load()`` (the .h5 also holds the suffix planes and the label as attributes);
``--band N --png OUT.png`` writes a quick-look; ``--spectrum LINE SAMPLE`` prints
wavelength/value pairs. Outputs are written atomically (nothing partial on failure).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parsers.atomic import atomic_open, atomic_path
from parsers.errors import UserError
from parsers.jsonsafe import json_safe
from parsers.pds3 import PLANE_KIND

_OVERVIEW_BANDS = 8


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def build_parser(prog: str, description: str = "Summarise, inspect or export a PDS3 QUBE.",
                 file_help: str = "product file (attached label) or detached .LBL"
                 ) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=description)
    p.add_argument("file", help=file_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--export", metavar="OUT", help="write load() to OUT.npy or OUT.h5")
    p.add_argument("--band", type=int, metavar="N", help="band for --png (0-based)")
    p.add_argument("--png", metavar="OUT", help="quick-look PNG of --band N")
    p.add_argument("--spectrum", type=int, nargs=2, metavar=("LINE", "SAMPLE"),
                   help="print wavelength/value pairs of one pixel (0-based)")
    p.add_argument("--allow-short", action="store_true",
                   help="open files missing their last lines (warns, reads complete lines)")
    return p


# --------------------------------------------------------------------------- statistics
def scan(cube: Any, max_chunk_bytes: int = 64 << 20) -> dict[str, Any]:
    """Stream the cube by lines: valid fraction and per-band min/max/mean (float64)."""
    b, s = cube.bands, cube.samples
    n_lines = cube.lines_available
    step = max(1, max_chunk_bytes // max(1, b * s * 4))
    vmin = np.full(b, np.inf)
    vmax = np.full(b, -np.inf)
    total = np.zeros(b)
    count = np.zeros(b, dtype=np.int64)
    for l0 in range(0, n_lines, step):
        block = cube.read_lines(l0, min(n_lines, l0 + step))
        flat = block.reshape(b, -1)
        ok = ~np.isnan(flat)
        count += ok.sum(axis=1)
        with np.errstate(invalid="ignore"):
            vmin = np.fmin(vmin, np.nanmin(np.where(ok, flat, np.inf), axis=1))
            vmax = np.fmax(vmax, np.nanmax(np.where(ok, flat, -np.inf), axis=1))
        total += np.where(ok, flat, 0).sum(axis=1, dtype=np.float64)
    per_band = n_lines * s
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    vmin[count == 0] = np.nan
    vmax[count == 0] = np.nan
    return {
        "valid_fraction": float(count.sum() / max(1, b * per_band)),
        "band_min": vmin, "band_max": vmax, "band_mean": mean, "band_valid": count,
    }


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def describe(cube: Any, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The --json object (label-derived facts plus the streamed statistics)."""
    stats = stats if stats is not None else scan(cube)
    wl = cube.wavelengths
    suffix = {kind: n for kind, n in cube.suffix_counts.items()}
    info: dict[str, Any] = {
        "file": str(cube.path),
        "product_id": cube.product_id,
        "bands": cube.bands, "lines": cube.lines, "samples": cube.samples,
        "lines_available": cube.lines_available,
        "interleave": cube.interleave,
        "axis_name": list(cube.axes),
        "core_type": cube.core_type,
        "core_item_bytes": cube.core_dtype.itemsize,
        "byte_order": cube.byte_order,
        "core_base": cube.base, "core_multiplier": cube.multiplier,
        "special_values": cube.specials,
        "valid_minimum": cube.valid_min,
        "suffix_items": suffix,
        "suffix_layout": {
            "corners_stored": cube.layout.corners,
            "slot_bytes": {cube_kind(a): w for a, w in cube.layout.slots.items()},
            "data_bytes": cube.layout.expected,
            "names": {cube_kind(a): [it.name for it in its]
                      for a, its in cube.suffix_items.items()},
        },
        "data_offset": cube.offset,
        "file_size": cube.file_size,
        "channel": getattr(cube, "channel", None),
        "processing_level": getattr(cube, "processing_level", None),
        "product_kind": getattr(cube, "product_kind", None),
        "wavelength_range": ([float(np.nanmin(wl)), float(np.nanmax(wl))]
                             if wl is not None and np.isfinite(wl).any() else None),
        "wavelength_unit": cube.wavelength_unit,
        "valid_fraction": stats["valid_fraction"],
        "warnings": list(cube.warnings),
    }
    valid_lines = getattr(cube, "valid_lines", None)
    if valid_lines is not None:
        info["dark_lines"] = int((~valid_lines).sum())
    scet = getattr(cube, "scet", None)
    if scet is not None and len(scet):
        info["scet_range"] = [float(scet[0]), float(scet[-1])]
    planes = getattr(cube, "geometry_planes", None)
    if planes:
        info["geometry_planes"] = [{"name": p.name, "unit": p.unit, "scale": p.scale}
                                   for p in planes]
    idx = overview_bands(cube.bands)
    info["band_overview"] = [
        {"band": int(i), "wavelength": _finite(wl[i]) if wl is not None else None,
         "min": _finite(stats["band_min"][i]), "max": _finite(stats["band_max"][i]),
         "mean": _finite(stats["band_mean"][i])} for i in idx]
    return info


def cube_kind(axis: str) -> str:
    return PLANE_KIND[axis]


def overview_bands(bands: int) -> list[int]:
    n = min(bands, _OVERVIEW_BANDS)
    return sorted({round(float(x)) for x in np.linspace(0, bands - 1, n)})


def _g(x: Any) -> str:
    return "-" if x is None else f"{x:.6g}"


def summary_text(info: dict[str, Any]) -> str:
    """Human-readable summary lines."""
    lines = [f"{info['product_id']}  ({info['file']})"]
    if info.get("channel"):
        kind = info.get("product_kind") or ""
        lines.append(f"  channel          {info['channel']}  level {info['processing_level']}"
                     f" ({kind})")
    short = ("" if info["lines_available"] == info["lines"]
             else f" ({info['lines_available']} complete)")
    lines.append(f"  dims (B, L, S)   {info['bands']} x {info['lines']}{short} x "
                 f"{info['samples']}  {info['interleave']} {'/'.join(info['axis_name'])}")
    lines.append(f"  stored type      {info['core_type']} {info['core_item_bytes']} B "
                 f"{info['byte_order']}; base {info['core_base']:g}, multiplier "
                 f"{info['core_multiplier']:g}")
    lay = info["suffix_layout"]
    counts = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in info["suffix_items"].items()
                       if n) or "none"
    slots = ", ".join(f"{k} {w} B" for k, w in lay["slot_bytes"].items())
    lines.append(f"  suffix           {counts}" + (f"; slots {slots}; corners "
                 f"{'stored' if lay['corners_stored'] else 'not stored'}" if slots else ""))
    lines.append(f"  data             {lay['data_bytes']:,} B at byte {info['data_offset']:,} "
                 f"(file {info['file_size']:,} B)")
    if info["special_values"] or info["valid_minimum"] is not None:
        sv = ", ".join(f"{k} {v:g}" for k, v in info["special_values"].items())
        vm = info["valid_minimum"]
        lines.append(f"  special values   {sv}" + (f"; valid minimum {vm:g}" if vm is not None
                                                   else ""))
    if info["wavelength_range"]:
        lo, hi = info["wavelength_range"]
        lines.append(f"  wavelengths      {lo:.4f} .. {hi:.4f} {info['wavelength_unit'] or ''}")
    lines.append(f"  valid fraction   {info['valid_fraction']:.6f}")
    if "dark_lines" in info:
        lines.append(f"  dark lines       {info['dark_lines']}")
    if "scet_range" in info:
        a, b = info["scet_range"]
        lines.append(f"  SCET             {a:.5f} .. {b:.5f} s")
    if "geometry_planes" in info:
        names = ", ".join(p["name"] for p in info["geometry_planes"][:6])
        lines.append(f"  geometry planes  {len(info['geometry_planes'])}: {names}, ...")
    lines.append("  band  wavelength          min          max         mean")
    for row in info["band_overview"]:
        lines.append(f"  {row['band']:>4}  {_g(row['wavelength']):>10}  {_g(row['min']):>11}  "
                     f"{_g(row['max']):>11}  {_g(row['mean']):>11}")
    for w in info["warnings"]:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- outputs
def write_png(dest: str | os.PathLike[str], image: np.ndarray) -> None:
    """8-bit greyscale PNG of a 2-D float image (1-99 % stretch; NaN black), atomically."""
    img = np.asarray(image, dtype=np.float64)
    ok = np.isfinite(img)
    if ok.any():
        lo, hi = np.percentile(img[ok], [1, 99])
        hi = hi if hi > lo else lo + 1
        grey = np.clip((img - lo) / (hi - lo) * 255, 0, 255)
    else:
        grey = np.zeros_like(img)
    grey = np.where(ok, grey, 0).astype(np.uint8)
    h, w = grey.shape
    raw = b"".join(b"\x00" + grey[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(
            ">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    with atomic_open(dest) as fh:
        fh.write(png)


def export(cube: Any, dest: str | os.PathLike[str]) -> Path:
    """Write ``load()`` to .npy, or to .h5: core, suffix planes, per-band arrays
    (wavelengths, fwhm, bad_bands) and the label or header as attributes."""
    dest = Path(dest)
    ext = dest.suffix.lower()
    if ext == ".npy":
        data = cube.load()
        with atomic_open(dest) as fh:
            np.save(fh, data)
        return dest
    if ext in (".h5", ".hdf5"):
        import h5py

        data = cube.load()
        with atomic_path(dest) as tmp, h5py.File(tmp, "w") as h5:
            h5.create_dataset("core", data=data, chunks=(1, *data.shape[1:]))
            h5["core"].attrs["axes"] = "bands, lines, samples"
            for attr in ("backplanes", "sideplanes", "bottomplanes"):
                planes = getattr(cube, attr, None)
                if planes is not None:
                    ds = h5.create_dataset(attr, data=planes)
                    axis = {"backplanes": "BAND", "sideplanes": "SAMPLE",
                            "bottomplanes": "LINE"}[attr]
                    ds.attrs["names"] = json.dumps(cube.suffix_names(axis))
            for attr in ("wavelengths", "fwhm", "bad_bands", "valid_lines", "scet"):
                value = getattr(cube, attr, None)
                if value is not None:
                    h5.create_dataset(attr, data=value)
            _export_attributes(cube, h5.attrs)
        return dest
    raise UserError(f"{dest.name}: unsupported export format {ext or '(none)'} "
                    "(use .npy or .h5)")


def _export_attributes(cube: Any, attrs: Any) -> None:
    """HDF5 file attributes: the PDS3 label (JSON and its scalar keywords) or the
    header/tags of a raster cube, plus product id, wavelength unit and band names."""
    label = getattr(cube, "label", None)
    if label is not None:
        attrs["label"] = json.dumps(json_safe(label))
        for key, value in label.items():
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                attrs[key.replace("/", "_")] = value
    metadata = getattr(cube, "metadata", None)
    if metadata:
        attrs["metadata"] = json.dumps(json_safe(dict(metadata)))
    for key in ("format", "wavelength_unit", "crs"):
        value = getattr(cube, key, None)
        if isinstance(value, str):
            attrs[key] = value
    for key in ("band_names", "transform"):
        value = getattr(cube, key, None)
        if value is not None:
            attrs[key] = json.dumps(json_safe(list(value)))
    attrs["product_id"] = cube.product_id


def _label_axis(cube: Any) -> tuple[np.ndarray | None, str | None]:
    return cube.wavelengths, cube.wavelength_unit


def run_cli(
    argv: Sequence[str] | None, *, prog: str, opener: Callable[..., Any],
    parser: argparse.ArgumentParser | None = None,
    describe_fn: Callable[[Any], dict[str, Any]] = describe,
    summary_fn: Callable[[dict[str, Any]], str] = summary_text,
    axis: Callable[[Any], tuple[np.ndarray | None, str | None]] = _label_axis,
) -> int:
    """Parse arguments, open the cube with ``opener`` and do what was asked.

    ``parser``, ``describe_fn`` (the --json object), ``summary_fn`` (its text form) and
    ``axis`` (wavelengths and unit for --spectrum) default to the PDS3 ones of this module.
    """
    args = (parser or build_parser(prog)).parse_args(argv)
    if args.png and args.band is None:
        raise UserError("--png needs --band N")
    cube = opener(args.file, allow_short=args.allow_short)
    if args.band is not None and not 0 <= args.band < cube.bands:
        raise UserError(f"--band {args.band}: outside 0..{cube.bands - 1}")
    if args.spectrum is not None:
        line, sample = args.spectrum
        if not (0 <= line < cube.lines_available and 0 <= sample < cube.samples):
            raise UserError(f"--spectrum {line} {sample}: outside the "
                            f"{cube.lines_available} x {cube.samples} image")
    did_output = False
    if args.export:
        export(cube, args.export)
        did_output = True
    if args.png:
        write_png(args.png, cube.band(args.band))
        did_output = True
    if args.spectrum is not None:
        line, sample = args.spectrum
        values = cube.spectrum(line, sample)
        wl, unit = axis(cube)
        unit = unit or ""
        print(f"# {cube.product_id} line {line} sample {sample}; wavelength [{unit}] value")
        for i, v in enumerate(values):
            x = f"{wl[i]:.6f}" if wl is not None else str(i)
            print(f"{x} {v:.7g}")
        return 0
    if args.json:
        print(json.dumps(json_safe(describe_fn(cube)), sort_keys=False))
        return 0
    if not did_output:
        print(summary_fn(describe_fn(cube)))
    else:
        for out in (args.export, args.png):
            if out:
                print(f"wrote {out}")
    return 0
