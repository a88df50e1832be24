"""Atomic writes and the CLI error front shared by every tool."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import warnings

import pytest

from parsers.atomic import (
    DiskFullError,
    atomic_open,
    atomic_path,
    is_disk_full,
    remove_stale_temporaries,
)
from parsers.errors import EXIT_USER_ERROR, ProductError, UserError, cli_entry


def test_atomic_open_replaces_only_on_success(tmp_path):
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(dest) as fh:
        fh.write(b"partial")
        raise RuntimeError("writer failed")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_open(dest) as fh:
        fh.write(b"new")
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_keeps_suffix_and_creates_folders(tmp_path):
    dest = tmp_path / "a" / "b" / "tiles.h5"
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.endswith(".h5.tmp")
        tmp.write_bytes(b"x")
    assert dest.read_bytes() == b"x"
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_path_fails_when_writer_wrote_nothing(tmp_path):
    dest = tmp_path / "x.npy"
    with pytest.raises(FileNotFoundError), atomic_path(dest) as tmp:
        tmp.unlink()
    assert not dest.exists()


def test_cli_entry_turns_user_errors_into_one_line(capsys):
    @cli_entry("python -m demo.tool")
    def main(argv=None):
        if argv == ["bad"]:
            problem = "truncated: label needs 10 data bytes, file holds 4"
            raise ProductError("/data/V1_x.CAL", problem)
        warnings.warn("FILE_RECORDS says 149, file holds 148 records", stacklevel=1)
        return 0

    assert main(["ok"]) == 0
    assert capsys.readouterr().err == "warning: FILE_RECORDS says 149, file holds 148 records\n"
    assert main(["bad"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err == (
        "python -m demo.tool: error: V1_x.CAL: truncated: label needs 10 data bytes, file holds 4\n"
    )


def test_cli_entry_lets_bugs_raise():
    @cli_entry("tool")
    def main(argv=None):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        main([])
    assert issubclass(ProductError, UserError)


# ---------------------------------------------------------------- full disks, leftovers


def test_atomic_path_turns_a_full_disk_into_one_line(tmp_path):
    dest = tmp_path / "stats.json"
    dest.write_text("previous good")
    with pytest.raises(DiskFullError) as err, atomic_path(dest, needed=5000) as tmp:
        tmp.write_bytes(b"x" * 1234)
        raise OSError(errno.ENOSPC, "No space left on device")
    message = str(err.value)
    assert message.startswith(f"{dest}: no space left on device after 1,234 bytes; "
                              "needs about 5,000 bytes; ")
    assert "bytes free in" in message and message.endswith("the previous file is untouched")
    assert dest.read_text() == "previous good" and sorted(os.listdir(tmp_path)) == ["stats.json"]


def test_library_errors_without_errno_are_recognised():
    hdf5 = OSError("Can't write data (file write failed: errno = 28, error message = "
                   "'No space left on device')")
    assert is_disk_full(hdf5)
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError as inner:
            raise RuntimeError("writer failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("bad value"))


def test_user_errors_are_never_relabelled_as_a_full_disk(tmp_path):
    with pytest.raises(ProductError, match="file too large"), atomic_path(tmp_path / "x") as t:
        t.write_bytes(b"x")
        raise ProductError("cube.qub", "file too large for its label")


def test_remove_stale_temporaries_only_touches_writer_leftovers(tmp_path):
    out = tmp_path / "tiles"
    (out / "sub").mkdir(parents=True)
    for name in (".train.h5.x1.h5.tmp", "sub/.y.tif.x2.tif.tmp", "train.h5", "a.tif.part",
                 "notes.tmp"):
        (out / name).write_bytes(b"-")
    (tmp_path / ".split.json.x3.json.tmp").write_bytes(b"-")
    (tmp_path / ".other.json.x4.json.tmp").write_bytes(b"-")
    removed = remove_stale_temporaries(out)
    assert sorted(p.name for p in removed) == [".train.h5.x1.h5.tmp", ".y.tif.x2.tif.tmp"]
    assert remove_stale_temporaries(tmp_path / "split.json") == [
        tmp_path / ".split.json.x3.json.tmp"]
    assert (tmp_path / ".other.json.x4.json.tmp").exists()


GUARDED_H5 = """
import resource, sys
import numpy as np, h5py
from parsers.atomic import GuardedFile
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
guard = GuardedFile(sys.argv[1])
f = h5py.File(guard, "w")
ds = f.create_dataset("t", shape=(0, 8, 32, 32), maxshape=(None, 8, 32, 32),
                      chunks=(1, 8, 32, 32), dtype="f4", fletcher32=True)
for i in range(40):
    ds.resize(i + 1, axis=0)
    ds[i] = np.random.default_rng(i).random((8, 32, 32))
    f.flush()
    if guard.error is not None:
        break
f.close()
guard.close()
try:
    guard.check()
except OSError as exc:
    print("refused", exc.errno, i)
"""


def test_guarded_file_lets_hdf5_close_after_a_refused_write(tmp_path):
    # Without the guard HDF5 kills the process (SIGSEGV/SIGBUS) when it closes this file.
    proc = subprocess.run(
        [sys.executable, "-c", GUARDED_H5, str(tmp_path / "t.h5")], capture_output=True,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"refused {errno.EFBIG} ")


def test_cli_entry_reports_a_file_size_limit_instead_of_dying(tmp_path):
    script = (
        "import resource, sys\n"
        "from parsers.atomic import atomic_open\n"
        "from parsers.errors import cli_entry\n"
        "@cli_entry('writer')\n"
        "def main(argv):\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "    with atomic_open(sys.argv[1]) as fh:\n"
        "        fh.write(b'x' * 5000)\n"
        "    return 0\n"
        "raise SystemExit(main())\n"
    )
    out = tmp_path / "big.bin"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr
    assert proc.stderr.startswith(f"writer: error: {out}: file too large")
    assert "file-size limit 1,000 bytes" in proc.stderr and proc.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_one_line_folds_and_cuts_every_message_the_same_way() -> None:
    from parsers.errors import one_line, reason
    from parsers.raster import gdal_message

    assert one_line("a\n  b\tc") == "a b c"
    long = "word " * 100
    assert len(one_line(long, 50)) == 50 and one_line(long, 50).endswith("...")
    assert len(reason(OSError(long))) == 200
    # GDAL messages lose the file path (named once by the caller) and stay one line
    exc = OSError("'/very/long/path/x.tif' not recognized as\n a supported file format.")
    assert gdal_message(exc, "/very/long/path/x.tif") == \
        "<file> not recognized as a supported file format."
