"""``python -m parsers.cube FILE``: the reader CLI flags on ENVI, GeoTIFF and PDS3 cubes."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from parsers import pds3
from parsers.cli.cube import main
from parsers.cube import open_cube
from pipeline.synthetic.envi_products import hyperspectral_scene, write_envi
from pipeline.synthetic.geotiff_products import write_geotiff

RDN = "hyperspectral/avirisng/ang20170323t202244_rdn_7000-7010"
VIMS = "cassini_vims/v1815243432_1.qub"


@pytest.fixture(autouse=True)
def _quiet_layout_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pds3.LayoutWarning)
        yield


def test_summary_of_the_real_aviris_ng_chunk(realdata, capsys):
    assert main([str(realdata(RDN))]) == 0
    out = capsys.readouterr().out
    assert "format           envi (read by rasterio (GDAL ENVI driver))" in out
    assert "425 x 10 x 10  BIL" in out and "float32 little-endian" in out
    assert "376.86 .. 2500.54 nm; FWHM 5.57 .. 6.03 nm" in out
    assert "valid fraction   1.000000" in out


def test_json_has_the_documented_keys(realdata, capsys):
    assert main([str(realdata(RDN)), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["bands"], info["lines"], info["samples"]) == (425, 10, 10)
    assert info["dtype"] == "float32" and info["format"] == "envi"
    assert info["wavelength_range"] == [376.86, 2500.54] and info["wavelength_unit"] == "nm"
    assert info["valid_fraction"] == 1.0
    assert main([str(realdata(VIMS)), "--json"]) == 0
    vims = json.loads(capsys.readouterr().out)
    assert vims["format"] == "pds3" and vims["dtype"] == "int16"
    assert vims["byte_order"] == "big-endian"
    lo, hi = vims["wavelength_range"]  # label micrometres, reported in nm
    assert 350 < lo < 351 and 5122 < hi < 5123
    assert vims["no_data"]["NULL"] == -8192
    assert 0.7 < vims["valid_fraction"] < 0.75


def test_json_of_a_georeferenced_envi_cube_with_bad_bands(tmp_path, capsys):
    data, wl = hyperspectral_scene(bands=5, lines=6, samples=4)
    data[0, 0, 0] = -1
    files = write_envi(tmp_path / "c.img", data, wavelengths=wl / 1000,
                       wavelength_units="Micrometers", bbl=[1, 0, 1, 1, 1],
                       data_ignore_value=-1,
                       map_info="UTM, 1, 1, 500000, 4100000, 30, 30, 11, North, WGS-84")
    assert main([str(files.header), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bad_bands"] == 1 and info["no_data"] == [-1.0]
    assert info["wavelength_range"] == [400.0, 2500.0]
    assert info["map_info"]["zone"] == 11 and info["transform"][0] == 30.0
    assert info["valid_fraction"] == pytest.approx(1 - 1 / data.size)
    assert main([str(files.header)]) == 0
    out = capsys.readouterr().out
    assert "bad bands (bbl)  1 of 5" in out
    assert "georeferencing   UTM zone 11 North, pixel 30 x 30" in out


def test_export_png_and_spectrum(realdata, tmp_path, capsys):
    npy, h5, png = tmp_path / "c.npy", tmp_path / "c.h5", tmp_path / "b.png"
    assert main([str(realdata(RDN)), "--export", str(npy)]) == 0
    want = open_cube(realdata(RDN)).load()
    np.testing.assert_array_equal(np.load(npy), want)
    assert main([str(realdata(RDN)), "--export", str(h5)]) == 0
    import h5py

    with h5py.File(h5) as f:
        np.testing.assert_array_equal(f["core"][...], want)
        assert f["wavelengths"][0] == pytest.approx(376.86) and f.attrs["wavelength_unit"] == "nm"
        assert f.attrs["format"] == "envi"
        assert json.loads(f.attrs["metadata"])["interleave"] == "bil"
    assert main([str(realdata(RDN)), "--band", "50", "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main([str(realdata(VIMS)), "--spectrum", "2", "5"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].endswith("wavelength [nm] value") and len(rows) == 1 + 352
    first = rows[1].split()
    assert 350 < float(first[0]) < 351


def test_geotiff_summary(tmp_path, capsys):
    data, wl = hyperspectral_scene(bands=4, lines=5, samples=6)
    path = write_geotiff(tmp_path / "c.tif", data, wavelengths=wl, nodata=-5.0, cog=True)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "geotiff (read by rasterio (GDAL GTiff driver))" in out and "no-data          -5" in out


def test_bad_input_is_one_line(tmp_path, realdata, capsys):
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00\x01" * 100)
    cases = [
        ([str(junk)], "junk.dat: unknown format; tried PDS3 QUBE"),
        ([str(tmp_path / "none.img")], "none.img: file not found"),
        ([str(realdata(RDN)), "--allow-short"], "--allow-short applies to PDS3 QUBEs only"),
        ([str(realdata(RDN)), "--band", "425", "--png", str(tmp_path / "x.png")],
         "--band 425: outside 0..424"),
        ([str(realdata(RDN)), "--spectrum", "10", "0"], "outside the 10 x 10 image"),
        ([str(realdata(RDN)), "--export", str(tmp_path / "x.tif")],
         "unsupported export format .tif"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("python -m parsers.cube: error: ") and expected in err, err
        assert "\n" not in err
    assert not list(tmp_path.glob("x.*"))


def test_runs_as_a_module(realdata):
    proc = subprocess.run([sys.executable, "-m", "parsers.cube", str(realdata(RDN)), "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["bands"] == 425
