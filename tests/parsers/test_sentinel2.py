"""Sentinel-2 reader: real sample files (tests/data/sentinel2) and synthetic products."""

from __future__ import annotations

import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from parsers import sentinel2 as s2  # noqa: E402
from parsers.cli import sentinel2 as s2_cli  # noqa: E402
from parsers.errors import ParamsError, ProductError  # noqa: E402
from pipeline.synthetic.sentinel2_products import (  # noqa: E402
    synthetic_scene,
    write_band_files,
    write_multiband_geotiff,
    write_safe_product,
)

S2 = "sentinel2"
BIGEARTHNET = (
    "S2A_MSIL2A_20170613T101031_87_48",
    "S2A_MSIL2A_20170617T113321_36_85",
    "S2A_MSIL2A_20170617T113321_4_55",
    "S2B_MSIL2A_20170924T93020_69_24",
)
SAFE_PRODUCTS = {  # folder name -> (level, baseline, product id from PRODUCT_URI, offset listed)
    "S2A_MSIL1C_20200717T221941_R029_T01LAC_20200717T234135.SAFE":
        ("L1C", "02.09", "S2A_MSIL1C_20200717T221941_N0209_R029_T01LAC_20200717T234135", False),
    "S2A_MSIL1C_20210908T042701_N0301_R133_T46RER_20210908T070248.SAFE":
        ("L1C", "03.01", "S2A_MSIL1C_20210908T042701_N0301_R133_T46RER_20210908T070248", False),
    "S2A_MSIL2A_20190212T192651_N0212_R013_T07HFE_20201007T160857.SAFE":
        ("L2A", "02.12", "S2A_MSIL2A_20190212T192651_N0212_R013_T07HFE_20201007T160857", False),
    "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE":
        ("L2A", "04.00", "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454", True),
    "S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825.SAFE":
        ("L2A", "05.09", "S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825", True),
}
T29UNU = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
T29UNU_R60 = (f"{S2}/safe/{T29UNU}/GRANULE/L2A_T29UNU_A038058_20221005T115407/IMG_DATA/R60m/"
              "T29UNU_20221005T115411_{}_60m.jp2")
UKIS_OLD = "S2B_MSIL1C_20200406T101559_N0209_R065_T32UPC_20200406T130159"
UKIS_NEW = "S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549"
SEN2R_BOA_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11", "B12")
SEN2R_TOA_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                   "B12")


def _raw(path: Path, index: int = 1, window=None) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(index, window=window)


def _up(a: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1)


# ---------------------------------------------------------------------------------------------
# Real files: BigEarthNet per-band folders


@pytest.mark.parametrize("patch", BIGEARTHNET)
def test_bigearthnet_folder_stacks_and_resamples_pixel_exact(realdata, patch):
    folder = realdata(f"{S2}/bigearthnet/{patch}")
    stack = s2.read(folder)
    assert stack.data.dtype == np.uint16 and stack.data.shape == (9, 120, 120)
    assert stack.band_names == s2.DEFAULT_BANDS
    assert stack.product_id == patch and stack.level == "L2A"
    assert stack.offsets == {} and not stack.harmonised
    with rasterio.open(folder / f"{patch}_B02.tif") as ref:
        assert stack.crs == ref.crs and stack.transform == ref.transform
    for i, band in enumerate(s2.DEFAULT_BANDS):
        source = _raw(folder / f"{patch}_{band}.tif")
        k = 120 // source.shape[0]
        assert k == s2.NATIVE_RESOLUTION[band] // 10
        np.testing.assert_array_equal(stack.data[i], _up(source, k), err_msg=band)
    assert stack.valid.all()  # BigEarthNet patches have no DN 0
    assert stack.scl is None


def test_bigearthnet_other_band_sets_bilinear_and_window(realdata):
    patch = BIGEARTHNET[0]
    folder = realdata(f"{S2}/bigearthnet/{patch}")
    b8a_set = ("B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12")
    stack = s2.read(folder, bands=b8a_set)
    np.testing.assert_array_equal(stack.band("B8A"), _up(_raw(folder / f"{patch}_B8A.tif"), 2))
    # B01 (60 m) is replicated 6x6.
    with pytest.warns(UserWarning, match="paper's layout"):
        b01 = s2.read(folder, bands=["B01", "B02"])
    np.testing.assert_array_equal(b01.band("B01"), _up(_raw(folder / f"{patch}_B01.tif"), 6))
    nearest = s2.read(folder)
    bilinear = s2.read(folder, resampling="bilinear")
    np.testing.assert_array_equal(bilinear.data[:3], nearest.data[:3])  # 10 m bands untouched
    assert not np.array_equal(bilinear.band("B05"), nearest.band("B05"))
    # Bilinear stays within the 20 m band's range and close to it.
    src = _raw(folder / f"{patch}_B05.tif").astype(float)
    assert src.min() <= bilinear.band("B05").min() and bilinear.band("B05").max() <= src.max()
    assert abs(bilinear.band("B05").mean() - src.mean()) < 0.01 * src.mean()
    # A window on the 10 m grid, odd offsets, equals the same cut of the full read.
    win = s2.read(folder, window=(7, 33, 48, 48))
    np.testing.assert_array_equal(win.data, nearest.data[:, 7:55, 33:81])
    assert win.transform.c == nearest.transform.c + 330 and win.transform.f == (
        nearest.transform.f - 70)


# ---------------------------------------------------------------------------------------------
# Real files: ukis-pysat L1C crops, PB 02.09 (no offset) vs 04.00 (-1000)


def test_ukis_pysat_old_baseline_is_left_as_stored(realdata):
    tif = realdata(f"{S2}/ukis_pysat/{UKIS_OLD}.tif")
    stack = s2.read(tif)  # 13 bands, no descriptions: ESA order; MTD found beside it
    assert stack.baseline == "02.09" and stack.level == "L1C" and stack.offsets == {}
    assert not stack.harmonised and stack.product_id == UKIS_OLD
    assert stack.resolution == 60.0  # a multi-band file keeps its own grid
    with rasterio.open(tif) as src:
        raw = src.read()
    for i, band in enumerate(s2.DEFAULT_BANDS):
        np.testing.assert_array_equal(stack.data[i], raw[s2.ALL_BANDS.index(band)])
    # ukis-pysat's TOA output says reflectance = DN / 10000 for this baseline.
    toa = _raw(realdata(f"{S2}/ukis_pysat/{UKIS_OLD}_toa.tif"), s2.ALL_BANDS.index("B04") + 1)
    np.testing.assert_allclose(toa * 10000, stack.band("B04"), atol=0.5)
    assert not stack.valid.all() and (stack.data[:, ~stack.valid] == 0).any(axis=0).all()


def test_ukis_pysat_pb0400_offset_is_harmonised_from_the_mtd(realdata):
    tif = realdata(f"{S2}/ukis_pysat/{UKIS_NEW}.tif")
    meta = s2.parse_mtd(realdata(f"{S2}/ukis_pysat/{UKIS_NEW}_MTD.xml"))
    assert meta.baseline == "04.00" and meta.quantification == 10000
    assert meta.offsets == {b: -1000 for b in s2.ALL_BANDS}
    with rasterio.open(tif) as src:
        raw = src.read()
    assert raw.min() > 1000  # what the file says: every DN carries the +1000
    stack = s2.read(tif)
    assert stack.harmonised and stack.baseline == "04.00"
    expected = np.stack([raw[s2.ALL_BANDS.index(b)] for b in s2.DEFAULT_BANDS]).astype(int) - 1000
    np.testing.assert_array_equal(stack.data, expected)
    # ukis-pysat's TOA output: reflectance = (DN - 1000) / 10000, i.e. our harmonised DNs.
    with rasterio.open(realdata(f"{S2}/ukis_pysat/{UKIS_NEW}_toa.tif")) as src:
        toa = src.read()
    for i, band in enumerate(s2.DEFAULT_BANDS):
        np.testing.assert_allclose(toa[s2.ALL_BANDS.index(band)] * 10000, stack.data[i], atol=0.5)
    with pytest.raises(ProductError, match="data type float32, expected integer DNs"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its name says PB 04.00, and no _toa_MTD.xml exists
        s2.read(realdata(f"{S2}/ukis_pysat/{UKIS_NEW}_toa.tif"))
    raw_stack = s2.read(tif, harmonise=False)
    assert not raw_stack.harmonised and raw_stack.offsets["B02"] == -1000
    np.testing.assert_array_equal(raw_stack.data.astype(int) - 1000, stack.data)


def test_offset_named_but_not_listed_warns_and_is_not_applied(realdata, tmp_path):
    tif = realdata(f"{S2}/ukis_pysat/{UKIS_NEW}.tif")
    alone = tmp_path / tif.name
    shutil.copy(tif, alone)  # without its _MTD.xml
    with pytest.warns(UserWarning, match="NOT harmonised"):
        stack = s2.read(alone)
    assert stack.baseline == "04.00" and not stack.harmonised
    with_mtd = s2.read(alone, metadata=realdata(f"{S2}/ukis_pysat/{UKIS_NEW}_MTD.xml"))
    assert with_mtd.harmonised
    np.testing.assert_array_equal(stack.data.astype(int) - 1000, with_mtd.data)


# ---------------------------------------------------------------------------------------------
# Real files: SAFE metadata of 5 products and the T29UNU 60 m JP2s


@pytest.mark.parametrize("folder", sorted(SAFE_PRODUCTS))
def test_safe_metadata_all_baselines(realdata, folder):
    level, baseline, product_id, has_offset = SAFE_PRODUCTS[folder]
    safe = realdata(f"{S2}/safe/{folder}")
    meta = s2.parse_mtd(next(safe.glob("MTD_MSIL*.xml")))
    assert (meta.level, meta.baseline, meta.product_id) == (level, baseline, product_id)
    assert meta.product_type == f"S2MSI{level[1:]}"
    assert meta.quantification == 10000
    assert s2.baseline_has_offset(baseline) is has_offset
    assert meta.offsets == ({b: -1000 for b in s2.ALL_BANDS} if has_offset else {})
    assert meta.image_files and all(f.startswith("GRANULE/") for f in meta.image_files)
    if folder != T29UNU:  # metadata only: asking for pixels is a one-line error naming the band
        with pytest.raises(ProductError, match=r"band B02 not found") as info:
            s2.read(safe)
        assert "\n" not in str(info.value) and folder in str(info.value)


@pytest.mark.filterwarnings("ignore:band list")
def test_t29unu_real_60m_jp2_window_with_scl(realdata):
    b04 = realdata(T29UNU_R60.format("B04"))
    scl = realdata(T29UNU_R60.format("SCL"))
    safe = realdata(f"{S2}/safe/{T29UNU}")
    # 60 m pixels 500..520 (rows) x 700..724 (cols) = 10 m window (3000, 4200, 120, 144).
    window = (3000, 4200, 120, 144)
    stack = s2.read(safe, bands=("B04",), window=window)
    assert stack.crs.to_epsg() == 32629 and stack.level == "L2A" and stack.baseline == "04.00"
    assert stack.data.shape == (1, 120, 144) and stack.resolution == 10.0
    assert (stack.transform.c, stack.transform.f) == (499980 + 4200 * 10, 5900040 - 3000 * 10)
    from rasterio.windows import Window

    cut = Window(700, 500, 24, 20)
    raw = _raw(b04, window=cut).astype(int)
    expected = np.where(raw > 0, np.clip(raw - 1000, 1, None), 0)
    np.testing.assert_array_equal(stack.data[0], _up(expected, 6))
    np.testing.assert_array_equal(stack.scl, _up(_raw(scl, window=cut), 6))
    assert set(np.unique(stack.scl)) <= set(s2.SCL_CLASSES)
    assert stack.usable().sum() == (stack.valid & s2.scl_mask(stack.scl)).sum()


@pytest.mark.filterwarnings("ignore:band list")
def test_t29unu_nodata_edge_is_invalid(realdata):
    safe = realdata(f"{S2}/safe/{T29UNU}")
    raw = _raw(realdata(T29UNU_R60.format("B04")))
    rows, cols = np.nonzero(raw == 0)
    assert rows.size, "the real tile has a no-data edge"
    r, c = int(rows[0]), int(cols[0])
    stack = s2.read(safe, bands=("B04",), window=(r * 6, c * 6, 6, 6))
    assert not stack.valid.any() and (stack.data[0] == 0).all()


# ---------------------------------------------------------------------------------------------
# Multi-band GeoTIFFs in the layout sen2r writes (11-band BOA, 12-band TOA, nodata 65535,
# SCL on the 20 m grid), built from the real BigEarthNet pixels (sen2r's own sample files are
# GPL-licensed, so they are not vendored).


def _multiband_from_patch(realdata, tmp_path: Path, bands: tuple[str, ...], name: str) -> Path:
    """A 10 m multi-band GeoTIFF of BigEarthNet patch 0, nodata 65535 in its top-left corner."""
    folder = realdata(f"{S2}/bigearthnet/{BIGEARTHNET[0]}")
    planes = []
    for band in bands:
        if band == "B10":  # BigEarthNet L2A has no cirrus band: a plausible constant stands in
            planes.append(np.full((120, 120), 17, np.uint16))
            continue
        plane = _raw(folder / f"{BIGEARTHNET[0]}_{band}.tif")
        planes.append(_up(plane, 120 // plane.shape[0]))
    data = np.stack(planes)
    data[:, :8, :10] = 65535
    with rasterio.open(folder / f"{BIGEARTHNET[0]}_B02.tif") as ref:
        crs, transform = ref.crs, ref.transform
    out = tmp_path / name
    with rasterio.open(out, "w", driver="GTiff", width=120, height=120, count=len(bands),
                       dtype="uint16", crs=crs, transform=transform, nodata=65535) as dst:
        dst.write(data)
    return out


def _scl_20m(tmp_path: Path, boa: Path) -> tuple[Path, np.ndarray]:
    classes = np.random.default_rng(4).choice([4, 5, 6, 8, 9], size=(60, 60)).astype(np.uint8)
    with rasterio.open(boa) as src:
        transform = src.transform * src.transform.scale(2, 2)
        crs = src.crs
    out = tmp_path / "S2A2A_20170613_SCL_20.tif"
    with rasterio.open(out, "w", driver="GTiff", width=60, height=60, count=1, dtype="uint8",
                       crs=crs, transform=transform) as dst:
        dst.write(classes, 1)
    return out, classes


def test_multiband_boa_with_nodata_and_20m_scl(tmp_path, realdata):
    boa = _multiband_from_patch(realdata, tmp_path, SEN2R_BOA_BANDS, "S2A2A_20170613_BOA_10.tif")
    scl, classes = _scl_20m(tmp_path, boa)
    stack = s2.read(boa, file_bands=SEN2R_BOA_BANDS, scl=scl)
    assert stack.level == "L2A" and stack.data.shape == (9, 120, 120)
    raw = _raw_all(boa)
    for i, band in enumerate(s2.DEFAULT_BANDS):
        expected = raw[SEN2R_BOA_BANDS.index(band)].copy()
        expected[expected == 65535] = 0  # the file's nodata becomes our 0
        np.testing.assert_array_equal(stack.data[i], expected)
    np.testing.assert_array_equal(stack.scl, _up(classes, 2))
    assert not stack.valid[:8, :10].any() and stack.valid.mean() > 0.9


def test_multiband_toa_and_missing_band_order(tmp_path, realdata):
    toa = _multiband_from_patch(realdata, tmp_path, SEN2R_TOA_BANDS, "S2A1C_20170613_TOA_10.tif")
    stack = s2.read(toa, file_bands=SEN2R_TOA_BANDS)
    assert stack.level == "L1C"
    np.testing.assert_array_equal(stack.band("B12"), np.where(
        _raw(toa, 12) == 65535, 0, _raw(toa, 12)))
    with pytest.raises(ProductError, match="cannot tell which of its 12 bands"):
        s2.read(toa)
    with pytest.raises(ProductError, match="file_bands names 11 bands but the file has 12"):
        s2.read(toa, file_bands=SEN2R_BOA_BANDS)


def _raw_all(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# ---------------------------------------------------------------------------------------------
# Synthetic SAFE round trips


def _expected(scene, bands, offset=0):
    planes = []
    for band in bands:
        k = s2.NATIVE_RESOLUTION[band] // 10
        planes.append(_up(scene.dn[band], k).astype(int))
    data = np.stack(planes)
    return np.where(data > 0, data + offset, 0)


@pytest.mark.parametrize(("level", "baseline", "as_zip"), [
    ("L2A", "05.00", False), ("L2A", "05.00", True), ("L2A", "02.09", True),
    ("L1C", "04.00", False), ("L1C", "02.09", True),
])
def test_synthetic_safe_round_trip(tmp_path, level, baseline, as_zip):
    product = write_safe_product(tmp_path, level=level, baseline=baseline, size_10m=48, seed=3,
                                 zip=as_zip)
    assert product.suffix == (".zip" if as_zip else ".SAFE")
    if as_zip:
        names = zipfile.ZipFile(product).namelist()
        assert names[0].startswith(product.stem + ".SAFE/")
    scene = synthetic_scene(48, 3, level=level)
    stack = s2.read(product)
    has_offset = baseline >= "04.00"
    assert (stack.level, stack.baseline) == (level, baseline)
    assert stack.harmonised is has_offset
    assert stack.product_id == product.name.removesuffix(".zip").removesuffix(".SAFE")
    np.testing.assert_array_equal(stack.data, _expected(scene, s2.DEFAULT_BANDS))
    assert stack.crs.to_epsg() == 32632 and stack.transform.c == 499980
    np.testing.assert_array_equal(stack.valid, (stack.data > 0).all(axis=0))
    assert 0.85 < stack.valid.mean() < 1.0
    if level == "L2A":
        np.testing.assert_array_equal(stack.scl, _up(scene.scl20, 2))
        assert (stack.scl[~stack.valid] == 0).all()
    else:
        assert stack.scl is None
    if has_offset:
        raw = s2.read(product, harmonise=False)
        np.testing.assert_array_equal(raw.data, _expected(scene, s2.DEFAULT_BANDS, 1000))


def test_synthetic_window_and_bilinear(tmp_path):
    product = write_safe_product(tmp_path, size_10m=96, seed=1, zip=True)
    full = s2.read(product)
    for window in [(0, 0, 48, 48), (3, 5, 17, 23), (48, 48, 48, 48), (95, 1, 1, 95)]:
        part = s2.read(product, window=window)
        r, c, h, w = window
        np.testing.assert_array_equal(part.data, full.data[:, r:r + h, c:c + w])
        np.testing.assert_array_equal(part.scl, full.scl[r:r + h, c:c + w])
        assert part.window == window
    with pytest.raises(ProductError, match="outside"):
        s2.read(product, window=(90, 0, 10, 10))
    bil = s2.read(product, resampling="bilinear")
    np.testing.assert_array_equal(bil.band("B02"), full.band("B02"))
    assert not np.array_equal(bil.band("B11"), full.band("B11"))
    with pytest.raises(ParamsError, match="resampling"):
        s2.read(product, resampling="cubic")


def test_synthetic_multiband_and_band_files(tmp_path):
    scene = synthetic_scene(48, 5)
    tif = write_multiband_geotiff(tmp_path / "m.tif", size_10m=48, seed=5)
    np.testing.assert_array_equal(s2.read(tif).data, _expected(scene, s2.DEFAULT_BANDS))
    # Descriptions are used even when asking for another order.
    reordered = ("B02", "B03", "B04", "B12", "B11", "B08", "B07", "B06", "B05")
    np.testing.assert_array_equal(s2.read(tif, bands=reordered).data,
                                  _expected(scene, reordered))
    bare = write_multiband_geotiff(tmp_path / "bare.tif", size_10m=48, seed=5, describe=False)
    np.testing.assert_array_equal(s2.read(bare).data, _expected(scene, s2.DEFAULT_BANDS))
    folder = tmp_path / "bands"
    write_band_files(folder, size_10m=48, seed=5, cog=True, include_scl=True)
    stack = s2.read(folder)
    np.testing.assert_array_equal(stack.data, _expected(scene, s2.DEFAULT_BANDS))
    np.testing.assert_array_equal(stack.scl, _up(scene.scl20, 2))


def test_stac_assets_local_and_over_http(tmp_path):
    static = pytest.importorskip("pipeline.synthetic.servers.files")
    scene = synthetic_scene(96, 2)
    files = write_band_files(tmp_path, stem="item", size_10m=96, seed=2, cog=True,
                             with_offset=True, include_scl=True)
    local = s2.read({b: str(p) for b, p in files.items()}, offsets=-1000,
                    product_id="S2A_MSIL2A_20170703T101031_N0500_R022_T32TNR_x")
    assert local.baseline == "05.00" and local.harmonised
    np.testing.assert_array_equal(local.data, _expected(scene, s2.DEFAULT_BANDS))
    earth_search = {"blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
                    "rededge2": "B06", "rededge3": "B07", "nir": "B08", "swir16": "B11",
                    "swir22": "B12", "scl": "SCL", "thumbnail": None}
    named = s2.read({k: str(files[b]) if b else "x.jpg" for k, b in earth_search.items()},
                    offsets=-1000)
    np.testing.assert_array_equal(named.data, local.data)
    np.testing.assert_array_equal(named.scl, local.scl)
    with static.serve_directory(tmp_path) as base:
        assets = {b: f"{base}{p.name}" for b, p in files.items()}
        part = s2.read(assets, window=(48, 0, 48, 48), offsets={b: -1000 for b in files
                                                                 if b != "SCL"})
        vsicurl = s2.read({b: "/vsicurl/" + h for b, h in assets.items()}, harmonise=False,
                          window=(0, 0, 48, 48))
    np.testing.assert_array_equal(part.data, local.data[:, 48:, :48])
    np.testing.assert_array_equal(part.scl, local.scl[48:, :48])
    np.testing.assert_array_equal(vsicurl.data, _expected(scene, s2.DEFAULT_BANDS, 1000)[
        :, :48, :48])
    with pytest.raises(ProductError, match="no asset for band B12"):
        s2.read({b: str(p) for b, p in files.items() if b != "B12"})


@pytest.mark.filterwarnings("ignore:band list")
def test_http_window_fetches_only_part_of_a_cog(tmp_path):
    static = pytest.importorskip("pipeline.synthetic.servers.files")
    files = write_band_files(tmp_path, stem="big", bands=("B02",), size_10m=384, cog=True)
    size = files["B02"].stat().st_size
    with static.serve_directory(tmp_path) as base:
        part = s2.read({"B02": f"{base}big_B02.tif"}, bands=("B02",), window=(0, 0, 48, 48))
        sent = sum(r.sent for r in base.log)
    np.testing.assert_array_equal(part.data[0], _raw(files["B02"])[:48, :48])
    assert 0 < sent < 0.6 * size  # the header and one 256 x 256 block of four


# ---------------------------------------------------------------------------------------------
# Band lists


def test_band_validation():
    assert s2.check_bands("B2,B3,b4,B5,B6,B7,B8,B11,B12") == s2.DEFAULT_BANDS
    assert s2.normalise_band_name("Band 8A") == "B8A"
    with pytest.raises(ParamsError, match="unknown Sentinel-2 band name 'B13'"):
        s2.check_bands(["B02", "B13"])
    with pytest.raises(ParamsError, match="repeats B02"):
        s2.check_bands(["B02", "B02", "B03"])
    with pytest.raises(ParamsError, match="paper's layout"):
        s2.check_bands(["B03", "B02", "B04", "B05", "B06", "B07", "B08", "B11", "B12"],
                       paper_layout=True)
    with pytest.warns(UserWarning, match="paper's layout"):
        s2.check_bands(["B04", "B03", "B02", "B05", "B06", "B07", "B08", "B11", "B12"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s2.check_bands(["B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"])
    assert s2.Sentinel2Settings().bands == s2.DEFAULT_BANDS
    with pytest.raises(ValueError, match="unknown"):
        s2.Sentinel2Settings(bands=("B02", "X"))


# ---------------------------------------------------------------------------------------------
# Bad input -> one-line ProductError naming the file


def test_bad_files_give_one_line_errors(tmp_path):
    product = write_safe_product(tmp_path / "p", size_10m=48)
    jp2 = next(product.rglob("*_B05_20m.jp2"))
    good = jp2.read_bytes()
    cases = {
        "truncated": (good[: len(good) * 4 // 5], "truncated or corrupt"),
        "no codestream": (good[:100], "not a readable raster"),
        "text": (b"this is not a raster\n", "not a readable raster"),
        "empty": (b"", "empty file"),
    }
    for data, message in cases.values():
        jp2.write_bytes(data)
        with pytest.raises(ProductError, match=message) as info:
            s2.read(product)
        assert str(info.value).startswith(jp2.name + ":") and "\n" not in str(info.value)
    jp2.unlink()
    with pytest.raises(ProductError, match="band B05 not found"):
        s2.read(product)

    granule = next((product / "GRANULE").iterdir())
    shutil.copytree(granule, granule.with_name(granule.name + "_2"))
    with pytest.raises(ProductError, match="multi-granule product"):
        s2.read(product)

    bogus_zip = tmp_path / "S2A_MSIL2A_bogus.zip"
    bogus_zip.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ProductError, match="not a readable zip"):
        s2.read(bogus_zip)
    empty_zip = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(ProductError, match="not a SAFE product"):
        s2.read(empty_zip)
    text = tmp_path / "notes_B02.tif"
    text.write_text("hello")
    with pytest.raises(ProductError, match=r"^notes_B02.tif: not a readable raster"):
        s2.read(text)
    with pytest.raises(ProductError, match="single-band file: read the folder"):
        s2.read(next(product.rglob("*_B02_10m.jp2")))
    with pytest.raises(ProductError, match="no such file"):
        s2.read(tmp_path / "missing.SAFE")
    bad_xml = tmp_path / "MTD_MSIL2A.xml"
    bad_xml.write_text("<n1:Level-2A_User_Product><unclosed>")
    with pytest.raises(ProductError, match="not well-formed XML"):
        s2.parse_mtd(bad_xml)


@pytest.mark.filterwarnings("ignore:band list")
def test_truncated_real_jp2_is_an_error_not_zeros(realdata, tmp_path):
    # GDAL's threaded JPEG 2000 decoder returns zeros for a truncated tile unless told otherwise.
    jp2 = realdata(T29UNU_R60.format("B04"))
    cut = tmp_path / "T29UNU_20221005T115411_B04_60m.jp2"
    data = jp2.read_bytes()
    cut.write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(ProductError, match="truncated or corrupt") as info:
        s2.read(cut, bands=["B04"], file_bands=["B04"])
    assert str(info.value).startswith(cut.name + ": ")


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_summary_json_and_export(tmp_path, capsys):
    product = write_safe_product(tmp_path, size_10m=48, zip=True)
    assert s2_cli.main([str(product)]) == 0
    out = capsys.readouterr().out
    assert "level       L2A   baseline 05.00   offset -1000 listed" in out
    assert "EPSG:32632  48 lines x 48 samples  10 m" in out
    assert s2_cli.main([str(product), "--json", "--export", str(tmp_path / "c.npy")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [9, 48, 48] and info["harmonised"] is True
    assert info["bands"] == list(s2.DEFAULT_BANDS) and 0.85 < info["valid_fraction"] < 1
    cube = np.load(tmp_path / "c.npy")
    assert cube.dtype == np.uint16 and cube.shape == (9, 48, 48)
    assert s2_cli.main([str(product), "--export", str(tmp_path / "c.tif"),
                    "--bands", "B02,B03,B04,B05,B06,B07,B8A,B11,B12"]) == 0
    capsys.readouterr()
    back = s2.read(tmp_path / "c.tif", bands=("B02", "B03", "B04", "B05", "B06", "B07", "B8A",
                                              "B11", "B12"))
    np.testing.assert_array_equal(back.data, s2.read(product, bands=back.band_names).data)
    assert back.crs.to_epsg() == 32632
    assert not list(tmp_path.glob(".c.*"))  # no temporary left behind


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "x_B02.tif"
    bad.write_bytes(b"")
    assert s2_cli.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "python -m parsers.sentinel2: error: x_B02.tif: empty file (0 bytes)"
    product = write_safe_product(tmp_path, size_10m=48)
    assert s2_cli.main([str(product), "--bands", "B02,B99"]) == 2
    assert "unknown Sentinel-2 band name 'B99'" in capsys.readouterr().err
    assert s2_cli.main([str(product), "--export", str(tmp_path / "out.png")]) == 2
    assert "export format must be .npy or .tif" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
    params = tmp_path / "params.yaml"
    bands = ("datasets:\n sentinel2:\n  reader:\n"
             "   bands: [B02, B03, B04, B05, B06, B07, B8A, B11, B12]\n")
    params.write_text(bands)
    assert s2_cli.main([str(product), "--params", str(params), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bands"][6] == "B8A"
    # The reader's settings are as strict as every stage's: a stray key is an error.
    params.write_text(bands + "   max_cloud: 30\n   resampleing: bilinear\n")
    assert s2_cli.main([str(product), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert ("datasets.sentinel2.reader: unknown keys 'max_cloud', 'resampleing' (did you "
            "mean 'resampling'?)" in err) and err.count("\n") == 1
