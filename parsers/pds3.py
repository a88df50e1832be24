"""Generic PDS3 QUBE / SPECTRAL_QUBE reader (``python -m parsers.pds3 FILE``).

``read(path)`` reads the label only, derives the byte layout from it, checks the layout
against the real file size (``docs/virtis-format.md`` section 2) and returns a :class:`Cube`
whose arrays are mapped lazily with ``numpy.memmap`` and per-line structured dtypes:
a band, a spectrum or a window touches only the bytes it needs.

Conventions:

- arrays in memory are ``(bands, lines, samples)``;
- suffix planes are named after the axis they extend, whatever the interleave:
  suffix of BAND = **backplanes** ``(k, L, S)``, of SAMPLE = **sideplanes** ``(k, B, L)``,
  of LINE = **bottomplanes** ``(k, B, S)``;
- a suffix item shorter than its slot sits in the slot's low-order bytes;
- edge/corner cells, when stored, are as wide as the widest slot they join.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parsers.cube_access import CubeAccess
from parsers.errors import ProductError
from parsers.pds3_label import Block, Quantity, read_label

AXIS_NAMES = ("BAND", "LINE", "SAMPLE")  # memory order (B, L, S)
_MEM = {"BAND": 0, "LINE": 1, "SAMPLE": 2}
_INTERLEAVE = {
    ("BAND", "SAMPLE", "LINE"): "BIP",
    ("SAMPLE", "BAND", "LINE"): "BIL",
    ("SAMPLE", "LINE", "BAND"): "BSQ",
}
PLANE_KIND = {"BAND": "backplane", "SAMPLE": "sideplane", "LINE": "bottomplane"}
_FACE_AXES = {"BAND": ("LINE", "SAMPLE"), "SAMPLE": ("BAND", "LINE"), "LINE": ("BAND", "SAMPLE")}
SPECIAL_KEYS = (
    "NULL", "LOW_REPR_SATURATION", "LOW_INSTR_SATURATION",
    "HIGH_REPR_SATURATION", "HIGH_INSTR_SATURATION",
)
MAX_CORE_ITEMS = 1 << 36  # 64 Gi items: anything larger is a broken label
# Suffix items per axis (real products have a few): each one costs Python work (and a field
# of a structured dtype) before the byte accounting can refuse a broken label; 65,536 of
# them took 6 s (found by benchmarks/fuzz_readers.py).
MAX_SUFFIX_ITEMS = 4096
_CHUNK_BYTES = 1 << 19  # conversion chunk: stays in the L2 cache with its output and mask


class LayoutWarning(UserWarning):
    """The file disagrees with its label in a harmless way (stale FILE_RECORDS, a tie)."""


# --------------------------------------------------------------------------- item types
VAX_F = np.dtype([("vax_f", "<u2", (2,))])  # marker dtype for VAX F-floating items
_BIG = ("MSB", "SUN", "MAC", "IEEE")
_LITTLE = ("LSB", "PC", "VAX")


def item_dtype(type_name: Any, nbytes: Any) -> np.dtype:
    """numpy dtype for a PDS3 item type and size; ValueError when unsupported.

    Byte order from the prefix (MSB/SUN/MAC/IEEE and bare names big-endian; LSB/PC/VAX
    little-endian), signedness from the name. ``VAX_REAL`` 4-byte items return
    :data:`VAX_F` (converted to IEEE on reading).
    """
    name = str(type_name).strip().strip('"').upper().replace(" ", "_")
    try:
        size = int(nbytes)
    except (TypeError, ValueError):
        raise ValueError(f"item bytes {nbytes!r} is not a number") from None
    prefix = name.split("_", 1)[0]
    order = "<" if prefix in _LITTLE else ">"
    if "COMPLEX" in name or "CHARACTER" in name or "BIT_STRING" in name or "BCD" in name:
        raise ValueError(f"unsupported item type {name}")
    if name.startswith("VAX") and ("REAL" in name or "FLOAT" in name):
        if size == 4 and name in ("VAX_REAL", "VAX_FLOAT"):
            return VAX_F
        raise ValueError(f"unsupported item type {name} ({size} bytes; only VAX F 4-byte reals)")
    if "REAL" in name or "FLOAT" in name:
        if size not in (4, 8):
            raise ValueError(f"unsupported item type {name} with {size} bytes")
        return np.dtype(f"{order}f{size}")
    if "INTEGER" in name or name in ("BYTE", "UNSIGNED_BYTE"):
        if size not in (1, 2, 4, 8):
            raise ValueError(f"unsupported item type {name} with {size} bytes")
        kind = "u" if "UNSIGNED" in name or (name == "BYTE" and size == 1) else "i"
        return np.dtype(f"{order if size > 1 else '|'}{kind}{size}")
    raise ValueError(f"unsupported item type {name}")


def _is_little(dt: np.dtype) -> bool:
    """True for little-endian dtypes (numpy writes the native order as '=')."""
    return dt.byteorder == "<" or (dt.byteorder == "=" and sys.byteorder == "little")


def vax_f_to_float32(words: np.ndarray) -> np.ndarray:
    """Convert VAX F-floating items given as ``(..., 2)`` little-endian uint16 words."""
    w = np.asarray(words)
    bits = (w[..., 0].astype(np.uint32) << 16) | w[..., 1].astype(np.uint32)
    exp = (bits >> 23) & 0xFF
    sign = bits >> 31
    out = np.empty(bits.shape, dtype=np.float32)
    big = exp >= 3
    out[big] = (bits[big] - np.uint32(2 << 23)).view(np.float32)  # exponent bias 129 -> 127
    small = (exp > 0) & ~big
    if small.any():
        frac = (bits[small] & 0x7FFFFF).astype(np.float64) / (1 << 23) + 1.0
        val = np.ldexp(frac, exp[small].astype(np.int64) - 129)
        out[small] = np.where(sign[small] == 1, -val, val)
    zero = exp == 0
    out[zero & (sign == 0)] = 0.0
    out[zero & (sign == 1)] = np.nan  # VAX reserved operand
    return out


@contextlib.contextmanager
def _mapped(path: Path, offset: int, nbytes: int) -> Iterator[np.ndarray]:
    """Bytes [offset, offset + nbytes) of ``path`` as a read-only uint8 array over a mapping
    of the page cache (no copy; pages faulted in up front where the platform can).

    OSError when the file is shorter than that (a read of a mapped page past the end would
    kill the process with SIGBUS instead).
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < offset + nbytes:
            raise OSError(f"file ends {offset + nbytes - size} bytes early")
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(fh.fileno(), offset + nbytes - start, offset=start,
                       flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                       prot=mmap.PROT_READ)
    try:
        yield np.frombuffer(mm, np.uint8, count=nbytes, offset=offset - start)
    finally:
        with contextlib.suppress(BufferError):  # a view outlived the read: freed with it
            mm.close()


# --------------------------------------------------------------------------- label access
def _seq(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, tuple) and not isinstance(value, Quantity):
        return list(value)
    return [value]


def _num(value: Any) -> float | int:
    if isinstance(value, Quantity):
        value = value.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    return value


def _int(value: Any, what: str) -> int:
    v = _num(value)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(f"{what} = {value!r} is not an integer")
        v = int(v)
    return v


@dataclass(frozen=True)
class SuffixItem:
    """One suffix item of an axis: name, stored dtype, bytes, base/multiplier."""

    name: str
    dtype: np.dtype
    nbytes: int
    base: float = 0.0
    multiplier: float = 1.0


@dataclass(frozen=True)
class Layout:
    """A byte layout candidate: corners stored or not, slot width per suffix axis."""

    corners: bool
    slots: dict[str, int]
    expected: int

    def describe(self) -> str:
        slots = ", ".join(f"{PLANE_KIND[a]} {w} B" for a, w in self.slots.items())
        corners = "corners" if self.corners else "no corners"
        return f"{corners}; {slots}" if slots else "no suffix"


@dataclass
class Pointer:
    data_path: Path
    offset: int
    detached: bool


# --------------------------------------------------------------------------- the cube
@dataclass
class Cube(CubeAccess):
    """A PDS3 QUBE opened lazily; see the module docstring for conventions."""

    path: Path
    label: Block
    qube: Block
    data_path: Path
    offset: int
    axes: tuple[str, str, str]
    sizes: dict[str, int]
    core_dtype: np.dtype
    core_type: str
    base: float
    multiplier: float
    specials: dict[str, float]
    valid_min: float | None
    valid_max: float | None
    suffix_items: dict[str, list[SuffixItem]]
    layout: Layout
    lines_available: int
    file_size: int
    warnings: list[str] = field(default_factory=list)
    band_scale: np.ndarray | None = None
    _mm: Any = field(default=None, repr=False)
    _dtypes: Any = field(default=None, repr=False)

    # ---- identity and shape
    @property
    def product_id(self) -> str:
        pid = self.label.get("PRODUCT_ID", self.qube.get("PRODUCT_ID"))
        return str(pid) if pid is not None else self.path.stem

    @property
    def bands(self) -> int:
        return self.sizes["BAND"]

    @property
    def lines(self) -> int:
        return self.sizes["LINE"]

    @property
    def samples(self) -> int:
        return self.sizes["SAMPLE"]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, lines, samples)."""
        return (self.bands, self.lines, self.samples)

    @property
    def interleave(self) -> str:
        return _INTERLEAVE.get(self.axes, "/".join(self.axes))

    @property
    def byte_order(self) -> str:
        if self.core_dtype is VAX_F:
            return "little-endian (VAX F)"
        if self.core_dtype.itemsize == 1:
            return "n/a (1 byte)"
        return "little-endian" if _is_little(self.core_dtype) else "big-endian"

    @property
    def suffix_counts(self) -> dict[str, int]:
        """Number of backplanes, sideplanes and bottomplanes."""
        return {PLANE_KIND[a]: len(self.suffix_items.get(a, []))
                for a in ("BAND", "SAMPLE", "LINE")}

    @property
    def wavelengths(self) -> np.ndarray | None:
        """Band centres from BAND_BIN_CENTER, float32 (B,), or None."""
        group = self.qube.get("BAND_BIN")
        if not isinstance(group, Block) or "BAND_BIN_CENTER" not in group:
            return None
        try:
            wl = np.array([float(_num(v)) for v in _seq(group["BAND_BIN_CENTER"])],
                          dtype=np.float32)
        except ValueError:
            return None
        return wl if wl.size == self.bands else None

    @property
    def wavelength_unit(self) -> str | None:
        group = self.qube.get("BAND_BIN")
        if isinstance(group, Block) and "BAND_BIN_UNIT" in group:
            return str(group["BAND_BIN_UNIT"])
        return None

    # ---- memory maps
    def _build(self) -> None:
        if self._dtypes is None:
            self._dtypes = _structured(self.axes, self.sizes, self.core_dtype, self.suffix_items,
                                       self.layout)

    def _core_file(self) -> np.ndarray:
        """Stored core in file order (n3, n2, n1), a memmap view (no data read)."""
        self._build()
        if self._mm is None:
            plane = self._dtypes["plane"]
            try:
                self._mm = np.memmap(self.data_path, dtype=plane, mode="r", offset=self.offset,
                                     shape=(self.lines_available if self.axes[2] == "LINE"
                                            else self.sizes[self.axes[2]],))
            except (OSError, ValueError) as exc:
                raise ProductError(self.data_path, f"cannot map the data: {exc}") from None
        core = self._mm["rows"]["core"]
        if self.core_dtype is VAX_F:
            core = core["vax_f"]
        return core

    def stored(self) -> np.ndarray:
        """The stored core as a lazy ``(B, L, S)`` view in the stored dtype (no scaling)."""
        core = self._core_file()
        perm = [2 - self.axes.index(a) for a in AXIS_NAMES]
        if self.core_dtype is VAX_F:
            return core.transpose(*perm, 3)
        return core.transpose(*perm)

    # ---- conversion
    def _invalid(self, x: np.ndarray) -> np.ndarray | None:
        """True where stored value ``x`` is outside the valid range or a special value.

        Special values that already lie outside [valid_min, valid_max] (the VIRTIS cal
        case: -1000..-1004 below -999) need no comparison of their own.
        """
        lo, hi = self.valid_min, self.valid_max
        inside = [v for v in self.specials.values()
                  if not ((lo is not None and v < lo) or (hi is not None and v > hi))]
        if not inside and x.size and (lo is None or x.min() >= lo) and (
                hi is None or x.max() <= hi):
            return None  # the usual chunk: one read-only pass instead of a mask and a scan
        mask = None if lo is None else np.less(x, lo)
        if hi is not None:
            mask = np.greater(x, hi) if mask is None else np.logical_or(
                mask, np.greater(x, hi), out=mask)
        for v in inside:
            mask = np.equal(x, v) if mask is None else np.logical_or(
                mask, np.equal(x, v), out=mask)
        return mask

    def _convert_into(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Stored values -> scaled float32 with NaN for special values, in place in dst."""
        if self.core_dtype is VAX_F:
            dst[...] = vax_f_to_float32(src)
            mask_src = dst
        else:
            np.copyto(dst, src, casting="unsafe")
            exact = self.core_dtype.kind == "f" or self.core_dtype.itemsize <= 2
            mask_src = dst if exact else src
        mask = self._invalid(mask_src)
        if self.multiplier != 1.0:
            dst *= np.float32(self.multiplier)
        if self.base != 0.0:
            dst += np.float32(self.base)
        if mask is not None and mask.any():  # most chunks of a product have none
            np.copyto(dst, np.float32(np.nan), where=mask)

    def _materialise(self, view: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Convert a stored view into ``out`` (same shape) chunk by chunk along axis 0.

        Chunks of about 512 KiB keep the input, the output and the mask in the L2 cache
        while the conversion, the comparisons and the NaN fill run over them.
        """
        if view.shape[0] == 0:
            return out
        per = max(1, int(np.prod(view.shape[1:])) * self.core_dtype.itemsize)
        step = max(1, _CHUNK_BYTES // per)
        for a in range(0, view.shape[0], step):
            self._convert_into(view[a:a + step], out[a:a + step])
        return out

    def load(self, contiguous: bool = False) -> np.ndarray:
        """The whole core as float32 ``(B, L, S)``, native endian, scaled, NaN at specials.

        One output-sized allocation, filled chunk by chunk in file order. The result is a
        transposed view of that buffer (C-contiguous in file order, e.g. ``(L, S, B)`` for
        BIP); ``contiguous=True`` returns a C-contiguous ``(B, L, S)`` array instead (a
        second pass, slower for BIP/BIL).
        """
        core = self._core_file()
        file_shape = core.shape[:3]
        out = np.empty(file_shape, dtype=np.float32)
        self._materialise(core, out)
        perm = [2 - self.axes.index(a) for a in AXIS_NAMES]
        result = out.transpose(*perm)
        self._scale_bands(result, slice(None))
        return np.ascontiguousarray(result) if contiguous else result

    def _scale_bands(self, data: np.ndarray, bands: slice) -> None:
        """Per-band factors (mission quirks such as geometry planes), in place."""
        if self.band_scale is not None:
            data *= self.band_scale[bands].astype(np.float32)[:, None, None]

    def _window_view(self, lines: slice, samples: slice, bands: slice) -> np.ndarray:
        st = self.stored()
        return st[bands, lines, samples]

    def window(self, lines: slice, samples: slice, bands: slice | None = None) -> np.ndarray:
        """float32 ``(b, l, s)`` for the given slices (lazy: reads only those bytes)."""
        bands = bands if bands is not None else slice(None)
        if not all(isinstance(x, slice) for x in (lines, samples, bands)):
            raise TypeError("window() takes slices")
        view = self._window_view(lines, samples, bands)
        out = np.empty(view.shape[:3], dtype=np.float32)
        # chunk along the file's outermost axis position in memory order
        outer = AXIS_NAMES.index(self.axes[2])
        if outer == 0:
            self._materialise(view, out)
        else:
            self._materialise(np.moveaxis(view, outer, 0), np.moveaxis(out, outer, 0))
        self._scale_bands(out, bands)
        return out

    @property
    def line_shape(self) -> tuple[int, int]:
        """Shape of one line in file order (the two inner axes: ``(S, B)`` for BIP,
        ``(B, S)`` for BIL, ``(S, L)`` for BSQ)."""
        return (self.sizes[self.axes[1]], self.sizes[self.axes[0]])

    def read_lines(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """float32 ``(B, stop - start, S)``: streaming access by lines.

        When lines are the outermost axis of the file (BIP, BIL) the lines are converted
        straight from a mapping of the file (no copy out of the page cache), 512 KiB at a
        time; the result is then a ``(B, n, S)`` view of a buffer in file order (like
        :meth:`load`). ``out``: a float32 C-contiguous ``(n,) + line_shape`` buffer to fill
        instead of allocating one (a streaming caller reuses it block after block).
        """
        if not (0 <= start <= stop <= self.lines_available):
            raise IndexError(f"lines {start}:{stop} outside 0..{self.lines_available}")
        if self.axes[2] != "LINE":
            return self.window(slice(start, stop), slice(None))
        shape = (stop - start, *self.line_shape)
        if out is None or out.shape != shape or out.dtype != np.float32 \
                or not out.flags.c_contiguous:
            out = np.empty(shape, dtype=np.float32)
        self._read_line_range(start, stop, out)
        result = out.transpose(*[2 - self.axes.index(a) for a in AXIS_NAMES])
        self._scale_bands(result, slice(None))
        return result

    def _read_line_range(self, start: int, stop: int, out: np.ndarray) -> None:
        """Convert file lines [start, stop) into ``out`` (file order), 512 KiB at a time,
        straight from a mapping of the page cache."""
        self._build()
        plane = self._dtypes["plane"]
        size = plane.itemsize
        step = max(1, _CHUNK_BYTES // size)
        if stop <= start:
            return
        try:
            with _mapped(self.data_path, self.offset + start * size,
                         (stop - start) * size) as raw:
                lines = raw.view(plane)["rows"]["core"]
                if self.core_dtype is VAX_F:
                    lines = lines["vax_f"]
                for a in range(0, stop - start, step):
                    self._convert_into(lines[a:a + step], out[a:a + step])
                del lines
        except OSError as exc:
            raise ProductError(self.data_path, f"cannot read lines {start}:{stop}: "
                                               f"{exc.strerror or exc}") from None

    # ---- suffix planes
    def suffix_names(self, axis: str) -> list[str]:
        return [it.name for it in self.suffix_items.get(axis, [])]

    def suffix_plane(self, axis: str, j: int, scaled: bool = False) -> np.ndarray:
        """Item ``j`` of the suffix of ``axis`` ("BAND", "SAMPLE" or "LINE"), native dtype.

        Shapes: BAND -> (L, S), SAMPLE -> (B, L), LINE -> (B, S). ``scaled`` applies the
        item's base and multiplier (float64).
        """
        items = self.suffix_items.get(axis, [])
        if not 0 <= j < len(items):
            raise IndexError(f"{PLANE_KIND.get(axis, axis)} {j} does not exist")
        raw = _suffix_view(self, axis, j)
        item = items[j]
        if item.dtype is VAX_F:
            arr = vax_f_to_float32(raw)
        else:
            arr = raw.astype(item.dtype.newbyteorder("="))
        if scaled and (item.base != 0.0 or item.multiplier != 1.0):
            arr = arr * item.multiplier + item.base
        return arr

    def _planes(self, axis: str) -> np.ndarray | None:
        n = len(self.suffix_items.get(axis, []))
        if n == 0:
            return None
        planes = [self.suffix_plane(axis, j) for j in range(n)]
        return np.stack(planes).astype(np.result_type(*planes))

    @property
    def backplanes(self) -> np.ndarray | None:
        """Suffix of the BAND axis, ``(k, L, S)`` native, or None."""
        return self._planes("BAND")

    @property
    def sideplanes(self) -> np.ndarray | None:
        """Suffix of the SAMPLE axis, ``(k, B, L)`` native, or None."""
        return self._planes("SAMPLE")

    @property
    def bottomplanes(self) -> np.ndarray | None:
        """Suffix of the LINE axis, ``(k, B, S)`` native, or None."""
        return self._planes("LINE")

    def close(self) -> None:
        """Drop the memory maps (the file is closed once no array view refers to them)."""
        self._mm = None

    def __enter__(self) -> Cube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- structured dtypes
def _slot_dtype(item: np.dtype, slot: int) -> np.dtype:
    """A cell of ``slot`` bytes holding ``item`` in its low-order bytes."""
    isz = item.itemsize
    if slot == isz:
        return np.dtype([("v", item)])
    little = item is VAX_F or _is_little(item)
    off = 0 if little else slot - isz
    return np.dtype({"names": ["v"], "formats": [item], "offsets": [off], "itemsize": slot})


def _corner_width(layout: Layout, *axes: str) -> int:
    return max(layout.slots.get(a, 4) for a in axes)


def _structured(
    axes: tuple[str, str, str], sizes: dict[str, int], core: np.dtype,
    suffix: dict[str, list[SuffixItem]], layout: Layout,
) -> dict[str, Any]:
    """Per-plane structured dtype of the file (plane = one index of the outermost axis)."""
    a1, a2, a3 = axes
    n1, n2 = sizes[a1], sizes[a2]
    s1, s2, s3 = (suffix.get(a, []) for a in axes)
    k1 = len(s1)
    names, formats, offsets = ["core"], [(core, (n1,))], [0]
    pos = n1 * core.itemsize
    for j, it in enumerate(s1):
        names.append(f"s{j}")
        formats.append(_slot_dtype(it.dtype, layout.slots[a1]))
        offsets.append(pos)
        pos += layout.slots[a1]
    row = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": pos})
    corner12 = k1 * _corner_width(layout, a1, a2) if (layout.corners and k1) else 0
    names, formats, offsets = ["rows"], [(row, (n2,))], [0]
    pos = n2 * row.itemsize
    for j, it in enumerate(s2):
        cell = _slot_dtype(it.dtype, layout.slots[a2])
        names.append(f"f{j}")
        formats.append((cell, (n1,)))
        offsets.append(pos)
        pos += n1 * cell.itemsize + corner12
    plane = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": pos})
    bottoms = []
    c13 = _corner_width(layout, a1, a3) if layout.corners else 0
    c23 = _corner_width(layout, a2, a3) if layout.corners else 0
    c123 = _corner_width(layout, a1, a2, a3) if layout.corners else 0
    for it in s3:
        cell = _slot_dtype(it.dtype, layout.slots[a3])
        brow_size = n1 * cell.itemsize + (k1 * c13 if layout.corners else 0)
        brow = np.dtype({"names": ["cells"], "formats": [(cell, (n1,))], "offsets": [0],
                         "itemsize": brow_size})
        size = n2 * brow_size
        if layout.corners:
            size += len(s2) * (n1 * c23 + k1 * c123)
        bottoms.append(np.dtype({"names": ["rows"], "formats": [(brow, (n2,))], "offsets": [0],
                                 "itemsize": size}))
    return {"row": row, "plane": plane, "bottoms": bottoms}


def _suffix_view(cube: Cube, axis: str, j: int) -> np.ndarray:
    """Raw (stored dtype) view of one suffix item, shaped as in Cube.suffix_plane."""
    cube._build()
    a1, a2, a3 = cube.axes
    cube._core_file()
    mm = cube._mm
    if axis == a1:
        arr = mm["rows"][f"s{j}"]["v"]  # (n3, n2)
        file_axes = (a3, a2)
    elif axis == a2:
        arr = mm[f"f{j}"]["v"]  # (n3, n1)
        file_axes = (a3, a1)
    else:
        bottoms = cube._dtypes["bottoms"]
        off = cube.offset + cube.sizes[a3] * cube._dtypes["plane"].itemsize
        off += sum(b.itemsize for b in bottoms[:j])
        bm = np.memmap(cube.data_path, dtype=bottoms[j], mode="r", offset=off, shape=(1,))
        arr = bm["rows"]["cells"]["v"][0]  # (n2, n1)
        file_axes = (a2, a1)
    want = _FACE_AXES[axis]
    if cube.suffix_items[axis][j].dtype is VAX_F:
        arr = arr["vax_f"]
    if arr.ndim == 3:  # VAX words
        perm = [file_axes.index(a) for a in want]
        return arr.transpose(*perm, 2)
    return arr.transpose(*[file_axes.index(a) for a in want])


# --------------------------------------------------------------------------- layout decision
def expected_bytes(
    axes: Sequence[str], sizes: dict[str, int], core_bytes: int, counts: dict[str, int],
    slots: dict[str, int], corners: bool,
) -> int:
    """Cell-model byte count (§5): core + faces (+ edges and vertex when corners are stored)."""
    n = {a: sizes[a] for a in axes}
    k = {a: counts.get(a, 0) for a in axes}
    total = n["BAND"] * n["LINE"] * n["SAMPLE"] * core_bytes
    for a in axes:
        o1, o2 = (b for b in axes if b != a)
        total += k[a] * n[o1] * n[o2] * slots.get(a, 0)
    if corners:
        for a, b in itertools.combinations(axes, 2):
            (c,) = (x for x in axes if x not in (a, b))
            total += k[a] * k[b] * n[c] * max(slots.get(a, 0), slots.get(b, 0))
        total += k["BAND"] * k["LINE"] * k["SAMPLE"] * max(slots.values(), default=0)
    return total


def candidate_layouts(
    axes: Sequence[str], sizes: dict[str, int], core_bytes: int,
    suffix: dict[str, list[SuffixItem]], suffix_bytes: int,
) -> list[Layout]:
    """Corners {no, yes} x slot width per suffix axis {SUFFIX_BYTES, item bytes}, deduplicated."""
    active = [a for a in axes if suffix.get(a)]
    widths = []
    for a in active:
        item = max(it.nbytes for it in suffix[a])
        options = {w for w in (suffix_bytes, item) if w >= item}
        widths.append(sorted(options, key=lambda w: (w != suffix_bytes, w)))
    corner_options = (False, True) if len(active) >= 2 else (False,)
    out: list[Layout] = []
    seen = set()
    for corners in corner_options:
        for combo in itertools.product(*widths):
            slots = dict(zip(active, combo, strict=True))
            key = (corners, tuple(sorted(slots.items())))
            if key in seen:
                continue
            seen.add(key)
            counts = {a: len(suffix[a]) for a in active}
            out.append(Layout(corners, slots, expected_bytes(axes, sizes, core_bytes, counts,
                                                             slots, corners)))
    return out


def _fmt(n: int) -> str:
    return f"{n:,}"


def _preference(c: Layout, prefer_corners: bool, prefer_item_width: bool,
                item_widths: dict[str, int]) -> tuple[int, int]:
    width_ok = all((w == item_widths[a]) == prefer_item_width for a, w in c.slots.items())
    return (int(c.corners == prefer_corners), int(width_ok))


def choose_layout(
    path: Path, candidates: list[Layout], available: int | Sequence[int], record_bytes: int, *,
    prefer_corners: bool, prefer_item_width: bool, item_widths: dict[str, int],
    context: str, line_bytes: list[int] | None,
) -> tuple[Layout, list[str]]:
    """Apply the fit rule of ``docs/virtis-format.md`` section 2 and return
    (layout, warnings); ProductError if none fits.

    ``available``: the bytes a layout may use, one number for all candidates or one per
    candidate (a following object bounds each candidate at its own computed end).
    """
    tolerance = max(record_bytes, 1)
    avail = ([int(available)] * len(candidates) if isinstance(available, int)
             else [int(a) for a in available])
    fits = [c for c, a in zip(candidates, avail, strict=True)
            if c.expected <= a and a - c.expected < tolerance]
    notes: list[str] = []

    def preferred(c: Layout) -> tuple[int, int]:
        return _preference(c, prefer_corners, prefer_item_width, item_widths)

    if len(fits) == 1:
        return fits[0], notes
    if len(fits) > 1:
        best = max(fits, key=preferred)
        notes.append(
            "ambiguous layout: " + "; ".join(f"{c.describe()} = {_fmt(c.expected)} B"
                                             for c in fits)
            + f" all fit {_fmt(max(avail))} available bytes; using {best.describe()}")
        return best, notes
    detail = "; ".join(f"{c.describe()}: {_fmt(c.expected)}" for c in candidates)
    if all(c.expected > a for c, a in zip(candidates, avail, strict=True)):
        first = max(candidates, key=preferred)
        held = avail[candidates.index(first)]
        hint = ""
        if line_bytes and any(0 <= a - (c.expected - lb) < tolerance
                              for c, lb, a in zip(candidates, line_bytes, avail, strict=True)):
            hint = "; one line short: V1.0 level-2 products have this EGSE bug"
        head = (f"truncated: label needs {_fmt(first.expected)} data bytes, file holds "
                f"{_fmt(held)} ({_fmt(first.expected - held)} bytes short{hint})")
        many = len({c.expected for c in candidates}) > 1
        raise ProductError(path, f"{head} [{'candidates ' + detail + '; ' if many else ''}"
                                 f"{context}]")
    raise ProductError(
        path, f"no layout fits: expected {detail} data bytes, {_fmt(max(avail))} available "
              f"(padding must stay below {record_bytes} bytes) [{context}]")


def layout_bounds(offset: int, file_size: int, candidates: Sequence[Layout],
                  others: Sequence[tuple[str, int]]) -> list[int]:
    """Bytes each candidate may use: up to the first other object that starts at or after
    the candidate's computed end, else up to the end of the file.

    An object pointer that falls inside the computed span does not bound it (labels of
    cropped files keep stale pointers); :func:`overlapping_objects` reports those.
    """
    out = []
    for c in candidates:
        end = offset + c.expected
        out.append(min([o for _, o in others if o >= end] + [file_size]) - offset)
    return out


def overlapping_objects(offset: int, nbytes: int,
                        others: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """(pointer name, byte offset) of the other objects starting in [offset, offset + nbytes)."""
    return [(n, o) for n, o in others if offset <= o < offset + nbytes]


# --------------------------------------------------------------------------- opening
def _find_qube(label: Block, path: Path) -> tuple[str, Block, str]:
    """(object name, QUBE block, pointer key) of the product's one QUBE object."""
    objs = [(k, b) for k, b in label.objects() if k.endswith("QUBE")]
    if not objs:
        raise ProductError(path, "no QUBE object in the label (not a PDS3 QUBE product)")
    if len(objs) > 1:
        raise ProductError(path, f"{len(objs)} QUBE objects (the pre-2008 VEX two-qube "
                                 "calibrated format) are not supported")
    name, block = objs[0]
    key = "^" + name
    if key not in label:
        ptrs = [k for k in label if k.startswith("^") and k.endswith("QUBE")]
        if len(ptrs) != 1:
            raise ProductError(path, f"no ^{name} pointer in the label")
        key = ptrs[0]
    return name, block, key


def _resolve_file(label_path: Path, name: str) -> Path:
    folder = label_path.parent
    direct = folder / name
    try:
        if direct.exists():
            return direct
    except OSError:  # e.g. a name longer than the file system allows (a damaged label)
        raise ProductError(label_path, f"data file name unusable: {name[:60]!r}...") from None
    try:
        for entry in os.listdir(folder):
            if entry.lower() == name.lower():
                return folder / entry
    except OSError:
        pass
    raise ProductError(label_path, f"data file not found: {name} (looked in "
                                   f"{folder if str(folder) else '.'})")


def resolve_pointer(label: Block, ptr: Any, path: Path, record_bytes: int | None) -> Pointer:
    """Pointer forms: n, n <BYTES>, ("FILE", n), ("FILE", n <BYTES>), "FILE"."""
    def offset_of(v: Any) -> int:
        if isinstance(v, Quantity):
            if str(v.units).strip().upper() != "BYTES":
                raise ProductError(path, f"pointer unit <{v.units}> is not <BYTES>")
            n = _int(v.value, "pointer")
            if n < 1:
                raise ProductError(path, f"pointer byte {n} is not 1-based")
            return n - 1
        n = _int(v, "pointer")
        if n < 1:
            raise ProductError(path, f"pointer record {n} is not 1-based")
        if not record_bytes:
            raise ProductError(path, "record pointer but no valid RECORD_BYTES in the label")
        return (n - 1) * record_bytes

    if isinstance(ptr, str):
        return Pointer(_resolve_file(path, ptr), 0, True)
    if isinstance(ptr, list):
        if len(ptr) == 1 and isinstance(ptr[0], str):
            return Pointer(_resolve_file(path, ptr[0]), 0, True)
        if len(ptr) == 2 and isinstance(ptr[0], str):
            return Pointer(_resolve_file(path, ptr[0]), offset_of(ptr[1]), True)
        raise ProductError(path, f"unsupported pointer form {ptr!r}")
    return Pointer(path, offset_of(ptr), False)


def other_objects(label: Block, path: Path, data_path: Path, record_bytes: int | None,
                  skip: str) -> list[tuple[str, int]]:
    """(pointer name without ``^``, byte offset) of every other object in ``data_path``.

    Pointers that cannot be resolved (``.fmt`` structure files, other files) are left out.
    """
    out = []
    for key, val in label.items():
        if not key.startswith("^") or key == skip:
            continue
        try:
            p = resolve_pointer(label, val, path, record_bytes)
        except (ProductError, ValueError, TypeError):
            continue
        if p.data_path == data_path:
            out.append((key[1:], p.offset))
    return out


NOT_DEFINED = ("N/A", "NULL", "UNK", "NONE", "")


def label_number(value: Any) -> float | None:
    """A label value as a float: numbers, ``<units>`` values and quoted numbers
    (``"-1004.0"``); None when the value is not a number (``"NULL"``, ``"N/A"``, other text)."""
    if value is None:
        return None
    if isinstance(value, Quantity):
        value = value.value
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _undefined_note(key: str, value: Any) -> str | None:
    """A warning for a keyword whose text is neither a number nor a PDS 'not defined'."""
    if value is None or label_number(value) is not None:
        return None
    if isinstance(value, str) and value.strip().upper() in NOT_DEFINED:
        return None
    return f"{key} = {value!r} is not a number; taken as not defined"


def _suffix_items(qube: Block, axis: str, count: int, core_type: str,
                  default_type: str | None = None) -> tuple[list[SuffixItem], list[str]]:
    """The suffix items of one axis and the warnings their keywords raise.

    A missing ``<AXIS>_SUFFIX_ITEM_TYPE`` is read as ``default_type`` when the caller knows
    the product, else as an unsigned integer of the stated width in the core's byte order
    (what the VIRTIS team's IDL reader does), with a warning.
    """
    prefix = f"{axis}_SUFFIX_"

    def per_item(key: str, default: Any) -> list[Any]:
        v = qube.get(prefix + key, default)
        vals = _seq(v)
        if len(vals) == 1:
            vals = vals * count
        if len(vals) < count:
            raise ValueError(f"{prefix + key} has {len(vals)} values for {count} items")
        return vals[:count]

    notes: list[str] = []
    names = per_item("NAME", f"{axis}_SUFFIX")
    nbytes = per_item("ITEM_BYTES", qube.get("SUFFIX_BYTES", 4))
    types = per_item("ITEM_TYPE", None)
    bases = per_item("BASE", 0.0)
    mults = per_item("MULTIPLIER", 1.0)
    items = []
    for j in range(count):
        nb = _int(nbytes[j], f"{prefix}ITEM_BYTES")
        type_name = types[j]
        if type_name is None:
            order = "LSB" if core_type.split("_", 1)[0] in _LITTLE else "MSB"
            type_name = default_type or f"{order}_UNSIGNED_INTEGER"
            if j == 0:
                notes.append(f"{prefix}ITEM_TYPE missing: reading the {PLANE_KIND[axis]} "
                             f"items as {type_name} of {nb} bytes")
        try:
            dt = item_dtype(type_name, nb)
        except ValueError as exc:
            raise ValueError(f"{prefix}ITEM_TYPE: {exc}") from None
        base, mult = label_number(bases[j]), label_number(mults[j])
        items.append(SuffixItem(str(names[j]), dt, nb, 0.0 if base is None else base,
                                1.0 if mult is None else mult))
    return items, notes


def read(
    path: str | os.PathLike[str], *, allow_short: bool = False,
    prefer_corners: bool | None = None, prefer_item_width: bool = False,
    suffix_type_defaults: dict[str, str] | None = None,
) -> Cube:
    """Open a PDS3 QUBE (attached or detached label). Reads the label only.

    ``allow_short``: a file whose last lines are missing opens with the complete lines and
    a warning (line-outermost layouts only). ``prefer_corners`` / ``prefer_item_width``
    break ties between layouts that all fit the file (the producer defaults); by default
    corners are assumed stored only for Cassini VIMS. ``suffix_type_defaults`` maps an
    axis ("BAND", "SAMPLE", "LINE") to the item type to assume when the label gives none.
    Raises ProductError on bad input.
    """
    path = Path(path)
    label, _ = read_label(path)
    try:
        return _open(path, label, allow_short=allow_short, prefer_corners=prefer_corners,
                     prefer_item_width=prefer_item_width,
                     suffix_type_defaults=suffix_type_defaults or {})
    except ProductError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError) as exc:
        raise ProductError(path, f"invalid QUBE label: {exc}") from None


@dataclass
class QubeLabel:
    """What the label says about the QUBE object, before any look at the file size."""

    name: str
    block: Block
    pointer_key: str
    pointer: Pointer
    record_bytes: int | None
    axes: tuple[str, str, str]
    sizes: dict[str, int]
    core_type: str
    core_dtype: np.dtype
    counts: list[int]
    suffix_bytes: int
    suffix: dict[str, list[SuffixItem]]
    notes: list[str]


def qube_label(path: Path, label: Block, suffix_type_defaults: dict[str, str] | None = None
               ) -> QubeLabel:
    """Parse and check the QUBE object's keywords; ProductError/ValueError when invalid."""
    name, qube, ptr_key = _find_qube(label, path)
    record_bytes = label.get("RECORD_BYTES")
    record_bytes = _int(record_bytes, "RECORD_BYTES") if record_bytes is not None else None
    if record_bytes is not None and record_bytes <= 0:
        raise ProductError(path, f"RECORD_BYTES = {record_bytes} is not positive")
    pointer = resolve_pointer(label, label[ptr_key], path, record_bytes)
    naxes = _int(qube.get("AXES", 3), "AXES")
    axes = tuple(str(a).strip().upper() for a in _seq(qube.get("AXIS_NAME", [])))
    if naxes != 3 or len(axes) != 3 or sorted(axes) != sorted(AXIS_NAMES):
        raise ProductError(path, f"unsupported axes: AXES = {naxes}, AXIS_NAME = {axes} "
                                 "(need the three axes BAND, SAMPLE, LINE)")
    items = [_int(v, "CORE_ITEMS") for v in _seq(qube.get("CORE_ITEMS", []))]
    if len(items) != 3:
        raise ProductError(path, f"CORE_ITEMS = {qube.get('CORE_ITEMS')!r} needs 3 values")
    if min(items) <= 0 or math.prod(items) > MAX_CORE_ITEMS:
        raise ProductError(path, f"absurd dimensions: CORE_ITEMS = {tuple(items)}")
    core_type = str(qube.get("CORE_ITEM_TYPE", "")).strip().upper()
    try:
        core_dtype = item_dtype(core_type, _int(qube.get("CORE_ITEM_BYTES", 0),
                                                "CORE_ITEM_BYTES"))
    except ValueError as exc:
        raise ProductError(path, f"CORE_ITEM_TYPE: {exc}") from None
    counts = [_int(v, "SUFFIX_ITEMS") for v in _seq(qube.get("SUFFIX_ITEMS", [0, 0, 0]))]
    if len(counts) != 3 or min(counts) < 0 or max(counts) > MAX_SUFFIX_ITEMS:
        raise ProductError(path, f"invalid SUFFIX_ITEMS = {qube.get('SUFFIX_ITEMS')!r}")
    suffix_bytes = _int(qube.get("SUFFIX_BYTES", 4), "SUFFIX_BYTES")
    if counts != [0, 0, 0] and not 1 <= suffix_bytes <= 64:
        raise ProductError(path, f"invalid SUFFIX_BYTES = {suffix_bytes}")
    suffix, notes = {}, []
    for a, c in zip(axes, counts, strict=True):
        if c:
            suffix[a], more = _suffix_items(qube, a, c, core_type,
                                            (suffix_type_defaults or {}).get(a))
            notes += more
            bad = [it.nbytes for it in suffix[a] if not 0 < it.nbytes <= 64]
            if bad:
                raise ProductError(path, f"invalid {a}_SUFFIX_ITEM_BYTES = {bad[0]}")
    return QubeLabel(name, qube, ptr_key, pointer, record_bytes, axes,
                     dict(zip(axes, items, strict=True)), core_type, core_dtype, counts,
                     suffix_bytes, suffix, notes)


def _context(q: QubeLabel, label: Block, file_size: int) -> str:
    """The label facts an error message about the byte layout quotes."""
    file_records = label.get("FILE_RECORDS")
    fr_text = "FILE_RECORDS n/a"
    if file_records is not None and q.record_bytes:
        with_fr = _int(file_records, "FILE_RECORDS") * q.record_bytes
        fr_text = f"FILE_RECORDS x RECORD_BYTES = {_fmt(with_fr)}"
    return (f"{q.name} at byte {_fmt(q.pointer.offset)} of {q.pointer.data_path.name} "
            f"({_fmt(file_size)} bytes); {fr_text}; CORE_ITEMS = "
            f"{tuple(q.sizes[a] for a in q.axes)} {'/'.join(q.axes)}; SUFFIX_ITEMS = "
            f"{tuple(q.counts)}; SUFFIX_BYTES = {q.suffix_bytes}")


def decide_layout(
    path: Path, label: Block, q: QubeLabel, file_size: int, *, allow_short: bool = False,
    prefer_corners: bool = False, prefer_item_width: bool = False,
) -> tuple[Layout, int, list[str]]:
    """(layout, complete lines, warnings) from the label arithmetic and the file size.

    The QUBE's end is computed from the label first; another object's pointer bounds the
    QUBE only when it starts at or after that end. A pointer inside the QUBE's span while
    the file holds the QUBE's bytes is a warning naming both objects (stale pointer).
    """
    offset = q.pointer.offset
    if offset > file_size:
        raise ProductError(path, f"truncated: the {q.name} pointer (byte {_fmt(offset)}) is "
                                 f"past the end of the file ({_fmt(file_size)} bytes)")
    others = other_objects(label, path, q.pointer.data_path, q.record_bytes, q.pointer_key)
    core_bytes = q.core_dtype.itemsize
    candidates = candidate_layouts(q.axes, q.sizes, core_bytes, q.suffix, q.suffix_bytes)
    bounds = layout_bounds(offset, file_size, candidates, others)
    item_widths = {a: max(it.nbytes for it in its) for a, its in q.suffix.items()}
    line_outer = q.axes[2] == "LINE"
    planes = {id(c): _structured(q.axes, q.sizes, q.core_dtype, q.suffix, c)["plane"].itemsize
              for c in candidates} if line_outer else {}
    warn: list[str] = []
    lines = q.sizes["LINE"]
    try:
        layout, notes = choose_layout(
            path, candidates, bounds, q.record_bytes or 512, prefer_corners=prefer_corners,
            prefer_item_width=prefer_item_width, item_widths=item_widths,
            context=_context(q, label, file_size),
            line_bytes=[planes[id(c)] for c in candidates] if line_outer else None)
        warn += notes
        span = layout.expected
    except ProductError:
        if not (allow_short and line_outer and not q.suffix.get("LINE")):
            raise
        layout = max(candidates, key=lambda c: _preference(c, prefer_corners,
                                                           prefer_item_width, item_widths))
        lines = min(q.sizes["LINE"], (file_size - offset) // planes[id(layout)])
        if lines == 0:
            raise
        span = lines * planes[id(layout)]
        warn.append(f"short file: only {lines} of {q.sizes['LINE']} lines are complete; "
                    "reading those")
    holds = "those" if lines < q.sizes["LINE"] else f"the {q.name}'s"
    for other, off in overlapping_objects(offset, span, others):
        warn.append(f"^{other} points to byte {_fmt(off)}, inside the {q.name} (bytes "
                    f"{_fmt(offset)}..{_fmt(offset + span - 1)}), and the file holds {holds} "
                    f"bytes: ^{other} is taken as a stale pointer")
    return layout, lines, warn


def _core_scaling(qube: Block) -> tuple[dict[str, Any], list[str]]:
    """CORE_BASE/MULTIPLIER, special values and valid range; a non-numeric value is
    "not defined" (``"NULL"``/``"N/A"`` silently, other text with a warning)."""
    notes = [n for n in (_undefined_note(f"CORE_{k}", qube.get(f"CORE_{k}"))
                         for k in (*SPECIAL_KEYS, "VALID_MINIMUM", "VALID_MAXIMUM", "BASE",
                                   "MULTIPLIER")) if n]
    specials = {k: v for k in SPECIAL_KEYS
                if (v := label_number(qube.get("CORE_" + k))) is not None}
    multiplier = label_number(qube.get("CORE_MULTIPLIER"))
    return {
        "base": label_number(qube.get("CORE_BASE")) or 0.0,
        "multiplier": 1.0 if multiplier is None else multiplier,
        "specials": specials,
        "valid_min": label_number(qube.get("CORE_VALID_MINIMUM")),
        "valid_max": label_number(qube.get("CORE_VALID_MAXIMUM")),
    }, notes


def _open(path: Path, label: Block, *, allow_short: bool, prefer_corners: bool | None,
          prefer_item_width: bool, suffix_type_defaults: dict[str, str]) -> Cube:
    q = qube_label(path, label, suffix_type_defaults)
    try:
        file_size = os.path.getsize(q.pointer.data_path)
    except OSError as exc:
        raise ProductError(q.pointer.data_path, f"cannot read: {exc.strerror or exc}") from None
    if prefer_corners is None:
        instrument = str(label.get("INSTRUMENT_ID", q.block.get("INSTRUMENT_ID", ""))).upper()
        prefer_corners = instrument == "VIMS"
    layout, lines_available, layout_notes = decide_layout(
        path, label, q, file_size, allow_short=allow_short, prefer_corners=prefer_corners,
        prefer_item_width=prefer_item_width)
    warn = q.notes + layout_notes
    file_records = label.get("FILE_RECORDS")
    if file_records is not None and q.record_bytes and lines_available == q.sizes["LINE"]:
        fr_bytes = _int(file_records, "FILE_RECORDS") * q.record_bytes
        if fr_bytes != file_size:
            warn.append(f"FILE_RECORDS x RECORD_BYTES = {_fmt(fr_bytes)} but the file holds "
                        f"{_fmt(file_size)} bytes; the data are complete, reading anyway")
    scaling, notes = _core_scaling(q.block)
    warn += notes
    cube = Cube(
        path=path, label=label, qube=q.block, data_path=q.pointer.data_path,
        offset=q.pointer.offset, axes=q.axes, sizes=q.sizes, core_dtype=q.core_dtype,
        core_type=q.core_type, **scaling, suffix_items=q.suffix, layout=layout,
        lines_available=lines_available, file_size=file_size, warnings=warn,
    )
    for w in warn:
        warnings.warn(f"{path.name}: {w}", LayoutWarning, stacklevel=3)
    return cube


if __name__ == "__main__":
    from parsers.cli.pds3 import main

    raise SystemExit(main())
