"""Object bounds from the label arithmetic: stale pointers, following objects, truncation.

Products are built pdr-style from a literal label string plus ``ndarray.tobytes()``, so the
byte positions in each test can be checked by eye.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from parsers import pds3
from parsers.errors import ProductError

RNG = np.random.default_rng(7)


def _spectral_qube_label(history_pointer: str, qube_byte: int, record_bytes: int,
                         file_records: int) -> str:
    """A THEMIS-like BSQ SPECTRAL_QUBE label (10 samples, 8 lines, 5 bands, >f4)."""
    return (
        "PDS_VERSION_ID = PDS3\r\n"
        "RECORD_TYPE = FIXED_LENGTH\r\n"
        f"RECORD_BYTES = {record_bytes}\r\n"
        f"FILE_RECORDS = {file_records}\r\n"
        f"^HISTORY = {history_pointer}\r\n"
        f"^SPECTRAL_QUBE = {qube_byte} <BYTES>\r\n"
        "OBJECT = SPECTRAL_QUBE\r\n"
        "  AXES = 3\r\n"
        "  AXIS_NAME = (SAMPLE, LINE, BAND)\r\n"
        "  CORE_ITEMS = (10, 8, 5)\r\n"
        "  CORE_ITEM_BYTES = 4\r\n"
        "  CORE_ITEM_TYPE = IEEE_REAL\r\n"
        "  SUFFIX_ITEMS = (0, 0, 0)\r\n"
        "END_OBJECT = SPECTRAL_QUBE\r\n"
        "END\r\n"
    )


def _write(path, label: str, data: bytes, start: int) -> None:
    head = label.encode("ascii")
    assert len(head) <= start
    path.write_bytes(head + b" " * (start - len(head)) + data)


def test_stale_pointer_inside_the_qube_is_a_warning_naming_both_objects(tmp_path):
    # The real case: the file was cropped and its history dropped; ^HISTORY = 3 (byte 4096
    # with 2048-byte records) now falls inside the QUBE, which starts at byte 2848 and
    # needs 1,600 bytes; the file holds exactly those bytes.
    core = RNG.normal(size=(5, 8, 10)).astype(">f4")  # (B, L, S) = BSQ file order
    path = tmp_path / "cropped.qub"
    _write(path, _spectral_qube_label("3", 2849, 2048, 3), core.tobytes(), 2848)
    assert path.stat().st_size == 2848 + 1600
    with pytest.warns(pds3.LayoutWarning) as caught:
        cube = pds3.read(path)
    stale = [str(w.message) for w in caught if "stale" in str(w.message)]
    assert len(stale) == 1
    assert "^HISTORY points to byte 4,096, inside the SPECTRAL_QUBE (bytes 2,848..4,447)" \
        in stale[0]
    np.testing.assert_array_equal(cube.load(), core.astype(np.float32))


def test_stale_pointer_with_a_truncated_qube_is_still_an_error_with_the_shortfall(tmp_path):
    core = RNG.normal(size=(5, 8, 10)).astype(">f4")
    path = tmp_path / "short.qub"
    _write(path, _spectral_qube_label("3", 2849, 2048, 3), core.tobytes()[:-100], 2848)
    with pytest.raises(ProductError) as err:
        pds3.read(path)
    msg = str(err.value)
    assert "truncated: label needs 1,600 data bytes, file holds 1,500 (100 bytes short)" in msg
    assert "\n" not in msg


def test_an_object_after_the_qube_end_still_bounds_it(tmp_path):
    # QUBE at record 3 (1,600 bytes = 3.125 records of 512), HISTORY after it at record 7:
    # the padding up to the HISTORY is < one record, the HISTORY bytes are not QUBE bytes.
    core = RNG.normal(size=(5, 8, 10)).astype(">f4")
    label = _spectral_qube_label("7", 1025, 512, 7)
    data = core.tobytes() + b"\0" * (4 * 512 - 1600) + b"HISTORY " * 64
    path = tmp_path / "history_after.qub"
    _write(path, label, data, 1024)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pds3.LayoutWarning)
        cube = pds3.read(path)
    assert cube.layout.expected == 1600
    np.testing.assert_array_equal(cube.load(), core.astype(np.float32))
    # Without the HISTORY pointer, the 512 trailing bytes break the padding rule.
    _write(path, label.replace("^HISTORY = 7\r\n", ""), data, 1024)
    with pytest.raises(ProductError, match="no layout fits"):
        pds3.read(path)


def test_pointer_past_the_end_of_file_does_not_bound_or_warn(tmp_path):
    core = RNG.normal(size=(5, 8, 10)).astype(">f4")
    path = tmp_path / "far.qub"
    _write(path, _spectral_qube_label("99", 1025, 512, 7), core.tobytes(), 1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pds3.LayoutWarning)  # FILE_RECORDS is stale
        cube = pds3.read(path)
    assert not any("stale" in w for w in cube.warnings)
    np.testing.assert_array_equal(cube.load(), core.astype(np.float32))


def test_layout_bounds_per_candidate():
    # Two candidates (1,000 and 1,200 bytes at offset 100); an object at byte 1,150 lies
    # inside the second one's span and bounds only the first.
    a = pds3.Layout(False, {"SAMPLE": 2}, 1000)
    b = pds3.Layout(False, {"SAMPLE": 4}, 1200)
    others = [("TABLE", 1150), ("HISTORY", 50)]
    assert pds3.layout_bounds(100, 5000, [a, b], others) == [1050, 4900]
    assert pds3.overlapping_objects(100, 1200, others) == [("TABLE", 1150)]
