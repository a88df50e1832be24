"""Multi-band GeoTIFF / COG cubes through parsers.geotiff: band order, no-data, wavelengths."""

from __future__ import annotations

import numpy as np
import pytest

from parsers import geotiff
from parsers.cube import open_cube
from parsers.errors import ProductError
from pipeline.synthetic.envi_products import hyperspectral_scene
from pipeline.synthetic.geotiff_products import DEFAULT_TRANSFORM, write_geotiff


@pytest.fixture(scope="module")
def scene():
    return hyperspectral_scene(bands=9, lines=12, samples=10, seed=5)


@pytest.mark.parametrize("cog", [False, True])
@pytest.mark.parametrize("interleave", ["band", "pixel"])
def test_band_order_and_values(tmp_path, cog, interleave):
    # band i holds 1000 * i + pixel index: any band mix-up or transposition shows
    data = (np.arange(9)[:, None, None] * 1000
            + np.arange(120).reshape(12, 10)[None]).astype(np.int32)
    path = write_geotiff(tmp_path / "c.tif", data, cog=cog, interleave=interleave)
    cube = geotiff.read(path)
    assert cube.shape == (9, 12, 10) and cube.stored_dtype == np.int32
    np.testing.assert_array_equal(cube.load(), data.astype(np.float32))
    for i in (0, 4, 8):
        np.testing.assert_array_equal(cube.band(i), data[i].astype(np.float32))
    np.testing.assert_array_equal(cube.spectrum(11, 9), data[:, 11, 9].astype(np.float32))
    np.testing.assert_array_equal(cube.read_lines(5, 7), data[:, 5:7].astype(np.float32))
    assert cube.transform == DEFAULT_TRANSFORM and cube.crs is not None
    assert cube.metadata.get("LAYOUT") == ("COG" if cog else None)


def test_nodata_becomes_nan(tmp_path, scene):
    data = np.round(scene[0] * 100).astype(np.uint16)
    data[:, 0, 0] = 0
    data[3, 5, 5] = 0
    cube = open_cube(write_geotiff(tmp_path / "c.tif", data, nodata=0))
    loaded = cube.load()
    assert np.isnan(loaded).sum() == 9 + 1
    assert np.isnan(cube.spectrum(0, 0)).all() and np.isnan(loaded[3, 5, 5])
    ok = data != 0
    np.testing.assert_array_equal(loaded[ok], data[ok].astype(np.float32))
    assert cube.nodata.tolist() == [0.0] * 9
    floats = scene[0].copy()
    floats[2, 3, 4] = -1.0
    fcube = open_cube(write_geotiff(tmp_path / "f.tif", floats, nodata=-1.0, big_endian=True))
    assert fcube.byte_order == "big-endian"
    assert np.isnan(fcube.load()).sum() == 1 and np.isnan(fcube.band(2)[3, 4])


@pytest.mark.parametrize("style", ["band_tags", "envi_domain", "imagery", "descriptions"])
@pytest.mark.parametrize("unit", ["nm", "Micrometers"])
def test_wavelengths_from_tags_and_descriptions_in_nm(tmp_path, scene, style, unit):
    data, wl_nm = scene
    given = wl_nm if unit == "nm" else wl_nm / 1000
    fwhm = np.full(9, 12.0) if unit == "nm" else np.full(9, 0.012)
    cube = open_cube(write_geotiff(tmp_path / "c.tif", data, wavelengths=given,
                                   wavelength_units=unit, fwhm=fwhm, wavelength_style=style))
    assert cube.wavelength_unit == "nm"
    np.testing.assert_allclose(cube.wavelengths, wl_nm, rtol=1e-5)
    if style in ("imagery", "envi_domain"):
        np.testing.assert_allclose(cube.fwhm, 12.0, rtol=1e-5)
    assert cube.warnings == []


def test_envi_style_bad_band_list_in_a_geotiff(tmp_path, scene):
    data, wl = scene
    bbl = [1, 1, 0, 1, 1, 1, 1, 0, 1]
    cube = open_cube(write_geotiff(tmp_path / "c.tif", data, wavelengths=wl, bbl=bbl,
                                   wavelength_style="envi_domain"))
    assert np.flatnonzero(cube.bad_bands).tolist() == [2, 7]


def test_descriptions_that_are_not_wavelengths(tmp_path, scene):
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A"]
    cube = open_cube(write_geotiff(tmp_path / "c.tif", scene[0], descriptions=names,
                                   wavelength_style=None))
    assert cube.band_names == names and cube.wavelengths is None
    assert cube.wavelength_unit is None
    plain = open_cube(write_geotiff(tmp_path / "p.tif", scene[0], wavelength_style=None))
    assert plain.band_names is None and plain.wavelengths is None


def test_truncated_geotiff_fails_with_one_line(tmp_path, scene):
    path = write_geotiff(tmp_path / "c.tif", scene[0])
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ProductError) as err:
        open_cube(path).load()
    message = str(err.value)
    assert message.startswith("c.tif: cannot read lines 0..11 (") and "\n" not in message
    assert "TIFFReadEncodedStrip() failed" in message  # GDAL's own words, not an error code


def test_parse_wavelength_descriptions():
    from parsers.wavelengths import parse_value_with_unit as parse

    assert parse("450 nm") == (450.0, "nm")
    assert parse("band 19 (0.513000 Micrometers)") == (0.513, "Micrometers")
    assert parse("1.2e3") == (1200.0, None)
    for text in ("B02", "Band 3", "Path length (m)", "Elevation (m)", "UTC Time",
                 "To-sensor zenith (0 to 90 degrees from zenith)", "30 furlongs"):
        assert parse(text) is None, text
