"""Atomic writes and the CLI error front shared by every tool."""

from __future__ import annotations

import os
import warnings

import pytest

from parsers.atomic import atomic_open, atomic_path
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
