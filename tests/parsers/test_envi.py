"""ENVI cubes through parsers.envi (GDAL ENVI driver) against an independent numpy decoding."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import envi
from parsers.cube import open_cube
from parsers.errors import ProductError, UserError
from pipeline.synthetic.envi_products import FILE_ORDER, hyperspectral_scene, write_envi

DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4"}


def numpy_decode(data_path, header_path) -> np.ndarray:
    """Decode an ENVI file with numpy only (the test oracle): (B, L, S) in the stored type."""
    fields = {}
    for line in header_path.read_text().splitlines()[1:]:
        key, _, value = line.partition("=")
        fields[key.strip().lower()] = value.strip()
    shape = tuple(int(fields[k]) for k in ("bands", "lines", "samples"))
    order = ">" if fields["byte order"] == "1" else "<"
    dtype = np.dtype(order + DTYPES[int(fields["data type"])])
    flat = np.fromfile(data_path, dtype=dtype, offset=int(fields.get("header offset", 0)),
                       count=int(np.prod(shape)))
    perm = FILE_ORDER[fields["interleave"].lower()]
    stored = flat.reshape([shape[i] for i in perm])
    return stored.transpose(np.argsort(perm)).astype(dtype.newbyteorder("="))


@pytest.fixture(scope="module")
def scene():
    return hyperspectral_scene(bands=13, lines=11, samples=7, seed=3)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("byte_order", ["little", "big"])
@pytest.mark.parametrize("dtype", ["float32", "int16", "uint16", "float64"])
def test_round_trip_every_interleave_and_byte_order(tmp_path, scene, interleave, byte_order,
                                                    dtype):
    data = scene[0] if dtype.startswith("float") else np.round(scene[0] * 50)
    data = data.astype(dtype)
    files = write_envi(tmp_path / "cube.img", data, interleave=interleave,
                       byte_order=byte_order, header_offset=128 if dtype == "uint16" else 0)
    oracle = numpy_decode(files.data, files.header)
    np.testing.assert_array_equal(oracle, data)  # the oracle itself decodes what was written
    cube = open_cube(files.data)
    assert cube.shape == data.shape
    assert cube.interleave == interleave.upper()
    assert cube.byte_order == f"{byte_order}-endian"
    assert cube.stored_dtype == np.dtype(dtype)
    loaded = cube.load()
    assert loaded.dtype == np.float32 and loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, oracle.astype(np.float32))
    np.testing.assert_array_equal(cube.read_lines(3, 8), oracle[:, 3:8].astype(np.float32))
    np.testing.assert_array_equal(cube.window(slice(2, 9, 3), slice(1, 6), slice(4, 10, 2)),
                                  oracle[4:10:2, 2:9:3, 1:6].astype(np.float32))
    np.testing.assert_array_equal(cube.spectrum(10, 6), oracle[:, 10, 6].astype(np.float32))
    np.testing.assert_array_equal(cube.band(-1), oracle[-1].astype(np.float32))


def test_header_or_data_file_and_naming_conventions(tmp_path, scene):
    data = scene[0]
    plain = write_envi(tmp_path / "plain", data)  # X + X.hdr (AVIRIS style)
    dotted = write_envi(tmp_path / "scene.v2.img", data, header_name="scene.v2.img.hdr")
    for files in (plain, dotted):
        for named in (files.data, files.header):
            cube = envi.read(named)
            assert cube.data_path == files.data
            np.testing.assert_array_equal(cube.load(), data)
    assert envi.read(plain.header).product_id == "plain"
    assert envi.read(dotted.data).product_id == "scene.v2"


def test_data_ignore_value_becomes_nan(tmp_path, scene):
    data = np.round(scene[0] * 50).astype(np.int16)
    data[2, 4, 3] = data[0, 0, 0] = data[12, 10, 6] = -9999
    files = write_envi(tmp_path / "c.bil", data, interleave="bil", data_ignore_value=-9999)
    loaded = open_cube(files.data).load()
    assert np.isnan(loaded).sum() == 3
    assert np.isnan(loaded[2, 4, 3]) and np.isnan(loaded[0, 0, 0])
    ok = data != -9999
    np.testing.assert_array_equal(loaded[ok], data[ok].astype(np.float32))
    floats = scene[0].copy()
    floats[5, 1, 1] = -9999.0
    fcube = open_cube(write_envi(tmp_path / "f.img", floats, data_ignore_value=-9999).data)
    assert np.isnan(fcube.spectrum(1, 1)[5]) and np.isnan(fcube.load()).sum() == 1


@pytest.mark.parametrize(("unit", "factor"), [
    ("Nanometers", 1.0), ("nm", 1.0), ("Micrometers", 1e-3), ("um", 1e-3), ("microns", 1e-3),
])
def test_wavelengths_reported_in_nm(tmp_path, scene, unit, factor):
    data, wl_nm = scene
    files = write_envi(tmp_path / "c.img", data, wavelengths=wl_nm * factor,
                       wavelength_units=unit, fwhm=np.full(data.shape[0], 10.0) * factor)
    cube = open_cube(files.data)
    assert cube.wavelength_unit == "nm"
    np.testing.assert_allclose(cube.wavelengths, wl_nm, rtol=1e-5)
    np.testing.assert_allclose(cube.fwhm, 10.0, rtol=1e-5)
    assert cube.warnings == []


def test_wavelengths_without_unit_are_guessed_with_a_warning(tmp_path, scene):
    data, wl_nm = scene
    micro = envi.read(write_envi(tmp_path / "u.img", data, wavelengths=wl_nm / 1000).data)
    np.testing.assert_allclose(micro.wavelengths, wl_nm, rtol=1e-5)
    assert "read as micrometres" in micro.warnings[0]
    nano = envi.read(write_envi(tmp_path / "n.img", data, wavelengths=wl_nm).data)
    np.testing.assert_allclose(nano.wavelengths, wl_nm, rtol=1e-5)
    assert "read as nanometres" in nano.warnings[0]
    index = envi.read(write_envi(tmp_path / "i.img", data, wavelengths=range(13),
                                 wavelength_units="Index").data)
    assert index.wavelengths is None and index.wavelength_unit is None
    assert "not wavelengths" in index.warnings[0]


def test_bad_band_list(tmp_path, scene):
    data, wl = scene
    bbl = [1] * 13
    bbl[3] = bbl[7] = 0
    names = [f"b{i}" for i in range(13)]
    files = write_envi(tmp_path / "c.img", data, wavelengths=wl, wavelength_units="nm",
                       bbl=bbl, band_names=names)
    cube = envi.read(files.data)
    assert cube.bands == 13
    assert np.flatnonzero(cube.bad_bands).tolist() == [3, 7]
    kept = envi.read(files.data, drop_bad_bands=True)
    keep = [i for i in range(13) if bbl[i]]
    assert kept.bands == 11 and not kept.bad_bands.any()
    assert kept.band_names == [names[i] for i in keep]
    np.testing.assert_allclose(kept.wavelengths, wl[keep], rtol=1e-6)
    np.testing.assert_array_equal(kept.load(), data[keep])
    np.testing.assert_array_equal(kept.band(3), data[4])
    np.testing.assert_array_equal(kept.spectrum(2, 2), data[keep, 2, 2])


def test_map_info(tmp_path, scene):
    info = "UTM, 1.000, 1.000, 500000.000, 4100000.000, 3.0e+001, 3.0e+001, 11, North, " \
           "WGS-84, units=Meters"
    cube = envi.read(write_envi(tmp_path / "c.img", scene[0], map_info=info).data)
    assert cube.map_info == {
        "projection": "UTM", "reference_pixel": (1.0, 1.0),
        "map_coordinates": (500000.0, 4100000.0), "pixel_size": (30.0, 30.0),
        "zone": 11, "hemisphere": "North", "datum": "WGS-84", "units": "Meters"}
    assert cube.transform == (30.0, 0.0, 500000.0, 0.0, -30.0, 4100000.0)
    from rasterio.crs import CRS

    assert CRS.from_wkt(cube.crs).to_epsg() == 32611  # WGS 84 / UTM zone 11N
    plain = envi.read(write_envi(tmp_path / "p.img", scene[0]).data)
    assert plain.map_info is None and plain.transform is None and plain.crs is None


def test_gain_and_offset_values_are_applied(tmp_path, scene):
    data = np.round(scene[0] * 50).astype(np.int16)
    gains = ", ".join(["0.5"] * 13)
    offsets = ", ".join(["2"] * 13)
    cube = envi.read(write_envi(tmp_path / "c.img", data, extra={
        "data gain values": "{" + gains + "}", "data offset values": "{" + offsets + "}"}).data)
    np.testing.assert_allclose(cube.load(), data * 0.5 + 2)


def test_truncated_data_is_one_clear_error(tmp_path, scene):
    files = write_envi(tmp_path / "c.img", scene[0], interleave="bil")
    full = files.data.read_bytes()
    files.data.write_bytes(full[: len(full) - 100])
    with pytest.raises(ProductError, match=r"^c\.hdr: truncated: the header needs 4,004 bytes "
                                           r"\(13 x 11 x 7 x 4 B \+ 0 B offset\), c\.img holds "
                                           r"3,904$"):
        open_cube(files.header)


def test_missing_data_file_and_bad_lists(tmp_path, scene):
    files = write_envi(tmp_path / "c.img", scene[0])
    files.data.unlink()
    with pytest.raises(ProductError, match=r"c\.hdr: ENVI data file not found \(looked for"):
        envi.read(files.header)
    short = write_envi(tmp_path / "w.img", scene[0], wavelengths=[400, 500],
                       wavelength_units="nm")
    with pytest.raises(ProductError, match="wavelength lists 2 values for 13 bands"):
        envi.read(short.data)
    text = write_envi(tmp_path / "t.img", scene[0], extra={"bbl": "{1, x}"})
    with pytest.raises(ProductError, match="bbl has a value that is not a number"):
        envi.read(text.data)


def test_complex_data_is_refused(tmp_path):
    path = tmp_path / "c.img"
    np.zeros((2, 3, 4), dtype="<c8").tofile(path)
    (tmp_path / "c.hdr").write_text("ENVI\nsamples = 4\nlines = 3\nbands = 2\nheader offset = 0\n"
                                    "file type = ENVI Standard\ndata type = 6\n"
                                    "interleave = bsq\nbyte order = 0\n")
    with pytest.raises(ProductError, match="complex data"):
        envi.read(path)


def test_split_list_and_map_info_parsing():
    assert envi.split_list("{ a, b ,c }") == ["a", "b", "c"]
    assert envi.split_list("7") == ["7"]
    info = envi.parse_map_info("{Geographic Lat/Lon, 1, 1, -120.5, 38.2, 0.001, 0.001, "
                               "WGS-84, rotation=12.5}")
    assert info["projection"] == "Geographic Lat/Lon" and info["datum"] == "WGS-84"
    assert info["rotation"] == 12.5 and "zone" not in info
    with pytest.raises(ValueError, match="at least 7 values"):
        envi.parse_map_info("{UTM, 1, 1}")


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("interleave", "foo", "interleave = 'foo' (expected bsq, bil or bip)"),
    ("byte order", "7", "byte order = '7' (expected 0 = little-endian or 1 = big-endian)"),
    ("samples", "7.5", "samples = '7.5' is not a whole number"),
    ("bands", "13 14", "bands = '13 14' is not a whole number"),
    ("header offset", "0}", "header offset = '0}' is not a whole number"),
    ("data ignore value", "abc", "data ignore value = 'abc' is not a number"),
])
def test_header_values_gdal_would_read_leniently_are_refused(tmp_path, scene, field, value,
                                                              problem):
    files = write_envi(tmp_path / "c.img", scene[0], data_ignore_value=-1)
    lines = [f"{field} = {value}" if line.split("=")[0].strip() == field else line
             for line in files.header.read_text().splitlines()]
    files.header.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProductError, match="^c.hdr: header " + re.escape(problem) + "$"):
        open_cube(files.data)


_JUNK = ["-", "x", "nan", "{", "}", "0", "1099511627776", ","]
_LINES = ["bands = 0", "samples = -3", "data type = 99", "interleave = foo", "{", "}",
          "header offset = 99999", "wavelength = {1,2}", "bbl = {0,0,0,0,0}", "map info = {x}",
          "lines = 100000000000", "bands = 4", "samples = 8"]


@settings(max_examples=int(os.environ.get("READER_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 4), st.integers(0, 99)),
                      min_size=1, max_size=3))
def test_mangled_headers_give_the_right_array_or_one_line(tmp_path, edits):
    """Truncated, deleted, inserted or brace-broken header lines: never a traceback, never a
    silently wrong array (GDAL alone reads some of them leniently)."""
    data, wl = hyperspectral_scene(bands=5, lines=6, samples=7, seed=1)
    files = write_envi(tmp_path / "f.img", data, interleave="bil", wavelengths=wl,
                       wavelength_units="nm", bbl=[1] * 5, band_names=list("abcde"),
                       map_info="UTM, 1, 1, 5, 4, 30, 30, 11, North, WGS-84",
                       data_ignore_value=-1)
    lines = files.header.read_text().splitlines()
    for where, op, pick in edits:
        k = 1 + where % (len(lines) - 1)
        if op == 0:
            lines[k] = lines[k][: pick % (len(lines[k]) + 1)]
        elif op == 1:
            lines[k] = lines[k].replace("=", "= " + _JUNK[pick % len(_JUNK)], 1)
        elif op == 2 and len(lines) > 2:
            del lines[k]
        elif op == 3:
            lines.insert(k, _LINES[pick % len(_LINES)])
        else:
            lines[k] += _JUNK[pick % len(_JUNK)]
    files.header.write_text("\n".join(lines) + "\n")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cube = open_cube(files.data)
            loaded = cube.load()
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    if loaded.shape == data.shape:
        np.testing.assert_array_equal(loaded, data)
