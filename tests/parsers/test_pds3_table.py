"""parsers.pds3_table: ASCII index tables read from the line ends, fields by START_BYTE, checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from parsers import pds3_label
from parsers.errors import ProductError
from parsers.pds3_label import parse_label_text, table_columns
from parsers.pds3_table import read_rows, table_layout

LABEL = """PDS_VERSION_ID = PDS3
RECORD_TYPE = FIXED_LENGTH
RECORD_BYTES = 29
^INDEX_TABLE = {pointer}
OBJECT = INDEX_TABLE
  ROWS = {rows}
  ROW_BYTES = 29
  OBJECT = COLUMN
    NAME = FILE_NAME
    START_BYTE = 2
    BYTES = 8
  END_OBJECT = COLUMN
  OBJECT = COLUMN
    NAME = SIZE
    START_BYTE = 12
    BYTES = 5
  END_OBJECT = COLUMN
  OBJECT = COLUMN
    NAME = VECTOR
    START_BYTE = 18
    BYTES = 10
    ITEMS = 2
  END_OBJECT = COLUMN
END_OBJECT = INDEX_TABLE
END
"""
ROWS = [b'"A.QUB   ",  123,  1.0, 2.0\r\n', b'"B.QUB   ",45678, -1.0,+3.5\r\n']


def layout(pointer: str = '"INDEX.TAB"', rows: int = 2):
    text = LABEL.format(pointer=pointer, rows=rows)
    return table_layout(parse_label_text(text, "INDEX.LBL", pvl_fallback=False), "INDEX.LBL")


def test_layout_and_rows_as_written() -> None:
    lay = layout()
    assert lay.object_name == "INDEX_TABLE" and lay.file_name == "INDEX.TAB"
    assert [(c.name, c.start, c.size, c.items) for c in lay.columns] == [
        ("FILE_NAME", 2, 8, 1), ("SIZE", 12, 5, 1), ("VECTOR", 18, 10, 2)]
    assert all(len(r) == 29 for r in ROWS)
    table = read_rows(lay, b"".join(ROWS), "INDEX.TAB")
    assert table.rows == [{"FILE_NAME": "A.QUB", "SIZE": "123", "VECTOR": "1.0,2.0"},
                          {"FILE_NAME": "B.QUB", "SIZE": "45678", "VECTOR": "-1.0,+3.5"}]
    assert table.notes == []


def test_header_row_by_record_pointer_and_byte_pointer() -> None:
    header = b'"NAME    ","SIZE ","VECTOR   "\r\n'
    data = header + b"".join(ROWS)
    by_record = read_rows(layout('("INDEX.TAB", 2)'), data, "T")
    by_bytes = read_rows(layout(f'("INDEX.TAB", {len(header) + 1} <BYTES>)'), data, "T")
    assert [r["FILE_NAME"] for r in by_record.rows] == ["A.QUB", "B.QUB"]
    assert by_bytes.rows == by_record.rows


def test_shifted_row_is_split_on_separators() -> None:
    shifted = b'"B.QUB  ",45678, -1.0,+3.5\n'  # one padding blank lost, LF only
    table = read_rows(layout(), ROWS[0] + shifted, "T")
    assert table.rows[1] == {"FILE_NAME": "B.QUB", "SIZE": "45678", "VECTOR": "-1.0,+3.5"}


def test_tabs_stale_rows_and_unreadable_rows() -> None:
    tabbed = b'"A.QUB"\t123\t1.0\t2.0\r\n"B.QUB"\t45678\t-1.0\t+3.5\r\n'
    assert read_rows(layout(), tabbed, "T").rows[1]["VECTOR"] == "-1.0,+3.5"
    table = read_rows(layout(rows=5), b"".join(ROWS) + b'"C.QUB", 7\r\n\r\n', "T")
    assert [r["FILE_NAME"] for r in table.rows] == ["A.QUB", "B.QUB"]
    assert table.notes == [
        "the label says ROWS = 5, the table holds 3 rows; all rows are read",
        "1 row(s) do not match the label's columns and are skipped (line 3)"]
    with pytest.raises(ProductError, match="no row matches the 3 columns"):
        read_rows(layout(), b"garbage\r\nmore, garbage\r\n", "T")
    with pytest.raises(ProductError, match="holds no rows"):
        read_rows(layout(), b"\r\n\x1a", "T")


def test_fixed_width_table_without_separators() -> None:
    fixed = b" " + b"A.QUB".ljust(8) + b"  " + b"123".rjust(5) + b" " + b"1.0 2.0".rjust(10)
    fixed += b"\r\n"
    assert len(fixed) == 29
    assert read_rows(layout(), fixed, "T").rows == [
        {"FILE_NAME": "A.QUB", "SIZE": "123", "VECTOR": "1.0 2.0"}]


def test_bad_columns_are_named() -> None:
    text = LABEL.format(pointer='"X.TAB"', rows=1).replace("START_BYTE = 12", "START_BYTE = 0")
    with pytest.raises(ProductError, match="COLUMN SIZE: START_BYTE = 0"):
        layout_block = parse_label_text(text, "X.LBL", pvl_fallback=False)
        table_columns(layout_block["INDEX_TABLE"], "X.LBL")
    with pytest.raises(ProductError, match="no TABLE object"):
        table_layout(parse_label_text("A = 1\nEND\n", "X.LBL", pvl_fallback=False), "X.LBL")


def test_no_pvl_child_without_the_fallback(monkeypatch) -> None:
    def no_pvl(*args, **kwargs):
        raise AssertionError("pvl must not run")

    monkeypatch.setattr(pds3_label, "parse_with_pvl", no_pvl)
    with pytest.raises(ProductError, match="unexpected character '>'"):
        parse_label_text("ROWS = 1 ==>\nEND\n", "INDEX.LBL", pvl_fallback=False)
    # the missing commas of draft labels are still repaired, by the fast parser
    block = parse_label_text("A = (1\n 2)\nEND\n", "X.LBL", pvl_fallback=False)
    assert block["A"] == [1, 2]


def test_pvl_is_only_called_by_the_label_parser_child() -> None:
    """No module of the project imports pvl in-process (it can loop forever on bad labels);
    parsers.pds3_label runs it only in a child process with a time limit."""
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in [*root.glob("parsers/**/*.py"), *root.glob("pipeline/**/*.py"),
                 *root.glob("training/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "pvl" or n.startswith("pvl.") for n in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
    assert "timeout or PVL_TIMEOUT_S" in (root / "parsers/pds3_label.py").read_text()
