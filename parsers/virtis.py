"""Rosetta / Venus-Express VIRTIS cubes on top of the generic PDS3 reader.

``read(path)`` returns a :class:`VirtisCube`: the :class:`parsers.pds3.Cube` API plus
the channel, the processing level, housekeeping (raw), SCET per line, per-pixel
wavelength / FWHM / uncertainty (cal), geometry plane names and scale factors (geo) and the
dark-line mask (raw). Quirk functions list the product types they apply to ("HITS").
Layout facts: ``docs/virtis-format.md``. CLI: ``python -m parsers.virtis FILE``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from parsers import pds3
from parsers.errors import ProductError
from parsers.virtis_geometry import GEO_NULL, GeoPlane, geometry_planes

CHANNELS = ("VIRTIS_M_VIS", "VIRTIS_M_IR", "VIRTIS_H")
HK_STRUCTURE_WORDS = {"VIRTIS_M_VIS": 82, "VIRTIS_M_IR": 82, "VIRTIS_H": 72}
HK_MISSING = 0xFFFF
DARK_FLAG = 0x2000
# Documented VIRTIS special values, used only when a label announces none (IDL manual p.17).
CAL_SPECIAL_DEFAULTS = {"NULL": -1004.0, "LOW_REPR_SATURATION": -1003.0,
                        "LOW_INSTR_SATURATION": -1002.0, "HIGH_REPR_SATURATION": -1001.0,
                        "HIGH_INSTR_SATURATION": -1000.0}
CAL_VALID_MINIMUM = -999.0
RAW_NULL = -32768
_FILE_LETTER = {"V": "VIRTIS_M_VIS", "I": "VIRTIS_M_IR", "H": "VIRTIS_H", "S": "VIRTIS_H",
                "T": "VIRTIS_H"}


def _text(v: Any) -> str:
    return str(v).strip().strip('"').upper() if v is not None else ""


def instrument_id(label: Any) -> str:
    """INSTRUMENT_ID of the label, else of its QUBE object, upper case ("" when none)."""
    instrument = _text(label.get("INSTRUMENT_ID"))
    if not instrument:
        for key, block in label.objects():
            if key.endswith("QUBE") and block.get("INSTRUMENT_ID") is not None:
                instrument = _text(block.get("INSTRUMENT_ID"))
    return instrument


def channel_of(label: Any, path: Path) -> str:
    """Channel from ``<MISSION>:CHANNEL_ID`` (any namespace), else from the file-name letter.

    HITS: Rosetta and VEX VIRTIS raw, cal and geo products.
    """
    mission = _text(label.get("MISSION_ID"))
    keys = [f"{mission}:CHANNEL_ID"] if mission else []
    keys += [k for k in label if k.endswith("CHANNEL_ID")]
    for key in keys:
        value = _text(label.get(key))
        if value in CHANNELS:
            return value
    letter = path.name[:1].upper()
    if letter in _FILE_LETTER and re.match(r"[VIHST]\d", path.name[:2], re.I):
        return _FILE_LETTER[letter]
    raise ProductError(path, "VIRTIS channel unknown: no CHANNEL_ID in the label and the file "
                             "name does not start with V, I, H, S or T")


@dataclasses.dataclass
class VirtisCube(pds3.Cube):
    """A VIRTIS QUBE: the generic cube plus instrument metadata and quirk-aware arrays."""

    channel: str = "VIRTIS_M_VIS"
    processing_level: int = 3
    product_kind: str = "cal"  # "raw" | "cal" | "geo"
    mission: str = "ROSETTA"

    # ---- frame parameters and dark lines
    @cached_property
    def frame_parameters(self) -> dict[str, Any]:
        """FRAME_PARAMETER as a dict keyed by FRAME_PARAMETER_DESC (M channels)."""
        values = pds3._seq(self.label.get("FRAME_PARAMETER", []))
        names = [_text(n) for n in pds3._seq(self.label.get("FRAME_PARAMETER_DESC", []))]
        default = ["EXPOSURE_DURATION", "FRAME_SUMMING", "EXTERNAL_REPETITION_TIME",
                   "DARK_ACQUISITION_RATE"]
        names = names if len(names) == len(values) else default[: len(values)]
        return dict(zip(names, values, strict=False))

    @property
    def dark_rate(self) -> int | None:
        v = self.frame_parameters.get("DARK_ACQUISITION_RATE")
        try:
            v = int(pds3._num(v))
        except (ValueError, TypeError):
            return None
        return v if v > 0 else None

    @cached_property
    def valid_lines(self) -> np.ndarray:
        """bool (L,): False on raw dark-current lines (HK flag 0x2000, else the frame rule).

        HITS: raw M ``*.QUB`` (dark lines at line 0 and every DARK_ACQUISITION_RATE + 1
        lines); always all True for cal and geo products.
        """
        n = self.lines_available
        valid = np.ones(n, dtype=bool)
        if self.product_kind != "raw":
            return valid
        hk = self.hk
        if hk is not None and hk.shape[1] >= 6:
            word = hk[:, 5]
            known = word != HK_MISSING
            valid[known] = (word[known] & DARK_FLAG) == 0
            if known.all():
                return valid
        else:
            known = np.zeros(n, dtype=bool)
        rate = self.dark_rate
        if rate and self.channel != "VIRTIS_H":
            rule = np.ones(n, dtype=bool)
            rule[:: rate + 1] = False
            valid[~known] = rule[~known]
        return valid

    # ---- housekeeping and SCET
    @cached_property
    def hk(self) -> np.ndarray | None:
        """Raw HK words (L, B) uint16 from the sideplane, or None.

        HITS: raw M and H ``*.QUB`` with ``SUFFIX_ITEMS = (0, 1, 0)``.
        """
        if self.product_kind != "raw" or not self.suffix_items.get("SAMPLE"):
            return None
        side = self.suffix_plane("SAMPLE", 0)  # (B, L)
        return side.astype(np.uint16, copy=False).T.copy()

    @property
    def hk_structures(self) -> np.ndarray | None:
        """HK as (L, n_structures, words) uint16: 82-word structures (M), 72-word (H)."""
        hk = self.hk
        if hk is None:
            return None
        size = HK_STRUCTURE_WORDS[self.channel]
        n = hk.shape[1] // size
        return hk[:, : n * size].reshape(hk.shape[0], n, size) if n else None

    @cached_property
    def scet_words(self) -> np.ndarray | None:
        """The three SCET words per line, (L, 3) uint16, or None.

        HITS: raw ``*.QUB`` (HK words 1-3), M cal ``*.CAL`` (low half of the backplane
        slots of samples 0, 1, 2: ``BAND_SUFFIX_ITEM_BYTES = 2`` in a 4-byte slot).
        """
        if self.product_kind == "raw":
            hk = self.hk
            return hk[:, :3].copy() if hk is not None and hk.shape[1] >= 3 else None
        if self.product_kind == "cal" and self.suffix_items.get("BAND") and self.samples >= 3:
            back = self.suffix_plane("BAND", 0)  # (L, S), low half already selected
            return (back[:, :3].astype(np.int64) & 0xFFFF).astype(np.uint16)
        return None

    @property
    def scet(self) -> np.ndarray | None:
        """SCET seconds per line, float64 (L,): ``w1 * 65536 + w2 + w3 / 65536``."""
        w = self.scet_words
        if w is None:
            return None
        w = w.astype(np.float64)
        return w[:, 0] * 65536 + w[:, 1] + w[:, 2] / 65536

    def scet_strings(self) -> list[str] | None:
        """SPICE SCLK strings ``"<w1*65536+w2>:<w3>"`` (Rosetta SCLK id -226)."""
        w = self.scet_words
        if w is None:
            return None
        return [f"{int(a) * 65536 + int(b)}:{int(c)}" for a, b, c in w]

    # ---- spectral calibration planes
    def _bottom_index(self, word: str) -> int | None:
        names = [n.upper() for n in self.suffix_names("LINE")]
        for j, n in enumerate(names):
            if word in n:
                return j
        defaults = {"WAVELENGTH": 0, "FWHM": 1, "UNCERTAINTY": 2}
        if len(names) == 3 and not any(any(w in n for w in defaults) for n in names):
            return defaults.get(word)
        return None

    def _bottom(self, word: str) -> np.ndarray | None:
        if self.product_kind != "cal":
            return None
        j = self._bottom_index(word)
        if j is None:
            return None
        return self.suffix_plane("LINE", j).astype(np.float32)

    @cached_property
    def wavelength_map(self) -> np.ndarray | None:
        """Per-pixel band centres (B, S) float32 from the first cal bottomplane, or None."""
        return self._bottom("WAVELENGTH")

    @cached_property
    def fwhm_map(self) -> np.ndarray | None:
        """Per-pixel spectral FWHM (B, S) float32 (cal bottomplane), or None."""
        return self._bottom("FWHM")

    @cached_property
    def uncertainty_map(self) -> np.ndarray | None:
        """Per-pixel 1-sigma radiance uncertainty (B, S) float32 (cal bottomplane), or None."""
        return self._bottom("UNCERTAINTY")

    @property
    def wavelengths(self) -> np.ndarray | None:  # type: ignore[override]
        """Band centres (B,) float32: the across-slit mean of the cal wavelength plane,
        else BAND_BIN_CENTER; None for raw products without one and for geometry."""
        wl = self.wavelength_map
        if wl is not None:
            return np.nanmean(np.where(wl > 0, wl, np.nan), axis=1).astype(np.float32)
        if self.product_kind == "geo":
            return None
        return pds3.Cube.wavelengths.fget(self)

    @property
    def wavelength_unit(self) -> str | None:  # type: ignore[override]
        if self.wavelength_map is not None:
            j = self._bottom_index("WAVELENGTH")
            units = pds3._seq(self.qube.get("LINE_SUFFIX_UNIT", []))
            if j is not None and len(units) > j:
                return str(units[j])
            if len(units) == 1:
                return str(units[0])
            return None
        return pds3.Cube.wavelength_unit.fget(self)

    # ---- geometry
    @cached_property
    def geometry_planes(self) -> list[GeoPlane] | None:
        """Plane names/units/scale factors of a .GEO product (None if unknown or not geo).

        HITS: Rosetta M/H ``*.GEO`` (23/31 planes), VEX M/H ``*.GEO`` (33/41 planes).
        """
        if self.product_kind != "geo":
            return None
        return geometry_planes(self.mission, self.channel, self.bands)


def _kind(label: Any, level: int | None) -> str:
    std = _text(label.get("STANDARD_DATA_PRODUCT_ID"))
    if "GEOMETRY" in std:
        return "geo"
    return "raw" if level == 2 else "cal"


def read(path: str | os.PathLike[str], *, allow_short: bool = False) -> VirtisCube:
    """Open a VIRTIS product (raw .QUB, calibrated .CAL, geometry .GEO); label only.

    Raises ProductError on missing, malformed, truncated or non-VIRTIS files.
    """
    path = Path(path)
    from parsers.pds3_label import read_label

    label, _ = read_label(path)
    instrument = instrument_id(label)
    if instrument != "VIRTIS":
        raise ProductError(path, f"not a VIRTIS product (INSTRUMENT_ID = {instrument or 'none'})"
                                 "; use parsers.pds3 for other QUBEs")
    level_raw = label.get("PROCESSING_LEVEL_ID")
    try:
        level = int(pds3._num(level_raw)) if level_raw is not None else None
    except (ValueError, TypeError):
        level = None
    kind = _kind(label, level)
    cube = pds3.read(path, allow_short=allow_short, prefer_corners=False,
                     prefer_item_width=(kind == "raw"))
    channel = channel_of(label, path)
    mission = _text(label.get("MISSION_ID")) or ("VEX" if path.name.upper().startswith("V")
                                                 and "_" not in path.name[:3] else "ROSETTA")
    fields = {f.name: getattr(cube, f.name) for f in dataclasses.fields(pds3.Cube)}
    v = VirtisCube(**fields, channel=channel, processing_level=level if level is not None else 3,
                   product_kind=kind, mission=mission if mission in ("ROSETTA", "VEX")
                   else "ROSETTA")
    _apply_quirks(v)
    return v


def _apply_quirks(v: VirtisCube) -> None:
    """Special values and geometry scale factors that the labels leave out.

    HITS: cal ``*.CAL`` without CORE_* special keys (documented -1000..-1004 and valid
    minimum -999, with a warning); raw ``*.QUB`` without CORE_NULL (-32768);
    ``*.GEO`` (-2147483648 = cannot compute; per-plane scale factors).
    """
    if v.product_kind == "cal" and not v.specials and v.valid_min is None:
        v.specials = dict(CAL_SPECIAL_DEFAULTS)
        v.valid_min = CAL_VALID_MINIMUM
        msg = (f"{v.path.name}: the label announces no special values; using the documented "
               "VIRTIS ones (-1000..-1004, valid minimum -999)")
        v.warnings.append(msg)
        warnings.warn(msg, pds3.LayoutWarning, stacklevel=3)
    elif v.product_kind == "raw" and "NULL" not in v.specials:
        v.specials["NULL"] = float(RAW_NULL)
    elif v.product_kind == "geo":
        v.specials.setdefault("NULL", float(GEO_NULL))
        planes = v.geometry_planes
        if planes is not None:
            v.band_scale = np.array([p.scale for p in planes], dtype=np.float64)
        else:
            msg = (f"{v.path.name}: no scale-factor table for {v.bands} {v.mission} "
                   f"{v.channel} geometry planes; values are the stored integers")
            v.warnings.append(msg)
            warnings.warn(msg, pds3.LayoutWarning, stacklevel=3)


if __name__ == "__main__":
    from parsers.cli.virtis import main

    raise SystemExit(main())
