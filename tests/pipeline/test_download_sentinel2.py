"""pipeline.download_sentinel2: the stac, cdse and dhus backends against loopback imitations.

Every test talks only to servers it starts on 127.0.0.1 (conftest sets NO_PROXY).
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rasterio")
pytest.importorskip("sentinelsat")

import rasterio

from pipeline.download_sentinel2 import DownloadSentinel2Params, load_bands, main
from pipeline.manifest import Manifest
from pipeline.synthetic.servers import cdse as fake_cdse
from pipeline.synthetic.servers import dhus as fake_dhus
from pipeline.synthetic.servers.files import Faults
from pipeline.synthetic.servers.sentinel2_hub import make_products
from pipeline.synthetic.servers.stac import build_stac_catalogue, serve_stac_catalogue

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _no_user_credentials(monkeypatch, tmp_path):
    """Keep the developer's ~/.netrc and credential variables out of the tests."""
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for var in ("CDSE_USERNAME", "CDSE_PASSWORD", "DHUS_USERNAME", "DHUS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)


def run_cli(tmp_path: Path, *args: str, **section) -> int:
    """main() with a params file holding ``section`` (fast retries) and the bands."""
    params = tmp_path / "params.yaml"
    body = {"download_sentinel2": {"backoff": 0.05, "retries": 3, "progress": False,
                                   **section},
            "datasets": {"sentinel2": {"kind": "sentinel2", "products": "x",
                                        "reader": {"bands": BANDS}}}}
    params.write_text(yaml.safe_dump(body), encoding="utf-8")
    return main(["--params", str(params), *args])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    # 4 items, cloud cover 5, 20, 60, 5 %: 3 pass max_cloud=30.
    return build_stac_catalogue(tmp_path_factory.mktemp("stac"), n_items=4, size=96)


@pytest.fixture(scope="module")
def fake_products(tmp_path_factory):
    # 4 SAFE zips, cloud cover 5, 12, 18, 70 %: 3 pass max_cloud=30.
    return make_products(tmp_path_factory.mktemp("safe"), 4)


def fresh(products):
    """Copies of the module's products, so a test may change them."""
    import dataclasses

    return [dataclasses.replace(p) for p in products]


# ------------------------------------------------------------------------------- stac
def test_stac_end_to_end_reads_windows_into_multiband_geotiffs(tmp_path, catalogue):
    out = tmp_path / "out"
    with serve_stac_catalogue(catalogue, page_cap=2) as url:
        rc = run_cli(tmp_path, "--stac-url", url, "--out", str(out), max_cloud=30.0)
        assert rc == 0
        files_log = list(url.files.log)
        api_log = list(url.log)
    man = Manifest.read(out / "manifest.json")
    assert man.source == "sentinel2"
    assert man.query["backend"] == "stac" and man.query["bands"] == BANDS
    assert sorted(f.product_id for f in man.files) == [
        "S2A_32TNR_20170301_0_L2A", "S2B_32TNR_20170311_0_L2A", "S2B_32TNR_20170331_0_L2A"]
    assert sum(1 for m, p in api_log if p.startswith("/search")) >= 2  # paged (page_cap=2)
    gets = [r for r in files_log if r.method == "GET"]
    assert gets and all(r.range for r in gets)  # only ranged reads of the COGs
    entry = next(f for f in man.files if f.product_id == "S2A_32TNR_20170301_0_L2A")
    path = out / entry.path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert path.stat().st_size == entry.size
    with rasterio.open(path) as src:
        assert src.count == 9 and src.dtypes[0] == "uint16" and src.nodatavals[0] == 0
        assert list(src.descriptions) == BANDS
        assert src.tags(1)["BOA_ADD_OFFSET"] == "-1000"
        assert src.scales[0] == pytest.approx(1e-4) and src.offsets[0] == pytest.approx(-0.1)
        assert src.tags()["PROCESSING_BASELINE"] == "05.00"
        data = src.read()
        assert src.transform.a == 10 and src.crs.to_epsg() == 32632
    scl_path = out / entry.meta["sidecars"]["SCL"]["path"]
    assert hashlib.sha256(scl_path.read_bytes()).hexdigest() == entry.meta["sidecars"]["SCL"][
        "sha256"]
    # The 10 m band equals the served COG; the 20 m bands and SCL are pixel-replicated.
    item = catalogue / "data" / entry.product_id / f"{entry.product_id}_B02.tif"
    with rasterio.open(item) as src:
        np.testing.assert_array_equal(data[0], src.read(1))
    with rasterio.open(item.with_name(f"{entry.product_id}_B05.tif")) as src:
        b05 = src.read(1)
        np.testing.assert_array_equal(data[3], np.repeat(np.repeat(b05, 2, 0), 2, 1))
    with rasterio.open(item.with_name(f"{entry.product_id}_SCL.tif")) as src:
        scl20 = src.read(1)
    with rasterio.open(scl_path) as src:
        np.testing.assert_array_equal(src.read(1), np.repeat(np.repeat(scl20, 2, 0), 2, 1))
    # The Sentinel-2 reader reads the product, its sidecar MTD and harmonises the offset.
    from parsers import sentinel2

    s2 = sentinel2.read(path)  # finds <id>_SCL.tif and <id>_MTD.xml beside the bands
    assert s2.product_id == entry.product_id and s2.baseline == "05.00" and s2.harmonised
    expected = np.where(data > 0, np.maximum(data.astype(np.int32) - 1000, 1), 0)
    np.testing.assert_array_equal(s2.data, expected.astype(np.uint16))
    assert s2.scl is not None and s2.scl.shape == data.shape[1:]
    with rasterio.open(scl_path) as src:
        np.testing.assert_array_equal(s2.scl, src.read(1))


def test_stac_scale_offset_from_stac_1_0_and_1_1_assets():
    from pipeline.sentinel2_backends.stac import _scale_offset

    assert _scale_offset({"raster:bands": [{"scale": 1e-4, "offset": -0.1}]}) == (1e-4, -0.1)
    assert _scale_offset({"bands": [{"raster:scale": 1e-4, "raster:offset": -0.1}]}) == (
        1e-4, -0.1)
    assert _scale_offset({"raster:scale": 2.0}) == (2.0, 0.0)
    assert _scale_offset({}) == (1.0, 0.0)


def test_stac_window_cap_and_rerun_downloads_nothing(tmp_path, catalogue):
    out = tmp_path / "out"
    with serve_stac_catalogue(catalogue) as url:
        args = ("--stac-url", url, "--out", str(out), "--window-px", "48")
        assert run_cli(tmp_path, *args, max_cloud=30.0) == 0
        first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}
        n = len(url.files.log)
        assert run_cli(tmp_path, *args, max_cloud=30.0) == 0
        assert len(url.files.log) == n  # no COG touched the second time
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")} == first
    with rasterio.open(next(out.glob("*_L2A.tif"))) as src:
        assert src.shape == (48, 48)
    # A lost sidecar makes its product incomplete: only that one is fetched again.
    lost = next(out.glob("*_SCL.tif"))
    lost.unlink()
    with serve_stac_catalogue(catalogue) as url:
        assert run_cli(tmp_path, *(a if a != args[1] else url for a in args),
                       max_cloud=30.0) == 0
    assert lost.is_file()


def test_stac_on_real_bigearthnet_band_files(realdata, tmp_path):
    """Real L2A band files (BigEarthNet, UTM 33N, no SCL, no raster:bands) as STAC assets."""
    from rasterio.warp import transform_bounds

    from pipeline.sentinel2_backends.stac import ASSET_KEYS

    name = "S2A_MSIL2A_20170613T101031_87_48"
    folder = realdata(f"sentinel2/bigearthnet/{name}")
    root = tmp_path / "stac"
    (root / "data").mkdir(parents=True)
    (root / "data" / name).symlink_to(folder)  # served, never copied
    with rasterio.open(folder / f"{name}_B02.tif") as src:
        bbox = list(transform_bounds(src.crs, "EPSG:4326", *src.bounds))
        b02 = src.read(1)
    assets = {ASSET_KEYS[b]: {"href": f"data/{name}/{name}_{b}.tif", "roles": ["data"]}
              for b in BANDS}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": name,
            "collection": "sentinel-2-c1-l2a", "bbox": bbox, "links": [], "assets": assets,
            "geometry": {"type": "Polygon", "coordinates": [[
                [bbox[0], bbox[1]], [bbox[2], bbox[1]], [bbox[2], bbox[3]], [bbox[0], bbox[3]],
                [bbox[0], bbox[1]]]]},
            "properties": {"datetime": "2017-06-13T10:10:31Z", "eo:cloud_cover": 0.0}}
    (root / "items").mkdir()
    (root / "items" / f"{name}.json").write_text(json.dumps(item))
    (root / "collections").mkdir()
    (root / "collections" / "sentinel-2-c1-l2a.json").write_text(json.dumps({
        "type": "Collection", "id": "sentinel-2-c1-l2a", "stac_version": "1.0.0",
        "description": "real patch", "license": "CDLA-Permissive-1.0", "links": [],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[None, None]]}}}))
    out = tmp_path / "out"
    with serve_stac_catalogue(root) as url:
        rc = run_cli(tmp_path, "--stac-url", url, "--out", str(out), "--bbox",
                     ",".join(map(str, bbox)), "--window-px", "0")
    assert rc == 0
    entry = Manifest.read(out / "manifest.json").files[0]
    assert "SCL" not in entry.meta["sidecars"]
    # The patch starts at 404400 E, 5342400 N: the 480 m grid keeps columns 24..119, 96 rows.
    assert entry.meta["transform"][2] == 404640.0 and entry.meta["shape"] == [9, 96, 96]
    with rasterio.open(out / entry.path) as src:
        data = src.read()
    np.testing.assert_array_equal(data[0], b02[:96, 24:120])
    with rasterio.open(folder / f"{name}_B11.tif") as src:
        b11 = np.repeat(np.repeat(src.read(1), 2, 0), 2, 1)
    np.testing.assert_array_equal(data[7], b11[:96, 24:120])


def test_stac_bbox_smaller_than_a_tile(tmp_path, catalogue, capsys):
    from rasterio.warp import transform

    lon, lat = transform("EPSG:32632", "EPSG:4326", [515500.0], [5041500.0])
    bbox = f"{lon[0] - 0.001},{lat[0] - 0.001},{lon[0] + 0.001},{lat[0] + 0.001}"
    with serve_stac_catalogue(catalogue) as url:
        rc = run_cli(tmp_path, "--stac-url", url, "--out", str(tmp_path / "o"), "--bbox", bbox)
    assert rc == 2
    assert "no 480 m x 480 m window of the item lies inside the bbox" in one_line_error(capsys)


def test_stac_retries_503_on_assets(tmp_path, catalogue):
    out = tmp_path / "out"
    faults = Faults(fail_first={"data/*_B03.tif": 1})
    with serve_stac_catalogue(catalogue, faults) as url:
        assert run_cli(tmp_path, "--stac-url", url, "--out", str(out), max_products=1) == 0
        assert any(r.status == 503 for r in url.files.log)
    assert len(Manifest.read(out / "manifest.json").files) == 1


def test_stac_locked_replay_and_mismatch(tmp_path, catalogue, capsys):
    first, again, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with serve_stac_catalogue(catalogue) as url:
        assert run_cli(tmp_path, "--stac-url", url, "--out", str(first), max_cloud=30.0) == 0
    lock = first / "manifest.json"
    with serve_stac_catalogue(catalogue) as url:
        assert run_cli(tmp_path, "--stac-url", url, "--out", str(again), "--locked",
                       str(lock)) == 0
    a, b = Manifest.read(lock), Manifest.read(again / "manifest.json")
    assert [(f.product_id, f.meta["data_sha256"]) for f in a.files] == [
        (f.product_id, f.meta["data_sha256"]) for f in b.files]
    # The service now serves different pixels (same grid) for one band: the locked build
    # must fail.
    item = a.files[0].product_id
    other = (catalogue / "data" / item / f"{item}_B03.tif").read_bytes()
    faults = Faults(replace={f"data/{item}/{item}_B04.tif": other})
    with serve_stac_catalogue(catalogue, faults) as url:
        rc = run_cli(tmp_path, "--stac-url", url, "--out", str(third), "--locked", str(lock))
    assert rc == 2
    line = one_line_error(capsys)
    assert item in line and "differs from the lock" in line
    assert not (third / f"{item}.tif").exists()


def test_stac_unreachable_and_empty_search(tmp_path, catalogue, capsys):
    dead = f"http://127.0.0.1:{free_port()}/"
    assert run_cli(tmp_path, "--stac-url", dead, "--out", str(tmp_path / "o"), retries=0) == 2
    line = one_line_error(capsys)
    assert "STAC API" in line and "unreachable" in line and dead in line
    with serve_stac_catalogue(catalogue) as url:
        rc = run_cli(tmp_path, "--stac-url", url, "--out", str(tmp_path / "o"),
                     "--bbox", "0,0,1,1")
    assert rc == 2
    assert "no Sentinel-2 L2A products" in one_line_error(capsys)
    assert not (tmp_path / "o" / "manifest.json").exists()


# ------------------------------------------------------------------------------- cdse
def cdse_args(urls: dict[str, str], out: Path) -> list[str]:
    args = ["--backend", "cdse", "--out", str(out)]
    for key, value in urls.items():
        args += ["--" + key.replace("_", "-"), value]
    return args


def test_cdse_end_to_end_with_429_503_paging_and_token(tmp_path, fake_products, monkeypatch):
    monkeypatch.setenv("CDSE_USERNAME", fake_cdse.USER)
    monkeypatch.setenv("CDSE_PASSWORD", fake_cdse.PASSWORD)
    products = fresh(fake_products)
    hub = fake_cdse.CdseHub(products, rate_limit=1, fail_first=1, search_fail=1)
    out = tmp_path / "out"
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, out), max_cloud=30.0, page_size=2) == 0
    man = Manifest.read(out / "manifest.json")
    assert len(man.files) == 3 and man.query["backend"] == "cdse"
    by_id = {e.product_id: e for e in man.files}
    for p in products[:3]:
        entry = by_id[p.title]
        assert entry.path == p.title + ".zip"
        assert entry.sha256 == hashlib.sha256(p.data).hexdigest()
        assert (out / entry.path).read_bytes() == p.data
        assert entry.meta["checksums"]["md5"] == p.md5 and entry.meta["uuid"] == p.uuid
    from parsers import sentinel2

    s2 = sentinel2.read(out / by_id[products[0].title].path)  # the SAFE zip is readable
    assert s2.data.shape[0] == 9 and s2.baseline == "05.00" and s2.harmonised
    searches = [r for r in hub.log if r[1].startswith("/odata/v1/Products")]
    assert len(searches) >= 3  # one 503 retried, then two pages via @odata.nextLink
    assert "%24skip=2" in searches[-1][1]
    assert hub.grants == ["password"]  # one token for all downloads
    assert all(h.startswith("Bearer acc-") for h in hub.auth_headers)
    assert not list(out.glob("*.part"))


def test_cdse_token_refresh_on_401_and_before_expiry(tmp_path, fake_products, monkeypatch):
    monkeypatch.setenv("CDSE_USERNAME", fake_cdse.USER)
    monkeypatch.setenv("CDSE_PASSWORD", fake_cdse.PASSWORD)
    hub = fake_cdse.CdseHub(fresh(fake_products), revoke_after_downloads=1)
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "a"), max_cloud=30.0,
                       workers=1) == 0
    assert "refresh_token" in hub.grants  # the 401 after revocation led to a refresh
    assert sum(1 for h in hub.auth_headers if h) >= 4
    # A token living less than the refresh margin is renewed before each use.
    hub = fake_cdse.CdseHub(fresh(fake_products), token_lifetime=30)
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "b"), max_cloud=30.0,
                       workers=1) == 0
    assert hub.grants[0] == "password" and hub.grants.count("refresh_token") >= 2


def test_cdse_download_refused_after_token_refresh(tmp_path, fake_products, monkeypatch,
                                                   capsys):
    monkeypatch.setenv("CDSE_USERNAME", fake_cdse.USER)
    monkeypatch.setenv("CDSE_PASSWORD", fake_cdse.PASSWORD)
    hub = fake_cdse.CdseHub(fresh(fake_products), deny_download=True)
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "o"), workers=1) == 2
    line = one_line_error(capsys)
    assert "refused the token (HTTP 401)" in line
    assert "refresh_token" in hub.grants  # one refresh was tried before giving up


def test_cdse_bad_credentials_one_line_without_password(tmp_path, fake_products, monkeypatch,
                                                        capsys):
    monkeypatch.setenv("CDSE_USERNAME", fake_cdse.USER)
    monkeypatch.setenv("CDSE_PASSWORD", "wrong-password-123")
    hub = fake_cdse.CdseHub(fresh(fake_products))
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "o")) == 2
    captured = capsys.readouterr()
    assert "wrong-password-123" not in captured.err + captured.out
    lines = [ln for ln in captured.err.splitlines() if ": error: " in ln]
    assert len(lines) == 1 and "refused the credentials" in lines[0]
    assert "CDSE_USERNAME" in lines[0]


def test_cdse_missing_credentials_and_netrc(tmp_path, fake_products, capsys):
    hub = fake_cdse.CdseHub(fresh(fake_products))
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "o")) == 2
        assert "no credentials" in one_line_error(capsys)
        netrc = Path(tmp_path / "no-netrc")  # the path the autouse fixture points NETRC at
        netrc.write_text(f"machine 127.0.0.1 login {fake_cdse.USER} "
                         f"password {fake_cdse.PASSWORD}\n")
        netrc.chmod(0o600)
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "o"), max_cloud=30.0) == 0


def test_cdse_checksum_mismatch_is_refused(tmp_path, fake_products, monkeypatch, capsys):
    monkeypatch.setenv("CDSE_USERNAME", fake_cdse.USER)
    monkeypatch.setenv("CDSE_PASSWORD", fake_cdse.PASSWORD)
    products = fresh(fake_products)
    bad = products[1]
    hub = fake_cdse.CdseHub(products, bad_checksum={bad.uuid})
    out = tmp_path / "out"
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, out), max_cloud=30.0) == 2
    line = one_line_error(capsys)
    assert "MD5" in line and bad.title in line and "2 of 3" in line
    assert not (out / f"{bad.title}.zip").exists() and not list(out.glob("*.part"))
    assert len([r for r in hub.log if bad.uuid in r[1]]) == 2  # tried once more
    assert len(Manifest.read(out / "manifest.json").files) == 2
    # An empty Checksum list (as CDSE has for some products) skips the MD5 check.
    hub = fake_cdse.CdseHub(products, empty_checksum=True)
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "e"), max_cloud=30.0) == 0


def test_cdse_resume_locked_and_locked_mismatch(tmp_path, fake_products, monkeypatch, capsys):
    monkeypatch.setenv("CDSE_USERNAME", fake_cdse.USER)
    monkeypatch.setenv("CDSE_PASSWORD", fake_cdse.PASSWORD)
    products = fresh(fake_products)
    out = tmp_path / "out"
    out.mkdir()
    p0 = products[0]
    (out / f"{p0.title}.zip.part").write_bytes(p0.data[:1000])
    hub = fake_cdse.CdseHub(products)
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, out), max_cloud=30.0) == 0
        assert any(r[2] == "bytes=1000-" and p0.uuid in r[1] for r in hub.log)
        assert (out / f"{p0.title}.zip").read_bytes() == p0.data
        lock = out / "manifest.json"
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "b"), "--locked", str(lock)) == 0
        assert Manifest.read(tmp_path / "b" / "manifest.json").to_dict()["files"] == \
            Manifest.read(lock).to_dict()["files"]
        # The hub now serves other bytes for a locked product.
        products[2].data = products[2].data[::-1]
        products[2].published_md5 = products[2].md5
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "c"), "--locked", str(lock)) == 2
    line = one_line_error(capsys)
    assert products[2].title in line and "sha256" in line
    assert not (tmp_path / "c" / f"{products[2].title}.zip").exists()


def test_cdse_offline_product_is_skipped_with_a_warning(tmp_path, fake_products, monkeypatch,
                                                        capsys):
    monkeypatch.setenv("CDSE_USERNAME", fake_cdse.USER)
    monkeypatch.setenv("CDSE_PASSWORD", fake_cdse.PASSWORD)
    products = fresh(fake_products)
    products[1].online = False
    hub = fake_cdse.CdseHub(products)
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "o"), max_cloud=30.0) == 0
    err = capsys.readouterr().err
    assert f"warning: {products[1].title}: skipped: offline at CDSE" in err
    assert not any(products[1].uuid in r[1] for r in hub.log if "download" in r[1])
    assert len(Manifest.read(tmp_path / "o" / "manifest.json").files) == 2


def test_cdse_unreachable(tmp_path, monkeypatch, capsys):
    base = f"http://127.0.0.1:{free_port()}/"
    urls = {"cdse_catalogue_url": base + "odata/v1", "cdse_download_url": base + "dl",
            "cdse_token_url": base + "token"}
    assert run_cli(tmp_path, *cdse_args(urls, tmp_path / "o"), retries=0) == 2
    line = one_line_error(capsys)
    assert "CDSE catalogue" in line and "unreachable" in line


# ------------------------------------------------------------------------------- dhus
def dhus_args(url: str, out: Path) -> list[str]:
    return ["--backend", "dhus", "--dhus-url", url, "--out", str(out)]


def test_dhus_end_to_end_through_sentinelsat(tmp_path, fake_products, monkeypatch):
    monkeypatch.setenv("DHUS_USERNAME", fake_dhus.USER)
    monkeypatch.setenv("DHUS_PASSWORD", fake_dhus.PASSWORD)
    products = fresh(fake_products)
    hub = fake_dhus.DhusHub(products, fail_first=1, rate_limit=1)
    out = tmp_path / "out"
    with fake_dhus.serve_dhus(hub) as url:
        assert run_cli(tmp_path, *dhus_args(url, out), max_cloud=30.0, page_size=2) == 0
        searches = [r for r in hub.log if r[1].startswith("/search")]
        assert len(searches) == 2 and "start=2" in searches[1][1]  # paging
        assert all("Sentinel-2" in s[1] and "S2MSI2A" in s[1] for s in searches)
        n = len(hub.log)
        assert run_cli(tmp_path, *dhus_args(url, out), max_cloud=30.0, page_size=2) == 0
        assert not [r for r in hub.log[n:] if r[1].endswith("/$value") and r[0] == "GET"]
    man = Manifest.read(out / "manifest.json")
    assert man.query["backend"] == "dhus" and len(man.files) == 3
    by_id = {e.product_id: e for e in man.files}
    for p in products[:3]:
        entry = by_id[p.title]
        assert (out / entry.path).read_bytes() == p.data
        assert entry.meta["md5"] == p.md5 and entry.meta["uuid"] == p.uuid
        assert entry.sha256 == hashlib.sha256(p.data).hexdigest()
    assert not list(out.glob("*.incomplete"))


def test_dhus_single_result_offline_product_and_resume(tmp_path, fake_products, monkeypatch,
                                                       capsys):
    monkeypatch.setenv("DHUS_USERNAME", fake_dhus.USER)
    monkeypatch.setenv("DHUS_PASSWORD", fake_dhus.PASSWORD)
    products = fresh(fake_products)
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{products[0].title}.zip.incomplete").write_bytes(products[0].data[:100])
    products[1].online = False
    hub = fake_dhus.DhusHub(products)
    with fake_dhus.serve_dhus(hub) as url:
        assert run_cli(tmp_path, *dhus_args(url, out), max_cloud=15.0) == 2
        line = one_line_error(capsys)
        assert "offline" in line and "1 of 2" in line
        assert any(r[2] == "bytes=0-1" for r in hub.downloads(products[1].uuid))  # LTA
        assert any(r[2] == "bytes=100-" for r in hub.downloads(products[0].uuid))  # resume
        assert (out / f"{products[0].title}.zip").read_bytes() == products[0].data
        # A single hit: the hub answers "entry" as a bare dict.
        assert run_cli(tmp_path, *dhus_args(url, tmp_path / "one"), max_cloud=8.0) == 0
    assert len(Manifest.read(tmp_path / "one" / "manifest.json").files) == 1


def test_dhus_checksum_mismatch_and_locked(tmp_path, fake_products, monkeypatch, capsys):
    monkeypatch.setenv("DHUS_USERNAME", fake_dhus.USER)
    monkeypatch.setenv("DHUS_PASSWORD", fake_dhus.PASSWORD)
    products = fresh(fake_products)
    hub = fake_dhus.DhusHub(products, bad_checksum={products[2].uuid})
    out = tmp_path / "out"
    with fake_dhus.serve_dhus(hub) as url:
        assert run_cli(tmp_path, *dhus_args(url, out), max_cloud=30.0, retries=1) == 2
        line = one_line_error(capsys)
        assert "MD5" in line and products[2].title in line
        assert not (out / f"{products[2].title}.zip").exists()
        assert len(hub.downloads(products[2].uuid)) == 2
        hub.bad_checksum.clear()
        lock = out / "manifest.json"
        # The lock holds the two good products; replaying it fetches exactly those.
        assert run_cli(tmp_path, *dhus_args(url, tmp_path / "b"), "--locked", str(lock)) == 0
        replay = Manifest.read(tmp_path / "b" / "manifest.json")
        assert [f.sha256 for f in replay.files] == [f.sha256 for f in Manifest.read(lock).files]
        # A lock from another backend is refused.
        assert run_cli(tmp_path, "--out", str(tmp_path / "c"), "--locked", str(lock)) == 2
        assert "--backend dhus" in one_line_error(capsys)


def test_dhus_errors_are_one_line(tmp_path, fake_products, monkeypatch, capsys):
    assert run_cli(tmp_path, "--backend", "dhus", "--out", str(tmp_path / "o")) == 2
    line = one_line_error(capsys)
    assert "--dhus-url" in line and "2023" in line
    monkeypatch.setenv("DHUS_USERNAME", fake_dhus.USER)
    monkeypatch.setenv("DHUS_PASSWORD", "nope")
    hub = fake_dhus.DhusHub(fresh(fake_products))
    with fake_dhus.serve_dhus(hub) as url:
        assert run_cli(tmp_path, *dhus_args(url, tmp_path / "o")) == 2
    line = one_line_error(capsys)
    assert "refused the credentials (HTTP 401)" in line and "DHUS_USERNAME" in line
    dead = f"http://127.0.0.1:{free_port()}/"
    assert run_cli(tmp_path, *dhus_args(dead, tmp_path / "o"), retries=0) == 2
    line = one_line_error(capsys)
    assert "DHuS hub" in line and "unreachable" in line and "--backend stac" in line


# ----------------------------------------------------------------------------- params
def test_params_section_bands_and_validation(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "download_sentinel2": {"backend": "stac", "bbox": [9, 45, 10, 46], "max_cloud": 10,
                               "start": "2017-06-01", "end": "2017-06-30"},
        "datasets": {"sentinel2": {"kind": "sentinel2", "products": "x",
                                   "reader": {"bands": [*BANDS[:6], "B8A", "B11", "B12"]}}},
    }))
    assert load_bands(params)[6] == "B8A"
    params.write_text(yaml.safe_dump({"datasets": {"sentinel2": {"reader": {
        "bands": ["B04", "B03", "B02"]}}}}))
    assert main(["--params", str(params), "--out", str(tmp_path / "o")]) == 2
    assert "datasets.sentinel2.reader.bands" in one_line_error(capsys)
    params.write_text(yaml.safe_dump({"download_sentinel2": {"bbox": [10, 45, 9, 46]}}))
    assert main(["--params", str(params)]) == 2
    assert "bbox" in one_line_error(capsys)
    params.write_text(yaml.safe_dump({"download_sentinel2": {"workers": 8}}))
    assert main(["--params", str(params)]) == 2
    assert "workers" in one_line_error(capsys)
    # Every setting can be given as a flag too.
    import dataclasses

    from pipeline.download_sentinel2 import _parser

    flags = {a.dest for a in _parser()._actions}
    assert {f.name for f in dataclasses.fields(DownloadSentinel2Params)} <= flags
    d = DownloadSentinel2Params()
    assert d.backend == "stac" and d.level == "L2A" and d.dhus_url is None
    assert d.start == "2017-01-01" and d.end == "2017-12-31"
    assert json.loads(json.dumps(list(d.bbox))) == [8.49, 44.67, 11.43, 46.64]
