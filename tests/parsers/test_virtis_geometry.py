"""VIRTIS geometry cubes: plane names (.GEO) and scale factors (.GEO and .GE5)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from parsers import pds3, virtis
from parsers.virtis_geometry import GEO_NULL, rosetta_planes, vex_planes
from pipeline.synthetic.virtis_products import synthetic_geometry, write_virtis_product


def _read(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pds3.LayoutWarning)
        cube = virtis.read(path)
    return cube, [str(w.message) for w in caught]


def test_rosetta_geo_plane_names_in_file_order():
    names = [p.name for p in rosetta_planes("VIRTIS_M_IR")]
    assert names[:10] == [
        "SURFACE_LONGITUDE_CORNER_1", "SURFACE_LONGITUDE_CORNER_2", "SURFACE_LONGITUDE_CORNER_3",
        "SURFACE_LONGITUDE_CORNER_4", "SURFACE_LATITUDE_CORNER_1", "SURFACE_LATITUDE_CORNER_2",
        "SURFACE_LATITUDE_CORNER_3", "SURFACE_LATITUDE_CORNER_4", "SURFACE_LONGITUDE_CENTER",
        "SURFACE_LATITUDE_CENTER"]
    assert names[10:22] == [
        "INCIDENCE_LOCAL_NORMAL", "EMERGENCE_LOCAL_NORMAL", "PHASE_ANGLE",
        "INCIDENCE_ELLIPSOID_NORMAL", "EMERGENCE_ELLIPSOID_NORMAL",
        "INCIDENCE_BODY_CENTER", "EMERGENCE_BODY_CENTER",
        "SURFACE_ELEVATION", "SLANT_DISTANCE", "LOCAL_TIME",
        "RIGHT_ASCENSION", "DECLINATION"]
    assert names[22:] == ["FRAME_COMMON"]
    h = rosetta_planes("VIRTIS_H")
    assert [p.name for p in h[22:26]] == ["SCET_1", "SCET_2", "UTC_1", "UTC_2"]
    assert h[25].unit == "1e-4 s of day" and h[25].scale == 1.0
    assert [p.name for p in h[29:31]] == ["SUN_Z_AXIS_ANGLE", "SUN_AZIMUTH_XY"]
    assert len(vex_planes("VIRTIS_M_VIS")) == 33 and len(vex_planes("VIRTIS_H")) == 41
    assert vex_planes("VIRTIS_H")[29].name == "ELEVATION_BELOW_CLOUDS"


@pytest.mark.parametrize(("channel", "count", "block"), [("VIRTIS_M_VIS", 100, 23),
                                                          ("VIRTIS_H", 112, 35)])
def test_ge5_scale_factors_are_applied(tmp_path, channel, count, block):
    path = write_virtis_product(tmp_path / "I1_00383120708.GE5", kind="geo", channel=channel,
                                extended=True, samples=6, lines=4)
    cube, caught = _read(path)
    assert cube.bands == count and not caught  # no "values are the stored integers"
    planes = cube.geometry_planes
    scale = np.array([p.scale for p in planes])
    np.testing.assert_array_equal(cube.band_scale, scale)
    # the extended block: 15 km coordinates, 20 start/stop lon/lat, ..., 5 plate numbers
    assert planes[block].name == "X_CORNER_1" and planes[block].scale == 1e-3
    assert planes[block + 15].name == "SURFACE_LONGITUDE_CORNER_1_START"
    assert planes[block + 60].name == "SHADOW_VISIBILITY_FLAGS" and planes[block + 60].scale == 1
    assert planes[block + 72].name == "PLATE_NUMBER_CORNER_1" and planes[-1].scale == 1
    assert [p.scale for p in planes[block + 53:block + 58]] == [1e-5] * 5
    got = cube.load()
    want = synthetic_geometry(count, 4, 6, seed=0)
    assert np.isnan(got[:, 0, 0]).all()
    err = np.abs(got[:, 1:] - want[:, 1:])
    assert (err <= scale[:, None, None] * 0.5001 + np.abs(want[:, 1:]) * 2e-7).all()
    assert float(np.abs(got[block, 1:]).max()) < 100  # scaled (km), not the stored integers


def test_ge5_h_sub_spacecraft_x_keeps_the_library_factor_and_says_so():
    planes = rosetta_planes("VIRTIS_H", extended=True)
    x, y, z = planes[32:35]
    assert (x.name, x.scale, y.scale, z.scale) == ("SUB_SPACECRAFT_X", 1e-4, 1e-3, 1e-3)
    assert "off-by-one" in x.note and not y.note
    assert planes[31].name == "SLIT_TO_NORTH_POLE_ANGLE" and planes[31].scale == 1e-4


def test_h_geometry_scet_from_planes_22_and_23(tmp_path):
    path = write_virtis_product(tmp_path / "T1_00383120708.GEO", kind="geo",
                                channel="VIRTIS_H", samples=64, lines=3)
    cube, _ = _read(path)
    data = bytearray(path.read_bytes())
    whole = 383120708 + np.arange(3 * 64).reshape(3, 64)
    frac = (np.arange(3 * 64).reshape(3, 64) * 1024) % 65536
    for line in range(3):
        for sample in range(64):
            pos = cube.offset + ((line * 64 + sample) * 31 + 22) * 4
            data[pos:pos + 8] = np.array([whole[line, sample], frac[line, sample]],
                                         ">i4").tobytes()
    data[cube.offset + (5 * 31 + 23) * 4:cube.offset + (5 * 31 + 24) * 4] = np.array(
        [GEO_NULL], ">i4").tobytes()  # pixel (0, 5): SCET_2 cannot be computed
    path.write_bytes(bytes(data))
    cube, _ = _read(path)
    scet = cube.geometry_scet
    want = whole + frac / 65536
    assert np.isnan(scet[0, 5])
    want[0, 5] = np.nan
    np.testing.assert_array_equal(scet, want)
    m_cube, _ = _read(write_virtis_product(tmp_path / "V1_x.GEO", kind="geo", samples=4,
                                           lines=2))
    assert m_cube.geometry_scet is None


def test_geometry_extension_and_plane_count_disagree(tmp_path):
    path = write_virtis_product(tmp_path / "V1_00383120708.GE5", kind="geo", samples=4, lines=2)
    cube, caught = _read(path)
    assert cube.bands == 23 and cube.band_scale is not None
    assert any("a .GE5 file with 23 planes (Rosetta M .GE5 products have 100)" in w
               for w in caught)
