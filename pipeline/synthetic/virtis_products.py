"""Synthetic Rosetta / Venus-Express VIRTIS products with realistic labels and layouts.

Used by the tests of every stage and by the offline demo. Layouts follow
``docs/virtis-format.md``:

- ``kind="cal"``, M channels (section 6): BIP ``>f4`` radiance core, ``SUFFIX_ITEMS = (1, 0, 3)``:
  one backplane item in a 4-byte slot per pixel (SCET words in the low half of samples 0-2 of
  each line) and three float32 bottomplanes (wavelength, FWHM, radiance uncertainty, each
  B x S) without corners.
- ``kind="cal"``, ``VIRTIS_H`` (section 7): a binary TABLE (B rows: wavelength, FWHM,
  uncertainty) before the QUBE; the QUBE's backplane holds the 3 SCET words of every spectrum.
- ``kind="raw"`` (section 5): BIP ``>i2`` DN core plus one sideplane sample per line holding B
  2-byte HK words (82-word structures for M, 72 for H; SCET words 1-3, dark flag 0x2000 in
  word 6); dark-current lines at line 0 and every DARK_ACQUISITION_RATE + 1 lines; the label
  says ``SUFFIX_BYTES = 2``.
- ``kind="geo"`` (section 8): BIP ``>i4`` scaled geometry planes, no suffix (.GEO or .GE5).

Labels carry the quirks of the real ones: CRLF, a HISTORY object between label and qube,
``ROSETTA:``/``VEX:`` namespaced keys, ``{}`` sets, unquoted enumerations, ``"REAL"`` quoted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from parsers.virtis_geometry import GEO_NULL, geometry_planes, rosetta_planes, vex_planes
from pipeline.synthetic.pds3_products import (
    DataObject,
    Obj,
    Raw,
    Set,
    Suffix,
    quote,
    write_qube_product,
)

CHANNELS = ("VIRTIS_M_VIS", "VIRTIS_M_IR", "VIRTIS_H")
WAVELENGTH_RANGE_UM = {"VIRTIS_M_VIS": (0.22, 1.05), "VIRTIS_M_IR": (0.95, 5.10),
                       "VIRTIS_H": (1.88, 5.03)}
HK_STRUCTURE_WORDS = {"VIRTIS_M_VIS": 82, "VIRTIS_M_IR": 82, "VIRTIS_H": 72}
DARK_FLAG = 0x2000
CAL_SPECIALS = {  # label keyword -> stored value (IDL manual p.17)
    "CORE_NULL": -1004.0,
    "CORE_LOW_REPR_SATURATION": -1003.0,
    "CORE_LOW_INSTR_SATURATION": -1002.0,
    "CORE_HIGH_REPR_SATURATION": -1001.0,
    "CORE_HIGH_INSTR_SATURATION": -1000.0,
}
RAW_NULL, RAW_MAX = -32768, 32767
SCLK_START = 377420372  # seconds of on-board clock at the first line


def scet_words(scet: np.ndarray) -> np.ndarray:
    """Split SCET seconds into the three HK words ``(w1, w2, w3)``: shape (3, n), uint16."""
    scet = np.asarray(scet, dtype=np.float64)
    whole = np.floor(scet).astype(np.int64)
    frac = np.round((scet - whole) * 65536).astype(np.int64).clip(0, 65535)
    return np.stack([(whole >> 16) & 0xFFFF, whole & 0xFFFF, frac]).astype(np.uint16)


def line_scet(
    lines: int, repetition_s: float = 20.0, start: float = SCLK_START + 0.5
) -> np.ndarray:
    """SCET (s) of each line of a synthetic product (float64, exactly representable)."""
    return start + repetition_s * np.arange(lines, dtype=np.float64)


def dark_lines(lines: int, dark_rate: int) -> np.ndarray:
    """Bool (L,): True on dark-current lines (line 0 and every dark_rate + 1 lines)."""
    mask = np.zeros(lines, dtype=bool)
    if dark_rate > 0:
        mask[:: dark_rate + 1] = True
    return mask


def special_positions(bands: int, lines: int, samples: int) -> dict[str, tuple[Any, int, int]]:
    """Where a cal product (``specials=True``) stores each special value.

    Returns key -> (band, line, sample).

    ``band`` is ``slice(None)`` for the NULL (dead) pixel, whose whole spectrum is NULL.
    """
    return {
        "CORE_NULL": (slice(None), lines // 3, samples // 4),
        "CORE_HIGH_INSTR_SATURATION": (bands // 2, lines // 2, samples // 2),
        "CORE_HIGH_REPR_SATURATION": (bands // 2, lines // 2, (samples // 2 + 1) % samples),
        "CORE_LOW_INSTR_SATURATION": (0, lines - 1, samples - 1),
        "CORE_LOW_REPR_SATURATION": (bands - 1, 0, 0),
    }


def wavelength_grid(channel: str, bands: int) -> np.ndarray:
    """Nominal band centres (µm), float64 (B,)."""
    lo, hi = WAVELENGTH_RANGE_UM[channel]
    return np.linspace(lo, hi, bands)


def _planck(wl_um: np.ndarray, temp_k: np.ndarray | float) -> np.ndarray:
    """Spectral radiance W/(m² sr µm)."""
    h, c, k = 6.62607015e-34, 2.99792458e8, 1.380649e-23
    wl = np.asarray(wl_um, dtype=np.float64) * 1e-6
    x = np.minimum(h * c / (wl * k * np.asarray(temp_k, dtype=np.float64)), 700.0)
    return 2 * h * c**2 / wl**5 / np.expm1(x) * 1e-6


def _smooth_field(rng: np.random.Generator, lines: int, samples: int, terms: int = 6) -> np.ndarray:
    """A smooth random field in [0, 1], (L, S)."""
    y, x = np.mgrid[0:lines, 0:samples].astype(np.float64)
    f = np.zeros((lines, samples))
    for _ in range(terms):
        kx, ky = rng.uniform(0.5, 4.0, 2) * 2 * np.pi / np.array([max(samples, 2), max(lines, 2)])
        f += rng.uniform(0.3, 1.0) * np.sin(kx * x + ky * y + rng.uniform(0, 2 * np.pi))
    f -= f.min()
    return f / max(f.max(), 1e-12)


def synthetic_radiance(
    channel: str, bands: int, lines: int, samples: int, seed: int = 0, noise: float = 0.01,
    heliocentric_au: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth comet-like radiance spectra plus noise.

    Returns (radiance (B, L, S) float32, wavelengths (B,) µm).

    Reflected sunlight (dark, reddish surface with two absorption bands) times an
    illumination field; in the infrared a thermal term from a 180-320 K temperature field.
    """
    rng = np.random.default_rng(seed)
    wl = wavelength_grid(channel, bands)
    r_sun_au = 6.957e8 / 1.495978707e11
    solar = np.pi * _planck(wl, 5778.0) * r_sun_au**2 / heliocentric_au**2  # W/m²/µm
    albedo = 0.04 + 0.03 * _smooth_field(rng, lines, samples)
    illum = 0.3 + 0.7 * _smooth_field(rng, lines, samples, terms=3)
    slope = 0.15 + 0.1 * _smooth_field(rng, lines, samples, terms=2)
    bands_abs = 1 - 0.08 * np.exp(-0.5 * ((wl - 0.9) / 0.08) ** 2) \
        - 0.05 * np.exp(-0.5 * ((wl - 3.2) / 0.15) ** 2)
    refl = albedo[None] * (1 + slope[None] * (wl[:, None, None] - 0.55)) * bands_abs[:, None, None]
    rad = solar[:, None, None] / np.pi * refl * illum[None]
    if wl.max() > 2.5:
        temp = 180 + 140 * illum * _smooth_field(rng, lines, samples, terms=2)
        rad = rad + 0.95 * _planck(wl[:, None, None], temp[None])
    rad *= 1 + noise * rng.standard_normal(rad.shape)
    rad += noise * 0.02 * float(np.median(rad)) * rng.standard_normal(rad.shape)
    return rad.astype(np.float32), wl


def _mission_keys(mission: str) -> tuple[str, str]:
    if mission not in ("ROSETTA", "VEX"):
        raise ValueError("mission must be 'ROSETTA' or 'VEX'")
    return mission, ("INTERNATIONAL ROSETTA MISSION" if mission == "ROSETTA" else "VENUS EXPRESS")


def _top_keywords(
    *, mission: str, channel: str, kind: str, product_id: str, lines: int, frame: tuple,
    scan_mode: int, extra: list,
) -> list:
    ns, mission_name = _mission_keys(mission)
    level = 2 if kind == "raw" else 3
    start = "2014-08-06T10:11:12.345"
    ds = ("RO-C-VIRTIS-{lvl}-ESC1-MTP010-V2.0" if mission == "ROSETTA"
          else "VEX-V-VIRTIS-2-3-V3.0").format(lvl=level)
    items: list = [
        ("/* GENERAL DATA DESCRIPTION PARAMETERS */", None),
        ("DATA_SET_ID", quote(ds)),
        ("PRODUCT_ID", quote(product_id)),
        ("PRODUCT_CREATION_TIME", Raw("2016-02-03T04:05:06.000")),
        ("PRODUCT_TYPE", "EDR" if level == 2 else "RDR"),
        ("PROCESSING_LEVEL_ID", level),
        ("STANDARD_DATA_PRODUCT_ID",
         quote("VIRTIS GEOMETRY" if kind == "geo" else "VIRTIS DATA")),
        ("MISSION_ID", ns),
        ("MISSION_NAME", quote(mission_name)),
        ("INSTRUMENT_HOST_ID", "RO" if mission == "ROSETTA" else "VEX"),
        ("INSTRUMENT_ID", quote("VIRTIS")),
        ("INSTRUMENT_NAME", quote("VISIBLE AND INFRARED THERMAL IMAGING SPECTROMETER")),
        (f"{ns}:CHANNEL_ID", quote(channel)),
        ("SOFTWARE_VERSION_ID", Set([quote("VirtisRos SW v.4.10"), quote("EGSE_SOFT_7.4"),
                                     quote("PI_LEVEL2 V1.0"), quote("CALIBRATION V4.0")])),
        ("TARGET_NAME", quote("67P/CHURYUMOV-GERASIMENKO 1 (1969 R1)")),
        ("START_TIME", Raw(start)),
        ("STOP_TIME", Raw("2014-08-06T10:31:12.345")),
        ("SPACECRAFT_CLOCK_START_COUNT", quote(f"1/0{SCLK_START}.40311")),
        ("SPACECRAFT_CLOCK_STOP_COUNT", quote(f"1/0{SCLK_START + 20 * lines}.40311")),
        ("FRAME_PARAMETER", tuple(frame)),
        ("FRAME_PARAMETER_DESC", (quote("EXPOSURE_DURATION"), quote("FRAME_SUMMING"),
                                  quote("EXTERNAL_REPETITION_TIME"),
                                  quote("DARK_ACQUISITION_RATE"))),
        (f"{ns}:SCAN_MODE_ID", scan_mode),
        ("SCAN_PARAMETER", (Raw("-5.7"), Raw("5.7"), Raw("0.25"), 1)),
        ("SCAN_PARAMETER_DESC", (quote("SCAN_START_ANGLE"), quote("SCAN_STOP_ANGLE"),
                                 quote("SCAN_STEP_ANGLE"), quote("SCAN_STEP_NUMBER"))),
        ("MAXIMUM_INSTRUMENT_TEMPERATURE", (Raw("131.2"), Raw("78.9"), Raw("155.0"))),
        ("DATA_QUALITY_ID", 1),
        ("DATA_QUALITY_DESC", quote("0:INCOMPLETE ; 1:COMPLETE")),
        ("SPICE_FILE_NAME", (quote("ROS_V26.TF"), quote("NAIF0011.TLS"),
                             quote("ROS_140806_STEP.TSC"))),
    ]
    if mission == "VEX":
        items += [("VEX:SCIENCE_CASE_ID", 3), ("ORBIT_NUMBER", 339)]
    else:
        items += [("ROSETTA:VIR_VIS_START_X_POSITION", 1), ("ROSETTA:VIR_VIS_START_Y_POSITION", 1),
                  ("ROSETTA:VIR_IR_START_X_POSITION", 1), ("ROSETTA:VIR_IR_START_Y_POSITION", 1)]
    items += [("SPACECRAFT_SOLAR_DISTANCE", Raw("-999.999")), ("/* QUBE DESCRIPTION */", None)]
    return [i for i in items if i[1] is not None or i[0].startswith("/*")] + list(extra)


def write_virtis_product(
    path: str | os.PathLike[str],
    kind: str = "cal",
    channel: str = "VIRTIS_M_VIS",
    bands: int = 432,
    samples: int = 64,
    lines: int = 64,
    seed: int = 0,
    **options: Any,
) -> Path:
    """Write a synthetic VIRTIS product readable by :func:`parsers.virtis.read`; return its path.

    Options: ``mission`` ("ROSETTA" | "VEX"), ``product_id`` (default: the file name),
    ``specials`` (cal: store the five special values, see :func:`special_positions`; default
    True), ``noise`` (relative), ``dark_rate`` (raw: DARK_ACQUISITION_RATE, default 15),
    ``hk_slot_bytes`` (raw: 2 or 4 bytes per HK item in the file, default 2),
    ``hk_label_bytes`` (raw: SUFFIX_BYTES written in the label, default 2 as real raw labels
    most likely say; 4 is the PDS rule), ``planes`` (geo: plane count, default the
    mission/channel .GEO table; ``extended=True`` the Rosetta .GE5 table; ``bands`` is
    ignored for geo), ``backplane_high`` (M cal: value of the high half of each backplane
    slot, default 0), ``quoted_real`` (cal: ``"REAL"`` vs ``REAL``), ``special_text``
    (cal: write every CORE_* special value as this text, e.g. ``'"N/A"'``),
    ``drop_keywords`` (label keywords to leave out, e.g. ``("BAND_SUFFIX_ITEM_TYPE",)``),
    ``missing_commas`` (draft-label quirk), ``crlf`` (default True), ``file_records``,
    ``truncate_bytes`` (stale/truncated files), ``history_records`` (default 1).
    VIRTIS_H cal (TABLE + QUBE, SCET per spectrum): ``scet_items`` (3 or 2 backplane items,
    default 3), ``scet_slot_bytes`` (bytes per item in the file, default 2),
    ``scet_label_bytes`` (SUFFIX_BYTES in the label, default the slot), ``table_columns``
    (write COLUMN objects, default True).
    """
    if kind not in ("cal", "raw", "geo"):
        raise ValueError("kind must be 'cal', 'raw' or 'geo'")
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}")
    opts = dict(options)
    path = Path(path)
    mission = opts.pop("mission", "ROSETTA")
    product_id = opts.pop("product_id", path.name.upper())
    dark_rate = int(opts.pop("dark_rate", 15))
    drop = set(opts.pop("drop_keywords", ()))
    common: dict[str, Any] = {
        "crlf": opts.pop("crlf", True),
        "history_records": opts.pop("history_records", 1),
        "history_items": [("DESCRIPTION", quote("Reserved area for ISIS compatibility"))],
        "file_records": opts.pop("file_records", None),
        "truncate_bytes": opts.pop("truncate_bytes", 0),
        "multiline": ("SOFTWARE_VERSION_ID", "SPICE_FILE_NAME", "LINE_SUFFIX_NAME"),
        "missing_commas": (("SOFTWARE_VERSION_ID", "SPICE_FILE_NAME")
                           if opts.pop("missing_commas", False) else ()),
        "top_keywords": _top_keywords(mission=mission, channel=channel, kind=kind,
                                      product_id=product_id, lines=lines,
                                      frame=(2, 1, 20, dark_rate), scan_mode=1, extra=[]),
    }
    shape = (bands, lines, samples)
    if kind == "cal" and channel == "VIRTIS_H":
        args = _h_cal(shape, seed, opts)
    elif kind == "cal":
        args = _m_cal(channel, shape, seed, opts)
    elif kind == "raw":
        args = _raw(channel, shape, seed, dark_rate, opts)
    else:
        args = _geo(mission, channel, lines, samples, seed, opts)
    if opts:
        raise TypeError(f"unknown options for kind={kind!r}: {sorted(opts)}")
    for key in ("core_keywords", "suffix_keywords"):
        args[key] = [kv for kv in args.get(key, []) if kv[0] not in drop]
    return write_qube_product(path, **args, **common)


def _cal_core(channel: str, shape: tuple[int, int, int], seed: int,
              opts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list, Raw]:
    """Radiance (B, L, S) with the special values, band centres, CORE_* keywords, REAL type."""
    bands, lines, samples = shape
    rad, wl = synthetic_radiance(channel, bands, lines, samples, seed,
                                 noise=float(opts.pop("noise", 0.01)))
    if opts.pop("specials", True):
        for key, pos in special_positions(bands, lines, samples).items():
            rad[pos] = CAL_SPECIALS[key]
    text = opts.pop("special_text", None)
    real = quote("REAL") if opts.pop("quoted_real", True) else "REAL"
    core_kw = [
        ("CORE_BASE", Raw("0.0")), ("CORE_MULTIPLIER", Raw("1.0")),
        ("CORE_VALID_MINIMUM", Raw(text or "-999.0")),
        *((k, Raw(text or repr(v))) for k, v in CAL_SPECIALS.items()),
        ("CORE_NAME", quote("CALIBRATED SPECTRAL RADIANCE")),
        ("CORE_UNIT", quote("W/(m**2*sr*micron)")),
    ]
    return rad, wl, core_kw, real


def _m_cal(channel: str, shape: tuple[int, int, int], seed: int,
           opts: dict[str, Any]) -> dict[str, Any]:
    """VIRTIS-M cal: SCET in the backplane of samples 0-2, three float bottomplanes."""
    bands, lines, samples = shape
    rad, wl, core_kw, real = _cal_core(channel, shape, seed, opts)
    back = np.zeros((1, lines, samples), dtype=np.uint32)
    high = int(opts.pop("backplane_high", 0)) & 0xFFFF
    back[0] = high << 16
    words = scet_words(line_scet(lines)).astype(np.uint32)
    for i in range(min(3, samples)):
        back[0, :, i] = np.uint32(high << 16) | words[i]
    step = (wl[-1] - wl[0]) / max(bands - 1, 1)
    x = (np.arange(samples) - (samples - 1) / 2) / max(samples, 1)
    smile = 0.25 * step * (x**2 * 4)  # sub-band spectral smile across the slit
    wl_plane = (wl[:, None] + smile[None, :]).astype(np.float32)
    fwhm = np.broadcast_to(np.float32(1.2 * step), (bands, samples)).astype(np.float32)
    unc = _uncertainty(rad)
    bottom = np.stack([wl_plane, fwhm, np.broadcast_to(unc[:, None], (bands, samples))])
    suffix_kw = [
        ("BAND_SUFFIX_NAME", quote("SCET")), ("BAND_SUFFIX_UNIT", "DIMENSIONLESS"),
        ("BAND_SUFFIX_ITEM_BYTES", 2), ("BAND_SUFFIX_ITEM_TYPE", "MSB_UNSIGNED_INTEGER"),
        ("LINE_SUFFIX_NAME", (quote("WAVELENGTH"), quote("FWHM"),
                              quote("RADIANCE UNCERTAINTY"))),
        ("LINE_SUFFIX_UNIT", (quote("MICRON"), quote("MICRON"),
                              quote("W/(m**2*sr*micron)"))),
        ("LINE_SUFFIX_ITEM_BYTES", 4), ("LINE_SUFFIX_ITEM_TYPE", real),
    ]
    suffix = {"BAND": Suffix(back, ">u4", 4), "LINE": Suffix(bottom, ">f4", 4)}
    return dict(core=rad, interleave="BIP", core_dtype=">f4", core_type=real,
                core_keywords=core_kw, suffix=suffix, suffix_keywords=suffix_kw,
                suffix_bytes_label=4, corners=False)


def _uncertainty(rad: np.ndarray) -> np.ndarray:
    """A plausible 1-sigma radiance uncertainty per band (B,), float32."""
    valid = np.where(rad > -999, rad, np.nan)
    with np.errstate(all="ignore"):
        unc = 0.02 * np.nanmean(valid.reshape(valid.shape[0], -1), axis=1) + 1e-4
    return np.nan_to_num(unc, nan=1e-4).astype(np.float32)


def spectrum_scet(lines: int, samples: int) -> np.ndarray:
    """SCET (s) of each spectrum of a synthetic H cal product, line-major (L * S,)."""
    return SCLK_START + 0.5 + 0.3125 * np.arange(lines * samples, dtype=np.float64)


def h_cal_table(bands: int, rad: np.ndarray) -> np.ndarray:
    """The H cal TABLE values (B, 3) float32: wavelength (µm), FWHM (µm), uncertainty."""
    wl = wavelength_grid("VIRTIS_H", bands)
    step = (wl[-1] - wl[0]) / max(bands - 1, 1)
    return np.stack([wl, np.full(bands, 1.2 * step), _uncertainty(rad)], axis=1
                    ).astype(np.float32)


def _h_cal(shape: tuple[int, int, int], seed: int, opts: dict[str, Any]) -> dict[str, Any]:
    """VIRTIS-H cal: binary TABLE (B rows: wavelength, FWHM, uncertainty) then a QUBE of
    spectra whose backplane holds the SCET words of every spectrum."""
    bands, lines, samples = shape
    rad, _wl, core_kw, real = _cal_core("VIRTIS_H", shape, seed, opts)
    count = int(opts.pop("scet_items", 3))
    slot = int(opts.pop("scet_slot_bytes", 2))
    label_bytes = int(opts.pop("scet_label_bytes", slot))
    words = scet_words(spectrum_scet(lines, samples)).astype(np.uint32)  # (3, L * S)
    if count == 3:
        back = words.reshape(3, lines, samples)
    else:  # 2 x 4 bytes: the three words packed big-endian, the fourth word zero
        back = np.stack([(words[0] << 16) | words[1], words[2] << 16]).reshape(2, lines, samples)
    dtype = ">u2" if count == 3 and slot == 2 else ">u4"
    item_bytes = 2 if count == 3 else 4
    suffix_kw = [
        ("BAND_SUFFIX_NAME", tuple(quote(f"SCET_{i + 1}") for i in range(count))),
        ("BAND_SUFFIX_UNIT", "DIMENSIONLESS"),
        ("BAND_SUFFIX_ITEM_BYTES", item_bytes),
        ("BAND_SUFFIX_ITEM_TYPE", "MSB_UNSIGNED_INTEGER"),
    ]
    table = h_cal_table(bands, rad)
    columns = [Obj("COLUMN", [("NAME", quote(n)), ("DATA_TYPE", "IEEE_REAL"),
                              ("START_BYTE", 1 + 4 * i), ("BYTES", 4), ("UNIT", quote(u))])
               for i, (n, u) in enumerate((("WAVELENGTH", "MICRON"), ("FWHM", "MICRON"),
                                           ("UNCERTAINTY", "W/(m**2*sr*micron)")))]
    table_items = [("INTERCHANGE_FORMAT", "BINARY"), ("ROWS", bands), ("COLUMNS", 3),
                   ("ROW_BYTES", 12)]
    if opts.pop("table_columns", True):
        table_items += columns
    return dict(core=rad, interleave="BIP", core_dtype=">f4", core_type=real,
                core_keywords=core_kw, suffix={"BAND": Suffix(back, dtype, slot)},
                suffix_keywords=suffix_kw, suffix_bytes_label=label_bytes, corners=False,
                objects_before=[DataObject("TABLE", table_items, table.astype(">f4").tobytes())])


def _raw(channel: str, shape: tuple[int, int, int], seed: int, dark_rate: int,
         opts: dict[str, Any]) -> dict[str, Any]:
    """Raw: signed 2-byte DN plus one sideplane sample of 2-byte HK words per line."""
    bands, lines, samples = shape
    rng = np.random.default_rng(seed + 1)
    slot = int(opts.pop("hk_slot_bytes", 2))
    label_bytes = int(opts.pop("hk_label_bytes", 2))
    rad, _wl = synthetic_radiance(channel, bands, lines, samples, seed,
                                  noise=float(opts.pop("noise", 0.01)))
    gain = 400.0 / max(float(np.percentile(rad, 99)), 1e-9)
    dn = rad * gain + rng.normal(0, 3, rad.shape)
    dark = dark_lines(lines, dark_rate)
    dn[:, dark, :] = rng.normal(0, 4, (bands, int(dark.sum()), samples))
    dn = np.clip(np.round(dn), RAW_NULL + 1, RAW_MAX).astype(np.int16)
    if opts.pop("specials", True) and lines > 2 and samples > 2:
        dn[:, 1, 1] = RAW_NULL
        dn[bands // 2, 2, 2] = RAW_MAX
    hk = raw_housekeeping(channel, bands, lines, line_scet(lines), dark)
    suffix_kw = [
        ("SAMPLE_SUFFIX_NAME", quote("HOUSEKEEPING")), ("SAMPLE_SUFFIX_UNIT", "DIMENSIONLESS"),
        ("SAMPLE_SUFFIX_ITEM_BYTES", 2), ("SAMPLE_SUFFIX_ITEM_TYPE", "MSB_UNSIGNED_INTEGER"),
    ]
    core_kw = [
        ("CORE_BASE", Raw("0.0")), ("CORE_MULTIPLIER", Raw("1.0")),
        ("CORE_VALID_MINIMUM", RAW_NULL), ("CORE_NULL", RAW_NULL),
        ("CORE_HIGH_INSTR_SATURATION", RAW_MAX),
        ("CORE_NAME", "RAW_DATA_NUMBER"), ("CORE_UNIT", "DIMENSIONLESS"),
    ]
    return dict(core=dn, interleave="BIP", core_dtype=">i2", core_type="MSB_INTEGER",
                core_keywords=core_kw, suffix={"SAMPLE": Suffix(hk, ">u2", slot)},
                suffix_keywords=suffix_kw, suffix_bytes_label=label_bytes)


def _geo(mission: str, channel: str, lines: int, samples: int, seed: int,
         opts: dict[str, Any]) -> dict[str, Any]:
    """Geometry: scaled int32 planes, no suffix, the null value in pixel (0, 0)."""
    extended = bool(opts.pop("extended", False))
    table = vex_planes(channel) if mission == "VEX" else rosetta_planes(channel, extended)
    nplanes = int(opts.pop("planes", len(table)))
    planes = geometry_planes(mission, channel, nplanes)
    values = synthetic_geometry(nplanes, lines, samples, seed)
    ints = np.empty(values.shape, dtype=np.int32)
    for i in range(nplanes):
        scale = planes[i].scale if planes else 1.0
        ints[i] = np.round(values[i] / scale).astype(np.int64).clip(-2**31 + 1, 2**31 - 1)
    ints[:, 0, 0] = GEO_NULL
    core_kw = [("CORE_BASE", Raw("0.0")), ("CORE_MULTIPLIER", Raw("1.0")),
               ("CORE_NULL", GEO_NULL), ("CORE_NAME", quote("GEOMETRY")),
               ("CORE_UNIT", "DIMENSIONLESS")]
    return dict(core=ints, interleave="BIP", core_dtype=">i4", core_type="MSB_INTEGER",
                core_keywords=core_kw)


def raw_housekeeping(
    channel: str, bands: int, lines: int, scet: np.ndarray, dark: np.ndarray,
) -> np.ndarray:
    """HK sideplane words (1, B, L) uint16: repeating structures with SCET and the dark flag."""
    size = HK_STRUCTURE_WORDS[channel]
    nstruct = bands // size
    hk = np.zeros((bands, lines), dtype=np.uint16)
    words = scet_words(scet)
    for s in range(max(nstruct, 1)):
        base = s * size
        block = np.zeros((size, lines), dtype=np.uint32)
        block[0:3] = words
        block[3] = 7 + s  # acquisition id
        block[4] = (s << 8) | (np.arange(lines) & 0xFF)  # subslice + serial
        block[5] = np.where(dark, DARK_FLAG | 0x0001, 0x0001)
        block[6:] = (np.arange(6, size)[:, None] * 37 + 1000) & 0xFFFF
        block[size - 1] = 0xFFFF  # a missing HK word
        n = min(size, bands - base)
        hk[base:base + n] = block[:n]
    return hk[None]


def synthetic_geometry(planes: int, lines: int, samples: int, seed: int = 0) -> np.ndarray:
    """Physical geometry values (planes, L, S) float64: smooth angles/distances per plane."""
    rng = np.random.default_rng(seed + 7)
    y, x = np.mgrid[0:lines, 0:samples].astype(np.float64)
    out = np.empty((planes, lines, samples))
    for i in range(planes):
        base = rng.uniform(-60, 60)
        out[i] = base + 0.05 * x + 0.03 * y + rng.uniform(-0.5, 0.5)
    return out
