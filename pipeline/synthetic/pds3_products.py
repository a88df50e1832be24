"""Write PDS3 QUBE products byte by byte (the test oracle of :mod:`parsers.pds3`).

The writer is deliberately independent of the reader: it walks the cell model of
``docs/virtis-format.md`` section 3 row by row (axis 1 fastest) and emits every cell with an
explicitly given numpy dtype, so a reader bug cannot hide behind a shared helper.

Arrays are given in memory order: the core is ``(B, L, S)``; suffix planes are given per
named axis they extend:

- ``"BAND"`` (backplanes):    ``(k, L, S)``  one value per spatial pixel
- ``"SAMPLE"`` (sideplanes):  ``(k, B, L)``
- ``"LINE"`` (bottomplanes):  ``(k, B, S)``

Suffix items shorter than their slot sit in the low-order bytes of the slot (the end of a
big-endian slot, the start of a little-endian one); the other bytes hold ``pad_byte``.
Edge/corner cells (two or three suffix indices) are written only when ``corners=True``;
they are as wide as the widest slot they join and hold ``corner_value``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parsers.atomic import atomic_open

AXIS_ORDERS = {
    "BIP": ("BAND", "SAMPLE", "LINE"),
    "BIL": ("SAMPLE", "BAND", "LINE"),
    "BSQ": ("SAMPLE", "LINE", "BAND"),
}
_MEM_INDEX = {"BAND": 0, "LINE": 1, "SAMPLE": 2}
_FACE_AXES = {"BAND": ("LINE", "SAMPLE"), "SAMPLE": ("BAND", "LINE"), "LINE": ("BAND", "SAMPLE")}
_LABEL_PREFIX = {"BAND": "BAND", "SAMPLE": "SAMPLE", "LINE": "LINE"}


# --------------------------------------------------------------------------- label text
class Raw(str):
    """A value written verbatim into the label (e.g. ``Raw("12 <BYTES>")``)."""


class Set(tuple):
    """An ODL set, written in braces: ``{a, b}``."""


def quote(text: str) -> Raw:
    """A double-quoted ODL string."""
    return Raw('"' + text.replace('"', "'") + '"')


def _value(v: Any, *, commas: bool = True, indent: int = 0) -> str:
    sep = ", " if commas else " "
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if math.isfinite(v) else "0.0"
    if isinstance(v, Set):
        return "{" + sep.join(_value(x) for x in v) + "}"
    if isinstance(v, (tuple, list)):
        return "(" + sep.join(_value(x) for x in v) + ")"
    if isinstance(v, str):
        return v
    raise TypeError(f"cannot write {type(v).__name__} into a label")


@dataclass
class DataObject:
    """An object stored between the HISTORY and the QUBE (e.g. a binary TABLE).

    ``items``: its label keywords (COLUMN objects as :class:`Obj`); ``data``: its bytes,
    padded to whole records in the file.
    """

    name: str
    items: list
    data: bytes


@dataclass
class Obj:
    """An ``OBJECT = name`` (or ``GROUP``) block of keyword items."""

    name: str
    items: list[tuple[str, Any]] = field(default_factory=list)
    kind: str = "OBJECT"


def render_label(
    items: Iterable[tuple[str, Any] | Obj], *, crlf: bool = True, multiline: Sequence[str] = (),
    missing_commas: Sequence[str] = (),
) -> str:
    """ODL text for ``items`` ending with ``END``.

    ``multiline`` keys are written one element per line (as real labels do for long
    lists); ``missing_commas`` keys are written without commas (a known draft-label quirk).
    """
    lines: list[str] = []

    def emit(entries, depth: int) -> None:
        pad = "  " * depth
        for entry in entries:
            if isinstance(entry, Obj):
                lines.append(f"{pad}{entry.kind} = {entry.name}")
                emit(entry.items, depth + 1)
                lines.append(f"{pad}END_{entry.kind} = {entry.name}")
                continue
            key, value = entry
            if key.startswith("/*"):
                lines.append(pad + key)
                continue
            commas = key not in missing_commas
            if key in multiline and isinstance(value, (tuple, list)) and len(value) > 1:
                opener, closer = ("{", "}") if isinstance(value, Set) else ("(", ")")
                head = f"{pad}{key} = {opener}"
                cont = " " * len(head)
                parts = [_value(x) for x in value]
                sep = "," if commas else ""
                lines.append(head + parts[0] + sep)
                for p in parts[1:-1]:
                    lines.append(cont + p + sep)
                lines.append(cont + parts[-1] + closer)
            else:
                lines.append(f"{pad}{key} = {_value(value, commas=commas)}")

    emit(items, 0)
    lines.append("END")
    eol = "\r\n" if crlf else "\n"
    return eol.join(lines) + eol


# --------------------------------------------------------------------------- cell encoding
@dataclass
class Suffix:
    """The suffix planes of one axis.

    ``values``: array shaped as in the module docstring; ``dtypes``: one numpy dtype per
    item (or one for all); ``slot_bytes``: bytes each item occupies in the file.
    """

    values: np.ndarray
    dtypes: Sequence[Any] | Any
    slot_bytes: int = 4
    pad_byte: int = 0

    @property
    def count(self) -> int:
        return int(self.values.shape[0])

    def dtype(self, j: int) -> np.dtype:
        if isinstance(self.dtypes, (list, tuple)):
            return np.dtype(self.dtypes[j])
        return np.dtype(self.dtypes)


def _encode_slots(values: np.ndarray, dtype: np.dtype, slot: int, pad: int) -> bytes:
    items = np.ascontiguousarray(np.asarray(values).astype(dtype)).reshape(-1)
    isz = dtype.itemsize
    if slot == isz:
        return items.tobytes()
    if slot < isz:
        raise ValueError(f"suffix item of {isz} bytes does not fit a {slot}-byte slot")
    out = np.full((items.size, slot), pad, dtype=np.uint8)
    raw = items.view(np.uint8).reshape(items.size, isz)
    if dtype.byteorder == "<" or (dtype.byteorder == "=" and np.little_endian):
        out[:, :isz] = raw
    else:
        out[:, slot - isz:] = raw
    return out.tobytes()


def encode_qube(
    core: np.ndarray,
    *,
    interleave: str | Sequence[str] = "BIP",
    core_dtype: Any = ">f4",
    suffix: Mapping[str, Suffix] | None = None,
    corners: bool = False,
    corner_dtype: Any = ">i4",
    corner_value: int = 0,
) -> bytes:
    """The data bytes of a QUBE: core ``(B, L, S)`` plus suffix planes, in file order."""
    axes = AXIS_ORDERS[interleave] if isinstance(interleave, str) else tuple(interleave)
    suffix = dict(suffix or {})
    core = np.asarray(core)
    if core.ndim != 3:
        raise ValueError("core must be (bands, lines, samples)")
    sizes = {"BAND": core.shape[0], "LINE": core.shape[1], "SAMPLE": core.shape[2]}
    for name, suf in suffix.items():
        want = (suf.count, *(sizes[a] for a in _FACE_AXES[name]))
        if suf.values.shape != want:
            raise ValueError(f"{name} suffix must have shape {want}, got {suf.values.shape}")
    a1, a2, a3 = axes
    n1, n2, n3 = (sizes[a] for a in axes)
    k1, k2, k3 = (suffix[a].count if a in suffix else 0 for a in axes)
    cdt = np.dtype(core_dtype)
    core_f = np.ascontiguousarray(
        core.transpose(_MEM_INDEX[a3], _MEM_INDEX[a2], _MEM_INDEX[a1]).astype(cdt)
    )
    corner_dt = np.dtype(corner_dtype)

    def face_vector(axis: str, j: int, fixed: dict[str, int], along: str) -> np.ndarray:
        """Values of item j of ``axis``'s face along ``along`` with the other index fixed."""
        plane = suffix[axis].values[j]
        first, _second = _FACE_AXES[axis]
        (other,) = [a for a in _FACE_AXES[axis] if a != along]
        idx = fixed[other]
        return plane[:, idx] if along == first else plane[idx, :]

    def corner_bytes(n: int, *edge_axes: str) -> bytes:
        """Edge/vertex cells: as wide as the widest slot they join (the reader's rule)."""
        if not corners or n == 0:
            return b""
        width = max(suffix[a].slot_bytes for a in edge_axes if a in suffix)
        dt = corner_dt if corner_dt.itemsize == width else np.dtype(
            f"{corner_dt.byteorder if corner_dt.byteorder in '<>' else '>'}i{width}")
        return np.full(n, corner_value, dtype=dt).tobytes()

    out: list[bytes] = []
    for i3 in range(n3 + k3):
        s3 = i3 >= n3
        for i2 in range(n2 + k2):
            s2 = i2 >= n2
            if not s2 and not s3:
                out.append(core_f[i3, i2].tobytes())
                for j in range(k1):
                    suf = suffix[a1]
                    fixed = {a2: i2, a3: i3}
                    (o1, o2) = _FACE_AXES[a1]
                    val = suf.values[j][fixed[o1], fixed[o2]]
                    out.append(_encode_slots(np.array([val]), suf.dtype(j), suf.slot_bytes,
                                             suf.pad_byte))
            elif s2 != s3:
                axis, j, other, oi = (a3, i3 - n3, a2, i2) if s3 else (a2, i2 - n2, a3, i3)
                suf = suffix[axis]
                vec = face_vector(axis, j, {other: oi}, a1)
                out.append(_encode_slots(vec, suf.dtype(j), suf.slot_bytes, suf.pad_byte))
                out.append(corner_bytes(k1, a1, axis))
            else:
                out.append(corner_bytes(n1, a2, a3))
                out.append(corner_bytes(k1, a1, a2, a3))
    return b"".join(out)


# --------------------------------------------------------------------------- item types
def default_type_name(dtype: Any) -> str:
    """The usual PDS3 item type name for a numpy dtype (MSB_/LSB_ and IEEE/PC reals)."""
    dt = np.dtype(dtype)
    little = dt.byteorder == "<" or (dt.byteorder in "=|" and np.little_endian and dt.itemsize > 1)
    if dt.kind == "f":
        return "PC_REAL" if little else "IEEE_REAL"
    prefix = "LSB_" if little else "MSB_"
    if dt.kind == "u":
        return prefix + "UNSIGNED_INTEGER"
    return prefix + "INTEGER"


def vax_f_bytes(values: np.ndarray) -> bytes:
    """Encode float values as VAX F-floating (4 bytes each), as written on a VAX."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    mant, exp = np.frexp(np.abs(v))  # |v| = mant * 2**exp, mant in [0.5, 1)
    zero = v == 0
    e = exp + 128
    if np.any((~zero) & ((e <= 0) | (e > 255))):
        raise ValueError("value out of VAX F range")
    frac = np.round((mant * 2 - 1) * (1 << 23)).astype(np.int64)  # hidden bit dropped
    carry = frac >= (1 << 23)
    frac[carry] = 0
    e = e + carry
    sign = (v < 0).astype(np.int64)
    bits = (sign << 31) | (e.astype(np.int64) << 23) | frac
    bits[zero] = 0
    words = np.empty((v.size, 2), dtype="<u2")
    words[:, 0] = (bits >> 16) & 0xFFFF
    words[:, 1] = bits & 0xFFFF
    return words.tobytes()


# --------------------------------------------------------------------------- whole product
def write_qube_product(
    path: str | os.PathLike[str],
    core: np.ndarray,
    *,
    interleave: str | Sequence[str] = "BIP",
    core_dtype: Any = ">f4",
    core_type: str | None = None,
    core_keywords: Sequence[tuple[str, Any]] = (),
    suffix: Mapping[str, Suffix] | None = None,
    suffix_keywords: Sequence[tuple[str, Any]] = (),
    suffix_bytes_label: int | None = None,
    corners: bool = False,
    corner_dtype: Any = ">i4",
    corner_value: int = 0,
    top_keywords: Sequence[tuple[str, Any] | Obj] = (),
    object_name: str = "QUBE",
    extra_qube_items: Sequence[tuple[str, Any] | Obj] = (),
    history_records: int = 1,
    history_items: Sequence[tuple[str, Any]] = (),
    record_bytes: int = 512,
    pointer: str = "record",
    detached: str | None = None,
    crlf: bool = True,
    multiline: Sequence[str] = (),
    missing_commas: Sequence[str] = (),
    file_records: int | None = None,
    pad_to_record: bool = True,
    truncate_bytes: int = 0,
    data_bytes: bytes | None = None,
    sfdu: bool = False,
    objects_before: Sequence[DataObject] = (),
) -> Path:
    """Write a complete PDS3 QUBE product and return its (label) path.

    ``pointer``: ``"record"`` (``^QUBE = n``), ``"bytes"`` (``^QUBE = n <BYTES>``), and for
    detached labels (``detached="DATA.QUB"``: the data go to that file beside the label)
    ``"file"`` (``("DATA.QUB", n)``), ``"file_bytes"`` (``("DATA.QUB", n <BYTES>)``) and
    ``"file_only"`` (``"DATA.QUB"``, offset 0). ``file_records`` overrides FILE_RECORDS
    (to fake stale labels); ``truncate_bytes`` cuts that many bytes off the data file's end.
    ``data_bytes`` replaces the encoded data (for deliberately inconsistent files).
    ``objects_before``: objects written (with ``^NAME`` record pointers) between the
    HISTORY and the QUBE of an attached label.
    Axis-specific suffix keywords (``*_SUFFIX_ITEM_BYTES`` and so on): ``suffix_keywords``
    is written verbatim after ``SUFFIX_ITEMS``/``SUFFIX_BYTES``; when empty they are
    generated from the suffix dtypes (names ``<AXIS>_<j>``, MSB_/LSB_ type names).
    """
    path = Path(path)
    axes = AXIS_ORDERS[interleave] if isinstance(interleave, str) else tuple(interleave)
    suffix = dict(suffix or {})
    core = np.asarray(core)
    sizes = {"BAND": core.shape[0], "LINE": core.shape[1], "SAMPLE": core.shape[2]}
    cdt = np.dtype(core_dtype)
    if data_bytes is None:
        if core_type == "VAX_REAL":
            if suffix:
                raise ValueError("VAX_REAL cores are written without suffixes here")
            order = core.transpose(*(_MEM_INDEX[a] for a in reversed(axes)))
            data_bytes = vax_f_bytes(order)
        else:
            data_bytes = encode_qube(core, interleave=axes, core_dtype=cdt, suffix=suffix,
                                     corners=corners, corner_dtype=corner_dtype,
                                     corner_value=corner_value)
    qube_items: list[tuple[str, Any] | Obj] = [
        ("AXES", 3),
        ("AXIS_NAME", tuple(axes)),
        ("CORE_ITEMS", tuple(sizes[a] for a in axes)),
        ("CORE_ITEM_BYTES", cdt.itemsize),
        ("CORE_ITEM_TYPE", core_type or default_type_name(cdt)),
        *core_keywords,
    ]
    if suffix or suffix_bytes_label is not None:
        qube_items.append(("SUFFIX_ITEMS", tuple(suffix[a].count if a in suffix else 0
                                                 for a in axes)))
        qube_items.append(("SUFFIX_BYTES", suffix_bytes_label if suffix_bytes_label is not None
                           else max((s.slot_bytes for s in suffix.values()), default=4)))
    if suffix and not suffix_keywords:
        suffix_keywords = []
        for axis, suf in suffix.items():
            suffix_keywords += suffix_item_keywords(
                axis, [f"{axis}_{j}" for j in range(suf.count)],
                [default_type_name(suf.dtype(j)) for j in range(suf.count)],
                [suf.dtype(j).itemsize for j in range(suf.count)])
    qube_items.extend(suffix_keywords)
    qube_items.extend(extra_qube_items)

    data_name = detached
    if objects_before and detached:
        raise ValueError("objects_before needs an attached label")
    obj_records = [math.ceil(len(o.data) / record_bytes) for o in objects_before]

    def build(label_records: int, total_records: int) -> str:
        items: list[tuple[str, Any] | Obj] = []
        if not sfdu:
            items.append(("PDS_VERSION_ID", "PDS3"))
        items += [
            ("RECORD_TYPE", "FIXED_LENGTH"),
            ("RECORD_BYTES", record_bytes),
            ("FILE_RECORDS", file_records if file_records is not None else total_records),
        ]
        if not detached:
            items.append(("LABEL_RECORDS", label_records))
        hist_rec = label_records + 1
        qube_rec = label_records + history_records + sum(obj_records) + 1
        if detached:
            qube_rec = hist_rec = 1
        if history_records and not detached:
            items.append(("^HISTORY", hist_rec))
        rec = label_records + history_records + 1
        for obj, n in zip(objects_before, obj_records, strict=True):
            items.append((f"^{obj.name}", rec))
            rec += n
        qube_off = (qube_rec - 1) * record_bytes + 1
        ptr: Any = {
            "record": qube_rec,
            "bytes": Raw(f"{qube_off} <BYTES>"),
            "file": (quote(data_name or ""), qube_rec),
            "file_bytes": Raw(f'("{data_name}", {qube_off} <BYTES>)'),
            "file_only": quote(data_name or ""),
        }[pointer]
        items.append((f"^{object_name}", ptr))
        items.extend(top_keywords)
        if history_records and not detached:
            items.append(Obj("HISTORY", list(history_items)))
        items += [Obj(o.name, list(o.items)) for o in objects_before]
        items.append(Obj(object_name, list(qube_items)))
        text = render_label(items, crlf=crlf, multiline=multiline, missing_commas=missing_commas)
        if sfdu:
            text = "CCSD3ZF0000100000001NJPL3IF0PDS200000001 = SFDU_LABEL" + (
                "\r\n" if crlf else "\n") + text
        return text

    data_len = len(data_bytes)
    data_records = math.ceil(data_len / record_bytes)
    hist = 0 if detached else history_records
    label_records = 1
    while True:  # grows monotonically: stops once the label fits its records
        total = (0 if detached else label_records + hist + sum(obj_records)) + data_records
        text = build(label_records, total)
        need = math.ceil(len(text.encode("ascii")) / record_bytes)
        if need <= label_records:
            break
        label_records = need
    label = text.encode("ascii")
    if detached:
        label_bytes = label
        blob = data_bytes
        if pad_to_record:
            blob += b"\0" * (data_records * record_bytes - data_len)
        if truncate_bytes:
            blob = blob[:-truncate_bytes]
        with atomic_open(path.parent / detached) as fh:
            fh.write(blob)
        with atomic_open(path) as fh:
            fh.write(label_bytes)
        return path
    head = label + b" " * (label_records * record_bytes - len(label))
    hist = b"\0" * (history_records * record_bytes)
    objs = b"".join(o.data + b"\0" * (n * record_bytes - len(o.data))
                    for o, n in zip(objects_before, obj_records, strict=True))
    blob = head + hist + objs + data_bytes
    if pad_to_record:
        blob += b"\0" * (data_records * record_bytes - data_len)
    if truncate_bytes:
        blob = blob[:-truncate_bytes]
    with atomic_open(path) as fh:
        fh.write(blob)
    return path


def suffix_item_keywords(
    axis: str, names: Sequence[str], types: Sequence[str], item_bytes: Sequence[int] | int,
    units: Sequence[str] | None = None,
) -> list[tuple[str, Any]]:
    """``<AXIS>_SUFFIX_NAME/UNIT/ITEM_BYTES/ITEM_TYPE`` keywords for one suffix axis."""
    prefix = _LABEL_PREFIX[axis]

    def one(v):
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return v[0] if len(v) == 1 else tuple(v)

    out = [(f"{prefix}_SUFFIX_NAME", one([quote(n) for n in names]))]
    if units is not None:
        out.append((f"{prefix}_SUFFIX_UNIT", one([quote(u) for u in units])))
    out.append((f"{prefix}_SUFFIX_ITEM_BYTES", one(item_bytes)))
    out.append((f"{prefix}_SUFFIX_ITEM_TYPE", one(list(types))))
    return out
