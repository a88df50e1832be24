"""Open any supported cube file: ``open_cube(path)`` (``python -m parsers.cube FILE``).

:func:`detect_format` looks at the file itself (signature, label, header beside it), never
only at its extension, and names one of :data:`FORMATS`:

============  ==================================================  =========================
format        recognised by                                        read by
============  ==================================================  =========================
``virtis``    PDS3 label with INSTRUMENT_ID = VIRTIS               :func:`parsers.virtis.read`
``pds3``      any other PDS3 label with a QUBE object              :func:`parsers.pds3.read`
``envi``      a ``.hdr`` starting with ``ENVI`` (given, or beside  :func:`parsers.envi.read`
              the file)                                            (GDAL ENVI driver)
``geotiff``   TIFF / BigTIFF signature (GeoTIFF, COG)              :func:`parsers.geotiff.read`
                                                                   (GDAL GTiff driver)
============  ==================================================  =========================

:func:`open_cube` returns the reader's cube object. All of them share one reading API:
``bands``, ``lines``, ``samples``, ``lines_available``, ``shape`` = ``(bands, lines,
samples)``; ``load()`` (float32 ``(B, L, S)``, NaN for no-data), ``window(lines, samples,
bands=None)``, ``read_lines(start, stop)``, ``band(i)``, ``spectrum(line, sample)``;
``wavelengths`` with ``wavelength_unit``, ``product_id``, ``warnings``. ENVI and GeoTIFF
cubes give wavelengths in nm; PDS3 cubes in their label's unit (usually micrometres):
:func:`wavelengths_nm` gives nm for any cube.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from parsers import envi, geotiff, pds3, virtis
from parsers.errors import ProductError, UserError
from parsers.pds3_label import read_label
from parsers.wavelengths import to_nanometres

FORMATS = ("pds3", "virtis", "envi", "geotiff")
TRIED = ("PDS3 QUBE (ODL label at the start), ENVI (a .hdr starting with 'ENVI' beside it), "
         "GeoTIFF (TIFF signature)")

# opener and the keyword options it takes
_OPENERS: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "pds3": (pds3.read, ("allow_short", "prefer_corners", "prefer_item_width")),
    "virtis": (virtis.read, ("allow_short",)),
    "envi": (envi.read, ("drop_bad_bands",)),
    "geotiff": (geotiff.read, ()),
}


def _looks_like_pds3(head: bytes) -> bool:
    text = head.lstrip()
    return (text.startswith(b"CCSD") or b"PDS_VERSION_ID" in head[:4096]
            or (text.startswith(b"RECORD_TYPE") and b"=" in text[:64]))


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path``, one of :data:`FORMATS`; ProductError (one line) if none fits."""
    p = Path(path)
    if p.is_dir():
        hint = (" (Sentinel-2 SAFE folders: python -m parsers.sentinel2)"
                if p.name.upper().endswith(".SAFE") else "")
        raise ProductError(p, f"is a directory, not a cube file{hint}")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except FileNotFoundError:
        raise ProductError(p, "file not found") from None
    except OSError as exc:
        raise ProductError(p, f"cannot read: {exc.strerror or exc}") from None
    if not head:
        raise ProductError(p, "empty file")
    if p.name.lower().endswith(".hdr") and head.startswith(envi.MAGIC):
        return "envi"
    if head[:4] in geotiff.MAGICS:
        return "geotiff"
    if envi.header_for(p) is not None:
        return "envi"
    if _looks_like_pds3(head):
        label, _ = read_label(p)
        if not any(k.endswith("QUBE") for k, _ in label.objects()):
            raise ProductError(p, "PDS3 label without a QUBE object (only QUBE products are "
                                  "cubes)")
        return "virtis" if virtis.instrument_id(label) == "VIRTIS" else "pds3"
    raise ProductError(p, f"unknown format; tried {TRIED}")


def open_cube(path: str | os.PathLike[str], *, format: str | None = None, **options: Any
              ) -> Any:
    """Open ``path`` with the reader of its format (detected unless ``format`` is given).

    ``options`` go to that reader: ``allow_short`` (PDS3, VIRTIS), ``prefer_corners`` /
    ``prefer_item_width`` (PDS3), ``drop_bad_bands`` (ENVI). An option the format does not
    take is a UserError. Returns the cube (see the module docstring for the shared API).
    """
    fmt = detect_format(path) if format is None else format
    if fmt not in _OPENERS:
        raise UserError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    opener, accepted = _OPENERS[fmt]
    extra = sorted(set(options) - set(accepted))
    if extra:
        takes = ", ".join(accepted) or "no options"
        raise UserError(f"{Path(path).name}: {', '.join(extra)} does not apply to {fmt} cubes "
                        f"({fmt} takes {takes})")
    return opener(path, **options)


def format_options(fmt: str) -> tuple[str, ...]:
    """The keyword options :func:`open_cube` passes to the reader of ``fmt``."""
    return _OPENERS[fmt][1]


def wavelengths_nm(cube: Any) -> np.ndarray | None:
    """The cube's band wavelengths in nm (float32, (B,)), or None when it has none."""
    wl = getattr(cube, "wavelengths", None)
    if wl is None:
        return None
    unit = getattr(cube, "wavelength_unit", None)
    nm, _ = to_nanometres(np.asarray(wl, dtype=np.float64), unit)
    return nm


if __name__ == "__main__":
    from parsers.cli.cube import main

    raise SystemExit(main())
