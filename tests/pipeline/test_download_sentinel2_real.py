"""pipeline.download_sentinel2 against REAL service answers replayed on 127.0.0.1.

Recorded answers (tests/data/realapi/, see tests/data/SOURCES.md): an Earth Search v1 search
page that mixes four collections and pages by POST with a ``{"next": ...}`` body, an Earth
Search v0 item (``B02``-style keys, ``sentinel:*`` properties, no ``raster:bands``), a CDSE
OData reply (``Checksum`` list with MD5 and BLAKE3, ``@odata.nextLink``). The item JSON is
real; the pixels behind the asset hrefs are synthetic COGs at each item's real tile origin and
CRS (:func:`pipeline.synthetic.servers.stac.write_recorded_assets`); the ``product_metadata``
of the Collection-1 item is a real ``MTD_MSIL2A.xml`` (baseline 05.09).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import rasterio
import yaml
from rasterio.warp import transform_bounds

from parsers import sentinel2
from pipeline.download_sentinel2 import DownloadSentinel2Params, main, select_products
from pipeline.manifest import Manifest
from pipeline.sentinel2_backends import cdse as cdse_backend
from pipeline.sentinel2_backends import make_backend
from pipeline.sentinel2_backends.common import Backend, Product
from pipeline.sentinel2_backends.stac import FOREIGN, TRIMMED, StacBackend, decide_offsets
from pipeline.synthetic.servers import cdse as fake_cdse
from pipeline.synthetic.servers.sentinel2_hub import make_products
from pipeline.synthetic.servers.stac import (
    recorded_asset_path,
    serve_recorded_stac,
    write_recorded_assets,
)

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
REAL = Path(__file__).resolve().parents[1] / "data"
V1 = REAL / "realapi" / "earth_search" / "v1"
V0 = REAL / "realapi" / "earth_search" / "v0"
MTD_0509 = (REAL / "sentinel2" / "safe"
            / "S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825.SAFE"
            / "MTD_MSIL2A.xml")
MTD_0212 = (REAL / "sentinel2" / "safe"
            / "S2A_MSIL2A_20190212T192651_N0212_R013_T07HFE_20201007T160857.SAFE"
            / "MTD_MSIL2A.xml")
C1_20EPT = "S2B_T20EPT_20250731T131905_L2A"
L2A_20EPT = "S2B_20EPT_20250731_0_L2A"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def _no_user_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for var in ("CDSE_USERNAME", "CDSE_PASSWORD"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def v1_pages() -> list[dict]:
    """The real page 1, and a page 2 made from it the way a ``fields``-filtered search
    answers: the same Collection-1 features without assets (trimmed), no next link."""
    page1 = load(V1 / "search_filter_page1_2025-07-31.json")
    trimmed = [{"type": "Feature", "id": f["id"], "collection": f["collection"],
                "properties": {"datetime": f["properties"]["datetime"]}}
               for f in page1["features"] if f["collection"] == "sentinel-2-c1-l2a"]
    page2 = {"type": "FeatureCollection", "features": trimmed,
             "links": [ln for ln in page1["links"] if ln["rel"] != "next"]}
    return [page1, page2]


@pytest.fixture(scope="module")
def v1_assets(tmp_path_factory, v1_pages) -> Path:
    root = tmp_path_factory.mktemp("v1-assets")
    write_recorded_assets(v1_pages, root)
    item = next(f for f in v1_pages[0]["features"] if f["id"] == C1_20EPT)
    dest = root / recorded_asset_path(item["assets"]["product_metadata"]["href"])
    shutil.copyfile(MTD_0509, dest)
    return root


def settings(url: str, collection: str, **kw) -> DownloadSentinel2Params:
    return DownloadSentinel2Params(stac_url=url, stac_collection=collection, retries=1,
                                   backoff=0.01, max_cloud=100.0, bbox=(-180, -90, 180, 90),
                                   page_size=10, **kw)


def bbox_of_20ept(size_m: int = 960) -> str:
    """lon/lat box around the synthetic COGs of tile 20EPT (its real origin, EPSG:32720)."""
    w, s, e, n = transform_bounds("EPSG:32720", "EPSG:4326", 600000 + 10, 3300040 - size_m + 10,
                                  600000 + size_m - 10, 3300040 - 10)
    return f"{w},{s},{e},{n}"


def run_cli(tmp_path: Path, *args: str, **section) -> int:
    params = tmp_path / "params.yaml"
    body = {"download_sentinel2": {"backoff": 0.05, "retries": 2, "progress": False,
                                   "max_cloud": 100.0, "window_px": 96, **section},
            "datasets": {"sentinel2": {"kind": "sentinel2", "products": "data/raw/sentinel2",
                                       "reader": {"bands": BANDS}}}}
    params.write_text(yaml.safe_dump(body), encoding="utf-8")
    return main(["--params", str(params), *args])


# --------------------------------------------------------------------------- STAC search


def test_v1_page_mixing_collections_and_post_paging(v1_pages) -> None:
    landing = load(V1 / "root_catalog_2025-07-31.json")
    with serve_recorded_stac(landing, v1_pages) as url:
        result = StacBackend(settings(url, "sentinel-2-c1-l2a"), tuple(BANDS)).search(
            settings(url, "sentinel-2-c1-l2a").query())
        log = list(url.log)
    ids = sorted(p.product_id for p in result.products)
    assert ids == ["S2B_T20EPT_20250731T131905_L2A", "S2B_T24MUV_20250731T130245_L2A",
                   "S2B_T24MVV_20250731T130245_L2A"]
    assert result.skipped == {FOREIGN: 7, TRIMMED: 3}
    posts = [body for method, _, body in log if method == "POST"]
    assert len(posts) == 2
    assert "next" not in posts[0] and posts[0]["collections"] == ["sentinel-2-c1-l2a"]
    nxt = v1_pages[0]["links"][0]["body"]["next"]
    # the recorded link body holds only the token; the filters of page 1 are kept
    assert posts[1]["next"] == nxt and posts[1]["bbox"] == posts[0]["bbox"]
    product = next(p for p in result.products if p.product_id == C1_20EPT)
    assert product.processing_baseline == "05.11"
    assert product.meta["product_uri"].startswith("S2B_MSIL2A_20250731T131909_N0511")


def test_sentinel_2_l2a_warns_once_and_skips_jp2_twins(v1_pages, recwarn) -> None:
    landing = load(V1 / "root_catalog_2025-07-31.json")
    with serve_recorded_stac(landing, v1_pages) as url:
        backend = StacBackend(settings(url, "sentinel-2-l2a"), tuple(BANDS))
        result = backend.search(settings(url, "sentinel-2-l2a").query())
    assert sorted(p.product_id for p in result.products) == [
        "S2B_20EPT_20250731_0_L2A", "S2B_24MUV_20250731_0_L2A"]
    warned = [str(w.message) for w in recwarn if "boa_offset_applied" in str(w.message)]
    assert len(warned) == 1 and "sentinel-2-c1-l2a" in warned[0]
    item = backend._items[L2A_20EPT]
    key, asset = backend._asset(item, "B02")
    assert key == "blue" and asset["href"].startswith("http")
    assert item["assets"]["blue-jp2"]["href"].startswith("s3://")
    # an item whose only B02 is the s3:// twin has nothing usable for the band
    only_jp2 = copy.deepcopy(item)
    del only_jp2["assets"]["blue"]
    assert backend._asset(only_jp2, "B02") is None
    assert backend._unusable(only_jp2) == TRIMMED


def test_v0_item_keys_and_properties() -> None:
    landing = load(V0 / "root_catalog_v0.json")
    page = load(V0 / "search_sentinel-s2-l2a-cogs_limit1.json")
    assert "conformsTo" not in landing
    origin = "https://earth-search.aws.element84.com/v0"
    with serve_recorded_stac(landing, [page], api_origin=origin) as url:
        s = settings(url, "sentinel-s2-l2a-cogs")
        result = StacBackend(s, tuple(BANDS)).search(s.query())
    (product,) = result.products
    assert product.product_id == L2A_20EPT and product.processing_baseline == "05.11"
    assert product.meta["product_uri"] == (
        "S2B_MSIL2A_20250731T131909_N0511_R095_T20EPT_20250731T143919")


# --------------------------------------------------------------------------- offset truth


def test_offset_rules_in_order_on_real_items(v1_pages) -> None:
    features = {f["id"]: f for f in v1_pages[0]["features"]}
    c1, l2a = features[C1_20EPT], features[L2A_20EPT]
    v0 = load(V0 / "search_sentinel-s2-l2a-cogs_limit1.json")["features"][0]

    def assets(item: dict) -> dict:
        return {b: StacBackend._asset(item, b)[1] for b in BANDS}

    mtd_0509, mtd_0212 = sentinel2.parse_mtd(MTD_0509), sentinel2.parse_mtd(MTD_0212)
    # (1) the product's own MTD wins over everything the item says
    assert decide_offsets(c1, assets(c1), mtd_0212, "05.11") == (
        dict.fromkeys(BANDS, 0), "product_metadata")
    assert decide_offsets(l2a, assets(l2a), mtd_0509, "05.11") == (
        dict.fromkeys(BANDS, -1000), "product_metadata")
    # (2) the Earth Search flag, although raster:bands still declares -0.1
    assert assets(l2a)["B02"]["raster:bands"][0]["offset"] == -0.1
    assert decide_offsets(l2a, assets(l2a), None, "05.11") == (
        dict.fromkeys(BANDS, 0), "earthsearch:boa_offset_applied")
    assert decide_offsets(v0, assets(v0), None, "05.11") == (
        dict.fromkeys(BANDS, 0), "sentinel:boa_offset_applied")
    # (3) raster:bands offset / scale
    assert decide_offsets(c1, assets(c1), None, "05.11") == (
        dict.fromkeys(BANDS, -1000), "raster:bands")
    # (4) nothing declared at all: the processing baseline
    unflagged = copy.deepcopy(v0)
    unflagged["properties"]["sentinel:boa_offset_applied"] = False
    assert decide_offsets(unflagged, assets(unflagged), None, "05.11") == (
        dict.fromkeys(BANDS, -1000), "processing_baseline")
    assert decide_offsets(unflagged, assets(unflagged), None, "02.12")[0] == (
        dict.fromkeys(BANDS, 0))


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("collection, rule, dn_offset", [
    ("sentinel-2-c1-l2a", "product_metadata", -1000),
    ("sentinel-2-l2a", "earthsearch:boa_offset_applied", 0),
])
def test_real_items_end_to_end(collection, rule, dn_offset, v1_pages, v1_assets, tmp_path,
                               capsys) -> None:
    landing = load(V1 / "root_catalog_2025-07-31.json")
    out = tmp_path / "out"
    with serve_recorded_stac(landing, v1_pages, v1_assets) as url:
        rc = run_cli(tmp_path, "--stac-url", url, "--stac-collection", collection,
                     "--out", str(out), f"--bbox={bbox_of_20ept()}")
        requested = [r.path for r in url.files.log]
    err = capsys.readouterr().err
    assert rc == 0, err
    assert not [p for p in requested if "jp2" in p]
    man = Manifest.read(out / "manifest.json")
    (entry,) = man.files  # the two items of tile 24M have no window inside the bbox
    assert entry.meta["offset_rule"] == rule
    assert entry.meta["boa_add_offset"] == dict.fromkeys(BANDS, dn_offset)
    if rule == "product_metadata":
        assert entry.meta["product_metadata"]["baseline"] == "05.09"
        assert any(p.endswith("product_metadata.xml") for p in requested)
    else:
        assert "product_metadata" not in entry.meta  # its href is s3://
        assert "earthsearch:boa_offset_applied" in err  # the once-only warning
    assert "no 480 m x 480 m window" in err and "of other collections" in err
    path = out / entry.path
    mtd = sentinel2.parse_mtd(path.with_name(f"{path.stem}_MTD.xml"))
    assert mtd.offsets == ({b: dn_offset for b in BANDS} if dn_offset else {})
    assert mtd.offset_source == rule
    with rasterio.open(path) as src:
        assert src.tags()["OFFSET_RULE"] == rule
        assert src.tags(1)["BOA_ADD_OFFSET"] == str(dn_offset)
        assert src.offsets[0] == pytest.approx(dn_offset * 1e-4)
        raw = src.read()
    stack = sentinel2.read(path)
    expected = raw.astype("int32") + dn_offset
    assert (stack.data[raw > 0] == expected[raw > 0].clip(1, None)).all()


def test_v0_item_end_to_end(tmp_path, capsys) -> None:
    landing = load(V0 / "root_catalog_v0.json")
    page = load(V0 / "search_sentinel-s2-l2a-cogs_limit1.json")
    root = tmp_path / "assets"
    assert write_recorded_assets([page], root)
    with serve_recorded_stac(landing, [page], root,
                             api_origin="https://earth-search.aws.element84.com/v0") as url:
        rc = run_cli(tmp_path, "--stac-url", url, "--stac-collection", "sentinel-s2-l2a-cogs",
                     "--out", str(tmp_path / "out"), f"--bbox={bbox_of_20ept()}")
    assert rc == 0, capsys.readouterr().err
    (entry,) = Manifest.read(tmp_path / "out" / "manifest.json").files
    assert entry.meta["offset_rule"] == "sentinel:boa_offset_applied"
    assert entry.meta["assets"]["B02"].endswith("/B02.tif")
    with rasterio.open(tmp_path / "out" / entry.path) as src:
        assert src.scales[0] == pytest.approx(1e-4)  # no raster:bands: L2A quantification


# --------------------------------------------------------------------------- selection


def test_selection_is_by_datetime_first_or_spread() -> None:
    products = [Product(f"P{i}", "u", "f", sensing_time=f"2017-0{1 + (i * 5) % 9}-01T00:00:00Z")
                for i in range(9)]
    by_time = sorted(products, key=lambda p: p.sensing_time)
    first = select_products(products, DownloadSentinel2Params(max_products=3,
                                                               selection="first"))
    spread = select_products(products, DownloadSentinel2Params(max_products=3))
    assert first == by_time[:3]
    assert spread == [by_time[0], by_time[4], by_time[8]]
    assert select_products(list(reversed(products)), DownloadSentinel2Params(
        max_products=3)) == spread


def test_backends_implement_the_protocol() -> None:
    s = DownloadSentinel2Params(dhus_url="http://127.0.0.1:9/")
    for name in ("stac", "cdse", "dhus"):
        assert isinstance(make_backend(name, s, tuple(BANDS)), Backend)


# --------------------------------------------------------------------------- CDSE


def test_cdse_real_reply_and_next_link(tmp_path) -> None:
    page1 = load(REAL / "realapi" / "cdse" / "eodag_cop_dataspace_search_odata.json")
    # the end of the results, in the real reply's shape: no value left, no next link
    page2 = {"@odata.context": page1["@odata.context"], "value": []}
    hub = fake_cdse.CdseHub(products=[], recorded=[page1, page2])
    with fake_cdse.serve_cdse(hub) as urls:
        s = DownloadSentinel2Params(backend="cdse", level="L1C", retries=1, backoff=0.01,
                                    **urls)
        result = make_backend("cdse", s, tuple(BANDS)).search(s.query())
    searches = [path for method, path, _ in hub.log if method == "GET"]
    assert len(searches) == 2 and "%24skip=2" in searches[1] and "%24expand=Assets" in searches[1]
    a, b = result.products
    assert a.product_id == "S2A_MSIL1C_20200808T010311_N0500_R045_T54PXA_20230413T212505"
    assert a.size == 224105657 and a.online and a.meta["level"] == "L1C"
    assert a.checksums == {
        "md5": "923ac4992d90b57d41e7ace4d9d90757",
        "blake3": "2f787caed527ffeb3245594a465abd127da5ee7eaeb974f9a9ab4342f2fba7cf"}
    assert a.processing_baseline == "05.00"  # processorVersion: no processingBaseline there
    assert a.sensing_time == "2020-08-08T01:03:11.024000Z"
    assert a.url.endswith("/Products(05edf2bb-d103-49f1-a677-9e474138d84f)/$value")
    assert b.product_id.endswith("T55PBR_20230413T212505") and b.size == 172342246


@pytest.fixture(scope="module")
def safe_products(tmp_path_factory):
    return make_products(tmp_path_factory.mktemp("safe"), 3)


def cdse_run(tmp_path: Path, hub: fake_cdse.CdseHub, monkeypatch, out: str = "out") -> int:
    monkeypatch.setenv("CDSE_USERNAME", fake_cdse.USER)
    monkeypatch.setenv("CDSE_PASSWORD", fake_cdse.PASSWORD)
    with fake_cdse.serve_cdse(hub) as urls:
        args = ["--backend", "cdse", "--out", str(tmp_path / out), "--page-size", "2"]
        for key, value in urls.items():
            args += ["--" + key.replace("_", "-"), value]
        return run_cli(tmp_path, *args, max_cloud=30.0)


def test_cdse_blake3_checked_when_installed(safe_products, tmp_path, monkeypatch, capsys):
    import dataclasses

    products = [dataclasses.replace(p) for p in safe_products]
    bad = products[1]
    hub = fake_cdse.CdseHub(products, bad_blake3={bad.uuid})
    assert cdse_run(tmp_path, hub, monkeypatch) == 2
    err = capsys.readouterr().err
    assert bad.title in err and "BLAKE3" in err and "differs from the published" in err
    # Without the blake3 package the same product passes on its (right) MD5.
    monkeypatch.setattr(cdse_backend, "_blake3", lambda: None)
    hub = fake_cdse.CdseHub(products, bad_blake3={bad.uuid})
    assert cdse_run(tmp_path, hub, monkeypatch, "out2") == 0, capsys.readouterr().err
    man = Manifest.read(tmp_path / "out2" / "manifest.json")
    assert len(man.files) == 3
    assert {"md5", "blake3"} <= set(man.files[0].meta["checksums"])


def test_cdse_offline_is_skipped_not_a_failed_run(safe_products, tmp_path, monkeypatch,
                                                  capsys):
    import dataclasses

    products = [dataclasses.replace(p) for p in safe_products]
    products[0].online = False
    hub = fake_cdse.CdseHub(products)
    assert cdse_run(tmp_path, hub, monkeypatch) == 0
    err = capsys.readouterr().err
    assert f"warning: {products[0].title}: skipped: offline at CDSE" in err
    assert "1 skipped (unusable or offline)" in err
    assert len(Manifest.read(tmp_path / "out" / "manifest.json").files) == 2
