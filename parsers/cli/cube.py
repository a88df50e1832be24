"""``python -m parsers.cube FILE``: summarise, inspect or export any cube the readers open.

The format is detected (:func:`parsers.cube.detect_format`: PDS3 QUBE, VIRTIS, ENVI,
GeoTIFF/COG). The flags are those of :mod:`parsers.cli.qube`; ``--json`` prints bands,
lines, samples, dtype, format, wavelength_range (nm), valid_fraction and the format's
layout facts; ``--spectrum`` prints wavelengths in nm for every format.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from parsers import pds3, virtis
from parsers.cli.qube import build_parser, overview_bands, run_cli, scan
from parsers.cube import detect_format, format_options, open_cube, wavelengths_nm
from parsers.errors import UserError, cli_entry

PROG = "python -m parsers.cube"
_READ_BY = {"pds3": "parsers.pds3", "virtis": "parsers.virtis",
            "envi": "rasterio (GDAL ENVI driver)", "geotiff": "rasterio (GDAL GTiff driver)"}


def _open(path: str, allow_short: bool = False) -> Any:
    fmt = detect_format(path)
    if allow_short and "allow_short" not in format_options(fmt):
        raise UserError(f"--allow-short applies to PDS3 QUBEs only, {path} is {fmt}")
    return open_cube(path, format=fmt, **({"allow_short": True} if allow_short else {}))


def format_of(cube: Any) -> str:
    if isinstance(cube, virtis.VirtisCube):
        return "virtis"
    if isinstance(cube, pds3.Cube):
        return "pds3"
    return str(cube.format)


def _stored_dtype(cube: Any) -> str:
    if isinstance(cube, pds3.Cube):
        return "vax_float32" if cube.core_dtype is pds3.VAX_F else cube.core_dtype.name
    return cube.stored_dtype.name


def _no_data(cube: Any) -> dict[str, float] | list[float] | None:
    """PDS3: the special values by name; rasters: the distinct per-band no-data values."""
    if isinstance(cube, pds3.Cube):
        return dict(cube.specials) or None
    values = sorted({float(v) for v in cube.nodata if np.isfinite(v)})
    return values or None


def _range(values: np.ndarray | None) -> list[float] | None:
    if values is None or not np.isfinite(values).any():
        return None
    return [round(float(np.nanmin(values)), 4), round(float(np.nanmax(values)), 4)]


def _finite(x: float, digits: int | None = None) -> float | None:
    if not np.isfinite(x):
        return None
    return float(x) if digits is None else round(float(x), digits)


def describe(cube: Any, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The --json object: shape, stored type, format, wavelengths (nm), validity, overview."""
    stats = stats if stats is not None else scan(cube)
    wl = wavelengths_nm(cube)
    fmt = format_of(cube)
    bad = getattr(cube, "bad_bands", None)
    info: dict[str, Any] = {
        "file": str(cube.path), "product_id": cube.product_id, "format": fmt,
        "read_by": _READ_BY[fmt],
        "bands": cube.bands, "lines": cube.lines, "samples": cube.samples,
        "lines_available": cube.lines_available,
        "dtype": _stored_dtype(cube), "byte_order": cube.byte_order,
        "interleave": cube.interleave, "no_data": _no_data(cube),
        "wavelength_range": _range(wl), "wavelength_unit": "nm" if wl is not None else None,
        "fwhm_range": _range(getattr(cube, "fwhm", None)),
        "bad_bands": None if bad is None else int(np.count_nonzero(bad)),
        "band_names": getattr(cube, "band_names", None),
        "crs": getattr(cube, "crs", None), "transform": getattr(cube, "transform", None),
        "map_info": getattr(cube, "map_info", None),
        "valid_fraction": stats["valid_fraction"],
        "warnings": list(cube.warnings),
    }
    info["band_overview"] = [
        {"band": int(i), "wavelength_nm": _finite(wl[i], 4) if wl is not None else None,
         "min": _finite(stats["band_min"][i]), "max": _finite(stats["band_max"][i]),
         "mean": _finite(stats["band_mean"][i])} for i in overview_bands(cube.bands)]
    return info


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def summary_text(info: dict[str, Any]) -> str:
    """Human-readable summary lines of :func:`describe`'s object."""
    short = ("" if info["lines_available"] == info["lines"]
             else f" ({info['lines_available']} complete)")
    out = [f"{info['product_id']}  ({info['file']})",
           f"  format           {info['format']} (read by {info['read_by']})",
           f"  dims (B, L, S)   {info['bands']} x {info['lines']}{short} x {info['samples']}"
           f"  {info['interleave']}",
           f"  stored type      {info['dtype']} {info['byte_order']}"]
    if info["no_data"]:
        nd = info["no_data"]
        text = (", ".join(f"{k} {v:g}" for k, v in nd.items()) if isinstance(nd, dict)
                else ", ".join(f"{v:g}" for v in nd))
        out.append(f"  no-data          {text}")
    if info["wavelength_range"]:
        lo, hi = info["wavelength_range"]
        fwhm = info["fwhm_range"]
        extra = f"; FWHM {fwhm[0]:.4g} .. {fwhm[1]:.4g} nm" if fwhm else ""
        out.append(f"  wavelengths      {lo:.2f} .. {hi:.2f} nm{extra}")
    if info["bad_bands"] is not None:
        out.append(f"  bad bands (bbl)  {info['bad_bands']} of {info['bands']}")
    if info["band_names"]:
        names = info["band_names"]
        more = f", ... ({len(names)})" if len(names) > 4 else ""
        out.append(f"  band names       {', '.join(names[:4])}{more}")
    if info["map_info"] or info["crs"]:
        out.append(f"  georeferencing   {_where(info)}")
    out.append(f"  valid fraction   {info['valid_fraction']:.6f}")
    out.append("  band  wavelength[nm]         min          max         mean")
    for row in info["band_overview"]:
        out.append(f"  {row['band']:>4}  {_g(row['wavelength_nm']):>14}  {_g(row['min']):>11}  "
                   f"{_g(row['max']):>11}  {_g(row['mean']):>11}")
    out += [f"  warning: {w}" for w in info["warnings"]]
    return "\n".join(out)


def _where(info: dict[str, Any]) -> str:
    """"UTM zone 11 North, pixel 30 x 30" from the map info, else the CRS name and the
    transform's pixel size."""
    mi = info["map_info"] or {}
    if mi:
        name = mi["projection"] + (f" zone {mi['zone']} {mi['hemisphere']}" if "zone" in mi
                                   else "")
        size = mi["pixel_size"]
    else:
        m = re.search(r'^[A-Z]+CRS\["([^"]+)"|^[A-Z]+CS\["([^"]+)"', info["crs"] or "")
        name = next((g for g in m.groups() if g), "CRS") if m else "CRS"
        t = info["transform"]
        size = (abs(t[0]), abs(t[4])) if t else None
    return name + (f", pixel {size[0]:g} x {size[1]:g}" if size else "")


def _axis(cube: Any) -> tuple[np.ndarray | None, str | None]:
    wl = wavelengths_nm(cube)
    if wl is None:
        return None, None
    return np.round(wl.astype(np.float64), 4), "nm"  # float32 digits beyond 4 are noise


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """``{PROG} FILE [--json] [--export OUT] [--band N --png OUT] [--spectrum L S]``."""
    parser = build_parser(
        PROG, description="Summarise, inspect or export a cube: PDS3 QUBE (VIRTIS), ENVI "
                          "(.hdr + binary) or GeoTIFF/COG; the format is detected.",
        file_help="cube file: PDS3 product or label, ENVI header or data file, GeoTIFF")
    return run_cli(argv, prog=PROG, opener=_open, parser=parser, describe_fn=describe,
                   summary_fn=summary_text, axis=_axis)


if __name__ == "__main__":
    raise SystemExit(main())
