"""Reader fuzzing: mutate real and synthetic products, feed them to the readers, judge.

A **seed** is one product (a main file, plus the files beside it that a reader needs) and the
readers that open it: the vendored real files of ``tests/data`` (Cassini VIMS cubes, an
AVIRIS-NG ENVI cube, Sentinel-2 GeoTIFFs and SAFE metadata) and synthetic ones written here
(PDS3 QUBEs with suffixes, VIRTIS cubes, a Sentinel-2 SAFE zip). **Case** ``i`` of a run with
seed ``s`` is fully determined by ``(s, i)``: it picks a product, a mutation and a reader:

- ``truncate``: cut the file (half the time inside its first 4 KiB: labels, headers);
- ``bitflip``: flip 1-8 bits (half the time in the header region);
- ``bytes``: overwrite 1-16 bytes with random or boundary values (00, FF, 7F, 80);
- ``zeros``: zero a block of 16 B to 4 KiB;
- ``extend``: append random bytes or a copy of a slice;
- ``label``: (text labels: PDS3, ENVI, XML) replace a value with an odd one, delete,
  duplicate or swap lines;
- ``dims``: absurd dimensions: PDS3 ``CORE_ITEMS``/``RECORD_BYTES``/pointers, ENVI
  ``samples``/``lines``/``bands``/``header offset``, TIFF ``ImageWidth``/``ImageLength``/tile
  sizes/samples per pixel set to values up to 2**63 (a label claiming 10**12 bytes).

The reader must open the mutated product and read it (the whole cube when it holds at most
:data:`LOAD_LIMIT` values, else a small window), or refuse it with a
:class:`~parsers.errors.UserError` (the project's one-line errors). Anything else is a
**crash**; a case slower than :data:`SLOW_S` is **slow** (such cases are measured again,
best of three in one worker, so that a busy machine's preemption is not counted); one that
does not finish within :data:`HANG_S` is a **hang** (the worker process is killed and
replaced); a worker that dies (a signal) is a **death**. Workers run under an address-space
limit (``RLIMIT_AS``), so an allocation the product's size cannot justify surfaces as a crash
(MemoryError) rather than as swapping. :func:`run` drives the workers;
``benchmarks/fuzz_readers.py`` and ``tests/parsers/test_fuzz_slice.py`` call it.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import random
import re
import shutil
import struct
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SLOW_S = 1.0
HANG_S = 15.0
LOAD_LIMIT = 8_000_000  # values: load() below this, a window above
ADDRESS_SPACE = 6 * 2**30  # RLIMIT_AS of a worker (bytes)
ODD_NUMBERS = ["0", "-1", "1", "2147483647", "2147483648", "4294967296", "1000000000000",
               "9223372036854775807", "18446744073709551616", "-9223372036854775808", "1e308",
               "nan", "3.5", "0x10"]
ODD_VALUES = [*ODD_NUMBERS, "", '"', "(", ")", "{}", "()", "(1000000, 1000000, 1000000)",
              "(0, 0, 0)", "(-1, 5, 5)", '"x" <BYTES>', "N/A", "UNK", "16#FF#", "END",
              "END_OBJECT", "(BAND, BAND, BAND)", '("nofile.qub", 5)', "x" * 5000]
DIM_KEYS = {
    "pds3": ["CORE_ITEMS", "SUFFIX_ITEMS", "RECORD_BYTES", "FILE_RECORDS", "LABEL_RECORDS",
             "^QUBE", "CORE_ITEM_BYTES", "SUFFIX_BYTES", "AXES", "BAND_SUFFIX_ITEM_BYTES"],
    "envi": ["samples", "lines", "bands", "header offset", "data type", "byte order",
             "interleave"],
}
HUGE = [10**12, 2**31, 2**32 - 1, 2**40, 2**63 - 1, 10**6, 65536, 0]
OUTCOMES = ("ok", "refused", "crash", "hang", "death")


@dataclass(frozen=True)
class Seed:
    """One product to mutate: ``files`` (relative path -> bytes), the ``main`` one that is
    mutated, what to hand the reader (``open``), the label kind and the readers to try."""

    name: str
    files: dict[str, bytes]
    main: str
    open: str
    label: str | None  # "pds3", "envi", "xml" or None (binary)
    readers: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    index: int
    seed: str
    mutation: str
    reader: str


@dataclass
class Result:
    case: Case
    outcome: str
    seconds: float
    detail: str = ""  # exception type and first line; where it was raised


@dataclass
class Report:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    slow: list[Result] = field(default_factory=list)  # over SLOW_S when measured again
    slow_at_first: int = 0  # over SLOW_S during the run (a loaded machine inflates these)
    failures: list[Result] = field(default_factory=list)  # crash, hang, death
    max_seconds: float = 0.0
    max_fast: float = 0.0  # the slowest case under SLOW_S
    max_rss_mib: float = 0.0
    seconds: float = 0.0
    by_reader: Counter = field(default_factory=Counter)

    def add(self, r: Result) -> None:
        self.cases += 1
        self.outcomes[r.outcome] += 1
        self.by_reader[r.case.reader] += 1
        self.max_seconds = max(self.max_seconds, r.seconds)
        if r.seconds > SLOW_S:
            self.slow.append(r)
        else:
            self.max_fast = max(self.max_fast, r.seconds)
        if r.outcome in ("crash", "hang", "death"):
            self.failures.append(r)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.slow

    def remeasured(self, best: dict[int, float]) -> None:
        """Keep as slow only the cases whose best time, measured again, is still slow."""
        self.slow_at_first = len(self.slow)
        for r in self.slow:
            r.seconds = min(r.seconds, best.get(r.case.index, r.seconds))
        self.max_seconds = max([r.seconds for r in self.slow] + [self.max_fast])
        self.slow = [r for r in self.slow if r.seconds > SLOW_S]


# --- the corpus -----------------------------------------------------------------------------

def _files(root: Path, names: Sequence[str]) -> dict[str, bytes]:
    return {n: (root / n).read_bytes() for n in names}


def real_seeds(data: Path) -> list[Seed]:
    """Seeds from the vendored real files (``tests/data``); those missing are skipped."""
    seeds = []
    vims = data / "cassini_vims"
    for name in ("v1815243432_1.qub", "v1477479472_1.qub"):
        if (vims / name).is_file():
            seeds.append(Seed(f"vims:{name}", _files(vims, [name]), name, name, "pds3",
                              ("pds3", "cube")))
    aviris = data / "hyperspectral" / "avirisng"
    rdn = "ang20170323t202244_rdn_7000-7010"
    if (aviris / rdn).is_file():
        files = _files(aviris, [rdn, rdn + ".hdr"])
        seeds.append(Seed("envi:header", files, rdn + ".hdr", rdn, "envi", ("cube",)))
        seeds.append(Seed("envi:data", files, rdn, rdn, None, ("cube",)))
    ukis = data / "sentinel2" / "ukis_pysat"
    for tif in sorted(ukis.glob("*_toa.tif"))[:1] + sorted(ukis.glob("*[0-9].tif"))[:1]:
        names = [tif.name] + [p.name for p in ukis.glob(tif.stem.removesuffix("_toa")
                                                          + "_MTD.xml")]
        seeds.append(Seed(f"s2tif:{tif.name[:20]}", _files(ukis, names), tif.name, tif.name,
                          None, ("cube", "sentinel2")))
    for folder in sorted((data / "sentinel2" / "bigearthnet").glob("*"))[:1]:
        names = sorted(p.relative_to(folder.parent).as_posix() for p in folder.glob("*.tif"))
        main = next(n for n in names if n.endswith("_B04.tif"))
        seeds.append(Seed("s2folder:bigearthnet", _files(folder.parent, names), main,
                          folder.name, None, ("sentinel2",)))
    for safe in sorted((data / "sentinel2" / "safe").glob("*.SAFE")):
        names = sorted(p.relative_to(safe.parent).as_posix() for p in safe.rglob("*")
                       if p.is_file())
        if len(names) == 1:  # metadata only: the MTD parser
            seeds.append(Seed(f"s2mtd:{safe.name[:26]}", _files(safe.parent, names), names[0],
                              safe.name, "xml", ("sentinel2",)))
            break
    return seeds


def synthetic_seeds(work: Path) -> list[Seed]:
    """Seeds written by the synthetic product writers (small sizes)."""
    import numpy as np

    from pipeline.synthetic.pds3_products import Suffix, write_qube_product
    from pipeline.synthetic.sentinel2_products import write_safe_product
    from pipeline.synthetic.virtis_products import write_virtis_product

    work.mkdir(parents=True, exist_ok=True)
    seeds = []
    core = np.arange(5 * 6 * 7, dtype=">f4").reshape(5, 6, 7)
    suffix = {"BAND": Suffix(np.ones((1, 6, 7), np.uint32), ">u4", 4),
              "SAMPLE": Suffix(np.full((2, 5, 6), 3, np.int16), ">i2", 4)}
    for interleave in ("BSQ", "BIP"):
        path = write_qube_product(work / f"q_{interleave}.qub", core, interleave=interleave,
                                  suffix=suffix, record_bytes=64)
        seeds.append(Seed(f"qube:{interleave}", {path.name: path.read_bytes()}, path.name,
                          path.name, "pds3", ("pds3", "cube")))
    for kind in ("cal", "raw", "geo"):
        path = write_virtis_product(work / f"V1_00388238696.{kind[:3].upper()}", kind=kind,
                                    bands=16, samples=8, lines=6, seed=1)
        seeds.append(Seed(f"virtis:{kind}", {path.name: path.read_bytes()}, path.name,
                          path.name, "pds3", ("virtis", "cube")))
    safe = write_safe_product(work / "safe", size_10m=24, zip=True, driver="GTiff", seed=2)
    seeds.append(Seed("s2zip:synthetic", {safe.name: safe.read_bytes()}, safe.name, safe.name,
                      None, ("sentinel2",)))
    return seeds


def corpus(data: Path, work: Path) -> list[Seed]:
    return real_seeds(data) + synthetic_seeds(work)


# --- mutations -------------------------------------------------------------------------------

def _header_end(data: bytes, label: str | None) -> int:
    if label == "pds3":
        m = re.search(rb"\r?\nEND\s*\r?\n", data[:200_000])
        return m.end() if m else min(len(data), 4096)
    if label in ("envi", "xml"):
        return len(data)
    return min(len(data), 4096)


def _position(rng: random.Random, data: bytes, label: str | None) -> int:
    if not data:
        return 0
    end = _header_end(data, label) if rng.random() < 0.5 else len(data)
    return rng.randrange(max(1, end))


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, str]:
    """The mutated main file and a short description of the mutation."""
    data = seed.files[seed.main]
    kinds = ["truncate", "bitflip", "bytes", "zeros", "extend", "dims"]
    if seed.label:
        kinds += ["label", "label"]
    kind = rng.choice(kinds)
    if kind == "truncate":
        at = _position(rng, data, seed.label)
        return data[:at], f"truncate@{at}"
    if kind == "bitflip":
        out = bytearray(data)
        spots = [_position(rng, data, seed.label) for _ in range(rng.randint(1, 8))]
        for at in spots:
            if out:
                out[at] ^= 1 << rng.randrange(8)
        return bytes(out), f"bitflip@{','.join(map(str, spots[:3]))}"
    if kind == "bytes":
        at = _position(rng, data, seed.label)
        n = rng.randint(1, 16)
        fill = rng.choice([bytes([rng.randrange(256) for _ in range(n)]), b"\x00" * n,
                           b"\xff" * n, b"\x7f" * n, b"\x80" * n])
        return data[:at] + fill + data[at + n:], f"bytes@{at}+{n}"
    if kind == "zeros":
        at = _position(rng, data, seed.label)
        n = rng.randint(16, 4096)
        return data[:at] + b"\x00" * min(n, max(0, len(data) - at)) + data[at + n:], \
            f"zeros@{at}+{n}"
    if kind == "extend":
        if rng.random() < 0.5 or not data:
            return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 1000))), \
                "extend:random"
        a = rng.randrange(len(data))
        return data + data[a:a + rng.randint(1, 4096)], f"extend:copy@{a}"
    if kind == "label":
        return _edit_label(data, seed.label, rng)
    return _absurd_dims(data, seed.label, rng)


_LINE = re.compile(rb"^[ \t]*([\^A-Za-z][\w: ^-]*?)[ \t]*=[ \t]*([^\r\n]*)", re.M)


def _edit_label(data: bytes, label: str | None, rng: random.Random) -> tuple[bytes, str]:
    end = _header_end(data, label)
    head, tail = data[:end], data[end:]
    lines = head.split(b"\n")
    i = rng.randrange(len(lines))
    how = rng.choice(["value", "value", "delete", "duplicate", "swap", "garbage"])
    if how == "value":
        m = _LINE.match(lines[i].decode("latin-1").encode("latin-1"))
        if m:
            value = rng.choice(ODD_VALUES).encode()
            lines[i] = lines[i][:m.start(2)] + value
            return b"\n".join(lines) + tail, f"label:{m.group(1).decode()[:20]}={value[:20]!r}"
        how = "garbage"
    if how == "delete":
        del lines[i]
    elif how == "duplicate":
        lines.insert(i, lines[i])
    elif how == "swap":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines.insert(i, rng.choice([b"OBJECT = QUBE", b"END_OBJECT = X", b"GROUP = G",
                                    b"A = (1, (2, (3", b'B = "unterminated', b"/* open comment",
                                    b"<?xml version='1.0'?><x>", b"{", b"}"]))
    return b"\n".join(lines) + tail, f"label:{how}@{i}"


def _absurd_dims(data: bytes, label: str | None, rng: random.Random) -> tuple[bytes, str]:
    if label in DIM_KEYS:
        keys = DIM_KEYS[label]
        end = _header_end(data, label)
        for key in rng.sample(keys, len(keys)):
            pattern = re.compile(rb"(^[ \t]*" + re.escape(key.encode()) + rb"[ \t]*=[ \t]*)"
                                 rb"([^\r\n]*)", re.M | re.I)
            m = pattern.search(data[:end])
            if m:
                n = rng.choice(HUGE)
                value = (f"({n}, {rng.choice(HUGE)}, {rng.choice(HUGE)})"
                         if m.group(2).startswith(b"(") else str(n)).encode()
                return data[:m.start(2)] + value + data[m.end(2):], f"dims:{key}={value[:40]!r}"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_dims(data, rng)
    return _edit_label(data, label, rng) if label else (data, "dims:none")


def _tiff_dims(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Set a size tag of the first IFD (width, length, tile sizes, samples, bits) to an
    absurd value."""
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return data, "dims:tiff-no-ifd"
    (count,) = struct.unpack_from(order + "H", data, ifd)
    tags = []
    for k in range(min(count, 200)):
        at = ifd + 2 + 12 * k
        if at + 12 > len(data):
            break
        tag, typ = struct.unpack_from(order + "HH", data, at)
        if tag in (256, 257, 258, 277, 278, 322, 323) and typ in (3, 4):
            tags.append((at, tag, typ))
    if not tags:
        return data, "dims:tiff-no-size-tag"
    at, tag, typ = rng.choice(tags)
    value = rng.choice(HUGE) % (2**16 if typ == 3 else 2**32)
    out = bytearray(data)
    fmt = order + ("H" if typ == 3 else "I")
    struct.pack_into(fmt, out, at + 8, value)
    return bytes(out), f"dims:tiff-tag{tag}={value}"


def make_case(seeds: Sequence[Seed], run_seed: int, index: int) -> tuple[Case, Seed, bytes]:
    rng = random.Random(run_seed * 1_000_003 + index)
    seed = seeds[rng.randrange(len(seeds))]
    data, what = mutate(seed, rng)
    reader = rng.choice(seed.readers)
    return Case(index, seed.name, what, reader), seed, data


# --- reading ---------------------------------------------------------------------------------

def _exercise(cube: Any) -> None:
    bands, lines, samples = cube.shape
    avail = getattr(cube, "lines_available", lines)
    if bands * avail * samples <= LOAD_LIMIT:
        cube.load()
    elif avail and samples:
        cube.window(slice(0, min(avail, 4)), slice(0, min(samples, 4)))
    if avail and samples and bands:
        if bands * samples <= LOAD_LIMIT:
            cube.read_lines(0, 1)
        cube.spectrum(0, 0)
    with contextlib.suppress(AttributeError):
        cube.close()


def _read_pds3(path: Path) -> None:
    from parsers import pds3

    _exercise(pds3.read(path))


def _read_virtis(path: Path) -> None:
    from parsers import virtis

    _exercise(virtis.read(path))


def _read_cube(path: Path) -> None:
    from parsers.cube import open_cube

    _exercise(open_cube(path))


def _read_sentinel2(path: Path) -> None:
    from parsers import sentinel2

    stack = sentinel2.read(path)
    stack.usable()
    stack.summary()


READERS: dict[str, Callable[[Path], None]] = {
    "pds3": _read_pds3, "virtis": _read_virtis, "cube": _read_cube, "sentinel2": _read_sentinel2,
}


def judge(case: Case, seed: Seed, data: bytes, workdir: Path) -> Result:
    """Write the mutated product under ``workdir``, read it, classify what happened."""
    from parsers.errors import UserError

    folder = Path(tempfile.mkdtemp(dir=workdir))
    try:
        for rel, content in seed.files.items():
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data if rel == seed.main else content)
        t0 = time.perf_counter()
        outcome, detail = "ok", ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                READERS[case.reader](folder / seed.open)
        except UserError as exc:
            outcome, detail = "refused", _first_line(exc)
        except Exception as exc:  # the finding: name it and where it came from
            outcome, detail = "crash", f"{type(exc).__name__}: {_first_line(exc)} [{_where(exc)}]"
        return Result(case, outcome, time.perf_counter() - t0, detail)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/parsers/" in f.filename] or frames
    f = ours[-1]
    return f"{Path(f.filename).name}:{f.lineno}"


# --- workers ---------------------------------------------------------------------------------

def _worker(conn: Any, data_dir: str, work_dir: str, run_seed: int, indices: list[int],
            address_space: int) -> None:
    import logging
    import resource

    os.environ.setdefault("CPL_LOG", os.devnull)  # GDAL's own messages
    logging.disable(logging.CRITICAL)
    if address_space:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    seeds = load_corpus(Path(data_dir), Path(work_dir))
    from parsers.pds3_label import parse_with_pvl

    parse_with_pvl(["A = 1\nEND\n"])  # start the lenient parser's child once, not in a case
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="worker-"))
    for i in indices:
        case, seed, data = make_case(seeds, run_seed, i)
        conn.send(("start", i, case))
        conn.send(("done", i, judge(case, seed, data, scratch)))
    conn.send(("rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    conn.send(("end",))


_CORPUS: list[Seed] | None = None


def load_corpus(data: Path, work: Path) -> list[Seed]:
    """The corpus (built once per process; the synthetic seeds are written under ``work``)."""
    global _CORPUS
    if _CORPUS is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _CORPUS = corpus(data, work / f"seeds-{os.getpid()}")
    return _CORPUS


def run(cases: int, *, seed: int = 0, start: int = 0, workers: int = 1,
        data: Path, work: Path | None = None, address_space: int = ADDRESS_SPACE,
        progress: Callable[[Report], None] | None = None) -> Report:
    """Run cases ``start .. start + cases - 1`` of run ``seed`` on ``workers`` processes."""
    report = Report()
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        if work is None:
            shm = Path("/dev/shm")
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="fuzz-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None)))
        shares = [list(range(start + w, start + cases, workers)) for w in range(workers)]
        for result in _drive(shares, data, work, seed, address_space, report):
            report.add(result)
            if progress is not None and report.cases % 500 == 0:
                progress(report)
        report.seconds = time.monotonic() - t0
        if report.slow:  # again, three times each, one worker: preemption is not slowness
            again = [[r.case.index for r in report.slow for _ in range(3)]]
            best: dict[int, float] = {}
            for r in _drive(again, data, work, seed, address_space, Report()):
                best[r.case.index] = min(best.get(r.case.index, r.seconds), r.seconds)
            report.remeasured(best)
    return report


def _drive(shares: list[list[int]], data: Path, work: Path, run_seed: int,
           address_space: int, report: Report) -> Iterator[Result]:
    """Run each share in a worker; replace a worker that hangs or dies, skipping its case."""
    ctx = mp.get_context("spawn")
    live: dict[Any, tuple[Any, list[int], float | None, Case | None]] = {}

    def launch(todo: list[int]) -> None:
        if not todo:
            return
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, str(data), str(work), run_seed, todo,
                                                 address_space), daemon=True)
        proc.start()
        child.close()
        live[parent] = (proc, todo, None, None)

    for share in shares:
        launch(share)
    while live:
        ready = mp.connection.wait(list(live), timeout=1.0)
        now = time.monotonic()
        for conn in ready:
            proc, todo, started, case = live[conn]
            try:
                msg = conn.recv()
            except EOFError:
                proc.join()
                del live[conn]
                if case is not None:  # died in the middle of a case
                    yield Result(case, "death", now - (started or now),
                                 f"worker died (exit {proc.exitcode})")
                    launch(todo[todo.index(case.index) + 1:])
                continue
            if msg[0] == "start":
                live[conn] = (proc, todo, now, msg[2])
            elif msg[0] == "done":
                live[conn] = (proc, todo, None, None)
                yield msg[2]
            elif msg[0] == "rss":
                report.max_rss_mib = max(report.max_rss_mib, msg[1])
            elif msg[0] == "end":
                proc.join()
                del live[conn]
        for conn, (proc, todo, started, case) in list(live.items()):
            if started is not None and now - started > HANG_S:
                proc.kill()
                proc.join()
                del live[conn]
                yield Result(case, "hang", now - started, f"killed after {HANG_S:.0f} s")
                launch(todo[todo.index(case.index) + 1:])


def reproduce(index: int, run_seed: int, data: Path, out: Path) -> Path:
    """Write the product of case ``index`` under ``out`` (to debug a finding by hand)."""
    seeds = load_corpus(data, out)
    case, seed, mutated = make_case(seeds, run_seed, index)
    folder = out / f"case-{run_seed}-{index}"
    for rel, content in seed.files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(mutated if rel == seed.main else content)
    (folder / "CASE.txt").write_text(f"{case}\nreader: {case.reader}, open: {seed.open}\n")
    return folder


def summary(report: Report) -> str:
    """Counts, worst time, peak memory, and the findings (one line each)."""
    out = io.StringIO()
    counts = ", ".join(f"{report.outcomes[o]} {o}" for o in OUTCOMES)
    out.write(f"{report.cases} cases in {report.seconds:.0f} s: {counts}; slowest case "
              f"{report.max_seconds:.3f} s ({len(report.slow)} over {SLOW_S:g} s; "
              f"{report.slow_at_first} during the run, measured again best of 3); peak worker "
              f"RSS {report.max_rss_mib:.0f} MiB\n")
    out.write("cases per reader: " + ", ".join(f"{k} {v}" for k, v in
                                               sorted(report.by_reader.items())) + "\n")
    for r in report.failures + report.slow:
        out.write(f"  {r.outcome} {r.seconds:.2f} s case {r.case.index} {r.case.seed} "
                  f"{r.case.mutation} -> {r.case.reader}: {r.detail}\n")
    return out.getvalue()
