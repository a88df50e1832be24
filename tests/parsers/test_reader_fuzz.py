"""Property/fuzz tests: random layouts round-trip exactly; bad input gives only ProductError."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from parsers import pds3
from parsers.errors import ProductError
from parsers.pds3_label import parse_label_text
from pipeline.synthetic.pds3_products import Suffix, write_qube_product

FAST = settings(max_examples=int(os.environ.get("READER_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
CORE_TYPES = [">f4", "<f4", ">i2", "<i2", ">u2", ">i4", "<u4", "u1", ">f8"]
ITEM_TYPES = [">i4", "<i4", ">u2", "<u2", ">f4", "u1", ">i2"]
FACE = {"BAND": ("LINE", "SAMPLE"), "SAMPLE": ("BAND", "LINE"), "LINE": ("BAND", "SAMPLE")}


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


@st.composite
def products(draw):
    shape = tuple(draw(st.integers(1, 5)) for _ in range(3))  # B, L, S
    interleave = draw(st.sampled_from(["BIP", "BIL", "BSQ"]))
    core_dtype = np.dtype(draw(st.sampled_from(CORE_TYPES)))
    dims = {"BAND": shape[0], "LINE": shape[1], "SAMPLE": shape[2]}
    suffix = {}
    for axis in ("BAND", "SAMPLE", "LINE"):
        k = draw(st.integers(0, 2))
        if not k:
            continue
        dt = np.dtype(draw(st.sampled_from(ITEM_TYPES)))
        # the two slot widths the reader considers: SUFFIX_BYTES (4) and the item size
        slot = draw(st.sampled_from(sorted({dt.itemsize, 4})))
        info = np.iinfo(dt) if dt.kind in "iu" else None
        face = (k, *(dims[a] for a in FACE[axis]))
        seed = draw(st.integers(0, 2**16))
        rng = np.random.default_rng(seed)
        if info is not None:
            vals = rng.integers(max(info.min, -1000), min(info.max, 1000), face).astype(dt)
        else:
            vals = rng.normal(0, 10, face).astype(dt)
        suffix[axis] = Suffix(vals, dt, slot, draw(st.integers(0, 255)))
    corners = draw(st.booleans()) if len(suffix) >= 2 else False
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if core_dtype.kind == "f":
        core = rng.normal(0, 100, shape).astype(core_dtype)
    else:
        info = np.iinfo(core_dtype)
        core = rng.integers(max(info.min, -30000), min(info.max, 30000), shape).astype(core_dtype)
    return shape, interleave, core_dtype, core, suffix, corners


@FAST
@given(products())
def test_random_layouts_round_trip_exactly(product):
    _shape, interleave, core_dtype, core, suffix, corners = product
    with tempfile.TemporaryDirectory() as tmp:
        path = write_qube_product(Path(tmp) / "r.qub", core, interleave=interleave,
                                  core_dtype=core_dtype, suffix=suffix, corners=corners,
                                  record_bytes=1, suffix_bytes_label=4)
        cube = _quiet(pds3.read, path, prefer_corners=corners)
        truth = {a: s.slot_bytes for a, s in suffix.items()}
        same_size = [c for c in pds3.candidate_layouts(cube.axes, cube.sizes, core_dtype.itemsize,
                                                       cube.suffix_items, 4)
                     if c.expected == cube.layout.expected]
        assume(len(same_size) == 1 or (cube.layout.slots == truth
                                       and cube.layout.corners == corners))
        assert cube.layout.slots == truth and cube.layout.corners == corners
        np.testing.assert_array_equal(cube.load(), core.astype(np.float32))
        for axis, s in suffix.items():
            for j in range(s.count):
                np.testing.assert_array_equal(cube.suffix_plane(axis, j), s.values[j])
        cube.close()


@pytest.fixture(autouse=True)
def _short_pvl_timeout(monkeypatch):
    from parsers import pds3_label

    monkeypatch.setattr(pds3_label, "PVL_TIMEOUT_S", 2.0)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> bytes:
    core = np.arange(4 * 3 * 5, dtype=">f4").reshape(4, 3, 5)
    suffix = {"BAND": Suffix(np.ones((1, 3, 5), np.uint32), ">u4", 4),
              "LINE": Suffix(np.ones((2, 4, 5), np.float32), ">f4", 4)}
    path = write_qube_product(tmp_path_factory.mktemp("t") / "t.qub", core, suffix=suffix,
                              record_bytes=64)
    return path.read_bytes()


KEYS = ["CORE_ITEMS", "SUFFIX_ITEMS", "SUFFIX_BYTES", "CORE_ITEM_TYPE", "CORE_ITEM_BYTES",
        "AXIS_NAME", "^QUBE", "RECORD_BYTES", "BAND_SUFFIX_ITEM_BYTES", "LINE_SUFFIX_ITEM_TYPE",
        "AXES", "CORE_NULL", "CORE_MULTIPLIER", "FILE_RECORDS"]
VALUES = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.lists(st.integers(-5, 10**7), min_size=0, max_size=4).map(
        lambda v: "(" + ", ".join(map(str, v)) + ")"),
    st.sampled_from(["(BAND, SAMPLE, LINE)", "(LINE, LINE, BAND)", "IEEE_REAL", "VAX_REAL",
                     "PC_COMPLEX", '"REAL"', "12 <BYTES>", '("nofile.qub", 3)', '"x"', "()",
                     "{1, 2}", "-0.0", "1e308", "16#FF#", "(1, (2, 3))", "N/A", "0 <BYTES>"]),
    st.text(alphabet="()=,{}<>\"'/* \r\nAZ09._-", max_size=12),
)


@FAST
@given(key=st.sampled_from(KEYS), value=VALUES, cut=st.integers(0, 4000),
       garbage=st.binary(max_size=40))
def test_mutated_labels_and_truncations_raise_only_product_errors(template, key, value, cut,
                                                                  garbage):
    text = template.decode("latin-1")
    pattern = re.compile(rf"(^|\n)(\s*{re.escape(key)}\s*=)[^\r\n]*", re.M)
    text = pattern.sub(lambda m: m.group(1) + m.group(2) + " " + value, text, count=1)
    data = text.encode("latin-1")
    if cut:
        data = data[: max(0, len(data) - cut)] + garbage
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.qub"
        path.write_bytes(data)
        try:
            cube = _quiet(pds3.read, path)
        except ProductError as exc:
            assert "\n" not in str(exc)
            return
        arr = cube.load()
        assert arr.shape == (cube.bands, cube.lines_available, cube.samples)
        for axis in cube.suffix_items:
            cube.suffix_plane(axis, 0)
        cube.close()


@FAST
@given(st.binary(min_size=0, max_size=3000))
def test_random_bytes_raise_only_product_errors(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.qub"
        path.write_bytes(blob)
        with pytest.raises(ProductError):
            pds3.read(path)


_PVL_CALLS: list[int] = []


@FAST
@given(st.text(alphabet="ABCQUE_^=(){},\"'<>/* \n\r0123456789.-:#", max_size=300))
def test_random_label_text_parses_or_raises_product_error(monkeypatch, text):
    from parsers import pds3_label

    real = pds3_label.parse_with_pvl

    def few_children(texts, timeout=None):  # the pvl child costs ~0.2 s: try a handful
        _PVL_CALLS.append(1)
        return real(texts, timeout) if len(_PVL_CALLS) <= 8 else None

    monkeypatch.setattr(pds3_label, "parse_with_pvl", few_children)
    with contextlib.suppress(ProductError):
        parse_label_text(text + "\nEND\n")
