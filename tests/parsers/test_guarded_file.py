"""GuardedFile with its direct-I/O tail: the same bytes as a plain file, whatever the writes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.atomic import DIRECT_BLOCK, GuardedFile

WINDOW = 3 * DIRECT_BLOCK  # tiny, so that a few writes cross it, spill it and jump past it


def _direct_file(path: Path) -> GuardedFile:
    guard = GuardedFile(path, direct=True, window=WINDOW)
    if not guard.direct:
        guard.close()
        pytest.skip(f"{path.parent}: the file system refuses O_DIRECT")
    return guard


def _apply(ops, guard: GuardedFile, model: bytearray) -> list[tuple[bytes, bytes]]:
    """Run ``ops`` on ``guard`` and on the in-memory ``model``; the reads of both."""
    reads = []
    for op, pos, size, fill in ops:
        guard.seek(pos)
        if op == "write":
            data = bytes([fill]) * size
            assert guard.write(data) == size
            if size and len(model) < pos:
                model.extend(bytes(pos - len(model)))
            model[pos:pos + size] = data
        elif op == "truncate":
            guard.truncate(pos)
            del model[pos:]
            model.extend(bytes(pos - len(model)))
        else:
            reads.append((guard.read(size), bytes(model[pos:pos + size])))
    return reads


OPS = st.lists(st.tuples(
    st.sampled_from(["write", "write", "write", "write", "read", "truncate"]),
    st.integers(0, 12 * DIRECT_BLOCK), st.integers(0, 5 * DIRECT_BLOCK), st.integers(1, 255),
), max_size=30)


@settings(max_examples=150, deadline=None)
@given(ops=OPS)
def test_any_writes_give_the_bytes_of_a_plain_file(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("direct") / "f.bin"
    guard = _direct_file(path)
    model = bytearray()
    reads = _apply(ops, guard, model)
    guard.seek(0, os.SEEK_END)
    assert guard.tell() == len(model)
    guard.close()
    for got, want in reads:
        assert got == want
    assert path.read_bytes() == bytes(model)


def test_appends_go_through_o_direct_and_metadata_through_the_page_cache(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 256, n, np.uint8).tobytes() for n in (5000, 70001, 9, 123457)]
    guard = _direct_file(tmp_path / "f.bin")
    guard.write(b"H" * 96)  # a header, rewritten at the end as HDF5 does
    for c in chunks:
        guard.write(c)
    guard.seek(10)
    guard.write(b"updated")
    guard.flush()
    assert guard.direct
    guard.close()
    want = bytearray(b"H" * 96 + b"".join(chunks))
    want[10:17] = b"updated"
    assert (tmp_path / "f.bin").read_bytes() == bytes(want)


def test_hdf5_file_is_byte_identical_with_and_without_direct_io(tmp_path):
    tiles = np.random.default_rng(1).normal(size=(12, 8, 64, 64)).astype("f4")
    files = {}
    for direct in (False, True):
        path = tmp_path / f"{direct}.h5"
        guard = GuardedFile(path, direct=direct, window=1 << 20)
        with h5py.File(guard, "w", libver=("v110", "latest")) as f:
            ds = f.create_dataset("t", shape=(0, 8, 64, 64), maxshape=(None, 8, 64, 64),
                                  chunks=(1, 8, 64, 64), dtype="f4", fletcher32=True)
            for i, tile in enumerate(tiles):
                ds.resize(i + 1, axis=0)
                ds.id.write_direct_chunk((i, 0, 0, 0), tile.tobytes() + b"\0" * 4)
            f.attrs["note"] = "x" * 100_000
        guard.close()
        files[direct] = path.read_bytes()
    assert files[True] == files[False]
    with h5py.File(tmp_path / "True.h5") as f:
        assert f["t"].shape == (12, 8, 64, 64) and f.attrs["note"] == "x" * 100_000


def test_without_o_direct_it_writes_through_the_page_cache(tmp_path):
    guard = GuardedFile(tmp_path / "f.bin")
    guard.write(b"abc")
    assert not guard.direct
    guard.close()
    assert (tmp_path / "f.bin").read_bytes() == b"abc"


def test_a_file_system_refusing_o_direct_at_open_gets_buffered_writes(tmp_path, monkeypatch):
    real_open = os.open

    def refusing(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    guard = GuardedFile(tmp_path / "f.bin", direct=True, window=WINDOW)
    assert not guard.direct
    guard.write(b"x" * 50_000)
    guard.close()
    assert (tmp_path / "f.bin").read_bytes() == b"x" * 50_000


def test_a_refused_alignment_falls_back_mid_file(tmp_path, monkeypatch):
    guard = _direct_file(tmp_path / "f.bin")
    guard.write(b"a" * 20_000)  # spills whole blocks through O_DIRECT
    real_pwrite = os.pwrite

    def refusing(fd, data, pos):
        if fd == guard._tail.direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, pos)

    monkeypatch.setattr(os, "pwrite", refusing)
    guard.write(b"b" * 30_000)
    assert not guard.direct
    guard.close()
    assert (tmp_path / "f.bin").read_bytes() == b"a" * 20_000 + b"b" * 30_000


LIMITED = """
import resource, signal, sys
from parsers.atomic import GuardedFile
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
guard = GuardedFile(sys.argv[1], direct=True, window=16384)
for i in range(40):
    guard.write(bytes([i]) * 5000)
guard.close()
print(guard.error.errno if guard.error else 0, guard.wanted)
"""


def test_a_refused_direct_write_is_recorded_not_raised(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(tmp_path / "f.bin")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(errno.EFBIG), "200000"]
    assert (tmp_path / "f.bin").stat().st_size <= 100_000
