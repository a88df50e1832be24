"""Keyword values as real labels write them: "not defined" texts, quoted numbers, missing
suffix item types, and binary TABLE objects."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from parsers import pds3
from parsers.errors import ProductError
from parsers.pds3_binary_table import read_table
from parsers.pds3_label import parse_fast
from pipeline.synthetic.pds3_products import Raw, Suffix, write_qube_product


def _read(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pds3.LayoutWarning)
        cube = pds3.read(path)
    return cube, [str(w.message) for w in caught]


@pytest.mark.parametrize(("value", "number"), [
    (-1004, -1004.0), (2.5, 2.5), ("-1004.0", -1004.0), (" 7 ", 7.0), ("NULL", None),
    ("N/A", None), ("UNK", None), ("abc", None), (None, None), (True, None),
])
def test_label_number(value, number):
    assert pds3.label_number(value) == number


def test_core_specials_null_na_and_junk(tmp_path):
    core = np.array([[[1.0, -5.0, 3.0]]], dtype=np.float32)  # (B, L, S) = (1, 1, 3)
    path = write_qube_product(
        tmp_path / "n.qub", core, record_bytes=1,
        core_keywords=[("CORE_NULL", Raw('"N/A"')), ("CORE_LOW_REPR_SATURATION", Raw('"-5"')),
                       ("CORE_HIGH_REPR_SATURATION", Raw("NULL")),
                       ("CORE_VALID_MAXIMUM", Raw('"lots"'))])
    cube, caught = _read(path)
    assert cube.specials == {"LOW_REPR_SATURATION": -5.0}
    assert cube.valid_max is None
    assert caught == ["n.qub: CORE_VALID_MAXIMUM = 'lots' is not a number; taken as not defined"]
    np.testing.assert_array_equal(cube.load()[0, 0], [1.0, np.nan, 3.0])


def test_missing_suffix_item_type_is_an_unsigned_integer_of_the_stated_width(tmp_path):
    shape = (4, 3, 5)
    core = np.arange(60, dtype=np.float32).reshape(shape)
    side = Suffix(np.arange(12, dtype=np.uint16).reshape(1, 4, 3) + 60000, ">u2", 4)
    path = write_qube_product(tmp_path / "t.qub", core, suffix={"SAMPLE": side},
                              record_bytes=1,
                              suffix_keywords=[("SAMPLE_SUFFIX_NAME", "HK"),
                                               ("SAMPLE_SUFFIX_ITEM_BYTES", 2)])
    cube, caught = _read(path)
    assert any("SAMPLE_SUFFIX_ITEM_TYPE missing: reading the sideplane items as "
               "MSB_UNSIGNED_INTEGER of 2 bytes" in w for w in caught)
    np.testing.assert_array_equal(cube.sideplanes, side.values)
    assert cube.sideplanes.dtype == np.uint16
    np.testing.assert_array_equal(cube.load(), core)


_TABLE_LABEL = (
    "PDS_VERSION_ID = PDS3\r\nRECORD_TYPE = FIXED_LENGTH\r\nRECORD_BYTES = 64\r\n"
    "FILE_RECORDS = 3\r\n^CAL_TABLE = 2\r\n"
    "OBJECT = CAL_TABLE\r\n  INTERCHANGE_FORMAT = BINARY\r\n  ROWS = 5\r\n  COLUMNS = 2\r\n"
    "  ROW_BYTES = 10\r\n"
    "  OBJECT = COLUMN\r\n    NAME = ID\r\n    DATA_TYPE = LSB_UNSIGNED_INTEGER\r\n"
    "    START_BYTE = 1\r\n    BYTES = 2\r\n  END_OBJECT = COLUMN\r\n"
    "  OBJECT = COLUMN\r\n    NAME = GAIN\r\n    DATA_TYPE = PC_REAL\r\n    START_BYTE = 3\r\n"
    "    BYTES = 8\r\n    ITEMS = 2\r\n    ITEM_BYTES = 4\r\n    UNIT = \"DN\"\r\n"
    "  END_OBJECT = COLUMN\r\nEND_OBJECT = CAL_TABLE\r\nEND\r\n"
)


def test_binary_table_columns_items_and_truncation(tmp_path):
    label_records = -(-len(_TABLE_LABEL) // 64)
    text = _TABLE_LABEL.replace("^CAL_TABLE = 2", f"^CAL_TABLE = {label_records + 1}")
    head = text.encode()
    rows = np.zeros(5, dtype=[("id", "<u2"), ("gain", "<f4", (2,))])
    rows["id"] = [3, 1, 4, 1, 5]
    rows["gain"] = np.arange(10, dtype=np.float32).reshape(5, 2) / 4
    path = tmp_path / "t.dat"
    path.write_bytes(head + b" " * (label_records * 64 - len(head)) + rows.tobytes())
    label = parse_fast(text)
    table = read_table(path, label, "CAL_TABLE")
    assert table.rows == 5 and table.units == {"ID": None, "GAIN": "DN"}
    np.testing.assert_array_equal(table.columns["ID"], rows["id"])
    np.testing.assert_array_equal(table.columns["GAIN"], rows["gain"])
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ProductError, match=r"truncated: CAL_TABLE needs 50 bytes .* file holds "
                                           r"43 \(7 bytes short\)"):
        read_table(path, label, "CAL_TABLE")
