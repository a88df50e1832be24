"""A synthetic Rosetta VIRTIS archive in the ESA PSA layout, for the tests and the offline demo.

:func:`build_psa_archive` writes, for every data set id::

    <DATASET>/AAREADME.TXT, VOLDESC.CAT, CATALOG/DATASET.CAT, DOCUMENT/DOCINFO.TXT
    <DATASET>/INDEX/INDEX.LBL          PDS3 label: an INDEX_TABLE object with COLUMN objects
    <DATASET>/INDEX/INDEX.TAB          fixed-width ASCII rows, CRLF, quoted strings
    <DATASET>/DATA/STPnnn/CAL/VIRTIS_M_VIS/V1_<SCLK, 11 digits>.CAL calibrated (kind "cal")
    <DATASET>/DATA/STPnnn/GEO/VIRTIS_M_VIS/V1_<SCLK>.GEO              geometry (kind "geo")
    <DATASET>/DATA/STPnnn/VIRTIS_M_VIS/V1_<SCLK>.QUB                  raw (kind "raw")

(file prefix ``V`` for M-VIS, ``I`` for M-IR, ``T`` for H), with products written by
:func:`pipeline.synthetic.virtis_products.write_virtis_product`. Served by
:func:`pipeline.synthetic.servers.files.serve_directory`, it looks like the real archive to
``pipeline.download_pds``: index-driven selection, or Apache listings for a data set built
without an index (``no_index``), in upper or lower case (``lowercase``, like the PDS SBN).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.synthetic.virtis_products import write_virtis_product

DEFAULT_DATASET = "RO-C-VIRTIS-3-ESC1-MTP010-V2.0"
CHANNEL_PREFIX = {"VIRTIS_M_VIS": "V", "VIRTIS_M_IR": "I", "VIRTIS_H": "T"}
KIND_EXT = {"cal": "CAL", "raw": "QUB", "geo": "GEO"}
KIND_DIR = {"cal": "CAL/", "raw": "", "geo": "GEO/"}
SCLK0 = 377_420_372
EPOCH = dt.datetime(2014, 8, 6, 10, 11, 12)  # START_TIME of the first synthetic product


@dataclass(frozen=True)
class SyntheticProduct:
    """One product of the synthetic archive; ``path`` is relative to the data set folder."""

    dataset: str  # data set id (upper case)
    path: str  # '/'-separated, relative to the data set folder, as written on disk
    product_id: str
    channel: str
    kind: str
    start_time: str
    stop_time: str
    size: int


# Column layouts of the two index styles. Widths are of the value without quotes.
_COMMON_HEAD = [("DATA_SET_ID", "CHARACTER", 32)]
_STYLE_COLUMNS = {
    "path_name": [("PATH_NAME", "CHARACTER", 40), ("FILE_NAME", "CHARACTER", 20)],
    "file_spec": [("FILE_SPECIFICATION_NAME", "CHARACTER", 60)],
}
_COMMON_TAIL = [
    ("PRODUCT_ID", "CHARACTER", 20),
    ("PRODUCT_CREATION_TIME", "TIME", 23),
    ("START_TIME", "TIME", 23),
    ("STOP_TIME", "TIME", 23),
    ("INSTRUMENT_ID", "CHARACTER", 8),
    ("CHANNEL_ID", "CHARACTER", 12),
    ("TARGET_NAME", "CHARACTER", 40),
]


def index_columns(style: str = "path_name") -> list[tuple[str, str, int]]:
    """(NAME, DATA_TYPE, BYTES) of the index columns for ``style`` (path_name | file_spec)."""
    if style not in _STYLE_COLUMNS:
        raise ValueError(f"index style must be one of {sorted(_STYLE_COLUMNS)}")
    return _COMMON_HEAD + _STYLE_COLUMNS[style] + _COMMON_TAIL


def _is_text(dtype: str) -> bool:
    return dtype == "CHARACTER"


def write_index(
    index_dir: str | os.PathLike[str],
    rows: Iterable[dict[str, str]],
    style: str = "path_name",
    *,
    lowercase: bool = False,
) -> tuple[Path, Path]:
    """Write ``INDEX.LBL`` + ``INDEX.TAB`` (lower-case names if ``lowercase``) from ``rows``.

    Each row maps column names of :func:`index_columns` to values (missing ones are blank).
    String columns are written quoted; ``START_BYTE`` in the label points inside the quotes
    (the PDS convention) and ``BYTES`` excludes them. Returns (label, table) paths.
    """
    cols = index_columns(style)
    rows = list(rows)
    fields, layout, pos = [], [], 1
    for name, dtype, width in cols:
        quoted = _is_text(dtype)
        start = pos + (1 if quoted else 0)
        layout.append((name, dtype, width, start))
        pos += width + (2 if quoted else 0) + 1  # value (+ quotes) + comma / CR
    row_bytes = pos  # commas between values, CR LF at the end
    lines = []
    for row in rows:
        fields = []
        for name, dtype, width, _ in layout:
            value = str(row.get(name, ""))
            if len(value) > width:
                raise ValueError(f"index value too long for {name} ({width}): {value!r}")
            fields.append(f'"{value:<{width}}"' if _is_text(dtype) else f"{value:<{width}}")
        line = ",".join(fields) + "\r\n"
        assert len(line) == row_bytes, (len(line), row_bytes)
        lines.append(line)
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    tab_name, lbl_name = ("index.tab", "index.lbl") if lowercase else ("INDEX.TAB", "INDEX.LBL")
    tab = index_dir / tab_name
    tab.write_bytes("".join(lines).encode("ascii"))
    lbl_lines = [
        "PDS_VERSION_ID       = PDS3",
        "RECORD_TYPE          = FIXED_LENGTH",
        f"RECORD_BYTES         = {row_bytes}",
        f"FILE_RECORDS         = {len(rows)}",
        f'^INDEX_TABLE         = "{tab_name.upper()}"',
        "",
        "DATA_SET_ID          = \"%s\"" % (rows[0].get("DATA_SET_ID", "UNKNOWN") if rows else ""),
        'INSTRUMENT_HOST_NAME = "ROSETTA-ORBITER"',
        'INSTRUMENT_NAME      = "VISIBLE AND INFRARED THERMAL IMAGING SPECTROMETER"',
        "",
        "OBJECT               = INDEX_TABLE",
        "  INTERCHANGE_FORMAT = ASCII",
        f"  ROWS               = {len(rows)}",
        f"  ROW_BYTES          = {row_bytes}",
        f"  COLUMNS            = {len(layout)}",
        "  INDEX_TYPE         = SINGLE",
        '  DESCRIPTION        = "Index of the products of this data set, one row per file."',
    ]
    for i, (name, dtype, width, start) in enumerate(layout, 1):
        lbl_lines += [
            "",
            "  OBJECT             = COLUMN",
            f"    COLUMN_NUMBER    = {i}",
            f"    NAME             = {name}",
            f"    DATA_TYPE        = {dtype}",
            f"    START_BYTE       = {start}",
            f"    BYTES            = {width}",
            f'    DESCRIPTION      = "{name.replace("_", " ").lower()}"',
            "  END_OBJECT         = COLUMN",
        ]
    lbl_lines += ["END_OBJECT           = INDEX_TABLE", "END", ""]
    lbl = index_dir / lbl_name
    lbl.write_bytes("\r\n".join(lbl_lines).encode("ascii"))
    return lbl, tab


def _time(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def build_psa_archive(
    root: str | os.PathLike[str],
    datasets: Sequence[str] = (DEFAULT_DATASET,),
    channels: Sequence[str] = ("VIRTIS_M_VIS",),
    products_per_dataset: int = 4,
    bands: int = 432,
    samples: int = 64,
    lines: int = 64,
    seed: int = 0,
    kinds: Sequence[str] = ("cal",),
    *,
    no_index: Sequence[str] = (),
    lowercase: Sequence[str] = (),
    index_style: str = "path_name",
    stp_per_dataset: int = 2,
) -> list[SyntheticProduct]:
    """Write a PSA-layout VIRTIS archive under ``root``; return its products in index order.

    ``products_per_dataset`` products are written for every channel and kind of every data
    set (SCLK and START_TIME increase by one hour per product, data sets a day apart).
    Data sets named in ``no_index`` get no INDEX folder (listing fallback); those in
    ``lowercase`` are written in lower case like the PDS SBN mirror, while their INDEX.TAB
    keeps upper-case paths as SBN indexes do. ``index_style`` picks the path columns:
    ``"path_name"`` (PATH_NAME + FILE_NAME) or ``"file_spec"`` (FILE_SPECIFICATION_NAME).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    products: list[SyntheticProduct] = []
    for d, dataset in enumerate(datasets):
        lower = dataset in lowercase
        ds_dir = root / (dataset.lower() if lower else dataset)
        rows = []
        n = 0
        for channel in channels:
            for kind in kinds:
                for i in range(products_per_dataset):
                    sclk = SCLK0 + 86_400 * d + 3_600 * n
                    start = EPOCH + dt.timedelta(days=d, hours=n)
                    stop = start + dt.timedelta(seconds=20 * lines)
                    stp = 34 + (i * stp_per_dataset) // max(products_per_dataset, 1)
                    name = f"{CHANNEL_PREFIX[channel]}1_{sclk:011d}.{KIND_EXT[kind]}"
                    folder = f"DATA/STP{stp:03d}/{KIND_DIR[kind]}{channel}/"
                    rel = folder + name
                    disk_rel = rel.lower() if lower else rel
                    path = ds_dir / disk_rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_virtis_product(
                        path, kind=kind, channel=channel, bands=bands, samples=samples,
                        lines=lines, seed=seed + 1000 * d + n, product_id=name,
                    )
                    products.append(SyntheticProduct(
                        dataset, disk_rel, name, channel, kind, _time(start), _time(stop),
                        path.stat().st_size,
                    ))
                    rows.append({
                        "DATA_SET_ID": dataset, "PATH_NAME": folder, "FILE_NAME": name,
                        "FILE_SPECIFICATION_NAME": rel, "PRODUCT_ID": name,
                        "PRODUCT_CREATION_TIME": "2016-02-03T04:05:06.000",
                        "START_TIME": _time(start), "STOP_TIME": _time(stop),
                        "INSTRUMENT_ID": "VIRTIS", "CHANNEL_ID": channel,
                        "TARGET_NAME": "67P/CHURYUMOV-GERASIMENKO 1 (1969 R1)",
                    })
                    n += 1
        _write_dataset_files(ds_dir, dataset, lower)
        if dataset not in no_index:
            write_index(ds_dir / ("index" if lower else "INDEX"), rows, index_style,
                        lowercase=lower)
    return products


def _write_dataset_files(ds_dir: Path, dataset: str, lower: bool) -> None:
    def name(p: str) -> str:
        return p.lower() if lower else p

    text = {
        "AAREADME.TXT": f"Synthetic VIRTIS data set {dataset} (sscnet-pipeline test archive).\r\n",
        "VOLDESC.CAT": f'PDS_VERSION_ID = PDS3\r\nDATA_SET_ID = "{dataset}"\r\nEND\r\n',
        "CATALOG/DATASET.CAT": f'DATA_SET_ID = "{dataset}"\r\nEND\r\n',
        "DOCUMENT/DOCINFO.TXT": "See the VIRTIS EAICD in the real archive.\r\n",
    }
    for rel, body in text.items():
        path = ds_dir / name(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body.encode("ascii"))
