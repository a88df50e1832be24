"""VIRTIS-H calibrated products: the binary TABLE before the QUBE and SCET per spectrum."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from parsers import pds3, virtis
from parsers.errors import ProductError
from pipeline.synthetic.virtis_products import (
    CAL_SPECIALS,
    h_cal_table,
    special_positions,
    spectrum_scet,
    synthetic_radiance,
    write_virtis_product,
)


def _stored_radiance(bands, lines, samples, seed=0):
    """The radiance the writer stores: special values included (as in the file)."""
    rad, _ = synthetic_radiance("VIRTIS_H", bands, lines, samples, seed)
    for key, pos in special_positions(bands, lines, samples).items():
        rad[pos] = CAL_SPECIALS[key]
    return rad


def _read(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pds3.LayoutWarning)
        cube = virtis.read(path)
    return cube, [str(w.message) for w in caught]


@pytest.mark.parametrize(("bands", "samples", "lines"), [(3456, 64, 3), (3456, 1, 5), (40, 8, 2)])
def test_h_cal_wavelengths_from_table_and_scet_per_spectrum(tmp_path, bands, samples, lines):
    path = write_virtis_product(tmp_path / "T1_00383120708.CAL", kind="cal",
                                channel="VIRTIS_H", bands=bands, samples=samples, lines=lines,
                                seed=5)
    cube, _ = _read(path)
    assert cube.is_h_cal and cube.scet_per == "spectrum"
    stored = _stored_radiance(bands, lines, samples, seed=5)
    np.testing.assert_array_equal(cube.load(), np.where(stored <= -999, np.nan, stored))
    table = h_cal_table(bands, stored)
    np.testing.assert_array_equal(cube.wavelengths, table[:, 0])
    assert cube.wavelength_unit == "MICRON"
    assert cube.spectral_table.rows == bands and cube.spectral_table.row_bytes == 12
    np.testing.assert_array_equal(cube.spectral_columns["FWHM"], table[:, 1])
    assert cube.fwhm_map.shape == (bands, samples)
    np.testing.assert_array_equal(cube.uncertainty_map[:, -1], table[:, 2])
    assert cube.scet_words.shape == (lines * samples, 3)
    np.testing.assert_array_equal(cube.scet, spectrum_scet(lines, samples))
    assert cube.layout.slots == {"BAND": 2}
    assert "LINE" not in cube.suffix_items  # no bottomplanes in H cal


def test_vt0073_byte_count_fits_both_backplane_readings_and_warns(tmp_path):
    # (3456 + 2) x 4 x 64 x 3 = 2,655,744 B: 3 x 2-byte items leave 384 B of padding,
    # 2 x 4-byte items fit exactly. The label's 3 x 2 wins, with a warning.
    path = write_virtis_product(tmp_path / "VT0073_09.CAL", kind="cal", channel="VIRTIS_H",
                                mission="VEX", bands=3456, samples=64, lines=3)
    cube, caught = _read(path)
    assert cube.layout.expected == 2_655_360
    assert cube.file_size - cube.offset == 2_655_744
    assert any("would also fit as 2 x 4-byte items (2,655,744 of 2,655,744 bytes); using the "
               "label's 3 x 2-byte items" in w for w in caught)
    np.testing.assert_array_equal(cube.scet, spectrum_scet(3, 64))


def test_h_cal_label_says_4_byte_suffix_but_file_has_2_byte_slots(tmp_path):
    path = write_virtis_product(tmp_path / "T1_x.CAL", kind="cal", channel="VIRTIS_H",
                                bands=100, samples=64, lines=3, scet_label_bytes=4)
    cube, _ = _read(path)
    assert cube.layout.slots == {"BAND": 2}
    np.testing.assert_array_equal(cube.scet, spectrum_scet(3, 64))


def test_h_cal_with_two_4_byte_items_reads_data_but_no_scet(tmp_path):
    path = write_virtis_product(tmp_path / "T1_y.CAL", kind="cal", channel="VIRTIS_H",
                                bands=100, samples=64, lines=3, scet_items=2, scet_slot_bytes=4)
    cube, caught = _read(path)
    assert cube.layout.slots == {"BAND": 4}
    assert cube.scet is None
    assert any("which bytes hold the 3 SCET words is not documented" in w for w in caught)
    assert cube.wavelengths.shape == (100,)


def test_h_cal_table_without_columns_reads_the_documented_three_floats(tmp_path):
    path = write_virtis_product(tmp_path / "T1_z.CAL", kind="cal", channel="VIRTIS_H",
                                bands=50, samples=4, lines=2, table_columns=False)
    cube, caught = _read(path)
    assert any("no COLUMN objects; reading the documented 3" in w for w in caught)
    table = h_cal_table(50, _stored_radiance(50, 2, 4))
    np.testing.assert_array_equal(cube.wavelengths, table[:, 0])
    np.testing.assert_array_equal(cube.spectral_columns["UNCERTAINTY"], table[:, 2])
    assert cube.wavelength_unit is None


def test_h_cal_table_checks_against_the_label_and_file(tmp_path):
    path = write_virtis_product(tmp_path / "T1_w.CAL", kind="cal", channel="VIRTIS_H",
                                bands=50, samples=4, lines=2)
    data = path.read_bytes()
    # 50 rows of 12 bytes fill 2 records: a label claiming 200 rows runs into the QUBE.
    path.write_bytes(data.replace(b"ROWS = 50\r\n", b"ROWS =200\r\n", 1))
    with pytest.raises(ProductError, match=r"TABLE \(ROWS 200 x ROW_BYTES 12 at byte "
                                           r"[\d,]+\) runs into the QUBE"):
        virtis.read(path)
    # ... and a table that fits its records but does not match the band count is a warning.
    path.write_bytes(data.replace(b"ROWS = 50\r\n", b"ROWS = 40\r\n", 1))
    cube, caught = _read(path)
    assert any("TABLE has 40 rows for 50 bands: no wavelengths" in w for w in caught)
    assert cube.wavelengths is None
    # ... a column outside its row is an error naming the column.
    path.write_bytes(data.replace(b"START_BYTE = 9", b"START_BYTE = 11", 1))
    with pytest.raises(ProductError, match="column UNCERTAINTY: START_BYTE 11, BYTES 4"):
        virtis.read(path)
