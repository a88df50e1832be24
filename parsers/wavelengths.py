"""Band wavelengths in one unit: nanometres.

Headers and labels name their wavelength unit in many ways (ENVI ``wavelength units =
Micrometers``, GDAL band tags ``wavelength_units = nm``, PDS3 ``BAND_BIN_UNIT = MICROMETER``).
:func:`to_nanometres` turns any of them into nm; every cube opened through
:func:`parsers.cube.open_cube` from ENVI or GeoTIFF reports its wavelengths in nm, and
:func:`parsers.cube.wavelengths_nm` converts a PDS3 cube's label unit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# nm per unit, keyed by the normalised unit name (lower case, no spaces, dots or plural s).
_NM_PER_UNIT = {
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micrometer": 1e3, "micrometre": 1e3, "micron": 1e3,
    "mu": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
    "a": 0.1, "angstrom": 0.1, "å": 0.1,
}
# Spectral units that are not wavelengths but convert to one (nm = factor / value).
_NM_RECIPROCAL = {"wavenumber": 1e7, "cm-1": 1e7, "cm^-1": 1e7, "1/cm": 1e7}
# Units that say "no wavelength here".
_NOT_WAVELENGTH = {"index", "unknown", "none", ""}
# Without a unit: values up to this are taken as micrometres, larger ones as nanometres
# (optical and thermal sensors span 0.3-15 um = 300-15000 nm, so the ranges never overlap).
GUESS_MICROMETRES_BELOW = 100.0


def _normalise(unit: str) -> str:
    u = unit.strip().strip('"').strip().lower().replace(" ", "").replace(".", "")
    if u.endswith("s") and u[:-1] in _NM_PER_UNIT:
        u = u[:-1]
    return u


def unit_factor(unit: str) -> float | None:
    """nm per ``unit`` (e.g. 1000 for "Micrometers"), or None when it is not a length."""
    return _NM_PER_UNIT.get(_normalise(unit))


def nm_factor(values: Sequence[float] | np.ndarray, unit: str | None
              ) -> tuple[float | None, str | None]:
    """``(nm per unit, note)`` for a linear unit; ``(None, note)`` for any other unit.

    ``unit`` None, empty or "Unknown": micrometres when every value is below
    :data:`GUESS_MICROMETRES_BELOW`, else nanometres, and the note says which was assumed.
    The note is None when nothing had to be guessed or refused.
    """
    arr = np.asarray(values, dtype=np.float64)
    if unit is None or _normalise(unit) in ("", "unknown"):
        finite = arr[np.isfinite(arr)]
        top = float(np.max(np.abs(finite))) if finite.size else 0.0
        micro = finite.size > 0 and top < GUESS_MICROMETRES_BELOW
        guess = "micrometres" if micro else "nanometres"
        return (1e3 if micro else 1.0), (f"wavelengths have no unit; values up to {top:g} "
                                         f"read as {guess}")
    u = _normalise(unit)
    if u in _NM_PER_UNIT:
        return _NM_PER_UNIT[u], None
    if u in _NM_RECIPROCAL:
        return None, None
    if u in _NOT_WAVELENGTH:
        return None, f"wavelength unit {unit.strip()!r}: band positions are not wavelengths"
    return None, f"wavelength unit {unit.strip()!r} is not a length unit; wavelengths ignored"


def to_nanometres(values: Sequence[float] | np.ndarray, unit: str | None
                  ) -> tuple[np.ndarray | None, str | None]:
    """``(wavelengths in nm as float32, note)``; ``(None, note)`` when they cannot be converted.

    Linear units scale (see :func:`nm_factor`, which also says what happens without a
    unit); wavenumbers (cm-1) become ``1e7 / value`` nm.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return None, None
    factor, note = nm_factor(arr, unit)
    if factor is not None:
        return (arr * factor).astype(np.float32), note
    u = _normalise(unit or "")
    if u in _NM_RECIPROCAL:
        positive = np.where(arr > 0, arr, 1.0)
        return np.where(arr > 0, _NM_RECIPROCAL[u] / positive, np.nan).astype(np.float32), None
    return None, note


_VALUE_UNIT_RE = re.compile(
    r"(?P<value>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-zµμÅ]+)?\s*\)?\s*$")


def parse_value_with_unit(text: str) -> tuple[float, str | None] | None:
    """``"0.513 Micrometers"`` / ``"band 19 (513 nm)"`` / ``"450"`` -> ``(value, unit)``.

    The number must end the text (optionally followed by a unit and a closing parenthesis);
    anything else (e.g. ``"B02"``, ``"Path length (m)"``) gives None.
    """
    m = _VALUE_UNIT_RE.search(text.strip())
    if m is None:
        return None
    unit = m.group("unit")
    if unit is not None and unit_factor(unit) is None:
        return None
    head = text.strip()[: m.start()].rstrip()
    if head and not head.endswith("(") and unit is None:
        return None  # "B 12", "Band 3": a band number, not a wavelength
    if head and head[-1:].isalnum():
        return None  # "B02": the number is part of a name
    return float(m.group("value")), unit
