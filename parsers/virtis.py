"""Rosetta / Venus-Express VIRTIS cubes on top of the generic PDS3 reader.

``read(path)`` returns a :class:`VirtisCube`: the :class:`parsers.pds3.Cube` API plus
the channel, the processing level, housekeeping (raw), SCET per line (M) or per spectrum
(H calibrated), wavelength / FWHM / uncertainty (M cal: per-pixel bottomplanes; H cal: the
binary TABLE before the QUBE), geometry plane names and scale factors (.GEO, .GE5) and the
dark-line mask (raw). Quirk functions list the product types they apply to ("HITS").
Layout facts and how sure each one is: ``docs/virtis-format.md``.
CLI: ``python -m parsers.virtis FILE``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from parsers import pds3
from parsers.errors import ProductError
from parsers.pds3_binary_table import Table, TableColumn, find_table, read_table
from parsers.virtis_geometry import (
    GEO_NULL,
    ROSETTA_GE5_PLANES,
    ROSETTA_GEO_PLANES,
    GeoPlane,
    geometry_planes,
)

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
H_TABLE_WORDS = {"WAVELENGTH": ("WAVELENGTH", "LAMBDA"), "FWHM": ("FWHM", "WIDTH"),
                 "UNCERTAINTY": ("UNCERTAINTY", "NOISE", "ERROR", "SIGMA")}
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
    spectral_table: Table | None = None  # H calibrated: the TABLE object before the QUBE
    spectral_columns: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def is_h_cal(self) -> bool:
        return self.product_kind == "cal" and self.channel == "VIRTIS_H"

    @property
    def scet_per(self) -> str:
        """What one SCET row stands for: "spectrum" (H calibrated) or "line"."""
        return "spectrum" if self.is_h_cal else "line"

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
        """The three SCET words per line (L, 3), or per spectrum (L * S, 3) for H cal;
        uint16, or None. H spectra are numbered line-major (line * S + sample); the IDL
        library returns the transpose, (3, n_spectra).

        HITS: raw ``*.QUB`` (HK words 1-3), M cal ``*.CAL`` (low half of the backplane
        slots of samples 0, 1, 2: ``BAND_SUFFIX_ITEM_BYTES = 2`` in a 4-byte slot),
        H cal ``*.CAL`` (backplane items 0-2 of every spectrum, low 16 bits).
        """
        if self.is_h_cal:
            if len(self.suffix_items.get("BAND", [])) < 3:
                return None
            words = [self.suffix_plane("BAND", j).reshape(-1).astype(np.int64) & 0xFFFF
                     for j in range(3)]
            return np.stack(words, axis=1).astype(np.uint16)
        if self.product_kind == "raw":
            hk = self.hk
            return hk[:, :3].copy() if hk is not None and hk.shape[1] >= 3 else None
        if self.product_kind == "cal" and self.suffix_items.get("BAND") and self.samples >= 3:
            back = self.suffix_plane("BAND", 0)  # (L, S), low half already selected
            return (back[:, :3].astype(np.int64) & 0xFFFF).astype(np.uint16)
        return None

    @property
    def scet(self) -> np.ndarray | None:
        """SCET seconds per line (L,) or per H-cal spectrum (L * S,), float64:
        ``w1 * 65536 + w2 + w3 / 65536``."""
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
        if self.is_h_cal:
            col = self.spectral_columns.get(word)
            return None if col is None else np.broadcast_to(col[:, None],
                                                            (self.bands, self.samples))
        j = self._bottom_index(word)
        if j is None:
            return None
        return self.suffix_plane("LINE", j).astype(np.float32)

    @cached_property
    def wavelength_map(self) -> np.ndarray | None:
        """Per-pixel band centres (B, S) float32: M cal bottomplane; H cal, the TABLE column
        repeated for every sample (a read-only view). None otherwise."""
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
        if self.is_h_cal:
            return self.spectral_columns.get("WAVELENGTH")
        wl = self.wavelength_map
        if wl is not None:
            return np.nanmean(np.where(wl > 0, wl, np.nan), axis=1).astype(np.float32)
        if self.product_kind == "geo":
            return None
        return pds3.Cube.wavelengths.fget(self)

    @property
    def wavelength_unit(self) -> str | None:  # type: ignore[override]
        if self.is_h_cal:
            table = self.spectral_table
            name = _column_for(list(table.columns), "WAVELENGTH") if table else None
            return table.units.get(name) if table and name else None
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

        HITS: Rosetta M/H ``*.GEO`` (23/31 planes) and ``*.GE5`` (100/112 planes),
        VEX M/H ``*.GEO`` (33/41 planes).
        """
        if self.product_kind != "geo":
            return None
        return geometry_planes(self.mission, self.channel, self.bands)

    @cached_property
    def geometry_scet(self) -> np.ndarray | None:
        """SCET seconds (L, S) float64 from Rosetta H geometry: ``SCET_1 + SCET_2 / 65536``
        (planes 22 and 23); NaN where either is the null value. None for other products.

        HITS: Rosetta VIRTIS_H ``*.GEO`` and ``*.GE5``.
        """
        planes = self.geometry_planes
        if self.mission != "ROSETTA" or self.channel != "VIRTIS_H" or not planes:
            return None
        names = [p.name for p in planes]
        one, two = names.index("SCET_1"), names.index("SCET_2")
        words = np.asarray(self.stored()[[one, two]], dtype=np.float64)
        scet = words[0] + words[1] / 65536
        scet[(words == GEO_NULL).any(axis=0)] = np.nan
        return scet


def _column_for(names: list[str], word: str) -> str | None:
    for name in names:
        if any(w in name.upper() for w in H_TABLE_WORDS[word]):
            return name
    return None


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
    level_num = pds3.label_number(label.get("PROCESSING_LEVEL_ID"))  # may be quoted
    level = int(level_num) if level_num is not None and math.isfinite(level_num) else None
    kind = _kind(label, level)
    cube = pds3.read(path, allow_short=allow_short, prefer_corners=False,
                     prefer_item_width=(kind == "raw"),
                     suffix_type_defaults={"LINE": "IEEE_REAL"} if kind == "cal" else None)
    channel = channel_of(label, path)
    mission = _text(label.get("MISSION_ID")) or ("VEX" if path.name.upper().startswith("V")
                                                 and "_" not in path.name[:3] else "ROSETTA")
    fields = {f.name: getattr(cube, f.name) for f in dataclasses.fields(pds3.Cube)}
    v = VirtisCube(**fields, channel=channel, processing_level=level if level is not None else 3,
                   product_kind=kind, mission=mission if mission in ("ROSETTA", "VEX")
                   else "ROSETTA")
    _apply_quirks(v)
    return v


def _warn(v: VirtisCube, message: str) -> None:
    v.warnings.append(message)
    warnings.warn(f"{v.path.name}: {message}", pds3.LayoutWarning, stacklevel=4)


def _apply_quirks(v: VirtisCube) -> None:
    """Special values, tables and scale factors that the labels leave out or hide.

    HITS: cal ``*.CAL`` without numeric CORE_* special values (documented -1000..-1004 and
    valid minimum -999, with a warning); raw ``*.QUB`` without CORE_NULL (-32768);
    H cal ``*.CAL`` (TABLE + per-spectrum SCET); ``*.GEO``/``*.GE5`` (-2147483648 = cannot
    compute; per-plane scale factors).
    """
    if v.product_kind == "cal" and not v.specials and v.valid_min is None:
        v.specials = dict(CAL_SPECIAL_DEFAULTS)
        v.valid_min = CAL_VALID_MINIMUM
        _warn(v, "the label defines no special values; using the documented VIRTIS ones "
                 "(-1000..-1004, valid minimum -999)")
    elif v.product_kind == "raw" and "NULL" not in v.specials:
        v.specials["NULL"] = float(RAW_NULL)
    if v.is_h_cal:
        _h_cal_table(v)
        _h_cal_backplane(v)
    elif v.product_kind == "geo":
        _geometry(v)


def _h_cal_table(v: VirtisCube) -> None:
    """Wavelength, FWHM and uncertainty per band from the binary TABLE before the QUBE.

    HITS: VIRTIS_H ``*.CAL`` (TABLE of B rows x 3 float32; VEX ``VT*.CAL`` byte counts).
    """
    found = find_table(v.label)
    if found is None:
        _warn(v, "no TABLE object: the H calibrated wavelengths are unknown")
        return
    name, block = found
    columns = None
    if not any(k.endswith("COLUMN") for k, _ in block.objects()):
        if pds3.label_number(block.get("ROW_BYTES")) != 12:
            _warn(v, f"{name} has no COLUMN objects and ROW_BYTES is not 12: not read")
            return
        columns = [TableColumn(n, None, np.dtype(">f4"), 4 * i)
                   for i, n in enumerate(("WAVELENGTH", "FWHM", "UNCERTAINTY"))]
        _warn(v, f"{name} has no COLUMN objects; reading the documented 3 big-endian float32 "
                 "columns (wavelength, FWHM, uncertainty)")
    table = read_table(v.path, v.label, name, columns)
    if table.offset < v.offset < table.offset + table.nbytes and v.data_path == v.path:
        raise ProductError(v.path, f"{name} (ROWS {table.rows} x ROW_BYTES {table.row_bytes} "
                                   f"at byte {table.offset:,}) runs into the QUBE at byte "
                                   f"{v.offset:,}")
    for note in table.warnings:
        _warn(v, note)
    v.spectral_table = table
    if table.rows != v.bands:
        _warn(v, f"{name} has {table.rows} rows for {v.bands} bands: no wavelengths")
        return
    names = list(table.columns)
    found_cols = {w: _column_for(names, w) for w in H_TABLE_WORDS}
    if None in found_cols.values() and len(names) == 3:
        found_cols = dict(zip(H_TABLE_WORDS, names, strict=True))
        _warn(v, f"{name} column names {names} are not recognised; taking them as "
                 "wavelength, FWHM, uncertainty in that order")
    v.spectral_columns = {w: table.columns[c].astype(np.float32)
                          for w, c in found_cols.items() if c is not None}


def _h_cal_backplane(v: VirtisCube) -> None:
    """Check the per-spectrum SCET backplane against the two layouts the byte counts allow.

    Real VEX H cal files fit both 3 items x 2 bytes (plus record padding) and 2 items x 4
    bytes; the label's widths and the size check decide, and a warning says when the other
    reading would fit as well. HITS: VIRTIS_H ``*.CAL``.
    """
    items = v.suffix_items.get("BAND", [])
    if len(items) < 3:
        _warn(v, f"the backplane holds {len(items)} item(s) per spectrum; which bytes hold "
                 "the 3 SCET words is not documented: no SCET")
    if not items:
        return
    spectra = v.lines * v.samples
    core = v.bands * v.core_dtype.itemsize
    used = len(items) * v.layout.slots["BAND"]
    record = int(pds3.label_number(v.label.get("RECORD_BYTES")) or 512)
    available = pds3.layout_bounds(
        v.offset, v.file_size, [pds3.Layout(False, {}, spectra * (core + used))],
        pds3.other_objects(v.label, v.path, v.data_path, record, "^QUBE"))[0]
    for count, width in ((3, 2), (2, 4)):
        need = spectra * (core + count * width)
        if count * width != used and 0 <= available - need < record:
            _warn(v, f"the SCET backplane would also fit as {count} x {width}-byte items "
                     f"({need:,} of {available:,} bytes); using the label's {len(items)} x "
                     f"{v.layout.slots['BAND']}-byte items")


def _geometry(v: VirtisCube) -> None:
    """Null value, plane table and scale factors of a geometry cube; warns when the file's
    extension, plane count or item type disagree with the tables.

    HITS: ``*.GEO`` (Rosetta 23/31, VEX 33/41 planes), Rosetta ``*.GE5`` (100/112 planes).
    """
    v.specials.setdefault("NULL", float(GEO_NULL))
    if v.core_dtype.kind != "i" or v.core_dtype.itemsize != 4:
        _warn(v, f"geometry planes are documented as 4-byte integers, the label says "
                 f"{v.core_type} of {v.core_dtype.itemsize} bytes")
    planes = v.geometry_planes
    if planes is None:
        _warn(v, f"no scale-factor table for {v.bands} {v.mission} {v.channel} geometry "
                 "planes; values are the stored integers")
        return
    v.band_scale = np.array([p.scale for p in planes], dtype=np.float64)
    ext = v.path.suffix.upper()
    family = "M" if v.channel != "VIRTIS_H" else "H"
    want = {".GEO": ROSETTA_GEO_PLANES[family], ".GE5": ROSETTA_GE5_PLANES[family]}
    if v.mission == "ROSETTA" and ext in want and v.bands != want[ext]:
        _warn(v, f"a {ext} file with {v.bands} planes (Rosetta {family} {ext} products have "
                 f"{want[ext]}); using the {v.bands}-plane table")


if __name__ == "__main__":
    from parsers.cli.virtis import main

    raise SystemExit(main())
