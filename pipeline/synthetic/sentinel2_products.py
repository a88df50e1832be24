"""Tiny but realistic synthetic Sentinel-2 products, for tests, fake servers and the offline demo.

Everything here is deterministic for a given ``seed``. The scene is a mixture of four surface
types (vegetation, bare soil, water, urban) whose abundances are smooth random fields, plus
optional clouds with their shadows and a no-data wedge in one corner (DN 0 in every band, SCL 0),
like the swath edge of a real tile.

- :func:`synthetic_scene` returns the native-resolution DNs (before any baseline offset) and the
  20 m / 60 m scene classification, so a test can compare a reader's output pixel by pixel.
- :func:`write_safe_product` writes a SAFE folder or zip (L1C flat ``IMG_DATA`` or L2A
  ``R10m``/``R20m``/``R60m``) with lossless JPEG 2000 bands and ``MTD_MSIL1C.xml`` /
  ``MTD_MSIL2A.xml`` carrying the processing baseline, the quantification value and, from
  baseline 04.00 on, the ``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET`` lists (-1000).
- :func:`write_multiband_geotiff` writes one co-registered multi-band GeoTIFF (bands named in the
  band descriptions, optionally a COG).
- :func:`write_band_files` writes one single-band GeoTIFF/JP2/COG per band at its native
  resolution (BigEarthNet style ``<stem>_B02.tif``), e.g. as STAC assets.

Grid: UTM (default EPSG:32632, Lombardia) with the upper-left corner at ``origin`` (default: the
corner of MGRS tile 32TNR, 499980 E / 5100000 N). ``size_10m`` must be a multiple of 6 so that the
20 m and 60 m grids cover exactly the same area.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from parsers.atomic import atomic_path
from parsers.sentinel2 import (
    ALL_BANDS,
    DEFAULT_BANDS,
    L2A_BANDS,
    NATIVE_RESOLUTION,
    OFFSET_BASELINE,
    baseline_has_offset,
)

DEFAULT_DATE = dt.datetime(2017, 7, 3, 10, 10, 31, tzinfo=dt.timezone.utc)
DEFAULT_ORIGIN = (499980.0, 5100000.0)
DEFAULT_CRS = "EPSG:32632"
QUANTIFICATION = 10000
OFFSET = -1000
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# Surface reflectance spectra (0..1) in ALL_BANDS order (B01 .. B8A .. B12); rows: vegetation,
# bare soil, water, urban.
_SPECTRA = np.array(
    [
        [0.030, 0.040, 0.075, 0.040, 0.110, 0.300, 0.380, 0.420, 0.440, 0.420, 0.010, 0.220, 0.110],
        [0.100, 0.120, 0.160, 0.200, 0.230, 0.250, 0.270, 0.290, 0.300, 0.300, 0.012, 0.350, 0.280],
        [0.070, 0.065, 0.055, 0.030, 0.022, 0.016, 0.013, 0.011, 0.010, 0.008, 0.002, 0.006, 0.004],
        [0.120, 0.130, 0.140, 0.150, 0.170, 0.180, 0.190, 0.200, 0.210, 0.200, 0.015, 0.230, 0.210],
    ],
    dtype=np.float64,
)
_CLOUD = np.array([0.55, 0.55, 0.56, 0.58, 0.59, 0.60, 0.60, 0.61, 0.61, 0.45, 0.20, 0.45, 0.35])
# SCL class of each surface type: vegetation 4, not vegetated 5, water 6, urban -> not vegetated 5.
_SURFACE_SCL = np.array([4, 5, 6, 5], dtype=np.uint8)


@dataclass(frozen=True)
class SyntheticScene:
    """Native-resolution DNs of a synthetic scene (before any baseline offset).

    ``dn[band]`` is uint16 at the band's native resolution (10, 20 or 60 m), 0 = no data;
    ``scl20`` / ``scl60`` are uint8 scene classes on the 20 m / 60 m grids; ``transform(res)``
    gives the affine transform of a grid.
    """

    dn: dict[str, np.ndarray]
    scl20: np.ndarray
    scl60: np.ndarray
    size_10m: int
    origin: tuple[float, float]
    crs: str

    def transform(self, resolution: int):
        from rasterio.transform import Affine

        return Affine(resolution, 0.0, self.origin[0], 0.0, -resolution, self.origin[1])


def _smooth_field(rng: np.random.Generator, n: int, scale_px: float) -> np.ndarray:
    """A smooth random field (n, n), zero mean and unit std, correlation length ~scale_px."""
    noise = rng.standard_normal((n, n))
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    kernel = np.exp(-2.0 * (np.pi * scale_px) ** 2 * (fx**2 + fy**2))
    field = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape[-2:]
    return a.reshape(*a.shape[:-2], h // k, k, w // k, k).mean(axis=(-3, -1))


def _block_mode(classes: np.ndarray, k: int, n_classes: int = 12) -> np.ndarray:
    h, w = classes.shape
    blocks = classes.reshape(h // k, k, w // k, k).transpose(0, 2, 1, 3).reshape(h // k, w // k, -1)
    counts = np.stack([(blocks == c).sum(axis=-1) for c in range(n_classes)], axis=-1)
    return counts.argmax(axis=-1).astype(np.uint8)


def synthetic_scene(
    size_10m: int = 96,
    seed: int = 0,
    *,
    level: str = "L2A",
    cloud_fraction: float = 0.1,
    nodata_fraction: float = 0.05,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    crs: str = DEFAULT_CRS,
) -> SyntheticScene:
    """DNs (reflectance x 10000, no offset) of every band of ``level``, at native resolution.

    L1C (top of atmosphere) gets a little extra path reflectance in the blue; L2A has no B10.
    Pixels in the no-data wedge are 0 in every band; clouds are bright, shadows dark.
    """
    if size_10m <= 0 or size_10m % 6:
        raise ValueError(f"size_10m must be a positive multiple of 6, got {size_10m}")
    if level not in ("L1C", "L2A"):
        raise ValueError(f"level must be 'L1C' or 'L2A', got {level!r}")
    rng = np.random.default_rng(seed)
    n = size_10m
    logits = np.stack([_smooth_field(rng, n, n / 10.0) * 2.0 for _ in range(4)])
    logits[2] -= 1.5  # water is rarer
    weights = np.exp(logits)
    weights /= weights.sum(axis=0, keepdims=True)
    refl = np.tensordot(_SPECTRA.T, weights, axes=1)  # (13, n, n)
    surface = weights.argmax(axis=0)
    scl10 = _SURFACE_SCL[surface]

    cloud_field = _smooth_field(rng, n, n / 8.0)
    if cloud_fraction > 0:
        threshold = np.quantile(cloud_field, 1.0 - cloud_fraction)
        cloud = cloud_field >= threshold
        opacity = np.clip((cloud_field - threshold) / 0.8, 0.0, 1.0)[None]
        refl = np.where(cloud[None], (1 - opacity) * refl + opacity * _CLOUD[:, None, None], refl)
        shift = max(1, n // 24)
        shadow = np.roll(cloud, (shift, shift), axis=(0, 1)) & ~cloud
        refl = np.where(shadow[None], refl * 0.35, refl)
        scl10 = np.where(cloud, np.where(opacity[0] > 0.5, 9, 8), scl10)
        scl10 = np.where(shadow, 3, scl10)
    refl *= 1.0 + 0.03 * _smooth_field(rng, n, 1.5)[None]  # fine texture
    if level == "L1C":
        refl = refl * 0.92 + np.array([0.09, 0.07, 0.045, 0.03, 0.025, 0.02, 0.018, 0.016, 0.015,
                                       0.01, 0.0, 0.005, 0.003])[:, None, None]
    refl = np.clip(refl, 0.0001, 6.5)

    yy, xx = np.mgrid[0:n, 0:n]
    nodata = np.zeros((n, n), dtype=bool)
    if nodata_fraction > 0:
        # A wedge in the lower-left corner: area fraction f of the square <=> legs of sqrt(2 f) n.
        leg = np.sqrt(2.0 * nodata_fraction) * n
        nodata = (yy - (n - leg)) > xx
        # Aligned to 60 m blocks so that every grid agrees on what is missing.
        nodata = np.repeat(np.repeat(_block_mean(nodata.astype(float), 6) > 0.5, 6, 0), 6, 1)
    scl10 = np.where(nodata, 0, scl10).astype(np.uint8)

    bands = ALL_BANDS if level == "L1C" else L2A_BANDS
    dn: dict[str, np.ndarray] = {}
    for band in bands:
        k = NATIVE_RESOLUTION[band] // 10
        plane = refl[ALL_BANDS.index(band)]
        values = _block_mean(plane, k) if k > 1 else plane
        mask = _block_mean(nodata.astype(float), k) > 0.5 if k > 1 else nodata
        out = np.clip(np.rint(values * QUANTIFICATION), 1, 65534).astype(np.uint16)
        out[mask] = 0
        dn[band] = out
    return SyntheticScene(
        dn=dn,
        scl20=_block_mode(scl10, 2),
        scl60=_block_mode(scl10, 6),
        size_10m=n,
        origin=(float(origin[0]), float(origin[1])),
        crs=crs,
    )


def product_name(level: str, baseline: str, tile: str, date: dt.datetime, spacecraft: str = "S2A",
                 orbit: int = 22) -> str:
    """The compact SAFE product name, without the ``.SAFE`` suffix."""
    stamp = date.strftime("%Y%m%dT%H%M%S")
    gen = (date + dt.timedelta(hours=3, minutes=17, seconds=5)).strftime("%Y%m%dT%H%M%S")
    nbase = "N" + baseline.replace(".", "")
    return f"{spacecraft}_MSI{level}_{stamp}_{nbase}_R{orbit:03d}_{tile}_{gen}"


def _write_raster(path: Path, array: np.ndarray, transform, crs: str, driver: str,
                  descriptions: Sequence[str] | None = None, nodata: float | None = None,
                  cog: bool = False) -> None:
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy

    array = array[None] if array.ndim == 2 else array
    profile = {
        "width": array.shape[2], "height": array.shape[1], "count": array.shape[0],
        "dtype": array.dtype.name, "crs": crs, "transform": transform,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if driver == "JP2OpenJPEG":
        options = {"QUALITY": 100, "REVERSIBLE": "YES", "RESOLUTIONS": 1}
    elif cog:
        options = {}
    else:
        options = {"COMPRESS": "DEFLATE"}
    if cog:
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", **profile) as tmp:
                tmp.write(array)
                if descriptions:
                    for i, name in enumerate(descriptions, start=1):
                        tmp.set_band_description(i, name)
            with mem.open() as src:
                rio_copy(src, str(path), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256,
                         OVERVIEWS="NONE")
        return
    with rasterio.open(path, "w", driver=driver, **profile, **options) as dst:
        dst.write(array)
        if descriptions:
            for i, name in enumerate(descriptions, start=1):
                dst.set_band_description(i, name)


def _mtd_xml(level: str, name: str, baseline: str, granule: str, image_files: list[str],
             date: dt.datetime, spacecraft: str, orbit: int, cloud_pct: float,
             with_offset: bool) -> str:
    level_long = "Level-1C" if level == "L1C" else "Level-2A"
    ns = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_{level_long}.xsd"
    iso = date.strftime("%Y-%m-%dT%H:%M:%S.024Z")
    files = "\n".join(f"            <IMAGE_FILE>{escape(f)}</IMAGE_FILE>" for f in image_files)
    if level == "L1C":
        quant = '    <QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        offsets = ("    <Radiometric_Offset_List>\n" + "\n".join(
            f'      <RADIO_ADD_OFFSET band_id="{i}">{OFFSET}</RADIO_ADD_OFFSET>'
            for i in range(13)) + "\n    </Radiometric_Offset_List>") if with_offset else ""
    else:
        quant = ("    <QUANTIFICATION_VALUES_LIST>\n"
                 '      <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>\n'
                 '      <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
                 '      <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>\n'
                 "    </QUANTIFICATION_VALUES_LIST>")
        offsets = ("    <BOA_ADD_OFFSET_VALUES_LIST>\n" + "\n".join(
            f'      <BOA_ADD_OFFSET band_id="{i}">{OFFSET}</BOA_ADD_OFFSET>'
            for i in range(13)) + "\n    </BOA_ADD_OFFSET_VALUES_LIST>") if with_offset else ""
    spectral = "\n".join(
        f'      <Spectral_Information bandId="{i}" physicalBand="{b[0]}{b[1:].lstrip("0")}">\n'
        f"        <RESOLUTION>{NATIVE_RESOLUTION[b]}</RESOLUTION>\n"
        f"      </Spectral_Information>"
        for i, b in enumerate(ALL_BANDS)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{level_long}_User_Product xmlns:n1="{ns}" xmlns:xsi="{XSI}" xsi:schemaLocation="{ns}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{iso}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{iso}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{name}.SAFE</PRODUCT_URI>
      <PROCESSING_LEVEL>{level_long}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI{level[1:]}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>{iso}</GENERATION_TIME>
      <Datatake datatakeIdentifier="G{spacecraft}_{date:%Y%m%dT%H%M%S}_000000_N{baseline}">
        <SPACECRAFT_NAME>Sentinel-2{spacecraft[-1]}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{iso}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>{orbit}</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule granuleIdentifier="{granule}" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
{quant}
{offsets}
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
  <n1:Quality_Indicators_Info>
    <Cloud_Coverage_Assessment>{cloud_pct:.6f}</Cloud_Coverage_Assessment>
  </n1:Quality_Indicators_Info>
</n1:{level_long}_User_Product>
"""


def _mtd_tl_xml(level: str, tile: str, crs: str, scene: SyntheticScene) -> str:
    level_long = "Level-1C" if level == "L1C" else "Level-2A"
    sizes = "\n".join(
        f'      <Size resolution="{r}">\n        <NROWS>{scene.size_10m * 10 // r}</NROWS>\n'
        f"        <NCOLS>{scene.size_10m * 10 // r}</NCOLS>\n      </Size>" for r in (10, 20, 60)
    )
    geopos = "\n".join(
        f'      <Geoposition resolution="{r}">\n        <ULX>{scene.origin[0]:.0f}</ULX>\n'
        f"        <ULY>{scene.origin[1]:.0f}</ULY>\n        <XDIM>{r}</XDIM>\n"
        f"        <YDIM>-{r}</YDIM>\n      </Geoposition>" for r in (10, 20, 60)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{level_long}_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_{level_long}_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID>{tile}</TILE_ID>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {crs[-2:]}N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>{crs}</HORIZONTAL_CS_CODE>
{sizes}
{geopos}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:{level_long}_Tile_ID>
"""


def _manifest_safe(files: list[str]) -> str:
    entries = "\n".join(
        f'    <dataObject ID="obj{i}"><byteStream><fileLocation locatorType="URL" '
        f'href="./{escape(f)}"/></byteStream></dataObject>'
        for i, f in enumerate(files)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" version="esa/safe/sentinel/1.1/sentinel-2/msi">
  <dataObjectSection>
{entries}
  </dataObjectSection>
</xfdu:XFDU>
"""


def write_safe_product(
    root: str | os.PathLike[str],
    level: str = "L2A",
    baseline: str = "05.00",
    size_10m: int = 96,
    tile: str = "T32TNR",
    date: dt.datetime = DEFAULT_DATE,
    seed: int = 0,
    zip: bool = False,
    *,
    driver: str = "JP2OpenJPEG",
    cloud_fraction: float = 0.1,
    nodata_fraction: float = 0.05,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    crs: str = DEFAULT_CRS,
    spacecraft: str = "S2A",
    orbit: int = 22,
    with_offset: bool | None = None,
) -> Path:
    """Write a synthetic SAFE product under ``root``; return the ``.SAFE`` folder or the ``.zip``.

    ``level`` "L1C" (13 bands flat in ``IMG_DATA``, ``T<tile>_<time>_B02.jp2``) or "L2A"
    (``R10m``: B02 B03 B04 B08; ``R20m``: B01-B07 B8A B11 B12 SCL; ``R60m``: B01 B09 SCL,
    ``..._B05_20m.jp2``). ``with_offset`` (default: baseline >= 04.00) lists the -1000 offset in
    the MTD xml and adds +1000 to every DN > 0, as ESA does. ``driver`` "JP2OpenJPEG" (lossless,
    bit-exact) or "GTiff" (same names with ``.tif``). The zip holds ``<name>.SAFE/...`` and is
    named ``<name>.zip``. The product is written to a temporary name and renamed when complete.
    """
    if level not in ("L1C", "L2A"):
        raise ValueError(f"level must be 'L1C' or 'L2A', got {level!r}")
    if not tile.startswith("T") or len(tile) != 6:
        raise ValueError(f"tile must look like 'T32TNR', got {tile!r}")
    if driver not in ("JP2OpenJPEG", "GTiff"):
        raise ValueError(f"driver must be 'JP2OpenJPEG' or 'GTiff', got {driver!r}")
    if with_offset is None:
        with_offset = baseline_has_offset(baseline)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scene = synthetic_scene(size_10m, seed, level=level, cloud_fraction=cloud_fraction,
                            nodata_fraction=nodata_fraction, origin=origin, crs=crs)
    name = product_name(level, baseline, tile, date, spacecraft, orbit)
    stamp = date.strftime("%Y%m%dT%H%M%S")
    granule = f"{level}_{tile}_A{10000 + seed:06d}_{stamp}"
    ext = ".jp2" if driver == "JP2OpenJPEG" else ".tif"

    layout: list[tuple[str, str, np.ndarray, int]] = []  # (relative path, band, array, resolution)
    if level == "L1C":
        for band in ALL_BANDS:
            layout.append((f"GRANULE/{granule}/IMG_DATA/{tile}_{stamp}_{band}{ext}", band,
                           scene.dn[band], NATIVE_RESOLUTION[band]))
    else:
        groups = {10: ["B02", "B03", "B04", "B08"],
                  20: ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL"],
                  60: ["B01", "B09", "SCL"]}
        for res, names in groups.items():
            for band in names:
                if band == "SCL":
                    array = scene.scl20 if res == 20 else scene.scl60
                elif NATIVE_RESOLUTION[band] == res:
                    array = scene.dn[band]
                elif res < NATIVE_RESOLUTION[band]:  # e.g. B01 at 20 m: pixel replication
                    k = NATIVE_RESOLUTION[band] // res
                    array = np.repeat(np.repeat(scene.dn[band], k, 0), k, 1)
                else:  # a coarser copy of a finer band, as Sen2Cor writes it
                    k = res // NATIVE_RESOLUTION[band]
                    fine = scene.dn[band].astype(np.float64)
                    array = np.rint(_block_mean(fine, k)).astype(np.uint16)
                    array[_block_mean((scene.dn[band] == 0).astype(float), k) > 0.5] = 0
                layout.append((f"GRANULE/{granule}/IMG_DATA/R{res}m/{tile}_{stamp}_{band}_{res}m{ext}",
                               band, array, res))

    cloud_pct = 100.0 * float(np.isin(scene.scl20, (8, 9, 10)).mean())
    image_files = [p.rsplit(".", 1)[0] for p, *_ in layout]
    mtd_name = f"MTD_MSI{level}.xml"
    with tempfile.TemporaryDirectory(prefix=".s2synth-", dir=root) as tmp:
        safe = Path(tmp) / f"{name}.SAFE"
        for rel, band, array, res in layout:
            out = safe / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            data = array
            if with_offset and band != "SCL":
                data = np.where(array > 0, np.minimum(array.astype(np.int64) - OFFSET, 65534),
                                0).astype(np.uint16)
            _write_raster(out, data, scene.transform(res), crs, driver)
        (safe / mtd_name).write_text(
            _mtd_xml(level, name, baseline, granule, image_files, date, spacecraft, orbit,
                     cloud_pct, with_offset), encoding="utf-8")
        (safe / "GRANULE" / granule / "MTD_TL.xml").write_text(
            _mtd_tl_xml(level, tile, crs, scene), encoding="utf-8")
        for sub in ("AUX_DATA", "HTML", "rep_info", "DATASTRIP"):
            (safe / sub).mkdir(exist_ok=True)
        (safe / "GRANULE" / granule / "QI_DATA").mkdir(exist_ok=True)
        listed = [mtd_name, f"GRANULE/{granule}/MTD_TL.xml"] + [p for p, *_ in layout]
        (safe / "manifest.safe").write_text(_manifest_safe(listed), encoding="utf-8")
        for aux in safe.rglob("*.aux.xml"):
            aux.unlink()

        if zip:
            dest = root / f"{name}.zip"
            with atomic_path(dest) as tmp_zip, zipfile.ZipFile(tmp_zip, "w") as zf:
                for path in sorted(safe.rglob("*")):
                    arc = f"{name}.SAFE/{path.relative_to(safe).as_posix()}"
                    if path.is_dir():
                        zf.write(path, arc + "/")
                    else:
                        kind = zipfile.ZIP_STORED if path.suffix == ".jp2" else zipfile.ZIP_DEFLATED
                        zf.write(path, arc, compress_type=kind)
            return dest
        dest = root / f"{name}.SAFE"
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(safe, dest)
        return dest


def write_band_files(
    folder: str | os.PathLike[str],
    stem: str = "S2A_MSIL2A_20170703T101031_0_0",
    bands: Sequence[str] = DEFAULT_BANDS,
    size_10m: int = 96,
    seed: int = 0,
    *,
    driver: str = "GTiff",
    cog: bool = False,
    level: str = "L2A",
    with_offset: bool = False,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    crs: str = DEFAULT_CRS,
    cloud_fraction: float = 0.1,
    nodata_fraction: float = 0.05,
    include_scl: bool = False,
) -> dict[str, Path]:
    """Write ``<stem>_<band>.tif`` (or ``.jp2``) per band at native resolution; return band -> path.

    BigEarthNet layout. ``cog=True`` writes Cloud-Optimised GeoTIFFs (for STAC assets).
    ``include_scl`` adds ``<stem>_SCL.tif`` at 20 m (L2A only).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scene = synthetic_scene(size_10m, seed, level=level, cloud_fraction=cloud_fraction,
                            nodata_fraction=nodata_fraction, origin=origin, crs=crs)
    ext = ".jp2" if driver == "JP2OpenJPEG" else ".tif"
    out: dict[str, Path] = {}
    for band in bands:
        if band not in scene.dn:
            raise ValueError(f"band {band!r} is not part of a synthetic {level} scene")
        data = scene.dn[band]
        if with_offset:
            data = np.where(data > 0, np.minimum(data.astype(np.uint32) + 1000, 65534), 0)
            data = data.astype(np.uint16)
        path = folder / f"{stem}_{band}{ext}"
        with atomic_path(path) as tmp:
            _write_raster(tmp, data, scene.transform(NATIVE_RESOLUTION[band]), crs, driver,
                          cog=cog)
        out[band] = path
    if include_scl:
        path = folder / f"{stem}_SCL{ext}"
        with atomic_path(path) as tmp:
            _write_raster(tmp, scene.scl20, scene.transform(20), crs, driver, cog=cog)
        out["SCL"] = path
    return out


def write_multiband_geotiff(
    path: str | os.PathLike[str],
    bands: Sequence[str] = DEFAULT_BANDS,
    size_10m: int = 96,
    seed: int = 0,
    *,
    level: str = "L2A",
    describe: bool = True,
    cog: bool = False,
    with_offset: bool = False,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    crs: str = DEFAULT_CRS,
    cloud_fraction: float = 0.1,
    nodata_fraction: float = 0.05,
) -> Path:
    """Write ``bands`` on the 10 m grid (20/60 m bands pixel-replicated) into one GeoTIFF.

    ``describe=True`` names each band (``B02`` ...) in its GDAL band description, which
    :func:`parsers.sentinel2.read` uses; without it a reader must be told the band order.
    Written atomically. Returns ``path``.
    """
    path = Path(path)
    scene = synthetic_scene(size_10m, seed, level=level, cloud_fraction=cloud_fraction,
                            nodata_fraction=nodata_fraction, origin=origin, crs=crs)
    planes = []
    for band in bands:
        if band not in scene.dn:
            raise ValueError(f"band {band!r} is not part of a synthetic {level} scene")
        k = NATIVE_RESOLUTION[band] // 10
        plane = np.repeat(np.repeat(scene.dn[band], k, 0), k, 1)
        if with_offset:
            plane = np.where(plane > 0, np.minimum(plane.astype(np.uint32) + 1000, 65534), 0)
        planes.append(plane.astype(np.uint16))
    with atomic_path(path) as tmp:
        _write_raster(tmp, np.stack(planes), scene.transform(10), crs, "GTiff",
                      descriptions=list(bands) if describe else None, cog=cog)
    return path


__all__ = [
    "DEFAULT_DATE",
    "OFFSET_BASELINE",
    "SyntheticScene",
    "product_name",
    "synthetic_scene",
    "write_band_files",
    "write_multiband_geotiff",
    "write_safe_product",
]
