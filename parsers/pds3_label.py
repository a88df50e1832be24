"""Read and parse PDS3 (ODL) labels, attached or detached, tolerating legacy quirks.

Only the label is read: bytes are read from the start of the file until the ``END``
statement, never the whole file. Parsing goes through three stages:

1. a small, fast ODL parser (a cube must open in a few milliseconds, and pvl takes
   ~100 ms on a VIRTIS label); it accepts ``{}`` sets, namespaced keys, comments, units,
   multi-line strings and the missing commas of draft Rosetta labels;
2. ``pvl`` with its lenient ``OmniGrammar``/``OmniDecoder`` when the fast parser gives up;
3. ``pvl`` again on a repaired text (commas inserted between the lines of multi-line lists).

pvl runs in a child process with a timeout (it loops forever on some malformed labels).

Values come back as ``int``, ``float``, ``str``, ``list`` (sequences and sets) or
:class:`Quantity` (a value with ``<units>``); objects and groups as :class:`Block`.
Keywords are upper-cased.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from parsers.errors import ProductError

MAX_LABEL_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024
_END_RE = re.compile(rb"(?:^|\n)[ \t]*END[ \t]*(?:\r?\n|\r|$)")


class Quantity(NamedTuple):
    """A label value with units, e.g. ``12 <BYTES>``."""

    value: Any
    units: str


class Block(dict):
    """An ODL object or group (or the whole label): a dict of its first-seen keywords.

    ``entries`` keeps every (key, value) pair in order, duplicates included.
    """

    def __init__(self, kind: str = "ROOT", name: str = "") -> None:
        super().__init__()
        self.kind = kind
        self.name = name
        self.entries: list[tuple[str, Any]] = []

    def add(self, key: str, value: Any) -> None:
        self.entries.append((key, value))
        self.setdefault(key, value)

    def all(self, key: str) -> list[Any]:
        """Every value stored under ``key`` (objects may repeat)."""
        return [v for k, v in self.entries if k == key]

    def objects(self) -> Iterator[tuple[str, Block]]:
        for k, v in self.entries:
            if isinstance(v, Block):
                yield k, v


class LabelSyntaxError(ValueError):
    """The fast parser cannot read this label (pvl gets a try next)."""


# --------------------------------------------------------------------------- reading
def read_label_bytes(path: str | os.PathLike[str]) -> bytes:
    """The label text: bytes from the file start up to and including the ``END`` line."""
    try:
        size = os.path.getsize(path)
        if os.path.isdir(path):
            raise ProductError(path, "is a directory, not a product file")
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ProductError(path, "file not found") from None
    except IsADirectoryError:
        raise ProductError(path, "is a directory, not a product file") from None
    except OSError as exc:
        raise ProductError(path, f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        fh.close()
        raise ProductError(path, "empty file")
    with fh:
        buf = b""
        while len(buf) < MAX_LABEL_BYTES:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            start = max(0, len(buf) - 16)
            buf += chunk
            if len(buf) <= _CHUNK * 2 and not _looks_like_odl(buf[:4096]):
                raise ProductError(path, "not a PDS3 product (no ODL label at the start)")
            m = _END_RE.search(buf, start)
            if m:
                return buf[: m.end()]
    if not _looks_like_odl(buf[:4096]):
        raise ProductError(path, "not a PDS3 product (no ODL label at the start)")
    raise ProductError(path, f"label has no END statement in the first {len(buf):,} bytes")


def _looks_like_odl(head: bytes) -> bool:
    if not head:
        return False
    sample = head[:2048]
    text = sum(1 for b in sample if b in (9, 10, 13) or 32 <= b < 127)
    if text < 0.95 * len(sample) and b"=" not in sample[:512]:
        return False
    first = sample.split(b"\n", 1)[0]
    return b"=" in sample and (b"=" in first or b"PDS_VERSION_ID" in sample or b"ODL" in sample
                               or b"RECORD_TYPE" in sample)


# --------------------------------------------------------------------------- fast parser
_TOKEN_RE = re.compile(
    r"""(?P<ws>\s+)
      | (?P<comment>/\*.*?(?:\*/|$))
      | "(?P<q>[^"]*)"
      | '(?P<s>[^']*)'
      | <(?P<u>[^<>]*)>
      | (?P<p>[(){},=])
      | (?P<w>[^\s(){},="'<>]+)""",
    re.S | re.X | re.M,
)
_INT_RE = re.compile(r"[+-]?\d+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)\Z")
_RADIX_RE = re.compile(r"([+-]?)(2|8|16)#([0-9A-Fa-f]+)#\Z")
_WS_RE = re.compile(r"\s*\n\s*")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, n = 0, len(text)
    while pos < n:
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise LabelSyntaxError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        out.append((kind, m.group(kind)))
    return out


def _scalar(kind: str, tok: str) -> Any:
    if kind == "q":
        return _WS_RE.sub(" ", tok).strip() if "\n" in tok else tok
    if kind == "s":
        return tok
    if _INT_RE.match(tok):
        return int(tok)
    if _FLOAT_RE.match(tok):
        return float(tok)
    m = _RADIX_RE.match(tok)
    if m:
        value = int(m.group(3), int(m.group(2)))
        return -value if m.group(1) == "-" else value
    return tok


def parse_fast(text: str) -> Block:
    """Parse ODL text with the built-in parser; LabelSyntaxError if it cannot."""
    toks = _tokens(text)
    n = len(toks)
    i = 0

    def value() -> Any:
        nonlocal i
        if i >= n:
            raise LabelSyntaxError("value missing at end of label")
        kind, tok = toks[i]
        if kind == "p" and tok in "({":
            close = ")" if tok == "(" else "}"
            i += 1
            items: list[Any] = []
            while True:
                if i >= n:
                    raise LabelSyntaxError("unclosed list")
                k2, t2 = toks[i]
                if k2 == "p" and t2 == close:
                    i += 1
                    return items
                if k2 == "p" and t2 == ",":
                    i += 1
                    continue
                if k2 == "p" and t2 in ")}=":
                    raise LabelSyntaxError(f"unexpected {t2!r} in a list")
                items.append(value())
        if kind == "p":
            raise LabelSyntaxError(f"unexpected {tok!r} where a value should be")
        if kind == "u":
            raise LabelSyntaxError("units without a value")
        i += 1
        v = _scalar(kind, tok)
        if i < n and toks[i][0] == "u":
            v = Quantity(v, toks[i][1].strip())
            i += 1
        return v

    root = Block()
    stack = [root]
    while i < n:
        kind, tok = toks[i]
        if kind != "w":
            raise LabelSyntaxError(f"expected a keyword, found {tok!r}")
        key = tok.upper()
        has_eq = i + 1 < n and toks[i + 1] == ("p", "=")
        if key == "END" and not has_eq:
            break
        if key in ("END_OBJECT", "END_GROUP"):
            i += 1
            if has_eq:
                i += 2
            if len(stack) == 1:
                raise LabelSyntaxError(f"{key} without a matching start")
            stack.pop()
            continue
        if not has_eq:
            raise LabelSyntaxError(f"keyword {tok!r} without '='")
        i += 2
        if key in ("OBJECT", "GROUP", "BEGIN_OBJECT", "BEGIN_GROUP"):
            name = value()
            block = Block(key.replace("BEGIN_", ""), str(name).upper())
            stack[-1].add(str(name).upper(), block)
            stack.append(block)
            continue
        stack[-1].add(key, value())
    else:
        raise LabelSyntaxError("no END statement")
    if len(stack) != 1:
        raise LabelSyntaxError(f"OBJECT {stack[-1].name} is never closed")
    return root


# --------------------------------------------------------------------------- pvl fallback
# pvl runs in a child process: pvl 1.3 loops forever on some malformed labels (for example
# ``SUFFIX_ITEMS = 0 ==>``), and a reader must never hang. The child is started once per
# process and reused (start-up and ``import pvl`` cost more than a parse); it answers each
# line of JSON texts with one line: the parsed label as JSON, blocks {"block": kind,
# "entries": [[key, value], ...]}, quantities {"q", "u"}, or null. A parse that takes longer
# than PVL_TIMEOUT_S (measured by reader fuzzing: a bad label must be refused within a
# second) kills the child; the next fallback starts a new one.
PVL_TIMEOUT_S = 0.8
PVL_START_S = 60.0
_PVL_CHILD = r"""
import datetime, json, sys, warnings
warnings.simplefilter("ignore")
import pvl

def conv(o):
    if isinstance(o, (pvl.PVLModule, pvl.PVLObject, pvl.PVLGroup)):
        kind = ("OBJECT" if isinstance(o, pvl.PVLObject)
                else "GROUP" if isinstance(o, pvl.PVLGroup) else "ROOT")
        return {"block": kind, "entries": [[str(k), conv(v)] for k, v in o.items()]}
    if isinstance(o, pvl.collections.Quantity):
        return {"q": conv(o.value), "u": str(o.units)}
    if isinstance(o, (set, frozenset)):
        return sorted((conv(v) for v in o), key=str)
    if isinstance(o, (list, tuple)):
        return [conv(v) for v in o]
    if isinstance(o, (datetime.date, datetime.time, datetime.datetime)):
        return o.isoformat()
    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    return str(o)

def parse(texts):
    for text in texts:
        try:
            return conv(pvl.loads(text, grammar=pvl.grammar.OmniGrammar(),
                                  decoder=pvl.decoder.OmniDecoder()))
        except Exception:
            continue
    return None

print("ready", flush=True)
for line in sys.stdin:
    print(json.dumps(parse(json.loads(line))), flush=True)
"""


def _from_json(obj: Any, name: str = "") -> Any:
    if isinstance(obj, dict) and "block" in obj:
        block = Block(obj["block"], name)
        for key, value in obj["entries"]:
            block.add(key.upper(), _from_json(value, key.upper()))
        return block
    if isinstance(obj, dict) and "q" in obj:
        return Quantity(_from_json(obj["q"]), str(obj["u"]))
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


class _PvlChild:
    """The pvl child process of this process (started on first use; one request at a time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: Any = None
        self.owner = 0

    def ask(self, request: str, timeout: float) -> str | None:
        """Send one line, return the answer line; None (child killed) after ``timeout``."""
        import subprocess
        import sys

        with self.lock:
            if self.proc is None or self.owner != os.getpid() or self.proc.poll() is not None:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", _PVL_CHILD], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                self.owner = os.getpid()
                if self._line(PVL_START_S) != "ready":
                    return None
            try:
                self.proc.stdin.write(request.encode() + b"\n")
                self.proc.stdin.flush()
            except OSError:
                self.stop()
                return None
            return self._line(timeout)

    def _line(self, timeout: float) -> str | None:
        import select

        fd, data = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.stop()
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self.stop()
                return None
            data += chunk
        return data.decode().strip()

    def stop(self) -> None:
        if self.proc is not None and self.owner == os.getpid():
            self.proc.kill()
            self.proc.wait()
        self.proc = None


_PVL = _PvlChild()
_PVL_ANSWERS: dict[str, str | None] = {}  # the last few requests and pvl's answers
atexit.register(_PVL.stop)


def parse_with_pvl(texts: list[str], timeout: float | None = None) -> Block | None:
    """Parse the first of ``texts`` that pvl (lenient grammar) accepts; None if none does
    (or pvl takes longer than ``timeout`` seconds, default :data:`PVL_TIMEOUT_S`)."""
    import json

    request = json.dumps(texts)
    if request in _PVL_ANSWERS:  # e.g. cube format detection, then the reader: one parse
        answer = _PVL_ANSWERS[request]
    else:
        answer = _PVL.ask(request, timeout=timeout or PVL_TIMEOUT_S)
        if len(_PVL_ANSWERS) >= 16:
            _PVL_ANSWERS.pop(next(iter(_PVL_ANSWERS)))
        _PVL_ANSWERS[request] = answer
    if not answer:
        return None
    try:
        result = _from_json(json.loads(answer))
    except (ValueError, KeyError, TypeError):
        return None
    return result if isinstance(result, Block) else None


def repair_missing_commas(text: str) -> str:
    """Insert the commas draft labels omit between the lines of multi-line lists."""
    out: list[str] = []
    depth = 0
    lines = text.splitlines(keepends=True)
    for idx, line in enumerate(lines):
        body = line.rstrip("\r\n")
        eol = line[len(body):]
        stripped = re.sub(r'"[^"]*"', '""', body)
        depth += stripped.count("(") + stripped.count("{")
        depth -= stripped.count(")") + stripped.count("}")
        nxt = lines[idx + 1].strip() if idx + 1 < len(lines) else ""
        tail = body.rstrip()
        if (depth > 0 and tail and tail[-1] not in ",({=" and nxt
                and nxt[0] not in ",)}"):
            body = tail + ","
        out.append(body + eol)
    return "".join(out)


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")


def _worth_pvl(text: str) -> bool:
    """pvl only gets labels that look like text: it is slow (and can take minutes) on
    binary garbage, which the fast parser already rejected for good reasons."""
    return len(text) <= 256 * 1024 and not _CONTROL_RE.search(text)


def parse_label_text(text: str, path: str | os.PathLike[str] = "label", *,
                     pvl_fallback: bool = True) -> Block:
    """Parse ODL text: fast parser, then pvl (lenient), then pvl on a repaired text.

    ``pvl_fallback=False`` keeps to the fast parser (then the fast parser on the repaired
    text): an answer in milliseconds, for callers that must never wait on a child process
    (the index label of a download, where a bad label falls back to the listings).
    """
    try:
        return parse_fast(text)
    except LabelSyntaxError as exc:
        first_error = str(exc)
    if not pvl_fallback:
        repaired = repair_missing_commas(text)
        if repaired != text:
            with contextlib.suppress(LabelSyntaxError):
                return parse_fast(repaired)
    elif _worth_pvl(text):
        block = parse_with_pvl(list(dict.fromkeys([text, repair_missing_commas(text)])))
        if block is not None:
            return block
    raise ProductError(path, f"cannot parse label: {first_error}")


def read_label(path: str | os.PathLike[str]) -> tuple[Block, int]:
    """Parse the label of ``path``: (label, number of label bytes read)."""
    raw = read_label_bytes(path)
    text = raw.decode("latin-1")
    return parse_label_text(text, path), len(raw)


# --------------------------------------------------------------------------- tables
class TableColumn(NamedTuple):
    """A COLUMN object of a TABLE: ``start`` is the 1-based START_BYTE, ``size`` its BYTES
    (all ``items`` together when ITEMS > 1)."""

    name: str
    start: int
    size: int
    data_type: str = ""
    items: int = 1


def table_columns(table: Block, where: str | os.PathLike[str]) -> list[TableColumn]:
    """The COLUMN objects of a TABLE object (or of a ``^STRUCTURE`` format file's label),
    in label order; ProductError naming ``where`` when one lacks NAME, START_BYTE or BYTES
    or gives them values that cannot be right."""
    out: list[TableColumn] = []
    for n, col in enumerate(table.all("COLUMN"), 1):
        if not isinstance(col, Block):
            raise ProductError(where, f"COLUMN {n} is not an object")
        name = col.get("NAME")
        start, size, items = col.get("START_BYTE"), col.get("BYTES"), col.get("ITEMS", 1)
        if isinstance(start, Quantity):
            start = start.value
        if isinstance(size, Quantity):
            size = size.value
        if name is None or start is None or size is None:
            raise ProductError(where, f"COLUMN {n} lacks NAME, START_BYTE or BYTES")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                   for v in (start, size, items)):
            raise ProductError(where, f"COLUMN {name}: START_BYTE = {start!r}, BYTES = "
                                      f"{size!r}, ITEMS = {items!r} are not positive integers")
        out.append(TableColumn(str(name).upper(), start, size,
                               str(col.get("DATA_TYPE", "")).upper(), items))
    return out
