"""pipeline.download_pds against a synthetic PSA archive served on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import socket
import time
from pathlib import Path

import pytest

from parsers.errors import ParamsError
from parsers.pds3_table import read_rows
from pipeline import download_pds
from pipeline.download_pds import (
    DownloadPdsParams,
    channel_of,
    kind_of,
    listing_children,
    parse_index_label,
    parse_time,
    row_path,
)
from pipeline.fetch import PART_SUFFIX
from pipeline.manifest import Manifest
from pipeline.synthetic.psa_archive import build_psa_archive, write_index
from pipeline.synthetic.servers.files import Faults, serve_directory

# Tiny synthetic cubes fit several byte layouts; the reader warns about that, which is fine here.
pytestmark = pytest.mark.filterwarnings("ignore:.*ambiguous layout")

DS1 = "RO-C-VIRTIS-3-ESC1-MTP010-V2.0"
DS2 = "RO-C-VIRTIS-3-ESC1-MTP011-V2.0"  # written in lower case, like the SBN mirror
DS3 = "RO-C-VIRTIS-3-ESC1-MTP012-V2.0"  # no index: listing fallback
DIMS = {"bands": 32, "samples": 16, "lines": 16}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("psa")
    products = build_psa_archive(
        root, datasets=[DS1, DS2, DS3], channels=["VIRTIS_M_VIS", "VIRTIS_M_IR"],
        kinds=("cal", "geo"), products_per_dataset=3, seed=3, lowercase=[DS2], no_index=[DS3],
        **DIMS,
    )
    return root, products


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    # the repository's params.yaml names the channel and type; the dataclass keeps every row
    path.write_text("download_pds:\n  backoff: 0.01\n  jobs: 3\n  connect_timeout: 2.0\n"
                    "  channels: [VIRTIS_M_VIS]\n  product_types: [cal]\n")
    return path


def run(url: str, out: Path, params: Path, *extra: str) -> int:
    return download_pds.main(
        ["--params", str(params), "--base-url", url, "--out", str(out), "--no-progress", *extra]
    )


def manifest_of(out: Path) -> Manifest:
    return Manifest.read(out / "manifest.json")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_partials(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(PART_SUFFIX) or ".tmp" in p.name]


# ------------------------------------------------------------------------- selection


def test_selection_by_channel_kind_count(archive, tmp_path, params_file, capsys) -> None:
    root, products = archive
    out = tmp_path / "out"
    with serve_directory(root) as url:
        rc = run(url, out, params_file, "--dataset", DS1, "--channel", "VIRTIS_M_IR",
                 "--product-type", "GEO", "--max-files", "2", "--selection", "first")
    assert rc == 0, capsys.readouterr().err
    m = manifest_of(out)
    expected = [p for p in products if p.dataset == DS1 and p.channel == "VIRTIS_M_IR"
                and p.kind == "geo"][:2]
    assert [f.path for f in m.files] == sorted(f"{DS1}/{p.path}" for p in expected)
    for f in m.files:
        assert f.meta["channel"] == "VIRTIS_M_IR" and f.meta["kind"] == "geo"
        assert f.meta["source"] == "index" and f.meta["index_row"]["CHANNEL_ID"] == "VIRTIS_M_IR"
        assert f.product_id == Path(f.path).name
        assert sha(out / f.path) == f.sha256 == sha(root / f.path)
        assert f.size == (root / f.path).stat().st_size
    assert m.source == "virtis" and m.query["channels"] == ["VIRTIS_M_IR"]
    assert m.query["product_types"] == ["geo"]
    assert "2 fetched" in capsys.readouterr().out


def test_spread_selection_and_time_range(archive, tmp_path, params_file, capsys) -> None:
    root, products = archive
    vis_cal = [p for p in products if p.dataset == DS1 and p.channel == "VIRTIS_M_VIS"
               and p.kind == "cal"]
    with serve_directory(root) as url:
        assert run(url, tmp_path / "a", params_file, "--dataset", DS1, "--max-files", "2",
                   "--dry-run") == 0
        lines = capsys.readouterr().out.splitlines()
        assert [ln.split("\t")[0].rsplit("/", 1)[1] for ln in lines] == [
            vis_cal[0].product_id, vis_cal[-1].product_id]  # spread: first and last
        assert not (tmp_path / "a").exists()
        t = vis_cal[1].start_time
        assert run(url, tmp_path / "b", params_file, "--dataset", DS1, "--max-files", "0",
                   "--start", t, "--stop", "2014-08-06T11:30") == 0
    m = manifest_of(tmp_path / "b")
    assert [f.product_id for f in m.files] == [vis_cal[1].product_id]
    assert m.files[0].meta["start_time"] == t


def test_several_datasets_lowercase_and_listing_fallback(archive, tmp_path, params_file) -> None:
    root, _ = archive
    out = tmp_path / "out"
    with serve_directory(root) as url:
        rc = run(url, out, params_file, "--dataset", DS1, "--dataset", DS2, "--dataset", DS3,
                 "--max-files", "0", "--max-per-dataset", "2")
        listing_pages = [r.path for r in url.log if r.path.endswith("/")]
    assert rc == 0
    m = manifest_of(out)
    by_ds = {}
    for f in m.files:
        by_ds.setdefault(f.meta["dataset"], []).append(f)
    assert {k: len(v) for k, v in by_ds.items()} == {DS1: 2, DS2: 2, DS3: 2}
    assert all(f.path.startswith(DS2.lower() + "/data/") for f in by_ds[DS2])
    assert all(f.meta["source"] == "listing" and "index_row" not in f.meta for f in by_ds[DS3])
    assert all(f.meta["channel"] == "VIRTIS_M_VIS" and f.meta["kind"] == "cal"
               for f in m.files)
    # the listing walk pruned the other channel's and the GEO folders
    assert not [p for p in listing_pages if "VIRTIS_M_IR" in p or "/GEO/" in p]
    for f in m.files:
        assert sha(out / f.path) == sha(root / f.path)


def test_file_spec_index_style(tmp_path, params_file) -> None:
    root = tmp_path / "psa"
    build_psa_archive(root, datasets=[DS1], products_per_dataset=2, index_style="file_spec",
                      **DIMS)
    with serve_directory(root) as url:
        assert run(url, tmp_path / "out", params_file, "--dataset", DS1) == 0
    m = manifest_of(tmp_path / "out")
    assert len(m.files) == 2
    assert "FILE_SPECIFICATION_NAME" in m.files[0].meta["index_row"]


def test_index_with_header_row_and_structure_file(tmp_path, params_file) -> None:
    """Two PDS3 variants: COLUMN objects in a ^STRUCTURE file, a header row before the rows."""
    root = tmp_path / "psa"
    build_psa_archive(root, datasets=[DS1], products_per_dataset=2, **DIMS)
    index = root / DS1 / "INDEX"
    label = (index / "INDEX.LBL").read_text()
    first = label.index("  OBJECT             = COLUMN")
    cut = label.rindex("END_OBJECT         = COLUMN") + len("END_OBJECT         = COLUMN")
    (index / "INDEX.FMT").write_text(label[first:cut] + "\r\nEND\r\n")
    label = label[:first] + '  ^STRUCTURE         = "INDEX.FMT"' + label[cut:]
    label = label.replace('^INDEX_TABLE         = "INDEX.TAB"', '^INDEX_TABLE = ("INDEX.TAB", 2)')
    (index / "INDEX.LBL").write_text(label)
    tab = (index / "INDEX.TAB").read_bytes()
    row_bytes = tab.index(b"\n") + 1
    # a row that must be skipped: read as data, it would select a product the server lacks
    header = tab[:row_bytes].replace(b"V1_00377420372", b"V1_99999999999")
    assert header != tab[:row_bytes]
    (index / "INDEX.TAB").write_bytes(header + tab)
    with serve_directory(root) as url:
        assert run(url, tmp_path / "out", params_file, "--dataset", DS1) == 0
    m = manifest_of(tmp_path / "out")
    assert len(m.files) == 2 and all(f.meta["source"] == "index" for f in m.files)
    assert not [f for f in m.files if "9999" in f.path]


# ------------------------------------------------------------------------- transfer faults


def test_resume_after_mid_file_drop_and_retry_after_503(archive, tmp_path, params_file) -> None:
    root, _ = archive
    faults = Faults(drop_after={"*.CAL": 10_000},
                    fail_first={"*/INDEX/INDEX.TAB": 2, "*/INDEX/INDEX.LBL": 3})
    out = tmp_path / "out"
    with serve_directory(root, faults) as url:
        rc = run(url, out, params_file, "--dataset", DS1, "--max-files", "3")
        cal_gets = url.requests_for("*.CAL")
        tab_statuses = [r.status for r in url.requests_for("*/INDEX/INDEX.TAB")]
    assert rc == 0
    assert tab_statuses == [503, 503, 200]
    m = manifest_of(out)
    assert len(m.files) == 3
    ranged = [r for r in cal_gets if r.range]
    assert len(cal_gets) == 6 and len(ranged) == 3
    assert all(r.status == 206 and r.range.startswith("bytes=") for r in ranged)
    for f in m.files:
        assert sha(out / f.path) == sha(root / f.path) == f.sha256
    assert no_partials(out)


def test_corrupt_product_rejected_and_not_kept(archive, tmp_path, params_file, capsys) -> None:
    root, products = archive
    vis_cal = [p for p in products if p.dataset == DS1 and p.channel == "VIRTIS_M_VIS"
               and p.kind == "cal"]
    bad = vis_cal[1]
    good = (root / DS1 / bad.path).read_bytes()
    faults = Faults(replace={f"{DS1}/{bad.path}": good[: len(good) - 3000]})  # truncated
    out = tmp_path / "out"
    with serve_directory(root, faults) as url:
        rc = run(url, out, params_file, "--dataset", DS1, "--max-files", "3")
    err = capsys.readouterr().err
    assert rc == 2
    assert "1 of 3 products failed" in err and bad.product_id in err and "truncated" in err
    assert not (out / DS1 / bad.path).exists() and no_partials(out)
    m = manifest_of(out)
    assert sorted(f.product_id for f in m.files) == sorted(
        p.product_id for p in vis_cal if p is not bad)
    # once the server is fixed, a rerun fetches only the missing file
    with serve_directory(root) as url:
        assert run(url, out, params_file, "--dataset", DS1, "--max-files", "3") == 0
        assert [r.path for r in url.requests_for("*.CAL")] == [f"{DS1}/{bad.path}"]


def test_rerun_downloads_nothing(archive, tmp_path, params_file, capsys) -> None:
    root, _ = archive
    out = tmp_path / "out"
    with serve_directory(root) as url:
        assert run(url, out, params_file, "--dataset", DS1, "--dataset", DS3) == 0
        first = len(url.requests_for("*.CAL"))
        before = (out / "manifest.json").read_bytes()
        capsys.readouterr()
        assert run(url, out, params_file, "--dataset", DS1, "--dataset", DS3) == 0
        assert len(url.requests_for("*.CAL")) == first == 4
    assert "0 fetched, 4 already present" in capsys.readouterr().out
    assert (out / "manifest.json").read_bytes() == before


# ------------------------------------------------------------------------- --locked


def test_locked_reproduces_and_detects_change(archive, tmp_path, params_file, capsys) -> None:
    root, _ = archive
    first = tmp_path / "first"
    with serve_directory(root) as url:
        assert run(url, first, params_file, "--dataset", DS1, "--max-files", "3") == 0
        lock = first / "manifest.json"
        again = tmp_path / "again"
        assert run(url, again, params_file, "--locked", str(lock)) == 0
        index_reads = len(url.requests_for("*/INDEX/*"))
        assert index_reads == 2  # the locked run reads no index
    a, b = manifest_of(first), manifest_of(again)
    assert [(f.path, f.url, f.sha256) for f in a.files] == [
        (f.path, f.url, f.sha256) for f in b.files]
    assert a.query == b.query
    for f in b.files:
        assert sha(again / f.path) == f.sha256

    changed = a.files[1]
    data = bytearray((root / changed.path).read_bytes())
    data[-100] ^= 0xFF  # same size, one byte differs
    third = tmp_path / "third"
    # a new server (another port): --base-url moves the locked URLs to it
    with serve_directory(root, Faults(replace={changed.path: bytes(data)})) as url:
        rc = run(url, third, params_file, "--locked", str(lock))
        assert sorted(r.path for r in url.requests_for("*.CAL")) == sorted(f.path for f in a.files)
    err = capsys.readouterr().err
    assert rc == 2
    assert "could not be reproduced" in err and "sha256" in err and changed.path in err
    assert not (third / changed.path).exists() and no_partials(third)
    assert not (third / "manifest.json").exists()


def test_locked_missing_lock_is_a_clear_error(tmp_path, params_file, capsys) -> None:
    rc = run("http://127.0.0.1:9/", tmp_path / "o", params_file,
             "--locked", str(tmp_path / "nope.json"))
    assert rc == 2 and "manifest not found" in capsys.readouterr().err


# ------------------------------------------------------------------------- safety and errors


def test_dotdot_path_in_index_refused(tmp_path, params_file, capsys) -> None:
    root = tmp_path / "psa"
    build_psa_archive(root, datasets=[DS1], products_per_dataset=2, **DIMS)
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "V1_00000000001.CAL").write_bytes(b"x")
    row = {"DATA_SET_ID": DS1, "PATH_NAME": "../../evil/", "FILE_NAME": "V1_00000000001.CAL",
           "PRODUCT_ID": "V1_00000000001.CAL", "START_TIME": "2014-08-06T09:00:00.000",
           "CHANNEL_ID": "VIRTIS_M_VIS"}
    good = [{"DATA_SET_ID": DS1, "PATH_NAME": "DATA/STP034/CAL/VIRTIS_M_VIS/",
             "FILE_NAME": "V1_00377420372.CAL", "PRODUCT_ID": "V1_00377420372.CAL",
             "CHANNEL_ID": "VIRTIS_M_VIS"}]
    write_index(root / DS1 / "INDEX", [row, *good])
    out = tmp_path / "work" / "out"
    with serve_directory(root) as url:
        rc = run(url, out, params_file, "--dataset", DS1, "--selection", "first")
        assert not url.requests_for("*.CAL")
    err = capsys.readouterr().err
    assert rc == 2 and "refusing path" in err and "V1_00000000001.CAL" in err
    assert not out.exists() and not (tmp_path / "work" / "evil").exists()


def test_unreachable_archive_fails_fast(tmp_path, params_file, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    rc = run(f"http://127.0.0.1:{port}/psa/", tmp_path / "o", params_file)
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and elapsed < 5
    assert f"http://127.0.0.1:{port}/psa/" in err and "--base-url" in err
    assert "python -m pipeline.demo" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_unknown_dataset_says_so(archive, tmp_path, params_file, capsys) -> None:
    root, _ = archive
    with serve_directory(root) as url:
        rc = run(url, tmp_path / "o", params_file, "--dataset", "RO-C-VIRTIS-3-ESC1-MTP01-V2.0")
    err = capsys.readouterr().err
    assert rc == 2 and "data set 'RO-C-VIRTIS-3-ESC1-MTP01-V2.0' not found" in err
    assert "did you mean" in err and DS1 in err


def test_server_error_on_product_is_reported(archive, tmp_path, params_file, capsys) -> None:
    root, _ = archive
    with serve_directory(root, Faults(not_found={"*V1_00377427572.CAL"})) as url:
        rc = run(url, tmp_path / "o", params_file, "--dataset", DS1, "--max-files", "3")
    err = capsys.readouterr().err
    assert rc == 2 and "HTTP 404" in err and "V1_00377427572.CAL" in err


def test_bad_index_label_falls_back_to_listing(tmp_path, params_file, capsys) -> None:
    root = tmp_path / "psa"
    build_psa_archive(root, datasets=[DS1], products_per_dataset=2, **DIMS)
    (root / DS1 / "INDEX" / "INDEX.LBL").write_text("OBJECT = INDEX_TABLE\nEND\n")
    with serve_directory(root) as url:
        rc = run(url, tmp_path / "o", params_file, "--dataset", DS1)
    assert rc == 0
    assert "walking the listings instead" in capsys.readouterr().err
    assert {f.meta["source"] for f in manifest_of(tmp_path / "o").files} == {"listing"}


# ------------------------------------------------------------------------- params


def test_params_file_and_flag_overrides(archive, tmp_path, capsys) -> None:
    root, _ = archive
    params = tmp_path / "params.yaml"
    params.write_text(
        "download_pds:\n"
        f"  datasets: [{DS1}]\n  channels: [VIRTIS_M_IR]\n  product_types: [CAL]\n"
        "  max_files: 1\n  selection: first\n  backoff: 0.01\n"
        f"  out: {tmp_path / 'from_params'}\n"
    )
    with serve_directory(root) as url:
        assert download_pds.main(["--params", str(params), "--base-url", url,
                                  "--no-progress"]) == 0
        assert download_pds.main(["--params", str(params), "--base-url", url, "--no-progress",
                                  "--max-files", "2", "--out", str(tmp_path / "flags")]) == 0
    assert [f.product_id[:2] for f in manifest_of(tmp_path / "from_params").files] == ["I1"]
    assert len(manifest_of(tmp_path / "flags").files) == 2
    params.write_text("download_pds:\n  chanels: [VIRTIS_M_IR]\n")
    assert download_pds.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "download_pds: unknown key 'chanels' (did you mean 'channels'?)" in err
    params.write_text("download_pds:\n  channels: [VIRTIS M VIS]\n")
    assert download_pds.main(["--params", str(params)]) == 2
    assert "'VIRTIS M VIS' is not a channel name" in capsys.readouterr().err
    params.write_text("download_pds:\n  product_types: [c/al]\n")
    assert download_pds.main(["--params", str(params)]) == 2
    assert "'c/al' is not raw/QUB" in capsys.readouterr().err


def settings_from(params: Path | None, *argv: str) -> DownloadPdsParams:
    head = ["--params", str(params)] if params is not None else []
    return download_pds.load_params(download_pds.build_parser().parse_args([*head, *argv]))


def test_every_setting_has_a_generated_flag_with_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        download_pds.main(["--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    group = shown.split("overrides of the params (DownloadPdsParams keys):")[1]
    for f in dataclasses.fields(DownloadPdsParams):
        flag = "--" + f.name.replace("_", "-")
        assert flag in group, flag
        assert f.metadata.get("help"), f.name
    for old in ("--dataset ID", "--channel CH", "--product-type T", "--start TIME",
                "--stop TIME", "--no-verify", "--max-files N", "--locked MANIFEST"):
        assert old in group, old
    assert "--dry-run" in shown and "--no-progress" in shown and "--params" in shown


@pytest.mark.parametrize(("old", "new"), [
    (["--dataset", DS1, "--dataset", DS2], ["--datasets", f"{DS1},{DS2}"]),
    (["--channel", "virtis_m_ir", "--channel", "VIRTIS_H"], ["--channels", "VIRTIS_M_IR,VIRTIS_H"]),
    (["--product-type", "QUB", "--product-type", "cal"], ["--product-types", "raw,CAL"]),
    (["--start", "2014-08-06", "--stop", "2014-08-07T00:00"],
     ["--start-time", "2014-08-06", "--stop-time", "2014-08-07T00:00"]),
    (["--no-verify"], ["--no-verify-products"]),
    (["--locked", "m.json", "--out", "d"], ["--out", "d", "--locked", "m.json"]),
])
def test_old_flag_spellings_give_the_same_settings_as_the_generated_ones(
        tmp_path, monkeypatch, old, new) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"download_pds:\n  datasets: [{DS3}]\n  channels: [VIRTIS_M_VIS]\n"
                      "  product_types: [geo]\n  max_files: 2\n")
    from_file = settings_from(params)
    assert settings_from(params, *old) == settings_from(params, *new) != from_file
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")  # no params.yaml here: defaults plus flags
    assert settings_from(None, *old) == settings_from(None, *new) != DownloadPdsParams()


def test_first_list_flag_replaces_the_file_and_zero_means_no_limit_in_both(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"download_pds:\n  datasets: [{DS3}]\n  max_files: 0\n"
                      "  max_per_dataset: 0\n")
    got = settings_from(params, "--dataset", DS1, "--dataset", DS2, "--channel", "virtis-m-ir")
    assert got.datasets == (DS1, DS2) and got.channels == ("VIRTIS_M_IR",)
    assert got.max_files is None and got.max_per_dataset is None
    assert settings_from(params, "--max-files", "3").max_files == 3
    params.write_text("download_pds:\n  max_files: 2\n")
    assert settings_from(params, "--max-files", "0").max_files is None
    params.write_text("download_pds:\n  max_files: -1\n")
    with pytest.raises(ParamsError, match="max_files must be at least 1"):
        settings_from(params)


def test_params_defaults_point_at_the_real_psa() -> None:
    p = DownloadPdsParams()
    assert p.base_url.startswith("https://archives.esac.esa.int/psa/ftp/INTERNATIONAL-ROSETTA")
    assert p.datasets == ("RO-C-VIRTIS-3-ESC1-MTP010-V2.0",)
    assert p.channels == () and p.product_types == ()  # no filter: every row
    assert p.verify_products and p.max_files == 4
    with pytest.raises(ValueError, match="only http"):
        DownloadPdsParams(base_url="ftp://x/")
    assert DownloadPdsParams(product_types=("QUB", "GE5")).product_types == ("raw", "geo")
    assert DownloadPdsParams(product_types=("IMG", ".lbl")).product_types == ("img", "lbl")
    assert DownloadPdsParams(product_types=("cal", "ANY")).product_types == ()
    assert DownloadPdsParams(channels=("virtis-m-ir", "any")).channels == ()
    assert DownloadPdsParams(channels=("virtis-m-ir",)).channels == ("VIRTIS_M_IR",)
    with pytest.raises((ValueError, ParamsError)):
        DownloadPdsParams(start_time="yesterday")


# ------------------------------------------------------------------------- helpers


def test_parse_time_forms() -> None:
    assert parse_time("2014-08-06T10:11:12.345") == parse_time("2014-218T10:11:12.345")
    assert parse_time("2014-08-06T10:11:12.345678901Z").microsecond == 345678
    assert parse_time("2014-08-06").hour == 0
    assert parse_time("N/A") is None and parse_time("garbage") is None


def test_kind_channel_and_row_path() -> None:
    assert kind_of("x/V1_1.cal") == "cal" and kind_of("a.QUB") == "raw"
    assert kind_of("a.GE5") == "geo" and kind_of("a.LBL") == "lbl" and kind_of("README") is None
    assert channel_of("data/stp1/cal/virtis_m_ir/i1_1.cal") == "VIRTIS_M_IR"
    assert channel_of("T1_00383120708.GEO") == "VIRTIS_H"
    assert row_path({"PATH_NAME": "DATA/X/", "FILE_NAME": "A.CAL"}) == "DATA/X/A.CAL"
    assert row_path({"FILE_SPECIFICATION_NAME": "DATA/B.CAL", "FILE_NAME": "B.CAL"}) == (
        "DATA/B.CAL")
    assert row_path({"FILE_NAME": "B.CAL"}) is None


def test_index_label_columns_are_read_not_assumed(tmp_path) -> None:
    lbl, tab = write_index(tmp_path, [{"DATA_SET_ID": DS1, "PATH_NAME": "DATA/",
                                       "FILE_NAME": "V1_1.CAL", "PRODUCT_ID": "V1_1.CAL"}])
    table = parse_index_label(lbl.read_text(), "INDEX.LBL")
    assert table.file_name == "INDEX.TAB"
    assert [c.name for c in table.columns][:3] == ["DATA_SET_ID", "PATH_NAME", "FILE_NAME"]
    (row,) = read_rows(table, tab.read_bytes(), "INDEX.TAB").rows
    assert row["PATH_NAME"] == "DATA/" and row["FILE_NAME"] == "V1_1.CAL"
    assert tab.read_bytes().endswith(b"\r\n")


def test_listing_children_skips_parent_sort_and_foreign_links() -> None:
    page = ('<a href="?C=N;O=D">Name</a><a href="/psa/">Parent Directory</a>'
            '<a href="DATA/">DATA/</a><a href="V1_1.CAL">V1_1.CAL</a>'
            '<a href="http://elsewhere/x.CAL">x</a><a href="../up/">up</a>'
            '<a href="/psa/DS/INDEX/">INDEX/</a>')
    assert listing_children(page, "http://h/psa/DS/") == [
        ("DATA", True), ("INDEX", True), ("V1_1.CAL", False)]


def test_manifest_entries_have_the_shared_format(archive, tmp_path, params_file) -> None:
    root, _ = archive
    with serve_directory(root) as url:
        assert run(url, tmp_path / "o", params_file, "--dataset", DS1, "--max-files", "1") == 0
    data = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert set(data) == {"source", "query", "files"}
    assert set(data["files"][0]) == {"product_id", "path", "url", "size", "sha256", "meta"}
    shutil.rmtree(tmp_path / "o")
