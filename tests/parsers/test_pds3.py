"""Generic PDS3 QUBE reader: layouts, types, pointers, byte accounting, bad input, real VIMS."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from parsers import pds3
from parsers.errors import ProductError
from parsers.pds3_label import parse_fast, parse_label_text, repair_missing_commas
from pipeline.synthetic.pds3_products import Raw, Suffix, quote, vax_f_bytes, write_qube_product

RNG = np.random.default_rng(42)
FACE = {"BAND": ("LINE", "SAMPLE"), "SAMPLE": ("BAND", "LINE"), "LINE": ("BAND", "SAMPLE")}


def _suffix(axis: str, k: int, shape: tuple[int, int, int], dtype: str, slot: int = 4,
            pad: int = 0) -> Suffix:
    dims = {"BAND": shape[0], "LINE": shape[1], "SAMPLE": shape[2]}
    face = (k, *(dims[a] for a in FACE[axis]))
    vals = RNG.integers(0, 30000, size=face).astype(dtype)
    return Suffix(vals, dtype, slot, pad)


def _quiet_read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pds3.LayoutWarning)
        return pds3.read(path, **kw)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("interleave", ["BIP", "BIL", "BSQ"])
@pytest.mark.parametrize("corners", [False, True])
def test_round_trip_all_interleaves_with_suffixes_on_three_axes(tmp_path, interleave, corners):
    shape = (7, 5, 6)  # B, L, S
    core = RNG.normal(0, 100, shape).astype(np.float32)
    suffix = {
        "BAND": _suffix("BAND", 2, shape, ">i4"),
        "SAMPLE": _suffix("SAMPLE", 1, shape, ">u2", slot=4, pad=0xAB),
        "LINE": _suffix("LINE", 3, shape, ">f4"),
    }
    path = write_qube_product(tmp_path / "x.qub", core, interleave=interleave,
                              core_dtype=">f4", suffix=suffix, corners=corners,
                              record_bytes=1)  # no padding: every candidate is exact or not
    cube = pds3.read(path, prefer_corners=corners)
    assert cube.interleave == interleave and cube.shape == shape
    assert cube.layout.corners == corners
    np.testing.assert_array_equal(cube.load(), core)
    np.testing.assert_array_equal(cube.load(contiguous=True), core)
    np.testing.assert_array_equal(cube.backplanes, suffix["BAND"].values)
    np.testing.assert_array_equal(cube.sideplanes, suffix["SAMPLE"].values)
    np.testing.assert_array_equal(cube.bottomplanes, suffix["LINE"].values)
    np.testing.assert_array_equal(cube.read_lines(1, 4), core[:, 1:4])
    np.testing.assert_array_equal(cube.band(3), core[3])
    np.testing.assert_array_equal(cube.spectrum(4, 5), core[:, 4, 5])
    np.testing.assert_array_equal(cube.window(slice(1, 3), slice(2, 6), slice(0, 7, 2)),
                                  core[0:7:2, 1:3, 2:6])


@pytest.mark.parametrize("interleave", ["BIP", "BIL", "BSQ"])
def test_round_trip_without_suffix_and_native_result(tmp_path, interleave):
    core = RNG.integers(-3000, 3000, (4, 9, 3)).astype(">i2")
    path = write_qube_product(tmp_path / "x.qub", core, interleave=interleave, core_dtype=">i2")
    arr = pds3.read(path).load()
    assert arr.dtype == np.float32 and arr.dtype.isnative
    np.testing.assert_array_equal(arr, core.astype(np.float32))


TYPES = [
    ("MSB_INTEGER", ">i2"), ("SUN_INTEGER", ">i2"), ("MAC_INTEGER", ">i4"), ("INTEGER", ">i2"),
    ("LSB_INTEGER", "<i2"), ("PC_INTEGER", "<i4"), ("VAX_INTEGER", "<i2"),
    ("MSB_UNSIGNED_INTEGER", ">u2"), ("SUN_UNSIGNED_INTEGER", ">u4"),
    ("UNSIGNED_INTEGER", ">u2"), ("LSB_UNSIGNED_INTEGER", "<u2"),
    ("PC_UNSIGNED_INTEGER", "<u4"), ("VAX_UNSIGNED_INTEGER", "<u2"),
    ("MSB_UNSIGNED_INTEGER", "u1"), ("LSB_INTEGER", "i1"),
    ("REAL", ">f4"), ('"REAL"', ">f4"), ("IEEE_REAL", ">f8"), ("MAC_REAL", ">f4"),
    ("SUN_REAL", ">f4"), ("PC_REAL", "<f4"), ("LSB_REAL", "<f8"), ("FLOAT", ">f4"),
]


@pytest.mark.parametrize(("type_name", "dtype"), TYPES)
def test_every_type_prefix_reads_with_its_byte_order(tmp_path, type_name, dtype):
    dt = np.dtype(dtype)
    lo, hi = (0, 200) if dt.kind == "u" else (-100, 100)
    core = RNG.integers(lo, hi, (3, 4, 5)).astype(dt)
    path = write_qube_product(tmp_path / "t.qub", core, core_dtype=dt, core_type=Raw(type_name))
    cube = pds3.read(path)
    assert cube.core_dtype == dt
    np.testing.assert_array_equal(cube.load(), core.astype(np.float32))


def test_vax_real_is_converted_to_ieee(tmp_path):
    core = np.array([1.0, -2.5, 3.14159, 1e-30, 1e30, 0.0, 123456.78, -7e-3] * 3,
                    dtype=np.float32).reshape(2, 3, 4)
    path = write_qube_product(tmp_path / "v.qub", core, core_type="VAX_REAL",
                              core_dtype="<f4", interleave="BSQ")
    np.testing.assert_array_equal(pds3.read(path).load(), core)
    assert len(vax_f_bytes(core)) == core.size * 4


@pytest.mark.parametrize(("type_name", "nbytes"), [
    ("VAX_DOUBLE", 8), ("VAX_REAL", 8), ("IEEE_COMPLEX", 8), ("CHARACTER", 1),
    ("MSB_INTEGER", 3), ("REAL", 2), ("MSB_BIT_STRING", 2), ("WEIRD", 2),
])
def test_unsupported_types_are_clean_errors(tmp_path, type_name, nbytes):
    core = np.zeros((2, 2, 2), dtype=">i2")
    path = write_qube_product(tmp_path / "u.qub", core, core_dtype=">i2",
                              data_bytes=b"\0" * (8 * nbytes),
                              core_keywords=[])
    text = path.read_bytes().replace(b"CORE_ITEM_TYPE = MSB_INTEGER",
                                     f"CORE_ITEM_TYPE = {type_name}".encode())
    text = text.replace(b"CORE_ITEM_BYTES = 2", f"CORE_ITEM_BYTES = {nbytes}".encode())
    path.write_bytes(text)
    with pytest.raises(ProductError, match=r"unsupported|item"):
        pds3.read(path)


def test_core_base_multiplier_and_specials_from_label_keys(tmp_path):
    core = RNG.integers(0, 1000, (3, 4, 5)).astype(">i2")
    core[0, 0, 0] = 7      # CORE_NULL in this label
    core[1, 1, 1] = -5     # below CORE_VALID_MINIMUM
    core[2, 2, 2] = 999    # above CORE_VALID_MAXIMUM? no: max is 1000
    core[2, 3, 4] = -1004  # a VIRTIS code, but this label does not announce it: a value
    kw = [("CORE_BASE", Raw("100.0")), ("CORE_MULTIPLIER", Raw("0.5")),
          ("CORE_NULL", 7), ("CORE_VALID_MINIMUM", 0)]
    path = write_qube_product(tmp_path / "s.qub", core, core_dtype=">i2", core_keywords=kw)
    arr = pds3.read(path).load()
    want = 100 + 0.5 * core.astype(np.float32)
    want[0, 0, 0] = np.nan
    want[1, 1, 1] = np.nan
    want[2, 3, 4] = np.nan  # -1004 < valid minimum 0
    np.testing.assert_array_equal(arr, want)
    kw = [("CORE_NULL", 7)]
    path = write_qube_product(tmp_path / "t.qub", core, core_dtype=">i2", core_keywords=kw)
    arr = pds3.read(path).load()
    assert np.isnan(arr[0, 0, 0]) and arr[2, 3, 4] == -1004 and arr[1, 1, 1] == -5


def test_int32_specials_compare_exactly_on_stored_values(tmp_path):
    core = np.full((2, 2, 2), -2147483647, dtype=">i4")  # rounds to -2**31 in float32
    core[0, 0, 0] = -2147483648
    path = write_qube_product(tmp_path / "g.qub", core, core_dtype=">i4",
                              core_keywords=[("CORE_NULL", -2147483648)])
    arr = pds3.read(path).load()
    assert np.isnan(arr).sum() == 1


# --------------------------------------------------------------------------- pointers
@pytest.mark.parametrize("pointer", ["record", "bytes"])
def test_attached_pointer_forms(tmp_path, pointer):
    core = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    path = write_qube_product(tmp_path / "p.qub", core, pointer=pointer)
    np.testing.assert_array_equal(pds3.read(path).load(), core)


@pytest.mark.parametrize("pointer", ["file", "file_bytes", "file_only"])
def test_detached_pointer_forms_and_case_insensitive_names(tmp_path, pointer):
    core = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    label = write_qube_product(tmp_path / "P.LBL", core, pointer=pointer, detached="p.qub")
    np.testing.assert_array_equal(pds3.read(label).load(), core)
    os.rename(tmp_path / "p.qub", tmp_path / "P.QUB")  # the label still says p.qub
    np.testing.assert_array_equal(pds3.read(label).load(), core)


def test_detached_label_with_missing_data_file(tmp_path):
    core = np.zeros((2, 2, 2), dtype=np.float32)
    label = write_qube_product(tmp_path / "d.lbl", core, pointer="file", detached="d.qub")
    (tmp_path / "d.qub").unlink()
    with pytest.raises(ProductError, match=r"d\.lbl: data file not found: d\.qub"):
        pds3.read(label)


def test_real_vims_detached_label_reports_missing_data_file(realdata):
    path = realdata("cassini_vims/v1487096932_1.lbl")
    with pytest.raises(ProductError, match=r"data file not found: v1487096932_1\.qub"):
        pds3.read(path)


# --------------------------------------------------------------------------- §7 examples
def _label_numbers(path: Path) -> tuple[int, int]:
    cube = _quiet_read(path)
    return cube.layout.expected, cube.file_size - cube.offset


def _record_padded_product(tmp_path, name, shape, dtype, suffix, **kw) -> Path:
    core = np.zeros(shape, dtype=dtype)
    return write_qube_product(tmp_path / name, core, core_dtype=dtype, suffix=suffix, **kw)


def test_worked_example_rosetta_m_vis_raw_2_byte_sideplane(tmp_path):
    # V1_00389805194.QUB: (432, 64, 140), SUFFIX (0,1,0); 15357 data records = 7,862,784 B
    shape = (432, 140, 64)
    side = Suffix(np.zeros((1, 432, 140), np.uint16), ">u2", 2)
    path = _record_padded_product(tmp_path, "V1_00389805194.QUB", shape, ">i2",
                                  {"SAMPLE": side}, suffix_bytes_label=4)
    expected, available = _label_numbers(path)
    assert (expected, available) == (7_862_400, 7_862_784)
    cube = pds3.read(path, prefer_item_width=True)
    assert cube.layout.slots == {"SAMPLE": 2}
    four = [c for c in pds3.candidate_layouts(cube.axes, cube.sizes, 2, cube.suffix_items, 4)
            if c.slots["SAMPLE"] == 4]
    assert four[0].expected == 7_983_360  # 15,592.5 records: does not fit


def test_worked_example_vex_m_raw(tmp_path):
    shape = (432, 8, 256)
    side = Suffix(np.zeros((1, 432, 8), np.uint16), ">u2", 2)
    path = _record_padded_product(tmp_path, "VV0569_22.QUB", shape, ">i2", {"SAMPLE": side})
    assert _label_numbers(path) == (1_776_384, 1_776_640)


def test_worked_example_vex_m_cal_no_corners(tmp_path):
    shape = (432, 78, 64)
    back = Suffix(np.zeros((1, 78, 64), np.uint32), ">u4", 4)
    bottom = Suffix(np.zeros((3, 432, 64), np.float32), ">f4", 4)
    path = _record_padded_product(tmp_path, "VI0140_04.CAL", shape, ">f4",
                                  {"BAND": back, "LINE": bottom})
    cube = pds3.read(path)
    assert cube.layout.expected == 8_977_920 == cube.file_size - cube.offset
    assert not cube.layout.corners
    corners = [c for c in pds3.candidate_layouts(cube.axes, cube.sizes, 4, cube.suffix_items, 4)
               if c.corners and c.slots["BAND"] == 4]
    assert corners[0].expected == 8_978_688


def test_truncated_cal_message_names_needed_and_held_bytes(tmp_path):
    shape = (432, 78, 64)
    back = Suffix(np.zeros((1, 78, 64), np.uint32), ">u4", 4)
    bottom = Suffix(np.zeros((3, 432, 64), np.float32), ">f4", 4)
    path = _record_padded_product(tmp_path, "V1_x.CAL", shape, ">f4",
                                  {"BAND": back, "LINE": bottom},
                                  suffix_keywords=[("BAND_SUFFIX_ITEM_BYTES", 2),
                                                   ("BAND_SUFFIX_ITEM_TYPE",
                                                    "MSB_UNSIGNED_INTEGER"),
                                                   ("LINE_SUFFIX_ITEM_BYTES", 4),
                                                   ("LINE_SUFFIX_ITEM_TYPE", "REAL")],
                                  truncate_bytes=8_977_920 - 4_488_960)
    with pytest.raises(ProductError) as err:
        pds3.read(path)
    msg = str(err.value)
    assert msg.startswith("V1_x.CAL: truncated: label needs 8,977,920 data bytes, "
                          "file holds 4,488,960")
    assert "\n" not in msg and "CORE_ITEMS = (432, 64, 78)" in msg
    assert "FILE_RECORDS x RECORD_BYTES" in msg


def test_real_vims_byte_accounting_with_corners(realdata):
    path = realdata("cassini_vims/v1815243432_1.qub")
    with pytest.warns(pds3.LayoutWarning, match="FILE_RECORDS"):
        cube = pds3.read(path)
    assert cube.offset == 23_552 and cube.layout.corners
    assert cube.offset + cube.layout.expected == 75_328
    assert cube.file_size == 75_776
    nocorner = [c for c in pds3.candidate_layouts(cube.axes, cube.sizes, 2, cube.suffix_items, 4)
                if not c.corners]
    assert cube.offset + nocorner[0].expected == 75_264  # pad 512: does not fit


def test_real_vims_sideplane_only_ends_at_eof(realdata):
    path = realdata("cassini_vims/v1477479472_1.qub")
    with pytest.warns(pds3.LayoutWarning, match="FILE_RECORDS x RECORD_BYTES = 141,312"):
        cube = pds3.read(path)
    assert cube.offset == 22_528 and cube.offset + cube.layout.expected == 140_800


# --------------------------------------------------------------------------- layout warnings
def test_stale_file_records_warns_but_reads(tmp_path):
    core = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    path = write_qube_product(tmp_path / "f.qub", core, file_records=999)
    with pytest.warns(pds3.LayoutWarning, match="FILE_RECORDS"):
        cube = pds3.read(path)
    np.testing.assert_array_equal(cube.load(), core)


def test_ambiguous_tiny_product_warns_and_uses_producer_default(tmp_path):
    shape = (2, 2, 2)
    core = RNG.normal(size=shape).astype(np.float32)
    suffix = {"BAND": _suffix("BAND", 1, shape, ">i4"), "SAMPLE": _suffix("SAMPLE", 1, shape,
                                                                         ">i4")}
    path = write_qube_product(tmp_path / "a.qub", core, suffix=suffix, corners=False)
    with pytest.warns(pds3.LayoutWarning, match="ambiguous layout"):
        cube = pds3.read(path)
    assert not cube.layout.corners
    np.testing.assert_array_equal(cube.load(), core)


def test_one_line_short_hint_and_allow_short(tmp_path):
    shape = (16, 10, 8)
    core = RNG.integers(0, 100, shape).astype(">i2")
    side = Suffix(np.zeros((1, 16, 10), np.uint16), ">u2", 2)
    line_bytes = (8 + 1) * 16 * 2
    path = write_qube_product(tmp_path / "V1_short.QUB", core, core_dtype=">i2",
                              suffix={"SAMPLE": side}, pad_to_record=False,
                              truncate_bytes=line_bytes)
    with pytest.raises(ProductError, match="one line short"):
        pds3.read(path)
    with pytest.warns(pds3.LayoutWarning, match="only 9 of 10 lines"):
        cube = pds3.read(path, allow_short=True, prefer_item_width=True)
    assert cube.lines_available == 9
    np.testing.assert_array_equal(cube.load(), core[:, :9].astype(np.float32))


# --------------------------------------------------------------------------- bad input
def test_missing_empty_directory_and_non_pds(tmp_path):
    with pytest.raises(ProductError, match=r"nope\.qub: file not found"):
        pds3.read(tmp_path / "nope.qub")
    (tmp_path / "empty.qub").write_bytes(b"")
    with pytest.raises(ProductError, match="empty file"):
        pds3.read(tmp_path / "empty.qub")
    with pytest.raises(ProductError, match="directory"):
        pds3.read(tmp_path)
    (tmp_path / "bin.qub").write_bytes(RNG.integers(0, 256, 5000).astype(np.uint8).tobytes())
    with pytest.raises(ProductError, match="not a PDS3 product"):
        pds3.read(tmp_path / "bin.qub")
    (tmp_path / "img.lbl").write_text("PDS_VERSION_ID = PDS3\nRECORD_BYTES = 10\n"
                                      "^IMAGE = 2\nOBJECT = IMAGE\nEND_OBJECT = IMAGE\nEND\n")
    with pytest.raises(ProductError, match="no QUBE object"):
        pds3.read(tmp_path / "img.lbl")


@pytest.mark.parametrize(("old", "new", "match"), [
    (b"CORE_ITEMS = (3, 5, 4)", b"CORE_ITEMS = (0, 5, 4)", "absurd dimensions"),
    (b"CORE_ITEMS = (3, 5, 4)", b"CORE_ITEMS = (99999999, 99999, 4)", "absurd dimensions"),
    (b"CORE_ITEMS = (3, 5, 4)", b"CORE_ITEMS = (30, 50, 40)", "truncated"),
    (b"CORE_ITEMS = (3, 5, 4)", b"CORE_ITEMS = (3, 5)     ", "needs 3 values"),
    (b"AXES = 3", b"AXES = 2", "unsupported axes"),
    (b"AXIS_NAME = (BAND, SAMPLE, LINE)", b"AXIS_NAME = (BAND, BAND, LINE)  ", "unsupported axes"),
    (b"CORE_ITEM_TYPE = IEEE_REAL", b"CORE_ITEM_TYPE = IEEE_CMPLX", "unsupported"),
    (b"CORE_ITEMS = (3, 5, 4)", b"CORE_ITEMS = (a, b, c)", "invalid QUBE label"),
])
def test_bad_labels_are_one_line_product_errors(tmp_path, old, new, match):
    core = np.zeros((3, 4, 5), dtype=np.float32)
    path = write_qube_product(tmp_path / "b.qub", core)
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))
    with pytest.raises(ProductError, match=match) as err:
        pds3.read(path)
    assert "\n" not in str(err.value)


def test_two_qube_objects_are_rejected(tmp_path):
    core = np.zeros((3, 4, 5), dtype=np.float32)
    path = write_qube_product(tmp_path / "two.qub", core)
    data = path.read_bytes().replace(b"END_OBJECT = QUBE\r\n",
                                     b"END_OBJECT = QUBE\r\nOBJECT = QUBE\r\nEND_OBJECT = QUBE\r\n",
                                     1)
    path.write_bytes(data)
    with pytest.raises(ProductError, match="2 QUBE objects"):
        pds3.read(path)


def test_open_reads_only_the_label_of_a_huge_sparse_file(tmp_path):
    core = np.zeros((1, 1, 1), dtype=">f4")
    path = write_qube_product(tmp_path / "huge.qub", core)
    data = path.read_bytes().replace(b"CORE_ITEMS = (1, 1, 1)", b"CORE_ITEMS = (3456, 64, 900)")
    offset = pds3.read(path).offset
    with open(path, "wb") as fh:
        fh.write(data[:offset])
        fh.truncate(offset + 3456 * 64 * 900 * 4)  # ~800 MB, sparse: never read
    cube = pds3.read(path)
    assert cube.shape == (3456, 900, 64)
    assert cube.spectrum(899, 63).shape == (3456,)
    assert float(cube.window(slice(0, 2), slice(0, 2)).sum()) == 0.0


# --------------------------------------------------------------------------- labels
def test_label_quirks_sets_namespaces_units_comments_missing_commas():
    text = ('PDS_VERSION_ID = PDS3\r\n/* comment */\r\nROSETTA:CHANNEL_ID = "VIRTIS_M_IR"\r\n'
            'SOFTWARE_VERSION_ID = {"A v.1"\r\n  "B 2"}\r\nX = 16#1F#\r\n'
            'DESC = "two\r\n   lines"\r\n^QUBE = 600 <BYTES>\r\nOBJECT = QUBE\r\n'
            ' CORE_ITEM_TYPE = "REAL"\r\nEND_OBJECT\r\nEND\r\n')
    lab = parse_fast(text)
    assert lab["ROSETTA:CHANNEL_ID"] == "VIRTIS_M_IR"
    assert lab["SOFTWARE_VERSION_ID"] == ["A v.1", "B 2"]
    assert lab["X"] == 31 and lab["DESC"] == "two lines"
    assert lab["^QUBE"].value == 600 and lab["^QUBE"].units == "BYTES"
    assert lab["QUBE"]["CORE_ITEM_TYPE"] == "REAL"


def test_pvl_fallback_gives_the_same_values(monkeypatch):
    from parsers import pds3_label

    text = ('PDS_VERSION_ID = PDS3\nRECORD_BYTES = 512\n^QUBE = 3\nSPICE = ("a", "b")\n'
            'OBJECT = QUBE\n  CORE_ITEMS = (3, 4, 5)\n  CORE_NULL = -1004.0\n'
            'END_OBJECT = QUBE\nEND\n')
    fast = parse_fast(text)

    def refuse(_text):
        raise pds3_label.LabelSyntaxError("forced")

    monkeypatch.setattr(pds3_label, "parse_fast", refuse)
    slow = parse_label_text(text)
    assert slow["QUBE"]["CORE_ITEMS"] == fast["QUBE"]["CORE_ITEMS"] == [3, 4, 5]
    assert slow["SPICE"] == fast["SPICE"] and slow["^QUBE"] == 3
    with pytest.raises(ProductError, match="cannot parse label"):
        parse_label_text("A = (1, 2\nB = \nEND\n")


def test_label_that_makes_pvl_loop_forever_is_a_clean_error(monkeypatch):
    import time

    from parsers import pds3_label

    monkeypatch.setattr(pds3_label, "PVL_TIMEOUT_S", 3.0)
    text = ("PDS_VERSION_ID = PDS3\r\nOBJECT = QUBE\r\n  SUFFIX_ITEMS = 0 ==>\r\n"
            "END_OBJECT = QUBE\r\nEND\r\n")
    start = time.monotonic()
    with pytest.raises(ProductError, match="cannot parse label"):
        parse_label_text(text, "V1_loop.QUB")
    assert time.monotonic() - start < 15


def test_repair_inserts_missing_commas_in_multiline_lists():
    text = 'SPICE_FILE_NAME = ("A.TF"\n                   "B.TLS"\n                   "C.TSC")\n'
    assert repair_missing_commas(text).count(",") == 2


# --------------------------------------------------------------------------- real VIMS
def _vims_by_hand(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The documented BIL layout of v1815243432_1.qub decoded with numpy (§7)."""
    raw = path.read_bytes()[23_552:75_328]
    nb, ns, nl = 352, 16, 4
    line = np.dtype([("bands", [("core", ">i2", (ns,)), ("side", ">i4")], (nb,)),
                     ("back", ">i4", (4, ns + 1))])
    assert line.itemsize == 12_944
    arr = np.frombuffer(raw, dtype=line, count=nl)
    core = arr["bands"]["core"].transpose(1, 0, 2)  # (B, L, S)
    side = arr["bands"]["side"].T[None]              # (1, B, L)
    back = arr["back"][:, :, :ns].transpose(1, 0, 2)  # (4, L, S)
    return core, side, back


def test_real_vims_against_numpy_by_hand_and_pyvims(realdata):
    path = realdata("cassini_vims/v1815243432_1.qub")
    cube = _quiet_read(path)
    core, side, back = _vims_by_hand(path)
    np.testing.assert_array_equal(cube.stored(), core)
    np.testing.assert_array_equal(cube.sideplanes, side)
    np.testing.assert_array_equal(cube.backplanes, back)
    loaded = cube.load()
    assert int(np.isnan(loaded).sum()) == 6144 == int((core == -8192).sum())
    np.testing.assert_array_equal(loaded[~np.isnan(loaded)], core[core != -8192])
    pyvims = pytest.importorskip("pyvims")
    q = pyvims.QUB(path.stem, root=str(path.parent))
    np.testing.assert_array_equal(np.asarray(q.data).transpose(1, 0, 2), core)


def test_real_vims_titan_against_pyvims(realdata):
    path = realdata("cassini_vims/v1477479472_1.qub")
    cube = _quiet_read(path)
    pyvims = pytest.importorskip("pyvims")
    q = pyvims.QUB(path.stem, root=str(path.parent))
    np.testing.assert_array_equal(cube.stored(), np.asarray(q.data).transpose(1, 0, 2))
    assert cube.wavelengths is not None and cube.wavelengths.shape == (352,)
    assert cube.product_id.startswith("1_1477479472")


def test_label_is_read_without_reading_data(tmp_path, monkeypatch):
    core = np.zeros((4, 4, 4), dtype=np.float32)
    path = write_qube_product(tmp_path / "q.qub", core, top_keywords=[("NOTE", quote("x"))])
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            reads.append(n)
            return self.fh.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def close(self):
            self.fh.close()

    def spy_open(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        return Spy(fh) if "b" in mode and str(file) == str(path) else fh

    import parsers.pds3_label as pl
    monkeypatch.setattr(pl, "open", spy_open, raising=False)
    pds3.read(path)
    assert reads and all(0 < n <= 64 * 1024 for n in reads)


def test_load_allocates_the_output_once_plus_small_chunks(tmp_path):
    import tracemalloc

    shape = (432, 96, 64)
    core = RNG.normal(size=shape).astype(np.float32)
    back = Suffix(np.zeros((1, 96, 64), np.uint32), ">u4", 4)
    path = write_qube_product(tmp_path / "m.qub", core, suffix={"BAND": back})
    cube = pds3.read(path)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    out = cube.load()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    overhead = peak - base - out.nbytes
    assert overhead < 8 * 2**20, f"load() used {overhead / 2**20:.1f} MiB beyond its output"
    np.testing.assert_array_equal(out, core)


def test_valid_range_both_ends_chunk_by_chunk(tmp_path):
    """Chunks without an invalid value take the quick min/max check; the others are masked:
    values beyond either end of the valid range become NaN, nothing else changes."""
    core = RNG.uniform(-900, 900, (6, 9, 7)).astype(">f4")  # (B, L, S)
    core[2, 4, 1] = 5000.0   # above the maximum
    core[5, 8, 6] = -1003.0  # a VIRTIS-like special below the minimum
    core[0, 0, 0] = 1000.0   # the maximum itself is valid
    kw = [("CORE_VALID_MINIMUM", Raw("-999.0")), ("CORE_VALID_MAXIMUM", Raw("1000.0")),
          ("CORE_NULL", Raw("-1003.0"))]
    path = write_qube_product(tmp_path / "r.qub", core, core_dtype=">f4", core_keywords=kw)
    cube = pds3.read(path)
    want = core.astype(np.float32)
    want[2, 4, 1] = want[5, 8, 6] = np.nan
    np.testing.assert_array_equal(cube.load(), want)
    got = np.concatenate([cube.read_lines(a, min(a + 2, 9)) for a in range(0, 9, 2)], axis=1)
    np.testing.assert_array_equal(got, want)
