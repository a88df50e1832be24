"""The output lock (parsers.locks): one writer per output, stale locks taken over."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from parsers import locks
from parsers.locks import Holder, OutputLockedError, lock_path, output_lock

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from parsers.locks import output_lock
    with output_lock(sys.argv[1], "holder --test"):
        Path(sys.argv[2]).write_text("locked")
        time.sleep(float(sys.argv[3]))
""")


def _holder(out: Path, tmp_path: Path, seconds: float) -> subprocess.Popen:
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(ready), str(seconds)])
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "holder did not start"
        time.sleep(0.05)
    return proc


def test_second_writer_fails_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "tiles" / "virtis"
    proc = _holder(out, tmp_path, 30)
    try:
        with pytest.raises(OutputLockedError) as err, output_lock(out, "second", wait=0):
            pass
        message = str(err.value)
        assert message.startswith(f"{out}: another run is writing it: PID {proc.pid} on "
                                  f"{socket.gethostname()} since ")
        assert "(holder --test)" in message and "SSCNET_LOCK_WAIT" in message
        assert "\n" not in message
    finally:
        proc.kill()
        proc.wait()


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "split.json"
    proc = _holder(out, tmp_path, 1.0)
    monkeypatch.setenv("SSCNET_LOCK_WAIT", "30")
    t0 = time.monotonic()
    with output_lock(out, "waiter") as me:
        record = json.loads(lock_path(out).read_text())
        assert record["pid"] == os.getpid() == me.pid and record["command"] == "waiter"
    assert time.monotonic() - t0 < 25
    assert proc.wait() == 0 and not lock_path(out).exists()


def test_lock_released_and_removed_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), output_lock(out, "a"):
        assert lock_path(out).is_file()
        raise RuntimeError("stage failed")
    assert not lock_path(out).exists()
    with output_lock(out, "b"):
        pass
    assert not lock_path(out).exists()


def test_lock_of_a_killed_run_is_taken_over_and_its_temporaries_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiles"
    out.mkdir()
    (out / ".train.h5.abc123.h5.tmp").write_bytes(b"half a file")
    (out / "x.tif.part").write_bytes(b"a resumable download")
    (out / "test.h5").write_bytes(b"a finished file")
    proc = _holder(out, tmp_path, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Holder.parse(lock_path(out).read_text()).pid == proc.pid  # left behind
    with output_lock(out, "rerun"):
        pass
    note = capsys.readouterr().err
    assert f"left locked by PID {proc.pid}" in note and "taking over" in note
    assert sorted(p.name for p in out.iterdir()) == ["test.h5", "x.tif.part"]
    assert not lock_path(out).exists()


def test_without_flock_a_dead_holder_is_taken_over_and_a_live_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    out = tmp_path / "stats.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = Holder(int(dead.stdout), socket.gethostname(), "2026-01-01T00:00:00", "old run")
    lock_path(out).write_text(stale.dumps())
    with output_lock(out, "new run"):
        assert Holder.parse(lock_path(out).read_text()).command == "new run"
    alive = Holder(os.getppid(), socket.gethostname(), "2026-01-01T00:00:00", "live run")
    lock_path(out).write_text(alive.dumps())
    with pytest.raises(OutputLockedError, match="live run"), output_lock(out, "x", wait=0.3):
        pass
    elsewhere = Holder(1, "another-host.example", "2026-01-01T00:00:00", "cluster job")
    lock_path(out).write_text(elsewhere.dumps())
    with pytest.raises(OutputLockedError, match=r"on another-host\.example"), \
            output_lock(out, "x", wait=0):
        pass


def test_bad_wait_setting_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSCNET_LOCK_WAIT", "soon")
    with pytest.raises(locks.UserError, match="SSCNET_LOCK_WAIT='soon': expected a number"), \
            output_lock(tmp_path / "o", "x"):
        pass
