"""Read PDS3 ASCII tables (volume indexes such as ``INDEX.TAB``) as they are in the wild.

The label (parsed by :mod:`parsers.pds3_label`, the project's one label parser) says where the
table starts and where each COLUMN lies (``START_BYTE``, ``BYTES``). Real index tables do not
always agree with their labels, so rows are found and fields checked rather than trusted:

- rows are measured from the line ends (CRLF, LF or CR), never from ``ROW_BYTES``, which can
  be off by a byte (an LF-only or unterminated last row, a label written before an edit);
- ``ROWS`` / ``FILE_RECORDS`` can be stale: every non-blank line after the table's start is
  a row (the mismatch is reported as a note, not an error);
- fields are located by ``START_BYTE``; the bytes between two columns must then hold only
  quotes, blanks and exactly one separator (comma or TAB). A row that fails this check (a
  byte lost or added inside it) is split on its separators instead, honouring quotes, and
  mapped to the columns in label order (a column of ``ITEMS`` n takes n values);
- a row that fits neither way is skipped and reported; a table where no row fits is an
  error.

Values come back as stripped text without the quotes.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from parsers.errors import ProductError
from parsers.pds3_label import Block, Quantity, TableColumn, table_columns

_GAP_CHARS = frozenset(' "')
_EOF_JUNK = b"\x1a\x00"


@dataclass(frozen=True)
class TableLayout:
    """What a label says about one ASCII table.

    ``file_name`` is the table file named by the ``^<TABLE>`` pointer (None when the pointer
    gives only a position); ``start`` the pointer's 1-based position as (n, in bytes?);
    ``structure`` the ``^STRUCTURE`` format file that holds the COLUMN objects, when the
    table object has none of its own.
    """

    object_name: str
    columns: tuple[TableColumn, ...]
    file_name: str | None = None
    start: tuple[int, bool] | None = None
    rows: int | None = None
    row_bytes: int | None = None
    structure: str | None = None


@dataclass
class TableRows:
    """The rows of a table, as {column name: text}, and notes on where the table and its
    label disagree (stale ROWS, skipped rows)."""

    rows: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, Quantity):
        value = value.value
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def table_layout(label: Block, where: str | os.PathLike[str]) -> TableLayout:
    """The first TABLE-like object of ``label`` (``INDEX_TABLE``, ``TABLE``, ...) that has
    COLUMN objects or a ``^STRUCTURE``; ProductError naming ``where`` if there is none."""
    found = next(((k, b) for k, b in label.objects()
                  if k.endswith("TABLE") and (b.all("COLUMN") or "^STRUCTURE" in b)), None)
    if found is None:
        raise ProductError(where, "no TABLE object with COLUMN objects")
    name, table = found
    pointer = label.get("^" + name)
    if pointer is None:
        pointer = next((v for k, v in label.items() if k.startswith("^")
                        and k.endswith("TABLE")), None)
    file_name, start = None, None
    if isinstance(pointer, str):
        file_name = pointer
    elif isinstance(pointer, list) and pointer and isinstance(pointer[0], str):
        file_name = pointer[0]
        if len(pointer) > 1:
            start = _position(pointer[1])
    elif pointer is not None:
        start = _position(pointer)
    structure = table.get("^STRUCTURE")
    columns = table_columns(table, where)
    return TableLayout(
        name, tuple(columns), file_name, start, _int_or_none(table.get("ROWS")),
        _int_or_none(table.get("ROW_BYTES")),
        str(structure) if structure is not None and not columns else None,
    )


def _position(value: object) -> tuple[int, bool] | None:
    if isinstance(value, Quantity):
        n = _int_or_none(value.value)
        return (n, str(value.units).strip().upper() == "BYTES") if n else None
    n = _int_or_none(value)
    return (n, False) if n else None


def _lines(data: bytes, layout: TableLayout) -> list[tuple[int, str]]:
    """(1-based line number, text) of the table's non-blank lines, after its start."""
    text = data.rstrip(_EOF_JUNK)
    skip_lines = 0
    if layout.start is not None:
        n, in_bytes = layout.start
        lines_total = len(text.splitlines())
        if in_bytes or n - 1 > lines_total:  # a record number past the end is a byte offset
            text = text[n - 1:] if n - 1 < len(text) else b""
        else:
            skip_lines = n - 1
    out = []
    for i, raw in enumerate(text.splitlines()[skip_lines:], skip_lines + 1):
        line = raw.decode("latin-1")
        if line.strip():
            out.append((i, line))
    return out


def _separator(line: str) -> str | None:
    """The field separator of a delimited table (comma or TAB), from one row."""
    outside = re.sub(r'"[^"]*"', "", line)
    commas, tabs = outside.count(","), outside.count("\t")
    if not commas and not tabs:
        return None
    return "\t" if tabs > commas else ","


def _located(line: str, columns: Sequence[TableColumn], sep: str | None) -> dict[str, str] | None:
    """Fields cut at START_BYTE, or None when the bytes around them show the row is shifted."""
    ordered = sorted(columns, key=lambda c: c.start)
    end = max(c.start - 1 + c.size for c in ordered)
    if len(line) < end:
        line = line.ljust(end)  # trailing blanks trimmed by an editor
    allowed = _GAP_CHARS | ({sep} if sep else set())
    pos = 0
    for i, col in enumerate(ordered):
        gap = line[pos:col.start - 1]
        if col.start - 1 < pos or not set(gap) <= allowed:
            return None
        if sep and gap.count(sep) != (1 if i else 0):
            return None
        pos = col.start - 1 + col.size
    tail = line[pos:]
    if not set(tail) <= _GAP_CHARS:
        return None
    return {c.name: _value(line[c.start - 1:c.start - 1 + c.size], c, sep) for c in columns}


def _split(line: str, columns: Sequence[TableColumn], sep: str) -> dict[str, str] | None:
    """Fields taken in label order from a row split on ``sep`` (quotes honoured)."""
    values = next(csv.reader([line], delimiter=sep, quotechar='"', skipinitialspace=True))
    ordered = sorted(columns, key=lambda c: c.start)
    if len(values) != sum(c.items for c in ordered):
        return None
    out, k = {}, 0
    for col in ordered:
        out[col.name] = ",".join(_clean(v) for v in values[k:k + col.items])
        k += col.items
    return {c.name: out[c.name] for c in columns}


def _clean(text: str) -> str:
    return text.strip().strip('"').strip()


def _value(text: str, col: TableColumn, sep: str | None) -> str:
    """A located field's text; the values of an ITEMS column joined by single commas."""
    if col.items > 1 and sep is not None:
        return ",".join(_clean(v) for v in text.split(sep))
    return _clean(text)


def read_rows(layout: TableLayout, data: bytes, where: str | os.PathLike[str]) -> TableRows:
    """Every row of the table in ``data`` (the table file's bytes), checked field by field.

    ProductError naming ``where`` when the label has no columns or no row fits them.
    """
    if not layout.columns:
        raise ProductError(where, "the table has no COLUMN objects")
    lines = _lines(data, layout)
    if not lines:
        raise ProductError(where, "the table holds no rows")
    sep = _separator(lines[0][1])
    rows, bad = [], []
    for number, line in lines:
        row = _located(line, layout.columns, sep)
        if row is None and sep is not None:
            row = _split(line, layout.columns, sep)
        if row is None:
            bad.append(number)
        else:
            rows.append(row)
    if not rows:
        raise ProductError(where, f"no row matches the {len(layout.columns)} columns of the "
                                  f"label (first row: line {bad[0]})")
    notes = []
    if layout.rows is not None and layout.rows != len(lines):
        notes.append(f"the label says ROWS = {layout.rows}, the table holds {len(lines)} rows; "
                     "all rows are read")
    if bad:
        shown = ", ".join(str(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        notes.append(f"{len(bad)} row(s) do not match the label's columns and are skipped "
                     f"(line {shown})")
    return TableRows(rows, notes)
