"""VIRTIS layer on synthetic Rosetta / VEX products: cal, raw (both HK slot widths), geo."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from parsers import pds3, virtis
from parsers.errors import ProductError
from parsers.virtis_geometry import GEO_NULL, rosetta_planes
from pipeline.synthetic.virtis_products import (
    CAL_SPECIALS,
    dark_lines,
    line_scet,
    special_positions,
    synthetic_geometry,
    synthetic_radiance,
    write_virtis_product,
)


def _read(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", pds3.LayoutWarning)  # synthetic files are clean...
        # ...but tiny ones are legitimately ambiguous (< 512 B between layouts, §5)
        warnings.filterwarnings("ignore", ".*ambiguous layout", pds3.LayoutWarning)
        return virtis.read(path, **kw)


@pytest.mark.parametrize(("channel", "bands", "samples", "lines"), [
    ("VIRTIS_M_VIS", 432, 64, 12), ("VIRTIS_M_IR", 144, 16, 9), ("VIRTIS_M_VIS", 96, 256, 3),
])
def test_cal_round_trip_specials_wavelengths_scet(tmp_path, channel, bands, samples, lines):
    path = write_virtis_product(tmp_path / "V1_00377420372.CAL", kind="cal", channel=channel,
                                bands=bands, samples=samples, lines=lines, seed=3)
    cube = _read(path)
    assert cube.channel == channel and cube.processing_level == 3
    assert cube.product_kind == "cal" and cube.shape == (bands, lines, samples)
    assert cube.layout.slots == {"BAND": 4, "LINE": 4} and not cube.layout.corners
    rad, wl = synthetic_radiance(channel, bands, lines, samples, seed=3)
    want = rad.copy()
    for _key, pos in special_positions(bands, lines, samples).items():
        want[pos] = np.nan
    got = cube.load()
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.dtype.isnative
    assert cube.wavelength_map.shape == (bands, samples)
    np.testing.assert_allclose(cube.wavelengths, wl, atol=(wl[1] - wl[0]) * 0.5 + 1e-6)
    assert cube.wavelength_unit == "MICRON"
    assert cube.fwhm_map.shape == cube.uncertainty_map.shape == (bands, samples)
    if samples >= 3:
        np.testing.assert_array_equal(cube.scet, line_scet(lines))
        assert cube.scet_strings()[0] == f"{int(line_scet(1)[0])}:32768"
    assert cube.valid_lines.all()


def test_cal_scet_comes_from_low_half_of_backplane_slot(tmp_path):
    path = write_virtis_product(tmp_path / "V1_x.CAL", kind="cal", bands=16, samples=8, lines=5,
                                backplane_high=0xBEEF)
    cube = _read(path)
    np.testing.assert_array_equal(cube.scet, line_scet(5))
    # the raw 4-byte slot carries the garbage in its high half
    raw = np.frombuffer(path.read_bytes(), dtype=">u4", offset=cube.offset, count=17)
    assert raw[16] >> 16 == 0xBEEF


def test_cal_specials_come_from_label_keys(tmp_path):
    path = write_virtis_product(tmp_path / "V1_s.CAL", kind="cal", bands=20, samples=6, lines=7)
    cube = _read(path)
    assert cube.specials == {k.replace("CORE_", ""): v for k, v in CAL_SPECIALS.items()}
    assert cube.valid_min == -999.0
    # a label without special keys falls back to the documented codes, with a warning
    data = path.read_bytes()
    for key in CAL_SPECIALS:
        data = data.replace(key.encode(), b"X" + key[1:].encode())
    data = data.replace(b"CORE_VALID_MINIMUM", b"XORE_VALID_MINIMUM")
    path.write_bytes(data)
    with pytest.warns(pds3.LayoutWarning, match="documented VIRTIS"):
        cube = virtis.read(path)
    assert int(np.isnan(cube.load()).sum()) == 20 + 4


@pytest.mark.parametrize(("slot", "label_bytes"), [(2, 4), (2, 2), (4, 4)])
def test_raw_hk_sideplane_both_slot_widths(tmp_path, slot, label_bytes):
    path = write_virtis_product(tmp_path / "V1_00389805194.QUB", kind="raw", bands=432,
                                samples=32, lines=20, hk_slot_bytes=slot,
                                hk_label_bytes=label_bytes)
    cube = _read(path)
    assert cube.product_kind == "raw" and cube.processing_level == 2
    assert cube.layout.slots == {"SAMPLE": slot}
    assert cube.hk.shape == (20, 432) and cube.hk.dtype == np.uint16
    assert cube.hk_structures.shape == (20, 5, 82)
    assert (cube.hk[:, 410:] == 0).all()
    np.testing.assert_array_equal(cube.scet, line_scet(20))
    np.testing.assert_array_equal(cube.valid_lines, ~dark_lines(20, 15))
    assert list(np.flatnonzero(~cube.valid_lines)) == [0, 16]
    stored = cube.stored()
    assert stored.dtype == np.dtype(">i2")
    loaded = cube.load()
    assert np.isnan(loaded[:, 1, 1]).all()  # CORE_NULL spectrum
    assert np.isnan(loaded[216, 2, 2])      # saturation 32767
    ok = ~np.isnan(loaded)
    np.testing.assert_array_equal(loaded[ok], np.asarray(stored, dtype=np.float32)[ok])


def test_raw_dark_lines_fall_back_to_frame_rule_when_hk_missing(tmp_path):
    path = write_virtis_product(tmp_path / "I1_00237330013.QUB", kind="raw",
                                channel="VIRTIS_M_IR", bands=100, samples=8, lines=12,
                                dark_rate=4)
    data = bytearray(path.read_bytes())
    cube = _read(path)
    stride = (8 + 1) * 100 * 2
    for line in range(12):  # overwrite data-type word 6 with 0xFFFF (missing HK)
        pos = cube.offset + line * stride + 8 * 100 * 2 + 5 * 2
        data[pos:pos + 2] = b"\xff\xff"
    path.write_bytes(bytes(data))
    cube = _read(path)
    assert cube.channel == "VIRTIS_M_IR"
    assert list(np.flatnonzero(~cube.valid_lines)) == [0, 5, 10]


def test_raw_h_channel_72_word_structures(tmp_path):
    path = write_virtis_product(tmp_path / "T1_00383120708.QUB", kind="raw", channel="VIRTIS_H",
                                bands=3456, samples=1, lines=3)
    cube = _read(path)
    assert cube.channel == "VIRTIS_H" and cube.hk_structures.shape == (3, 48, 72)
    words = cube.hk_structures
    assert (words[:, :, 0] == cube.hk[:, [0]]).all()  # every structure repeats the SCET
    np.testing.assert_array_equal(cube.scet, line_scet(3))


def test_geo_planes_scaled_with_names_and_null(tmp_path):
    path = write_virtis_product(tmp_path / "V1_00383120708.GEO", kind="geo", samples=10,
                                lines=6)
    cube = _read(path)
    assert cube.product_kind == "geo" and cube.bands == 23
    assert cube.wavelengths is None
    planes = cube.geometry_planes
    assert [p.name for p in planes] == [p.name for p in rosetta_planes("VIRTIS_M_VIS")]
    got = cube.load()
    want = synthetic_geometry(23, 6, 10, seed=0)
    scale = np.array([p.scale for p in planes])
    assert np.isnan(got[:, 0, 0]).all()
    close = np.abs(got[:, 1:] - want[:, 1:]) <= scale[:, None, None] * 0.5001 + np.abs(
        want[:, 1:]) * 2e-7
    assert close.all()
    raw = cube.stored()
    assert int(raw[0, 0, 0]) == GEO_NULL
    np.testing.assert_allclose(cube.band(19), got[19])


def test_geo_h_and_vex_tables(tmp_path):
    h = _read(write_virtis_product(tmp_path / "T1_x.GEO", kind="geo", channel="VIRTIS_H",
                                   samples=64, lines=3))
    assert h.bands == 31 and h.geometry_planes[22].name == "SCET_1"
    vex = _read(write_virtis_product(tmp_path / "VI0140_04.GEO", kind="geo", mission="VEX",
                                     samples=4, lines=3))
    assert vex.mission == "VEX" and vex.bands == 33 and len(vex.geometry_planes) == 33
    with pytest.warns(pds3.LayoutWarning, match="no scale-factor table"):
        odd = virtis.read(write_virtis_product(tmp_path / "V1_y.GEO", kind="geo", planes=5,
                                               samples=4, lines=3))
    assert odd.geometry_planes is None and odd.band_scale is None


def test_vex_namespace_and_label_quirks(tmp_path):
    path = write_virtis_product(tmp_path / "VV0569_22.QUB", kind="raw", mission="VEX",
                                bands=432, samples=16, lines=4, missing_commas=True, crlf=False)
    cube = _read(path)
    assert cube.mission == "VEX" and cube.channel == "VIRTIS_M_VIS"
    assert "VEX:CHANNEL_ID" in cube.label
    assert len(cube.label["SOFTWARE_VERSION_ID"]) == 4
    cal = _read(write_virtis_product(tmp_path / "V1_q.CAL", kind="cal", bands=10, samples=4,
                                     lines=2, quoted_real=False))
    assert cal.core_type == "REAL"


def test_channel_from_file_name_when_label_lacks_it(tmp_path):
    path = write_virtis_product(tmp_path / "I1_00000000001.CAL", kind="cal", bands=8, samples=4,
                                lines=2, channel="VIRTIS_M_VIS")
    path.write_bytes(path.read_bytes().replace(b"ROSETTA:CHANNEL_ID", b"ROSETTA:CHANNEL_XX"))
    assert _read(path).channel == "VIRTIS_M_IR"


def test_non_virtis_and_truncated_products(tmp_path, realdata):
    with pytest.raises(ProductError, match="not a VIRTIS product"):
        virtis.read(realdata("cassini_vims/v1815243432_1.qub"))
    path = write_virtis_product(tmp_path / "V1_t.CAL", kind="cal", bands=432, samples=64,
                                lines=8, truncate_bytes=100_000)
    with pytest.raises(ProductError, match=r"V1_t\.CAL: truncated: label needs 1,218,560 "
                                           r"data bytes, file holds 1,118,560 "
                                           r"\(100,000 bytes short\) \[cand"):
        virtis.read(path)


def test_v1_product_one_line_short_opens_leniently(tmp_path):
    path = write_virtis_product(tmp_path / "V1_short.QUB", kind="raw", bands=432, samples=64,
                                lines=6, truncate_bytes=(64 + 1) * 432 * 2)
    with pytest.raises(ProductError, match="one line short"):
        virtis.read(path)
    with pytest.warns(pds3.LayoutWarning, match="only 5 of 6 lines"):
        cube = virtis.read(path, allow_short=True)
    assert cube.load().shape == (432, 5, 64) and cube.valid_lines.shape == (5,)


# --------------------------------------------------------------------------- real-label quirks
def _caught(fn, *args, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pds3.LayoutWarning)
        result = fn(*args, **kw)
    return result, [str(w.message) for w in caught]


def test_raw_label_says_suffix_bytes_2_by_default(tmp_path):
    path = write_virtis_product(tmp_path / "V1_00389805194.QUB", kind="raw", bands=432,
                                samples=64, lines=4)
    assert b"SUFFIX_BYTES = 2\r\n" in path.read_bytes()[:8192]
    cube, caught = _caught(virtis.read, path)
    assert not caught
    assert cube.layout.slots == {"SAMPLE": 2}
    assert cube.layout.expected == 65 * 432 * 2 * 4
    np.testing.assert_array_equal(cube.scet, line_scet(4))


def test_cal_label_without_band_suffix_item_type_reads_with_a_warning(tmp_path):
    path = write_virtis_product(tmp_path / "VI0140_04.CAL", kind="cal", mission="VEX",
                                bands=432, samples=64, lines=6,
                                drop_keywords=("BAND_SUFFIX_ITEM_TYPE",))
    assert b"BAND_SUFFIX_ITEM_TYPE" not in path.read_bytes()[:8192]
    cube, caught = _caught(virtis.read, path)
    assert any("BAND_SUFFIX_ITEM_TYPE missing: reading the backplane items as "
               "MSB_UNSIGNED_INTEGER of 2 bytes" in w for w in caught)
    assert cube.suffix_items["BAND"][0].dtype == np.dtype(">u2")
    np.testing.assert_array_equal(cube.scet, line_scet(6))


def test_cal_label_without_any_suffix_type_keeps_float_bottomplanes(tmp_path):
    path = write_virtis_product(tmp_path / "V1_b.CAL", kind="cal", bands=64, samples=16,
                                lines=4, drop_keywords=("BAND_SUFFIX_ITEM_TYPE",
                                                        "LINE_SUFFIX_ITEM_TYPE"))
    ref = write_virtis_product(tmp_path / "V1_r.CAL", kind="cal", bands=64, samples=16,
                               lines=4)
    cube, caught = _caught(virtis.read, path)
    assert any("LINE_SUFFIX_ITEM_TYPE missing: reading the bottomplane items as IEEE_REAL"
               in w for w in caught)
    np.testing.assert_array_equal(cube.wavelength_map, _read(ref).wavelength_map)


@pytest.mark.parametrize("text", ['"N/A"', '"NULL"', "N/A"])
def test_special_value_keywords_saying_null_or_na_are_not_defined(tmp_path, text):
    path = write_virtis_product(tmp_path / "V1_n.CAL", kind="cal", bands=20, samples=6,
                                lines=7, special_text=text)
    cube, caught = _caught(virtis.read, path)
    assert not any("is not a number" in w for w in caught)  # a PDS "not defined", not junk
    # nothing numeric in the label: the documented VIRTIS codes apply, with a warning
    assert any("defines no special values; using the documented" in w for w in caught)
    assert int(np.isnan(cube.load()).sum()) == 20 + 4


def test_quoted_numbers_in_the_label_are_numbers(tmp_path):
    path = write_virtis_product(tmp_path / "V1_q.QUB", kind="raw", bands=100, samples=8,
                                lines=3)
    data = path.read_bytes()
    for old, new in ((b"PROCESSING_LEVEL_ID = 2", b'PROCESSING_LEVEL_ID="2"'),
                     (b"CORE_NULL = -32768", b'CORE_NULL="-32768"')):
        assert old in data and len(old) == len(new)
        data = data.replace(old, new, 1)
    path.write_bytes(data)
    cube = _read(path)
    assert cube.product_kind == "raw" and cube.processing_level == 2
    assert cube.specials["NULL"] == -32768.0
