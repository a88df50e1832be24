"""The CI slice of the reader fuzz run (benchmarks/fuzz_readers.py runs 100,000 cases).

2,000 seeded cases of :mod:`pipeline.synthetic.fuzz`: real and synthetic products, truncated,
bit-flipped, overwritten, with edited labels and absurd dimensions, read by parsers.pds3,
parsers.virtis, parsers.sentinel2 and parsers.cube. Every case must be read or refused with
a one-line UserError: no other exception, no hang, no dead worker, no case over 1 s (measured
again when the machine was busy), under a 6 GiB address-space limit.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from parsers.errors import ProductError
from pipeline.synthetic import fuzz

pytest.importorskip("rasterio")

DATA = Path(__file__).resolve().parents[1] / "data"
CASES = int(os.environ.get("FUZZ_CASES", "2000"))


def test_seeded_slice_of_the_fuzz_run(tmp_path: Path) -> None:
    report = fuzz.run(CASES, seed=16, workers=1, data=DATA, work=tmp_path)
    assert report.cases == CASES
    assert report.ok, fuzz.summary(report)
    assert report.outcomes["ok"] > CASES // 5 and report.outcomes["refused"] > CASES // 5
    assert set(report.by_reader) == {"pds3", "virtis", "cube", "sentinel2"}


def test_corpus_covers_real_and_synthetic_products(tmp_path: Path) -> None:
    seeds = fuzz.corpus(DATA, tmp_path)
    names = {s.name.split(":")[0] for s in seeds}
    assert {"vims", "envi", "s2tif", "s2folder", "s2mtd", "qube", "virtis", "s2zip"} <= names


def test_cases_are_reproducible(tmp_path: Path) -> None:
    seeds = fuzz.corpus(DATA, tmp_path)
    a = [fuzz.make_case(seeds, 16, i) for i in range(60)]
    b = [fuzz.make_case(seeds, 16, i) for i in range(60)]
    assert [(c, d) for c, _s, d in a] == [(c, d) for c, _s, d in b]
    kinds = {c.mutation.split(":")[0].split("@")[0] for c, _s, _d in a}
    assert {"truncate", "bitflip", "bytes", "zeros", "extend", "label", "dims"} <= kinds


def test_a_label_claiming_a_terabyte_is_refused_without_allocating(tmp_path: Path) -> None:
    from parsers import pds3

    (seed,) = [s for s in fuzz.synthetic_seeds(tmp_path / "s") if s.name == "qube:BSQ"]
    text = seed.files[seed.main].replace(b"CORE_ITEMS = (7, 6, 5)",
                                         b"CORE_ITEMS = (100000, 100000, 100)")
    assert text != seed.files[seed.main]  # 10**12 values of 4 bytes claimed
    path = tmp_path / "big.qub"
    path.write_bytes(text)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ProductError, match=r"big\.qub: "):
        pds3.read(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB


def test_the_lenient_label_parser_is_stopped_within_a_second() -> None:
    from parsers import pds3_label

    pds3_label.parse_with_pvl(["A = 1\nEND\n"])  # start the child
    child = pds3_label._PVL.proc.pid
    assert pds3_label.parse_with_pvl(["B = 2\nEND\n"])["B"] == 2
    assert pds3_label._PVL.proc.pid == child  # one child serves every fallback
    t0 = time.monotonic()
    with pytest.raises(ProductError, match="cannot parse label"):
        pds3_label.parse_label_text("SUFFIX_ITEMS = 0 ==>\nEND\n", "loop.lbl")  # pvl loops
    assert time.monotonic() - t0 < pds3_label.PVL_TIMEOUT_S + 1
    assert pds3_label._PVL.proc is None  # killed
    block = pds3_label.parse_with_pvl(['A = (1, 2)\nEND\n'])  # a new child answers
    assert block is not None and block["A"] == [1, 2]
