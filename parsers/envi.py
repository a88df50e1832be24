"""ENVI cubes (``.hdr`` header + raw binary), read through GDAL's ENVI driver.

GDAL decodes the binary (``interleave`` BSQ/BIL/BIP, ``byte order``, ``header offset``,
``data type``), turns ``data ignore value`` into the band no-data value, ``data gain values``
/ ``data offset values`` into the band scale/offset and ``map info`` / ``coordinate system
string`` into the transform and CRS. This module reads the header text itself (GDAL keeps
only part of it in its ``ENVI`` metadata domain) and maps the rest:

- ``wavelength`` + ``wavelength units`` -> :attr:`RasterCube.wavelengths` in nm
  (:mod:`parsers.wavelengths`; no unit: values below 100 are micrometres, with a warning);
- ``fwhm`` (same unit as the wavelengths) -> :attr:`RasterCube.fwhm` in nm;
- ``bbl`` (1 good, 0 bad) -> :attr:`RasterCube.bad_bands`; ``drop_bad_bands=True`` leaves
  the bad bands out of the cube;
- ``band names``, ``description``, ``map info`` (parsed into a dict).

It also checks what GDAL does not: that the binary holds all the bytes the header
announces (GDAL reads a short file as zeros).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from parsers.errors import ProductError
from parsers.raster import RasterCube, interleave_of, open_dataset, per_band
from parsers.wavelengths import nm_factor, to_nanometres

MAGIC = b"ENVI"
DATA_EXTENSIONS = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".bin")


# --------------------------------------------------------------------------- file pairs
def is_header(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a readable file that starts with ``ENVI``."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def header_for(path: str | os.PathLike[str]) -> Path | None:
    """The ENVI header of a data file (``X.hdr`` or ``X.img.hdr`` beside ``X.img``), or None."""
    path = Path(path)
    if path.name.lower().endswith(".hdr"):
        return path if is_header(path) else None
    names = [path.name + ".hdr", path.name + ".HDR"]
    if path.suffix:
        names += [path.stem + ".hdr", path.stem + ".HDR"]
    for name in names:
        candidate = path.with_name(name)
        if candidate.is_file() and is_header(candidate):
            return candidate
    return None


def data_for(header: Path) -> Path:
    """The binary a header describes: ``X`` or ``X.img``/``.dat``/... beside ``X.hdr``."""
    stem = header.name[:-4]
    wanted = [(stem + ext).lower() for ext in DATA_EXTENSIONS]
    try:
        present = {e.lower(): e for e in os.listdir(header.parent or ".")}
    except OSError as exc:
        raise ProductError(header, f"cannot list its folder: {exc.strerror or exc}") from None
    for name in wanted:
        if name in present and (header.parent / present[name]).is_file():
            return header.parent / present[name]
    raise ProductError(header, "ENVI data file not found (looked for "
                               + ", ".join(stem + e for e in DATA_EXTENSIONS if e) + f", {stem})")


def product_id_of(data_path: Path) -> str:
    name = data_path.name
    for ext in DATA_EXTENSIONS[1:]:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


# --------------------------------------------------------------------------- header values
def read_header(path: Path) -> dict[str, str]:
    """The header's ``key = value`` fields, keys lower case with single spaces.

    Values in braces may span lines (they are joined with spaces); ``;`` starts a comment
    line. Raises ProductError when the file cannot be read.
    """
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise ProductError(path, f"cannot read: {exc.strerror or exc}") from None
    fields: dict[str, str] = {}
    key, parts = None, []
    for line in text.splitlines()[1:]:
        if key is None:
            if not line.strip() or line.lstrip().startswith(";") or "=" not in line:
                continue
            name, _, value = line.partition("=")
            key, parts = " ".join(name.lower().split()), [value.strip()]
        else:
            parts.append(line.strip())
        joined = " ".join(parts)
        if joined.count("{") <= joined.count("}"):  # GDAL too reads on until the brace closes
            fields[key] = joined
            key = None
    if key is not None:
        raise ProductError(path, f"header field {key!r} opens a brace that is never closed")
    return fields


def split_list(value: str) -> list[str]:
    """``"{a, b ,c}"`` -> ``["a", "b", "c"]`` (an ENVI brace list; a bare value is one item)."""
    text = value.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return [item.strip() for item in text.split(",") if item.strip()]


def _floats(header: dict[str, str], key: str, count: int, path: Path
            ) -> np.ndarray | None:
    if key not in header:
        return None
    items = split_list(header[key])
    try:
        values = np.array([float(v) for v in items], dtype=np.float64)
    except ValueError:
        raise ProductError(path, f"header {key} has a value that is not a number: "
                                 f"{header[key][:60]!r}") from None
    if values.size != count:
        raise ProductError(path, f"header {key} lists {values.size} values for {count} bands")
    return values


def parse_map_info(value: str) -> dict[str, Any]:
    """ENVI ``map info`` as a dict (reference pixel is 1-based, as in the header).

    ``{UTM, 1, 1, 500000, 4100000, 30, 30, 11, North, WGS-84, units=Meters}`` ->
    projection, reference_pixel (x, y), map_coordinates (easting, northing), pixel_size
    (x, y), zone and hemisphere (UTM only), datum, units, rotation (degrees).
    """
    items = split_list(value)
    keyed = {k.strip().lower(): v.strip() for k, _, v in
             (i.partition("=") for i in items if "=" in i)}
    plain = [i for i in items if "=" not in i]
    if len(plain) < 7:
        raise ValueError(f"map info needs at least 7 values, has {len(plain)}")
    nums = [float(v) for v in plain[1:7]]
    info: dict[str, Any] = {
        "projection": plain[0],
        "reference_pixel": (nums[0], nums[1]),
        "map_coordinates": (nums[2], nums[3]),
        "pixel_size": (nums[4], nums[5]),
    }
    rest = plain[7:]
    if plain[0].strip().upper() == "UTM" and len(rest) >= 2:
        info["zone"] = int(float(rest[0]))
        info["hemisphere"] = rest[1]
        rest = rest[2:]
    if rest:
        info["datum"] = rest[0]
    if "units" in keyed:
        info["units"] = keyed["units"]
    if "rotation" in keyed:
        info["rotation"] = float(keyed["rotation"])
    return info


_INTEGER_FIELDS = ("samples", "lines", "bands", "header offset", "data type")


def check_header(header: dict[str, str], path: Path) -> None:
    """Refuse what GDAL would read leniently into a wrong array: non-integer sizes (GDAL
    takes the leading digits), an unknown interleave (GDAL falls back to BSQ), a byte order
    other than 0/1, a data ignore value that is not a number (GDAL makes it 0)."""
    for key in _INTEGER_FIELDS:
        value = header.get(key, "0" if key == "header offset" else None)
        if value is None:
            raise ProductError(path, f"header has no {key}")
        if not value.strip().isdigit():
            raise ProductError(path, f"header {key} = {value[:40]!r} is not a whole number")
    interleave = header.get("interleave", "").strip().lower()
    if interleave not in ("bsq", "bil", "bip"):
        raise ProductError(path, f"header interleave = {interleave[:20]!r} (expected bsq, bil "
                                 "or bip)")
    if header.get("byte order", "0").strip() not in ("0", "1"):
        raise ProductError(path, f"header byte order = {header['byte order'][:20]!r} "
                                 "(expected 0 = little-endian or 1 = big-endian)")
    if "data ignore value" in header:
        try:
            float(header["data ignore value"])
        except ValueError:
            raise ProductError(path, "header data ignore value = "
                                     f"{header['data ignore value'][:40]!r} is not a number"
                               ) from None


def _check_agreement(header: dict[str, str], ds: Any, path: Path) -> None:
    """GDAL and this module must read the same sizes and interleave from the header."""
    ours = (int(header["bands"]), int(header["lines"]), int(header["samples"]),
            header["interleave"].strip().upper())
    gdal = (ds.count, ds.height, ds.width, interleave_of(ds))
    if ours != gdal:
        raise ProductError(path, f"header read two ways: bands/lines/samples/interleave "
                                 f"{ours} here, {gdal} by GDAL (a malformed line?)")


def _check_size(header: dict[str, str], ds: Any, data_path: Path, label: Path) -> None:
    itemsize = np.dtype(ds.dtypes[0]).itemsize
    offset = int(header.get("header offset", "0"))
    need = offset + ds.count * ds.height * ds.width * itemsize
    have = os.path.getsize(data_path)
    if have < need:
        raise ProductError(label, f"truncated: the header needs {need:,} bytes ({ds.count} x "
                                  f"{ds.height} x {ds.width} x {itemsize} B + {offset} B "
                                  f"offset), {data_path.name} holds {have:,}")


# --------------------------------------------------------------------------- opening
def read(path: str | os.PathLike[str], *, drop_bad_bands: bool = False) -> RasterCube:
    """Open an ENVI cube given its header or its data file. Reads the header only.

    Raises ProductError on a missing or truncated data file, an unsupported data type or a
    header list whose length is not the band count.
    """
    path = Path(path)
    header_path = header_for(path)
    if header_path is None:
        raise ProductError(path, "no ENVI header (X.hdr starting with 'ENVI') beside it")
    data_path = data_for(header_path) if path == header_path else path
    header = read_header(header_path)
    check_header(header, header_path)
    ds = open_dataset(data_path, path)
    try:
        cube = _cube(path, data_path, ds, header, drop_bad_bands)
    except BaseException:
        ds.close()
        raise
    cube._ds = ds
    return cube


def _cube(path: Path, data_path: Path, ds: Any, header: dict[str, str],
          drop_bad_bands: bool) -> RasterCube:
    dtype = np.dtype(ds.dtypes[0])
    if dtype.kind == "c":
        raise ProductError(path, f"complex data ({dtype}) is not a radiance cube; not supported")
    _check_agreement(header, ds, path)
    _check_size(header, ds, data_path, path)
    count = ds.count
    notes: list[str] = []
    wl_raw = _floats(header, "wavelength", count, path)
    unit = header.get("wavelength units")
    wavelengths = fwhm = None
    if wl_raw is not None:
        wavelengths, note = to_nanometres(wl_raw, unit)
        notes += [note] if note else []
        fwhm_raw = _floats(header, "fwhm", count, path)
        factor, _ = nm_factor(wl_raw, unit)
        if fwhm_raw is not None and factor is not None:
            fwhm = (fwhm_raw * factor).astype(np.float32)
    bbl = _floats(header, "bbl", count, path)
    bad = None if bbl is None else bbl == 0
    names = split_list(header["band names"]) if "band names" in header else None
    if names is not None and len(names) != count:
        notes.append(f"band names lists {len(names)} names for {count} bands; ignored")
        names = None
    map_info = None
    if "map info" in header:
        try:
            map_info = parse_map_info(header["map info"])
        except ValueError as exc:
            notes.append(f"map info not understood ({exc}); using GDAL's transform")
    keep = np.arange(count) if not (drop_bad_bands and bad is not None) else np.flatnonzero(~bad)
    if keep.size == 0:
        raise ProductError(path, "bbl marks every band bad; nothing left to read")
    nodata = per_band(ds.nodatavals, count, np.nan)
    if "byte order" not in header:
        notes.append("header has no byte order; GDAL reads it as little-endian")
    byte_order = "big-endian" if header.get("byte order", "0").strip() == "1" \
        else "little-endian"

    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[keep]

    return RasterCube(
        path=path, data_path=data_path, format="envi", product_id=product_id_of(data_path),
        band_index=tuple(int(i) + 1 for i in keep), lines=ds.height, samples=ds.width,
        stored_dtype=dtype, interleave=interleave_of(ds),
        byte_order=byte_order if dtype.itemsize > 1 else "n/a (1 byte)",
        nodata=nodata[keep], scale=per_band(ds.scales, count, 1.0)[keep],
        offset=per_band(ds.offsets, count, 0.0)[keep],
        wavelengths=pick(wavelengths), fwhm=pick(fwhm),
        band_names=None if names is None else [names[i] for i in keep],
        bad_bands=pick(bad), crs=ds.crs.to_wkt() if ds.crs else None,
        transform=tuple(ds.transform)[:6] if _georeferenced(ds) else None,
        map_info=map_info, metadata=dict(header), warnings=notes,
    )


def _georeferenced(ds: Any) -> bool:
    return ds.crs is not None or not ds.transform.is_identity
