"""Small synthetic ENVI cubes (header + raw binary) for tests and demos.

The writer is independent of the reader (:mod:`parsers.envi` goes through GDAL): the binary is
laid out with numpy (``transpose`` to the interleave, ``astype`` with an explicit byte order,
``tofile``) and the header is written as text, so a reader bug cannot hide behind shared code.
Arrays are given in memory order ``(bands, lines, samples)``.

:func:`hyperspectral_scene` makes a smooth, realistic-looking radiance cube (a few surface
spectra mixed by smooth abundance fields), deterministic for a seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parsers.atomic import atomic_open

# ENVI "data type" codes
ENVI_TYPES = {
    np.dtype("uint8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3, np.dtype("float32"): 4,
    np.dtype("float64"): 5, np.dtype("uint16"): 12, np.dtype("uint32"): 13,
    np.dtype("int64"): 14, np.dtype("uint64"): 15,
}
# memory axes (B, L, S) -> file order, outermost first
FILE_ORDER = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}


def hyperspectral_scene(bands: int = 32, lines: int = 24, samples: int = 20, *,
                        first_nm: float = 400.0, last_nm: float = 2500.0, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``(radiance float32 (B, L, S), wavelengths float64 (B,) nm)``: four smooth surface
    spectra under a solar-like curve, mixed by smooth random abundances, plus 1 % noise."""
    rng = np.random.default_rng(seed)
    wl = np.linspace(first_nm, last_nm, bands)
    x = (wl - first_nm) / max(last_nm - first_nm, 1.0)
    sun = np.exp(-((wl - 550.0) / 900.0) ** 2)
    spectra = np.stack([
        0.05 + 0.45 / (1 + np.exp(-(wl - 720.0) / 15.0)) * np.exp(-x),  # vegetation
        0.10 + 0.25 * x,  # soil
        0.08 * np.exp(-3 * x),  # water
        0.20 + 0.05 * np.sin(6 * x),  # urban
    ])
    yy, xx = np.mgrid[0:lines, 0:samples] / max(lines, samples, 1)
    fields = np.stack([np.sin(2 * np.pi * (f1 * yy + f2 * xx) + ph) + 1.2 for f1, f2, ph in
                       rng.uniform(0.3, 1.5, size=(4, 3))])
    abundance = fields / fields.sum(axis=0, keepdims=True)
    cube = np.einsum("kb,kls->bls", spectra * sun * 100.0, abundance)
    cube *= 1 + 0.01 * rng.standard_normal(cube.shape)
    return cube.astype(np.float32), wl


def _list(values: Sequence[object]) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


@dataclass(frozen=True)
class EnviFiles:
    data: Path
    header: Path


def write_envi(
    path: str | os.PathLike[str], data: np.ndarray, *, interleave: str = "bsq",
    byte_order: str = "little", header_offset: int = 0,
    wavelengths: Sequence[float] | None = None, wavelength_units: str | None = None,
    fwhm: Sequence[float] | None = None, bbl: Sequence[int] | None = None,
    band_names: Sequence[str] | None = None, data_ignore_value: float | None = None,
    map_info: str | None = None, extra: Mapping[str, str] | None = None,
    header_name: str | None = None,
) -> EnviFiles:
    """Write ``data`` (B, L, S) as ENVI: the binary at ``path`` and the header beside it.

    ``interleave`` bsq/bil/bip; ``byte_order`` little/big; ``header_offset`` bytes of zeros
    before the data; the optional header fields are written as given (``map_info`` is the
    text inside the braces). ``header_name`` defaults to ``path`` with ``.hdr`` appended
    after its stem (``X.img`` -> ``X.hdr``; ``X`` -> ``X.hdr``).
    """
    path = Path(path)
    dtype = np.dtype(data.dtype)
    if dtype not in ENVI_TYPES:
        raise ValueError(f"no ENVI data type for {dtype}")
    order = "<" if byte_order == "little" else ">"
    stored = np.ascontiguousarray(data.transpose(FILE_ORDER[interleave]))
    with atomic_open(path) as fh:
        fh.write(b"\0" * header_offset)
        fh.write(stored.astype(dtype.newbyteorder(order)).tobytes())
    bands, lines, samples = data.shape
    fields = [
        "ENVI", "description = {synthetic cube written by pipeline.synthetic.envi_products}",
        f"samples = {samples}", f"lines   = {lines}", f"bands   = {bands}",
        f"header offset = {header_offset}", "file type = ENVI Standard",
        f"data type = {ENVI_TYPES[dtype]}", f"interleave = {interleave}",
        f"byte order = {0 if byte_order == 'little' else 1}",
    ]
    if data_ignore_value is not None:
        fields.append(f"data ignore value = {data_ignore_value:g}")
    if map_info is not None:
        fields.append(f"map info = {{{map_info}}}")
    if band_names is not None:
        fields.append("band names = " + _list(band_names))
    if wavelength_units is not None:
        fields.append(f"wavelength units = {wavelength_units}")
    if wavelengths is not None:
        fields.append("wavelength = " + _list([f"{w:.6g}" for w in wavelengths]))
    if fwhm is not None:
        fields.append("fwhm = " + _list([f"{w:.6g}" for w in fwhm]))
    if bbl is not None:
        fields.append("bbl = " + _list([int(b) for b in bbl]))
    fields += [f"{k} = {v}" for k, v in (extra or {}).items()]
    header = path.with_name(header_name or (path.stem if path.suffix else path.name) + ".hdr")
    with atomic_open(header, "w", encoding="ascii") as fh:
        fh.write("\n".join(fields) + "\n")
    return EnviFiles(path, header)
