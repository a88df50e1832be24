"""Binary PDS3 ``TABLE`` objects stored beside a QUBE (e.g. the VIRTIS-H calibrated table).

``read_table(path, label, name)`` locates the table from its pointer, checks the label's
arithmetic (``ROWS`` x ``ROW_BYTES``, every column inside the row) against the file size and
the other objects of the file (``docs/virtis-format.md`` section 2), then reads the
columns with one structured ``numpy`` read. Rows are small: tables are read eagerly.
ASCII tables (volume indexes) are :mod:`parsers.pds3_table`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parsers.errors import ProductError
from parsers.pds3 import (
    _int,
    item_dtype,
    label_number,
    other_objects,
    overlapping_objects,
    resolve_pointer,
)
from parsers.pds3_label import Block


@dataclass(frozen=True)
class TableColumn:
    """One column: name, unit, stored dtype, 0-based start byte in the row, item count."""

    name: str
    unit: str | None
    dtype: np.dtype
    start: int
    items: int = 1


@dataclass
class Table:
    """A binary table read from a product: ``columns`` maps a column name to its values,
    shape ``(rows,)`` (or ``(rows, items)``), native byte order."""

    name: str
    offset: int
    rows: int
    row_bytes: int
    columns: dict[str, np.ndarray]
    units: dict[str, str | None]
    warnings: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


def _text(value: object) -> str:
    return str(value).strip().strip('"').strip()


def table_columns(path: Path, block: Block) -> list[TableColumn]:
    """The ``COLUMN`` objects of a TABLE block; ProductError when one leaves its row."""
    row_bytes = _int(block.get("ROW_BYTES"), "ROW_BYTES")
    out = []
    for _key, col in block.objects():
        if col.kind != "OBJECT" or not _key.endswith("COLUMN"):
            continue
        name = _text(col.get("NAME", f"COLUMN_{len(out) + 1}")).upper()
        items = _int(col.get("ITEMS", 1), "ITEMS")
        nbytes = _int(col.get("BYTES"), f"{name} BYTES")
        item_bytes = _int(col.get("ITEM_BYTES", nbytes // max(items, 1)), f"{name} ITEM_BYTES")
        start = _int(col.get("START_BYTE"), f"{name} START_BYTE") - 1
        if items < 1 or item_bytes * items > nbytes or start < 0 or start + nbytes > row_bytes:
            raise ProductError(path, f"TABLE column {name}: START_BYTE {start + 1}, BYTES "
                                     f"{nbytes}, ITEMS {items} do not fit ROW_BYTES {row_bytes}")
        try:
            dtype = item_dtype(col.get("DATA_TYPE", ""), item_bytes)
        except ValueError as exc:
            raise ProductError(path, f"TABLE column {name}: {exc}") from None
        unit = col.get("UNIT")
        out.append(TableColumn(name, _text(unit) if unit is not None else None, dtype, start,
                               items))
    return out


def find_table(label: Block) -> tuple[str, Block] | None:
    """The first binary table object (name ending in ``TABLE``) that has a pointer."""
    for key, block in label.objects():
        if key.endswith("TABLE") and block.kind == "OBJECT" and "^" + key in label:
            return key, block
    return None


def read_table(path: str | os.PathLike[str], label: Block, name: str,
               columns: list[TableColumn] | None = None) -> Table:
    """Read table object ``name`` of the product at ``path`` (attached or detached label).

    ``columns`` overrides the label's COLUMN objects (for labels that describe none).
    ProductError when the table is not binary, leaves its rows, or runs past the file's
    end; a table that runs over the start of another object is a warning naming both.
    """
    path = Path(path)
    block = label.get(name)
    if not isinstance(block, Block):
        raise ProductError(path, f"no {name} object in the label")
    fmt = _text(block.get("INTERCHANGE_FORMAT", "BINARY")).upper()
    if fmt != "BINARY":
        raise ProductError(path, f"{name}: INTERCHANGE_FORMAT = {fmt} tables are not supported")
    record_bytes = label_number(label.get("RECORD_BYTES"))
    pointer = resolve_pointer(label, label["^" + name], path,
                              int(record_bytes) if record_bytes else None)
    try:
        rows = _int(block.get("ROWS"), "ROWS")
        row_bytes = _int(block.get("ROW_BYTES"), "ROW_BYTES")
        cols = columns if columns is not None else table_columns(path, block)
    except ValueError as exc:
        raise ProductError(path, f"invalid {name} label: {exc}") from None
    if rows < 0 or row_bytes <= 0:
        raise ProductError(path, f"{name}: ROWS = {rows}, ROW_BYTES = {row_bytes}")
    if not cols:
        raise ProductError(path, f"{name} describes no COLUMN objects")
    size = os.path.getsize(pointer.data_path)
    need = rows * row_bytes
    held = size - pointer.offset
    if need > held:
        raise ProductError(path, f"truncated: {name} needs {need:,} bytes (ROWS {rows} x "
                                 f"ROW_BYTES {row_bytes}) at byte {pointer.offset:,}, file "
                                 f"holds {max(held, 0):,} ({need - max(held, 0):,} bytes short)")
    notes = []
    others = other_objects(label, path, pointer.data_path,
                           int(record_bytes) if record_bytes else None, "^" + name)
    for other, off in overlapping_objects(pointer.offset, need, others):
        notes.append(f"{name} (bytes {pointer.offset:,}..{pointer.offset + need - 1:,}) "
                     f"runs over the start of ^{other} at byte {off:,}")
    if len({c.name for c in cols}) != len(cols):
        raise ProductError(path, f"{name}: two COLUMN objects share a NAME")
    row = np.dtype({"names": [c.name for c in cols],
                    "formats": [(c.dtype, (c.items,)) if c.items > 1 else c.dtype for c in cols],
                    "offsets": [c.start for c in cols], "itemsize": row_bytes})
    data = np.fromfile(pointer.data_path, dtype=row, count=rows, offset=pointer.offset)
    values = {c.name: data[c.name].astype(c.dtype.newbyteorder("=")) for c in cols}
    return Table(name, pointer.offset, rows, row_bytes, values, {c.name: c.unit for c in cols},
                 notes)
