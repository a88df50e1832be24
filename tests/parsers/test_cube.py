"""parsers.cube: format detection, dispatch, and the real AVIRIS-NG and Cassini VIMS files."""

from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pytest

from parsers import pds3, virtis
from parsers.cube import FORMATS, detect_format, open_cube, wavelengths_nm
from parsers.errors import ProductError, UserError
from parsers.raster import RasterCube
from pipeline.synthetic.envi_products import hyperspectral_scene, write_envi
from pipeline.synthetic.geotiff_products import write_geotiff
from pipeline.synthetic.pds3_products import write_qube_product
from pipeline.synthetic.virtis_products import write_virtis_product

AVIRIS = "hyperspectral/avirisng/ang20170323t202244_{}_7000-7010"
VIMS = ("cassini_vims/v1477479472_1.qub", "cassini_vims/v1815243432_1.qub")


@pytest.fixture(autouse=True)
def _quiet_layout_warnings():
    # The real VIMS files have a stale FILE_RECORDS (pds3 warns; tested in test_pds3.py).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pds3.LayoutWarning)
        yield


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    data, wl = hyperspectral_scene(bands=6, lines=8, samples=5)
    out = {
        "envi": write_envi(root / "scene.img", data, wavelengths=wl,
                           wavelength_units="nm").data,
        "geotiff": write_geotiff(root / "scene.tif", data, wavelengths=wl),
        "cog": write_geotiff(root / "scene_cog.tif", data, wavelengths=wl, cog=True),
        "virtis": write_virtis_product(root / "V1_00377420372.CAL", kind="cal", bands=16,
                                       samples=8, lines=6),
        "pds3": write_qube_product(root / "generic.qub", data, interleave="BSQ"),
    }
    return out, data


def test_format_detection_for_each_format(samples):
    files, _ = samples
    assert detect_format(files["envi"]) == "envi"
    assert detect_format(files["envi"].with_suffix(".hdr")) == "envi"
    assert detect_format(files["geotiff"]) == "geotiff"
    assert detect_format(files["cog"]) == "geotiff"
    assert detect_format(files["virtis"]) == "virtis"
    assert detect_format(files["pds3"]) == "pds3"
    assert set(FORMATS) == {"pds3", "virtis", "envi", "geotiff"}


def test_detection_looks_at_the_content_not_the_extension(samples, tmp_path):
    files, _ = samples
    disguised = tmp_path / "scene.hdr.bak"
    disguised.write_bytes(files["geotiff"].read_bytes())
    assert detect_format(disguised) == "geotiff"
    qube = tmp_path / "cube.tif"
    qube.write_bytes(files["pds3"].read_bytes())
    assert detect_format(qube) == "pds3"


def test_open_cube_dispatches_to_the_format_readers(samples):
    files, data = samples
    assert isinstance(open_cube(files["virtis"]), virtis.VirtisCube)
    generic = open_cube(files["pds3"])
    assert type(generic) is pds3.Cube
    np.testing.assert_array_equal(generic.load(), data)
    for key in ("envi", "geotiff", "cog"):
        cube = open_cube(files[key])
        assert isinstance(cube, RasterCube)
        np.testing.assert_array_equal(cube.load(), data)
        assert cube.wavelength_unit == "nm"


def test_unknown_format_names_the_formats_tried(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    blob = tmp_path / "data.bin"
    blob.write_bytes(bytes(range(256)) * 8)
    for path in (text, blob):
        with pytest.raises(ProductError) as err:
            detect_format(path)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{path.name}: unknown format; tried")
        for name in ("PDS3 QUBE", "ENVI", "GeoTIFF"):
            assert name in message


def test_other_bad_inputs_are_one_line(tmp_path, realdata):
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    cases = {
        tmp_path / "missing.img": "missing.img: file not found",
        empty: "empty.img: empty file",
        tmp_path: "is a directory, not a cube file",
        realdata("realapi/pds_index/COVIMS_0094_index.lbl"): "PDS3 label without a QUBE object",
    }
    for path, expected in cases.items():
        with pytest.raises(ProductError, match=expected):
            open_cube(path)
    safe = tmp_path / "S2A_MSIL2A_X.SAFE"
    safe.mkdir()
    with pytest.raises(ProductError, match=r"python -m parsers\.sentinel2"):
        detect_format(safe)
    fake_header = tmp_path / "x.hdr"
    fake_header.write_text("not an envi header\n")
    with pytest.raises(ProductError, match="unknown format"):
        detect_format(fake_header)


def test_options_are_checked_against_the_format(samples):
    files, _ = samples
    with pytest.raises(UserError, match="drop_bad_bands does not apply to geotiff cubes"):
        open_cube(files["geotiff"], drop_bad_bands=True)
    with pytest.raises(UserError, match="allow_short does not apply to envi cubes"):
        open_cube(files["envi"], allow_short=True)
    with pytest.raises(UserError, match="format 'hdf5'"):
        open_cube(files["envi"], format="hdf5")
    assert open_cube(files["pds3"], allow_short=True).bands == 6


def test_raster_cube_pickles_without_its_gdal_handle(samples):
    files, data = samples
    cube = open_cube(files["envi"])
    cube.read_lines(0, 2)  # opens the dataset
    clone = pickle.loads(pickle.dumps(cube))
    np.testing.assert_array_equal(clone.read_lines(2, 5), data[:, 2:5])
    cube.close()
    np.testing.assert_array_equal(cube.band(1), data[1])  # reopens on demand


# --------------------------------------------------------------------------- real files
def _aviris_numpy(path, bands, dtype="<f4"):
    """BIL (lines, bands, samples) float32 little-endian decoded with numpy only."""
    raw = np.fromfile(path, dtype=dtype).reshape(10, bands, 10)
    return raw.transpose(1, 0, 2).astype(np.float32)


def test_real_aviris_ng_radiance(realdata):
    path = realdata(AVIRIS.format("rdn"))
    assert detect_format(path) == "envi"
    cube = open_cube(path)
    assert cube.shape == (425, 10, 10) and cube.interleave == "BIL"
    assert cube.stored_dtype == np.float32 and cube.byte_order == "little-endian"
    want = _aviris_numpy(path, 425)
    np.testing.assert_array_equal(cube.load(), want)
    np.testing.assert_array_equal(cube.spectrum(7, 2), want[:, 7, 2])
    assert cube.wavelength_unit == "nm"
    assert cube.wavelengths[0] == pytest.approx(376.86) and cube.wavelengths[-1] == \
        pytest.approx(2500.54)
    assert np.all(np.diff(cube.wavelengths) > 0)
    assert cube.fwhm[0] == pytest.approx(5.57)
    assert cube.warnings == ["wavelengths have no unit; values up to 2500.54 read as "
                             "nanometres"]
    assert open_cube(path.with_name(path.name + ".hdr")).product_id == cube.product_id


def test_real_aviris_ng_companions(realdata):
    loc = open_cube(realdata(AVIRIS.format("loc")))
    assert loc.shape == (3, 10, 10) and loc.stored_dtype == np.float64
    assert loc.band_names == ["Longitude (WGS-84)", "Latitude (WGS-84)", "Elevation (m)"]
    assert loc.wavelengths is None
    lonlat = _aviris_numpy(realdata(AVIRIS.format("loc")), 3, "<f8")
    np.testing.assert_array_equal(loc.load(), lonlat)
    obs = open_cube(realdata(AVIRIS.format("obs")))
    assert obs.bands == 11 and obs.band_names[0] == "Path length (m)"


@pytest.mark.parametrize("name", VIMS)
def test_real_vims_cubes(realdata, name):
    path = realdata(name)
    assert detect_format(path) == "pds3"
    cube = open_cube(path)
    direct = pds3.read(path)
    np.testing.assert_array_equal(cube.load(), direct.load())
    assert cube.wavelength_unit.upper().startswith("MICROMETER")
    np.testing.assert_allclose(wavelengths_nm(cube), direct.wavelengths * 1000, rtol=1e-6)
    assert 300 < wavelengths_nm(cube)[0] < 400 and 5000 < wavelengths_nm(cube)[-1] < 5200


def test_detached_vims_label_without_its_data_file(realdata):
    path = realdata("cassini_vims/v1487096932_1.lbl")
    assert detect_format(path) == "pds3"
    with pytest.raises(ProductError, match=r"data file not found: v1487096932_1\.qub"):
        open_cube(path)


def test_missing_rasterio_is_one_line(samples, monkeypatch):
    files, _ = samples
    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio -> ImportError
    with pytest.raises(UserError, match=r"scene\.img: reading ENVI and GeoTIFF cubes needs "
                                        r"rasterio \(pip install 'sscnet-pipeline\[cube\]'\)"):
        open_cube(files["envi"])
    assert open_cube(files["pds3"]).bands == 6  # PDS3 needs no GDAL
