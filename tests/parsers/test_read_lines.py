"""The streaming path of the PDS3 reader: read_lines() equals load() for every layout and type."""

from __future__ import annotations

import numpy as np
import pytest

from parsers import pds3
from parsers.errors import ProductError
from pipeline.synthetic.pds3_products import Raw, Suffix, write_qube_product

RNG = np.random.default_rng(7)


@pytest.fixture(params=[64, 1 << 20])
def chunk_bytes(request, monkeypatch):
    """Run each test with tiny conversion chunks (many chunks per block) and the default."""
    monkeypatch.setattr(pds3, "_CHUNK_BYTES", request.param)
    return request.param


@pytest.mark.parametrize("interleave", ["BIP", "BIL", "BSQ"])
@pytest.mark.parametrize("dtype", [">f4", "<f4", ">i2", "<u2", ">i4", ">f8"])
def test_read_lines_equals_load_with_specials(tmp_path, chunk_bytes, interleave, dtype):
    shape = (5, 11, 4)  # B, L, S
    dt = np.dtype(dtype)
    core = RNG.integers(10, 1000, shape).astype(dt)
    core[1, 2, 3] = 7  # CORE_NULL inside the valid range: needs its own comparison
    core[0, 5, 0] = 3  # below CORE_VALID_MINIMUM
    core[4, 10, 1] = 2000  # above CORE_VALID_MAXIMUM
    kw = [("CORE_NULL", 7), ("CORE_VALID_MINIMUM", 5), ("CORE_VALID_MAXIMUM", 1500),
          ("CORE_LOW_REPR_SATURATION", 2)]  # outside the range: no pass of its own
    back = Suffix(RNG.integers(0, 9, (1, 11, 4)).astype(">u4"), ">u4", 4)
    path = write_qube_product(tmp_path / "c.qub", core, interleave=interleave, core_dtype=dt,
                              core_keywords=kw, suffix={"BAND": back})
    cube = pds3.read(path)
    whole = cube.load()
    assert np.isnan(whole).sum() == 3
    for a, b in [(0, 11), (0, 1), (3, 9), (10, 11), (4, 4)]:
        np.testing.assert_array_equal(cube.read_lines(a, b), whole[:, a:b])


def test_read_lines_reuses_the_buffer_it_is_given(tmp_path, chunk_bytes):
    core = RNG.normal(size=(6, 9, 5)).astype(np.float32)
    path = write_qube_product(tmp_path / "c.qub", core, interleave="BIP")
    cube = pds3.read(path)
    buf = np.empty((3, *cube.line_shape), np.float32)
    first = cube.read_lines(0, 3, out=buf)
    assert np.shares_memory(first, buf)
    np.testing.assert_array_equal(first, core[:, 0:3])
    second = cube.read_lines(6, 9, out=buf)
    assert np.shares_memory(second, buf)
    np.testing.assert_array_equal(second, core[:, 6:9])
    # a buffer of the wrong shape is not used
    other = cube.read_lines(2, 4, out=buf)
    assert not np.shares_memory(other, buf)
    np.testing.assert_array_equal(other, core[:, 2:4])


def test_read_lines_vax_and_scaling(tmp_path, chunk_bytes):
    core = np.array([1.0, -2.5, 3.14159, 1e-30, 1e30, 0.0, 123456.78, -7e-3] * 6,
                    dtype=np.float32).reshape(2, 6, 4)
    path = write_qube_product(tmp_path / "v.qub", core, core_type="VAX_REAL",
                              core_dtype="<f4", interleave="BIP")
    np.testing.assert_array_equal(pds3.read(path).read_lines(1, 5), core[:, 1:5])
    ints = RNG.integers(0, 1000, (3, 8, 5)).astype(">i2")
    kw = [("CORE_BASE", Raw("100.0")), ("CORE_MULTIPLIER", Raw("0.5"))]
    path = write_qube_product(tmp_path / "s.qub", ints, core_dtype=">i2", core_keywords=kw,
                              interleave="BIL")
    np.testing.assert_array_equal(pds3.read(path).read_lines(2, 7),
                                  100 + 0.5 * ints[:, 2:7].astype(np.float32))


@pytest.mark.parametrize("record_bytes", [1, 512])
def test_read_lines_at_any_offset_of_the_mapping(tmp_path, chunk_bytes, record_bytes):
    # 1400-byte lines: most ranges start inside a page; record_bytes=1 puts the core at an
    # odd offset, so the mapped values are not even 4-byte aligned
    core = RNG.normal(size=(7, 300, 50)).astype(">f4")
    path = write_qube_product(tmp_path / "t.qub", core, interleave="BIP", core_dtype=">f4",
                              record_bytes=record_bytes, top_keywords=[("NOTE", '"odd"')])
    cube = pds3.read(path)
    assert cube.offset % 4 != 0 if record_bytes == 1 else cube.offset % 512 == 0
    for a, b in [(0, 300), (123, 250), (299, 300), (47, 48)]:
        np.testing.assert_array_equal(cube.read_lines(a, b), core[:, a:b].astype(np.float32))


def test_file_cut_after_open_is_a_product_error(tmp_path):
    core = RNG.normal(size=(4, 10, 6)).astype(np.float32)
    path = write_qube_product(tmp_path / "t.qub", core, interleave="BIP", record_bytes=1)
    cube = pds3.read(path)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 4 * 6 * 4 * 3)
    with pytest.raises(ProductError, match="cannot read lines 0:10"):
        cube.read_lines(0, 10)
