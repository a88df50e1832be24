"""pipeline.download_pds on a REAL PDS3 volume index: Cassini VIMS COVIMS_0094 (PDS Rings node).

The vendored label and table (tests/data/realapi/pds_index/) are served on 127.0.0.1 in the
Rings node layout (``COVIMS_0094/index/index.lbl`` next to the table its pointer names), as
they are and with the defects real indexes have. The expected selection is computed here with
Python's csv module from the table bytes, independently of the stage's reader.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import time
from pathlib import Path

import pytest

from pipeline import download_pds
from pipeline.manifest import Manifest
from pipeline.synthetic.servers.files import serve_directory

VOLUME = "COVIMS_0094"
TAB_NAME = "COVIMS_0094_index.tab"
ROW_BYTES = 1089


@pytest.fixture(scope="module")
def real_index(tmp_path_factory) -> tuple[bytes, bytes]:
    data = Path(__file__).resolve().parents[1] / "data" / "realapi" / "pds_index"
    return ((data / "COVIMS_0094_index.lbl").read_bytes(),
            (data / "COVIMS_0094_index.tab").read_bytes())


def oracle_rows(tab: bytes) -> list[dict[str, str]]:
    """FILE_NAME, PATH_NAME, START_TIME of every row, read with the csv module."""
    rows = []
    for rec in csv.reader(io.StringIO(tab.decode("latin-1"), newline="")):
        rec = [v.strip() for v in rec]
        rows.append({"FILE_NAME": rec[0], "PATH_NAME": rec[1], "START_TIME": rec[3]})
    return rows


def archive_path(row: dict[str, str]) -> str:
    return f"{VOLUME}/{row['PATH_NAME'].lstrip('/')}/{row['FILE_NAME']}"


def spread(n: int, k: int) -> list[int]:
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def serve_volume(root: Path, label: bytes, tab: bytes, products: list[str], qube: bytes
                 ) -> None:
    index = root / VOLUME / "index"
    index.mkdir(parents=True)
    (index / "index.lbl").write_bytes(label)
    (index / TAB_NAME).write_bytes(tab)
    for rel in products:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(qube)


def params(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "params.yaml"
    body = "download_pds:\n  backoff: 0.01\n  connect_timeout: 2.0\n  selection: spread\n"
    body += "".join(f"  {k}: {v}\n" for k, v in extra.items())
    path.write_text(body)
    return path


def run(url: str, out: Path, params_path: Path, *extra: str) -> int:
    return download_pds.main(["--params", str(params_path), "--base-url", url, "--out",
                              str(out), "--no-progress", "--dataset", VOLUME, *extra])


def last_row_start(tab: bytes) -> int:
    return tab.rindex(b"\n", 0, len(tab) - 1) + 1


def one_byte_short(tab: bytes) -> bytes:
    """The last row loses one padding blank inside a field: 1088 bytes, fields shifted."""
    start = last_row_start(tab)
    cut = tab.index(b"        ", start)
    return tab[:cut] + tab[cut + 1:]


def tab_separated(tab: bytes) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\r\n")
    for rec in csv.reader(io.StringIO(tab.decode("latin-1"), newline="")):
        writer.writerow(rec)
    return out.getvalue().encode("latin-1")


VARIANTS = {
    "as_published": lambda t: t,
    "last_row_one_byte_short": one_byte_short,
    "last_row_without_cr": lambda t: t[:-2] + b"\n",
    "last_row_without_line_end": lambda t: t[:-2],
    "tab_separated": tab_separated,
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_real_vims_index_selects_and_fetches(variant, real_index, tmp_path, realdata, capsys):
    label, tab = real_index
    served = VARIANTS[variant](tab)
    if variant == "last_row_one_byte_short":
        assert len(served) == len(tab) - 1 and len(served.splitlines()[-1]) == ROW_BYTES - 3
    rows = oracle_rows(tab)
    assert len(rows) == 1711
    chosen = [archive_path(rows[i]) for i in spread(len(rows), 3)]
    qube = realdata("cassini_vims/v1815243432_1.qub").read_bytes()
    root = tmp_path / "rings"
    serve_volume(root, label, served, chosen, qube)
    out = tmp_path / "out"
    with serve_directory(root) as url:
        rc = run(url, out, params(tmp_path), "--max-files", "3")
        assert rc == 0, capsys.readouterr().err
        fetched = [r.path for r in url.log if r.path.endswith(".qub")]
    assert sorted(fetched) == sorted(chosen)
    m = Manifest.read(out / "manifest.json")
    assert [f.path for f in m.files] == chosen
    by_path = {archive_path(r): r for r in rows}
    for f in m.files:
        row = by_path[f.path]
        assert f.meta["start_time"] == row["START_TIME"]
        assert f.meta["kind"] == "raw" and f.meta["source"] == "index"
        assert f.meta["index_row"]["FILE_NAME"] == row["FILE_NAME"]
        assert f.meta["index_row"]["TARGET_NAME"]  # a column far into the row
        assert f.sha256 == hashlib.sha256(qube).hexdigest() == hashlib.sha256(
            (out / f.path).read_bytes()).hexdigest()
    # the last row's fields are right even where the row is a byte short
    last = m.files[-1].meta["index_row"]
    assert last["PATH_NAME"] == rows[-1]["PATH_NAME"] and last["VOLUME_ID"] == VOLUME
    assert last["SC_PLANET_POSITION_VECTOR"].count(",") == 2


def test_dry_run_plans_every_row_and_fetches_nothing(real_index, tmp_path, capsys):
    label, tab = real_index
    rows = oracle_rows(tab)
    root = tmp_path / "rings"
    serve_volume(root, label, one_byte_short(tab), [], b"")
    with serve_directory(root) as url:
        rc = run(url, tmp_path / "out", params(tmp_path), "--max-files", "0", "--dry-run")
        requested = [r.path for r in url.log]
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    assert lines == [f"{archive_path(r)}\t-\t{r['START_TIME']}" for r in rows]
    assert "1711 product(s) would be fetched" in captured.err
    assert not [p for p in requested if p.endswith(".qub")]
    assert not (tmp_path / "out").exists()


def test_filters_on_a_volume_without_channels(real_index, tmp_path, capsys):
    label, tab = real_index
    rows = oracle_rows(tab)
    root = tmp_path / "rings"
    serve_volume(root, label, tab, [], b"")
    late = [r for r in rows if r["START_TIME"] >= "2017-09-10"]
    assert 0 < len(late) < len(rows)
    with serve_directory(root) as url:
        assert run(url, tmp_path / "o", params(tmp_path), "--max-files", "0", "--dry-run",
                   "--product-type", "QUB", "--channel", "any", "--start", "2017-09-10") == 0
        assert len(capsys.readouterr().out.splitlines()) == len(late)
        rc = run(url, tmp_path / "o", params(tmp_path), "--product-type", "cal")
    err = capsys.readouterr().err
    assert rc == 2 and "nothing to download" in err
    assert "no product matches channels any, types ['cal']" in err and "'raw'" in err


def test_stale_rows_and_file_records_are_read_past(real_index, tmp_path, capsys):
    label, tab = real_index
    stale = label.replace(b"FILE_RECORDS            = 1711", b"FILE_RECORDS            = 1700")
    stale = stale.replace(b"ROWS                    = 1711", b"ROWS                    = 1700")
    assert stale.count(b"1700") == 2
    rows = oracle_rows(tab)
    root = tmp_path / "rings"
    serve_volume(root, stale, tab, [], b"")
    with serve_directory(root) as url:
        assert run(url, tmp_path / "o", params(tmp_path), "--max-files", "0", "--dry-run") == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1711
    assert captured.out.splitlines()[-1].startswith(archive_path(rows[-1]))
    assert "ROWS = 1700, the table holds 1711 rows" in captured.err


@pytest.mark.parametrize("fallback", [True, False])
def test_label_that_hangs_pvl_is_a_fast_clean_answer(fallback, real_index, tmp_path,
                                                      realdata, capsys):
    """One stray '==>' after a value: pvl 1.3 loops forever on it; the stage must not."""
    label, tab = real_index
    broken = label.replace(b"ROWS                    = 1711",
                           b"ROWS                    = 1711 ==>")
    rows = oracle_rows(tab)
    products = [archive_path(r) for r in rows[:2]]
    root = tmp_path / "rings"
    serve_volume(root, broken, tab, products,
                 realdata("cassini_vims/v1815243432_1.qub").read_bytes())
    t0 = time.monotonic()
    with serve_directory(root) as url:
        rc = run(url, tmp_path / "o", params(tmp_path, listing_fallback=str(fallback).lower()),
                 "--max-files", "0")
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert elapsed < 10
    label_url = f"{url}{VOLUME}/index/index.lbl"
    if fallback:
        assert rc == 0, err
        assert f"warning: {label_url}: cannot parse label" in err
        assert "walking the listings instead" in err
        m = Manifest.read(tmp_path / "o" / "manifest.json")
        assert sorted(f.path for f in m.files) == sorted(products)
        assert {f.meta["source"] for f in m.files} == {"listing"}
    else:
        assert rc == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("python -m pipeline.download_pds: error:")
        assert label_url in lines[0] and "cannot parse label" in lines[0] and "'>'" in lines[0]
        assert not (tmp_path / "o").exists()
    shutil.rmtree(root)
