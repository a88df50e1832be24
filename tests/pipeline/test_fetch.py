"""The HTTP engine (pipeline.fetch), the manifest and the loopback static server."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path

import pytest
import requests

from parsers.atomic import DiskFullError
from parsers.errors import UserError
from pipeline.fetch import (
    FetchError,
    FetchJob,
    check_url,
    download,
    fetch_all,
    make_session,
    part_path,
    safe_join,
    sha256_file,
)
from pipeline.manifest import (
    Manifest,
    ManifestEntry,
    check_files,
    check_locked,
    compare,
    entries_for,
    locked_jobs,
)
from pipeline.synthetic.servers.files import Faults, serve_directory


def _bytes(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    (root / "DATA" / "A").mkdir(parents=True)
    (root / "DATA" / "A" / "f1.bin").write_bytes(_bytes(300_000, 1))
    (root / "DATA" / "A" / "f2.bin").write_bytes(_bytes(5_000, 2))
    (root / "DATA" / "A" / "f3.bin").write_bytes(_bytes(70_000, 3))
    (root / "small.txt").write_bytes(b"hello")
    return root


@pytest.fixture
def session() -> requests.Session:
    s = make_session(retries=3, backoff=0.01, timeout=(2, 5))
    yield s
    s.close()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------- safe_join / URLs


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../x", "a/../../x", "a/..", "C:/x", "c:\\x", "..\\x", "", "  "]
)
def test_safe_join_refuses_escapes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UserError, match="refusing path"):
        safe_join(tmp_path, bad)


def test_safe_join_accepts_relative(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "DATA/STP001/./x.CAL") == tmp_path.resolve() / "DATA/STP001/x.CAL"


def test_safe_join_refuses_symlink_out(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(UserError, match="outside"):
        safe_join(tmp_path / "out", "link/secret")


@pytest.mark.parametrize("url", ["ftp://h/x", "file:///etc/passwd", "h/x", "http:///x"])
def test_only_http_urls(url: str, tmp_path: Path, session) -> None:
    with pytest.raises(UserError, match="only http"):
        check_url(url)
    with pytest.raises(UserError, match="only http"):
        download(session, url, tmp_path / "x")


def test_tls_verification_cannot_be_disabled(session) -> None:
    assert session.verify is True
    with pytest.raises(ValueError, match="cannot be disabled"):
        session.get("https://127.0.0.1:9/", verify=False)


# ---------------------------------------------------------------- static server


def test_server_range_head_listing(tree: Path) -> None:
    data = (tree / "DATA/A/f1.bin").read_bytes()
    with serve_directory(tree) as url:
        r = requests.get(url + "DATA/A/f1.bin", headers={"Range": "bytes=10-19"}, timeout=5)
        assert r.status_code == 206 and r.content == data[10:20]
        assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        r = requests.get(url + "DATA/A/f1.bin", headers={"Range": "bytes=-5"}, timeout=5)
        assert r.content == data[-5:]
        r = requests.get(url + "DATA/A/f1.bin", headers={"Range": f"bytes={len(data)}-"}, timeout=5)
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
        r = requests.head(url + "DATA/A/f1.bin", timeout=5)
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(data)
        r = requests.get(url + "DATA/A", timeout=5)  # redirected to DATA/A/
        assert r.status_code == 200 and r.url.endswith("DATA/A/")
        assert '<a href="f1.bin">f1.bin</a>' in r.text and "Index of /DATA/A/" in r.text
        assert "Parent Directory" in r.text
        assert requests.get(url + "nope", timeout=5).status_code == 404
        assert requests.get(url + "DATA/../../etc/passwd", timeout=5).status_code in (404, 200)
        assert url.requests_for("DATA/A/f1.bin", "HEAD")


def test_server_refuses_traversal(tree: Path) -> None:
    with serve_directory(tree / "DATA") as url:
        host, port = url[len("http://"):].rstrip("/").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /../small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 404")


# ---------------------------------------------------------------- download()


def test_download_basic(tree: Path, tmp_path: Path, session) -> None:
    data = (tree / "DATA/A/f1.bin").read_bytes()
    seen = []
    with serve_directory(tree) as url:
        dest = tmp_path / "o" / "f1.bin"
        res = download(session, url + "DATA/A/f1.bin", dest, progress=seen.append)
    assert res.ok and res.size == len(data) and res.sha256 == _sha(data)
    assert (tmp_path / "o/f1.bin").read_bytes() == data
    assert not part_path(tmp_path / "o/f1.bin").exists()
    assert sum(seen) == len(data) and res.transferred == len(data) and not res.resumed


def test_resume_after_mid_body_drop(tree: Path, tmp_path: Path, session) -> None:
    data = (tree / "DATA/A/f1.bin").read_bytes()
    with serve_directory(tree, Faults(drop_after={"DATA/A/f1.bin": 100_000})) as url:
        res = download(session, url + "DATA/A/f1.bin", tmp_path / "f1.bin")
        gets = url.requests_for("DATA/A/f1.bin")
    assert (tmp_path / "f1.bin").read_bytes() == data and res.sha256 == _sha(data)
    assert res.resumed and len(gets) == 2
    assert gets[0].range is None and gets[0].sent == 100_000
    assert gets[1].range.startswith("bytes=") and gets[1].status == 206


def test_resume_sends_if_range_and_restarts_on_change(tree: Path, tmp_path: Path, session) -> None:
    path = tree / "DATA/A/f1.bin"
    data = path.read_bytes()

    def touch(n: int) -> None:  # the file "changes" on the server during the transfer
        os.utime(path, (1_000_000_000, 1_000_000_000))

    with serve_directory(tree, Faults(drop_after={"DATA/A/f1.bin": 100_000})) as url:
        res = download(session, url + "DATA/A/f1.bin", tmp_path / "a.bin", progress=touch)
        gets = url.requests_for("DATA/A/f1.bin")
    assert [g.status for g in gets] == [200, 200]  # If-Range did not match: whole file again
    assert gets[1].range is not None and not res.resumed
    assert (tmp_path / "a.bin").read_bytes() == data and res.sha256 == _sha(data)


def test_resume_existing_part_hashes_prefix(tree: Path, tmp_path: Path, session) -> None:
    data = (tree / "DATA/A/f1.bin").read_bytes()
    dest = tmp_path / "f1.bin"
    part_path(dest).write_bytes(data[:123_456])
    with serve_directory(tree) as url:
        res = download(session, url + "DATA/A/f1.bin", dest, expected_sha256=_sha(data))
        (get,) = url.requests_for("DATA/A/f1.bin")
    assert get.range == "bytes=123456-" and get.status == 206
    assert res.transferred == len(data) - 123_456 and res.sha256 == _sha(data)
    assert dest.read_bytes() == data


def test_disk_full_names_the_file_and_the_bytes_needed(tree: Path, tmp_path: Path,
                                                       session) -> None:
    def boom(n: int) -> None:
        raise OSError(28, "No space left on device")

    dest = tmp_path / "f1.bin"
    with serve_directory(tree) as url, pytest.raises(DiskFullError) as err:
        download(session, url + "DATA/A/f1.bin", dest, progress=boom)
    message = str(err.value)
    assert message.startswith(f"{dest}: no space left on device")
    assert "needs 300,000 bytes" in message and "\n" not in message
    assert not dest.exists() and not part_path(dest).exists()


def test_disk_full_keeps_the_previous_file(tree: Path, tmp_path: Path, session) -> None:
    def boom(n: int) -> None:
        raise OSError(122, "Disk quota exceeded")

    dest = tmp_path / "f1.bin"
    dest.write_bytes(b"the previous good copy")
    with serve_directory(tree) as url, pytest.raises(DiskFullError, match="previous file is"), \
            pytest.warns(UserWarning, match="22 bytes instead of the expected 300,000"):
        download(session, url + "DATA/A/f1.bin", dest, expected_size=300_000, progress=boom)
    assert dest.read_bytes() == b"the previous good copy" and not part_path(dest).exists()


def test_fetch_all_stops_on_a_full_disk(tree: Path, tmp_path: Path, session,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self, n: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipeline.fetch.ByteBar.__call__", full)
    with serve_directory(tree) as url:
        jobs = [FetchJob(url + f"DATA/A/f{i}.bin", tmp_path / f"f{i}.bin") for i in (1, 2, 3)]
        with pytest.raises(DiskFullError, match=r"f1\.bin: no space left on device"):
            fetch_all(session, jobs, max_workers=1, progress=False)
    assert not list(tmp_path.glob("f*.bin*"))


def test_server_ignoring_range_restarts(tree: Path, tmp_path: Path, session) -> None:
    data = (tree / "DATA/A/f1.bin").read_bytes()
    dest = tmp_path / "f1.bin"
    part_path(dest).write_bytes(b"garbage that is not the prefix")
    with serve_directory(tree, Faults(ignore_range={"*"})) as url:
        res = download(session, url + "DATA/A/f1.bin", dest)
    assert dest.read_bytes() == data and res.sha256 == _sha(data) and not res.resumed


def test_part_longer_than_file_restarts(tree: Path, tmp_path: Path, session) -> None:
    data = (tree / "DATA/A/f2.bin").read_bytes()
    dest = tmp_path / "f2.bin"
    part_path(dest).write_bytes(b"x" * (len(data) + 10))
    with serve_directory(tree) as url:
        res = download(session, url + "DATA/A/f2.bin", dest)
    assert dest.read_bytes() == data and res.ok


def test_server_bandwidth_cap(tree: Path, tmp_path: Path, session) -> None:
    with serve_directory(tree, Faults(bandwidth=1_000_000)) as url:
        t0 = time.monotonic()
        res = download(session, url + "DATA/A/f1.bin", tmp_path / "f1.bin")
        elapsed = time.monotonic() - t0
    assert res.ok and 0.25 <= elapsed < 5  # 300 kB at 1 MB/s


def test_retry_after_503(tree: Path, tmp_path: Path, session) -> None:
    with serve_directory(tree, Faults(fail_first={"*.bin": 2})) as url:
        res = download(session, url + "DATA/A/f2.bin", tmp_path / "f2.bin")
        statuses = [r.status for r in url.requests_for("DATA/A/f2.bin")]
    assert res.ok and statuses == [503, 503, 200]


def test_429_respects_retry_after(tree: Path, tmp_path: Path, session) -> None:
    with serve_directory(tree, Faults(rate_limit={"small.txt": (1, 1)})) as url:
        t0 = time.monotonic()
        res = download(session, url + "small.txt", tmp_path / "s.txt")
        elapsed = time.monotonic() - t0
    assert res.ok and elapsed >= 0.9


def test_persistent_503_gives_up_naming_url(tree: Path, tmp_path: Path, session) -> None:
    with serve_directory(tree, Faults(fail_first={"small.txt": 99})) as url, \
            pytest.raises(FetchError, match=r"small\.txt: HTTP 503"):
        download(session, url + "small.txt", tmp_path / "s.txt")
    assert not (tmp_path / "s.txt").exists()


def test_404_is_an_error(tree: Path, tmp_path: Path, session) -> None:
    with serve_directory(tree) as url, pytest.raises(FetchError, match="HTTP 404"):
        download(session, url + "missing.bin", tmp_path / "m.bin")


def test_unreachable_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    s = make_session(retries=2, backoff=0.05, timeout=(1, 1))
    t0 = time.monotonic()
    with pytest.raises(FetchError, match=f"127.0.0.1:{port}/x: cannot connect"):
        download(s, f"http://127.0.0.1:{port}/x", tmp_path / "x")
    assert time.monotonic() - t0 < 3


def test_sha_mismatch_never_replaces_good_file(tree: Path, tmp_path: Path, session) -> None:
    good = (tree / "DATA/A/f2.bin").read_bytes()
    dest = tmp_path / "f2.bin"
    dest.write_bytes(b"old good copy")
    faults = Faults(replace={"DATA/A/f2.bin": b"changed on the server"})
    with serve_directory(tree, faults) as url, pytest.raises(FetchError, match="sha256"), \
            pytest.warns(UserWarning, match="f2.bin: its sha256 differs from the expected"):
        download(session, url + "DATA/A/f2.bin", dest, expected_sha256=_sha(good))
    assert dest.read_bytes() == b"old good copy"
    assert not part_path(dest).exists()


def test_size_mismatch_rejected(tree: Path, tmp_path: Path, session) -> None:
    with serve_directory(tree) as url, pytest.raises(FetchError, match="expected 10"):
        download(session, url + "small.txt", tmp_path / "s.txt", expected_size=10)
    assert not (tmp_path / "s.txt").exists() and not part_path(tmp_path / "s.txt").exists()


def test_verify_rejection_keeps_nothing(tree: Path, tmp_path: Path, session) -> None:
    def verify(path: Path) -> None:
        assert path.name.endswith(".part")
        raise UserError("label does not parse")

    with serve_directory(tree) as url, pytest.raises(FetchError, match="label does not parse"):
        download(session, url + "small.txt", tmp_path / "s.txt", verify=verify)
    assert list(tmp_path.iterdir()) == [tmp_path / "srv"]


def test_flipped_byte_in_a_kept_file_is_reported_and_fetched_again(
    tree: Path, tmp_path: Path, session
) -> None:
    data = (tree / "DATA/A/f3.bin").read_bytes()
    dest = tmp_path / "f3.bin"
    damaged = bytearray(data)
    damaged[12_345] ^= 0x10
    dest.write_bytes(bytes(damaged))
    with serve_directory(tree) as url, \
            pytest.warns(UserWarning, match=r"f3\.bin: its sha256 differs .* fetching it again"):
        res = download(session, url + "DATA/A/f3.bin", dest, len(data), _sha(data))
    assert not res.skipped and dest.read_bytes() == data


def test_complete_file_is_skipped(tree: Path, tmp_path: Path, session) -> None:
    data = (tree / "DATA/A/f2.bin").read_bytes()
    dest = tmp_path / "f2.bin"
    dest.write_bytes(data)
    with serve_directory(tree) as url:
        res = download(session, url + "DATA/A/f2.bin", dest, len(data), _sha(data))
        assert res.skipped and res.transferred == 0 and url.log == []


def test_fetch_all_parallel_with_failures(tree: Path, tmp_path: Path, session) -> None:
    names = ["f1.bin", "f2.bin", "nope.bin", "f3.bin"]
    with serve_directory(tree, Faults(fail_first={"DATA/A/f3.bin": 1})) as url:
        jobs = [
            FetchJob(url + f"DATA/A/{n}", tmp_path / "o" / n, meta={"product_id": n.upper()})
            for n in names
        ]
        results = fetch_all(session, jobs, max_workers=3, progress=False)
    assert [r.job.dest.name for r in results] == names
    assert [r.ok for r in results] == [True, True, False, True]
    assert "HTTP 404" in results[2].error
    for r in results:
        if r.ok:
            assert r.path.read_bytes() == (tree / "DATA/A" / r.path.name).read_bytes()
    entries = entries_for(results, tmp_path / "o")
    assert [e.product_id for e in entries] == ["F1.BIN", "F2.BIN", "F3.BIN"]
    assert entries[0].path == "f1.bin"


def test_fetch_all_rejects_duplicate_destinations(tmp_path: Path, session) -> None:
    jobs = [FetchJob("http://127.0.0.1:9/a", tmp_path / "a")] * 2
    with pytest.raises(ValueError, match="same destination"):
        fetch_all(session, jobs, progress=False)


# ---------------------------------------------------------------- manifest


def _entry(path: str, content: bytes, url: str = "http://127.0.0.1:9/") -> ManifestEntry:
    return ManifestEntry(Path(path).stem, path, url + path, len(content), _sha(content),
                         {"row": {"A": "1"}})


def test_manifest_roundtrip_and_atomic_write(tmp_path: Path) -> None:
    m = Manifest("virtis", {"dataset": ["X"]}, [_entry("b/y.CAL", b"yy"), _entry("a/x.CAL", b"x")])
    path = m.write(tmp_path / "manifest.json")
    data = json.loads(path.read_text())
    assert [f["path"] for f in data["files"]] == ["a/x.CAL", "b/y.CAL"]
    assert set(data["files"][0]) == {"product_id", "path", "url", "size", "sha256", "meta"}
    back = Manifest.read(path)
    assert back.source == "virtis" and back.by_path()["b/y.CAL"].meta == {"row": {"A": "1"}}
    assert [p.name for p in os.scandir(tmp_path)] == ["manifest.json"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{", "not valid JSON"),
        ("[]", "not a manifest"),
        ('{"files": [{"path": "x"}]}', "lacks product_id"),
        ('{"files": [{"product_id": "x", "path": "x", "url": "u", "size": -1, "sha256": "0"}]}',
         "non-negative"),
        ('{"files": [{"product_id": "x", "path": "x", "url": "u", "size": 1, "sha256": "0"}]}',
         "64 hex"),
    ],
)
def test_manifest_read_errors(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(UserError, match=match):
        Manifest.read(tmp_path / "m.json")
    with pytest.raises(UserError, match="not found"):
        Manifest.read(tmp_path / "none.json")


def test_locked_compare_and_check(tmp_path: Path) -> None:
    lock = Manifest("virtis", {}, [_entry("a.CAL", b"a"), _entry("b.CAL", b"b")])
    same = Manifest("virtis", {}, [_entry("b.CAL", b"b"), _entry("a.CAL", b"a")])
    assert compare(lock, same) == []
    changed = Manifest("virtis", {}, [_entry("a.CAL", b"A"), _entry("c.CAL", b"c")])
    problems = compare(lock, changed)
    assert any("b.CAL: in the lock but not fetched" in p for p in problems)
    assert any("c.CAL: fetched but not in the lock" in p for p in problems)
    assert any(p.startswith("a.CAL: sha256") for p in problems)
    with pytest.raises(UserError, match="does not match the lock"):
        check_locked(lock, changed, "lock.json")
    jobs = locked_jobs(lock, tmp_path)
    assert jobs[0].expected_sha256 == _sha(b"a") and jobs[0].dest == tmp_path.resolve() / "a.CAL"
    (tmp_path / "a.CAL").write_bytes(b"a")
    (tmp_path / "b.CAL").write_bytes(b"X")
    assert check_files(lock, tmp_path) == ["b.CAL: sha256 differs from the manifest"]
    bad = Manifest("virtis", {}, [_entry("../evil", b"e")])
    with pytest.raises(UserError, match="refusing path"):
        locked_jobs(bad, tmp_path)


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(_bytes(3_000_000))
    assert sha256_file(tmp_path / "f") == _sha(_bytes(3_000_000))
