"""Fuzz the index path of pipeline.download_pds: a damaged index label (or table) gives
candidates or one clean UserError, each within a second; never a hang, a crash or a traceback.

The seeds are the REAL Cassini VIMS COVIMS_0094 index label and the first rows of its table
(tests/data/realapi/pds_index/), mutated by hypothesis.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers.errors import UserError
from pipeline.download_pds import Candidate, index_candidates

DATA = Path(__file__).resolve().parents[1] / "data" / "realapi" / "pds_index"
LABEL = (DATA / "COVIMS_0094_index.lbl").read_bytes()
TABLE = b"".join((DATA / "COVIMS_0094_index.tab").read_bytes().splitlines(keepends=True)[:40])
URL = "http://127.0.0.1:9/COVIMS_0094/index/index.lbl"
FOLDER_URL = "http://127.0.0.1:9/COVIMS_0094/"
LIMIT_S = 1.0

# Fragments that break ODL in the ways real and hand-edited labels do.
NASTY = [b"==>", b"=", b"(", b")", b"{", b"}", b'"', b"'", b"/*", b"*/", b"<", b">", b"\r\n",
         b"END", b"END_OBJECT = COLUMN", b"OBJECT = COLUMN", b"OBJECT = INDEX_TABLE",
         b"START_BYTE = -5", b"BYTES = 0", b"BYTES = 99999", b"ITEMS = 3", b"^INDEX_TABLE = 7",
         b"NAME = PATH_NAME", b"\x00", b"\xff\xfe", b"2#1010#", b"16#FF", b"1.E32", b"\t"]


def run_index(label: bytes, table: bytes) -> list[Candidate] | None:
    def get(folder: str, name: str) -> bytes | None:
        return table if name.lower() == "covims_0094_index.tab" else None

    t0 = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return index_candidates(label, URL, get, "COVIMS_0094", "COVIMS_0094", FOLDER_URL)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message.strip() and message.startswith("http://127.0.0.1:9/")
        return None
    finally:
        assert time.monotonic() - t0 < LIMIT_S


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            piece = draw(st.one_of(st.sampled_from(NASTY), st.binary(min_size=1, max_size=8)))
            data[at:at] = piece
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 200))]
    return bytes(data)


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_the_unmutated_seed_reads() -> None:
    cands = run_index(LABEL, TABLE)
    assert cands is not None and len(cands) == 40
    assert cands[0].relpath == "data/2017238T104254_2017238T235735/v1882439160_1.qub"


@FUZZ
@given(mutated(LABEL))
def test_mutated_real_label(label: bytes) -> None:
    run_index(label, TABLE)


@FUZZ
@given(mutated(TABLE))
def test_mutated_real_table(table: bytes) -> None:
    cands = run_index(LABEL, table)
    if cands is not None:
        assert all(c.relpath and not c.relpath.startswith("/") for c in cands)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_as_label(label: bytes) -> None:
    assert run_index(label, TABLE) is None or label


@pytest.mark.parametrize("label", [
    LABEL.replace(b"ROWS                    = 1711", b"ROWS = 1711 ==>"),
    LABEL.replace(b"END_OBJECT              = INDEX_TABLE", b""),
    LABEL[: len(LABEL) // 2],
    LABEL.replace(b"START_BYTE              = 30", b"START_BYTE              = 0"),
    LABEL.replace(b'"COVIMS_0094_index.tab"', b'"missing.tab"'),
    b"OBJECT = INDEX_TABLE\nEND\n",
    b"",
])
def test_known_bad_labels_are_one_line_errors(label: bytes) -> None:
    assert run_index(label, TABLE) is None
