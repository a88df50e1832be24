"""Download Rosetta VIRTIS products from a PDS3 archive (ESA PSA or PDS SBN), reproducibly.

    python -m pipeline.download_pds --params params.yaml --out data/raw/virtis
    python -m pipeline.download_pds --dataset RO-C-VIRTIS-3-ESC1-MTP010-V2.0 --max-files 4
    python -m pipeline.download_pds --locked data/raw/virtis/manifest.json --out elsewhere

For every data set the archive's own index is used: ``INDEX/INDEX.LBL`` is parsed with pvl
to learn the columns of ``INDEX/INDEX.TAB`` (file path, product id, start time, channel are
found by name, never by position), rows are filtered by channel, product type, time range and
count, and the files are fetched with :mod:`pipeline.fetch` (retries, Range resume, sha256,
atomic rename). A data set without a usable index is walked through its HTML listings.
Each product is opened with :func:`parsers.virtis.read` before it is kept. ``DIR/manifest.json``
records URL, path, size, sha256 and the index row of every file; ``--locked MANIFEST`` fetches
exactly those files again and fails if any byte differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import difflib
import html.parser
import importlib
import importlib.util
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import quote, unquote, urljoin, urlsplit

import pvl
import pvl.decoder
import requests

from parsers.errors import UserError, cli_entry
from pipeline.fetch import (
    RETRY_STATUSES,
    FetchJob,
    FetchResult,
    check_url,
    fetch_all,
    make_session,
    safe_join,
    sha256_file,
)
from pipeline.manifest import (
    MANIFEST_NAME,
    Manifest,
    check_locked,
    entries_for,
    locked_jobs,
)
from pipeline.params import DEFAULT_PARAMS, from_dict, load_section, to_dict

PROG = "python -m pipeline.download_pds"
SECTION = "download_pds"
DEFAULT_BASE_URL = "https://archives.esac.esa.int/psa/ftp/INTERNATIONAL-ROSETTA-MISSION/VIRTIS/"
DEFAULT_DATASET = "RO-C-VIRTIS-3-ESC1-MTP010-V2.0"
CHANNELS = ("VIRTIS_M_VIS", "VIRTIS_M_IR", "VIRTIS_H")
KIND_EXTENSIONS = {"raw": (".QUB",), "cal": (".CAL",), "geo": (".GEO", ".GE5")}
KIND_ALIASES = {
    "raw": "raw", "qub": "raw", "edr": "raw",
    "cal": "cal", "calibrated": "cal", "rdr": "cal",
    "geo": "geo", "ge5": "geo", "geometry": "geo",
}
# First letter of a Rosetta file name -> channel (virtis-format.md section 10).
PREFIX_CHANNEL = {"V": "VIRTIS_M_VIS", "I": "VIRTIS_M_IR", "H": "VIRTIS_H", "S": "VIRTIS_H",
                  "T": "VIRTIS_H"}
# Folders of the data tree that hold one product kind only (used to prune listing walks).
KIND_FOLDERS = {"CAL": "cal", "GEO": "geo", "RAW": "raw"}
OFFLINE_HINT = "use --base-url for a mirror, or `python -m pipeline.demo` to run offline"
MAX_LISTING_PAGES = 5000


@dataclass(frozen=True)
class DownloadPdsParams:
    """Settings of the ``download_pds`` stage (params.yaml section ``download_pds``)."""

    base_url: str = DEFAULT_BASE_URL
    datasets: tuple[str, ...] = (DEFAULT_DATASET,)
    channels: tuple[str, ...] = ("VIRTIS_M_VIS",)
    product_types: tuple[str, ...] = ("cal",)  # raw (.QUB), cal (.CAL), geo (.GEO/.GE5)
    max_files: int | None = 4  # over all data sets; None: no limit
    max_per_dataset: int | None = None
    start_time: str | None = None  # ISO UTC, inclusive, compared with the index START_TIME
    stop_time: str | None = None  # ISO UTC, exclusive
    selection: Literal["first", "spread"] = "spread"  # which rows when more match than wanted
    out: Path = Path("data/raw/virtis")
    jobs: int = 4
    retries: int = 5
    backoff: float = 0.5  # seconds; doubles per consecutive failure
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    verify_products: bool = True
    listing_fallback: bool = True
    locked: Path | None = None

    def __post_init__(self) -> None:
        try:
            check_url(self.base_url)
        except UserError as exc:
            raise ValueError(f"base_url: {exc}") from None
        if not self.base_url.endswith("/"):
            object.__setattr__(self, "base_url", self.base_url + "/")
        if not self.datasets:
            raise ValueError("datasets: give at least one data set id")
        bad = [c for c in self.channels if c.upper() not in CHANNELS]
        if bad or not self.channels:
            raise ValueError(f"channels: {bad or '[]'} not in {list(CHANNELS)}")
        object.__setattr__(self, "channels", tuple(c.upper() for c in self.channels))
        kinds = []
        for k in self.product_types:
            if k.lower() not in KIND_ALIASES:
                raise ValueError(f"product_types: {k!r} is not raw/QUB, cal/CAL or geo/GEO")
            kinds.append(KIND_ALIASES[k.lower()])
        if not kinds:
            raise ValueError("product_types: give at least one of raw, cal, geo")
        object.__setattr__(self, "product_types", tuple(dict.fromkeys(kinds)))
        for name in ("max_files", "max_per_dataset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (or null for no limit)")
        if self.jobs < 1 or self.retries < 0:
            raise ValueError("jobs must be >= 1 and retries >= 0")
        for name in ("start_time", "stop_time"):
            value = getattr(self, name)
            if value is not None and parse_time(value) is None:
                raise ValueError(f"{name}: {value!r} is not an ISO date/time")

    def query(self) -> dict[str, Any]:
        """The selection part of the settings, recorded in the manifest."""
        keys = ("base_url", "datasets", "channels", "product_types", "max_files",
                "max_per_dataset", "start_time", "stop_time", "selection")
        return {k: to_dict(getattr(self, k)) for k in keys}


@dataclass(frozen=True)
class Candidate:
    """A product file chosen from an index row or a listing."""

    dataset: str  # data set id as requested
    dataset_url: str  # URL of the data set folder (ends with '/')
    dataset_dir: str  # the folder name on the server (its letter case)
    relpath: str  # '/'-separated, relative to the data set folder, as on the server
    product_id: str
    channel: str | None
    kind: str | None
    start_time: str | None
    source: Literal["index", "listing"]
    row: dict[str, str] | None = field(default=None, compare=False)

    @property
    def url(self) -> str:
        return self.dataset_url + quote(self.relpath)

    @property
    def local(self) -> str:
        return f"{self.dataset_dir}/{self.relpath}"

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "product_id": self.product_id, "dataset": self.dataset, "channel": self.channel,
            "kind": self.kind, "start_time": self.start_time, "source": self.source,
        }
        if self.row is not None:
            meta["index_row"] = self.row
        return meta


# ------------------------------------------------------------------------- small parsers


def parse_time(text: str | None) -> dt.datetime | None:
    """PDS time (``YYYY-MM-DDThh:mm:ss[.fff]``, ``YYYY-DDDThh:mm:ss``, a date) -> naive UTC."""
    if text is None:
        return None
    t = str(text).strip().rstrip("Zz").strip()
    if not t or t.upper() in ("N/A", "UNK", "NULL"):
        return None
    m = re.match(r"^(\d{4})-(\d{3})(?:T(\d\d):(\d\d)(?::(\d\d)(?:\.(\d+))?)?)?$", t)
    if m:
        base = dt.datetime(int(m.group(1)), 1, 1) + dt.timedelta(days=int(m.group(2)) - 1)
        frac = float("0." + m.group(6)) if m.group(6) else 0.0
        return base + dt.timedelta(
            hours=int(m.group(3) or 0), minutes=int(m.group(4) or 0),
            seconds=int(m.group(5) or 0) + frac,
        )
    m = re.match(r"^(.*?\d\d:\d\d(?::\d\d)?)\.(\d+)$", t)
    if m:  # fromisoformat wants at most 6 fraction digits (Python 3.10)
        t = f"{m.group(1)}.{(m.group(2) + '000000')[:6]}"
    try:
        return dt.datetime.fromisoformat(t).replace(tzinfo=None)
    except ValueError:
        return None


def kind_of(name: str) -> str | None:
    """Product kind (raw/cal/geo) from a file name's extension, any letter case."""
    suffix = PurePosixPath(name).suffix.upper()
    for kind, exts in KIND_EXTENSIONS.items():
        if suffix in exts:
            return kind
    return None


def channel_of(relpath: str) -> str | None:
    """Channel from a path segment (``.../VIRTIS_M_VIS/...``) or the file name's prefix."""
    parts = [p.upper() for p in PurePosixPath(relpath).parts]
    for p in parts[:-1]:
        if p in CHANNELS:
            return p
    name = parts[-1] if parts else ""
    if re.match(r"^[VIHST]\d_\d+\.", name):
        return PREFIX_CHANNEL[name[0]]
    return None


@dataclass(frozen=True)
class IndexTable:
    """What INDEX.LBL says about INDEX.TAB: columns (name, 1-based start byte, bytes), the
    table file's name, where its rows start and how many there are."""

    columns: tuple[tuple[str, int, int], ...]
    table_name: str | None
    row_bytes: int | None = None
    n_rows: int | None = None
    start: tuple[int, bool] | None = None  # 1-based (n, in bytes?) from the pointer
    record_bytes: int | None = None
    structure: str | None = None  # ^STRUCTURE file that holds the COLUMN objects

    def offset(self, size: int) -> int:
        """Bytes before the first row (a header row, for instance)."""
        if self.start is None:
            return 0
        n, in_bytes = self.start
        if not in_bytes and self.record_bytes and (n - 1) * self.record_bytes < size:
            return (n - 1) * self.record_bytes
        # A record number past the end is a byte offset in disguise (seen in PDS labels).
        return n - 1 if n - 1 < size else 0

    def rows(self, data: bytes) -> list[dict[str, str]]:
        """The table's rows as {column name: stripped, unquoted text}."""
        text = data[self.offset(len(data)):].decode("latin-1")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if self.n_rows is not None:
            lines = lines[: self.n_rows]
        return [
            {name: ln[start - 1:start - 1 + width].strip().strip('"').strip()
             for name, start, width in self.columns}
            for ln in lines
        ]


class _LabelDecoder(pvl.decoder.OmniDecoder):
    """pvl's decoder without date/time decoding (4x faster; the index label needs none)."""

    def decode_datetime(self, value: str):
        raise ValueError(value)


def _loads(text: str, where: str) -> Any:
    try:
        return pvl.loads(text, decoder=_LabelDecoder())
    except Exception as exc:  # pvl raises several unrelated types on bad labels
        why = " ".join(str(exc).split())[:120]
        raise UserError(f"{where}: the label does not parse ({why})") from None


def _columns(obj: Any, where: str) -> list[tuple[str, int, int]]:
    cols = obj.getall("COLUMN") if hasattr(obj, "getall") and "COLUMN" in obj else []
    out = []
    for col in cols:
        try:
            out.append((str(col["NAME"]).upper(), int(col["START_BYTE"]), int(col["BYTES"])))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: a COLUMN lacks NAME, START_BYTE or BYTES") from None
    return out


def parse_columns(text: str, where: str) -> list[tuple[str, int, int]]:
    """COLUMN objects of a format (``^STRUCTURE``) file."""
    return _columns(_loads(text, where), where)


def parse_index_label(text: str, where: str) -> IndexTable:
    """Read the TABLE object of a PDS3 index label; UserError naming ``where`` if unusable."""
    label = _loads(text, where)
    table_key, table = None, None
    for key, value in label.items():
        if (isinstance(value, pvl.PVLModule | pvl.PVLObject | dict)
                and str(key).upper().endswith("TABLE")
                and ("COLUMN" in value or "^STRUCTURE" in value)):
            table_key, table = str(key), value
            break
    if table is None or table_key is None:
        raise UserError(f"{where}: INDEX.LBL has no TABLE object with COLUMN objects")
    structure = table.get("^STRUCTURE")
    columns = _columns(table, where)
    pointer = label.get(f"^{table_key}")
    if pointer is None:
        pointer = next((v for k, v in label.items() if str(k).upper().endswith("TABLE")
                        and str(k).startswith("^")), None)
    name, start = None, None
    if isinstance(pointer, str):
        name = pointer
    elif isinstance(pointer, (list, tuple)) and pointer:
        name = str(pointer[0])
        if len(pointer) > 1:
            n = pointer[1]
            unit = str(getattr(n, "units", "")).upper()
            start = (int(getattr(n, "value", n)), unit == "BYTES")

    def num(v: Any) -> int | None:
        try:
            return int(v) if v is not None else None
        except (TypeError, ValueError):
            return None

    return IndexTable(
        tuple(columns), name, num(table.get("ROW_BYTES")), num(table.get("ROWS")), start,
        num(label.get("RECORD_BYTES")), str(structure) if structure and not columns else None,
    )


def _first_column(names: Sequence[str], *patterns: str) -> str | None:
    for pattern in patterns:
        for n in names:
            if re.fullmatch(pattern, n):
                return n
    return None


def row_path(row: dict[str, str]) -> str | None:
    """The product's path relative to the data set folder, from whichever columns exist."""
    names = list(row)
    spec = _first_column(names, r"FILE_SPECIFICATION_NAME", r".*FILE_SPEC.*", r"FILE_PATH")
    if spec and row[spec]:
        return row[spec]
    path = _first_column(names, r"PATH_NAME", r".*PATH_NAME", r"PATH")
    fname = _first_column(names, r"FILE_NAME", r".*FILE_NAME", r"PRODUCT_FILE.*")
    if fname and row[fname]:
        if path and row[path]:
            return row[path].rstrip("/") + "/" + row[fname]
        if "/" in row[fname]:
            return row[fname]
    return None


# ------------------------------------------------------------------------- archive access


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag.lower() == "a":
            for k, v in attrs:
                if k.lower() == "href" and v:
                    self.hrefs.append(v)


def listing_children(page: str, dir_url: str) -> list[tuple[str, bool]]:
    """(name, is_dir) of the direct children linked from an HTML directory listing."""
    parser = _Links()
    parser.feed(page)
    out: dict[str, bool] = {}
    for href in parser.hrefs:
        if href.startswith(("?", "#", "mailto:", "javascript:")):
            continue
        child = urljoin(dir_url, href).split("#")[0].split("?")[0]
        if not child.startswith(dir_url) or len(child) <= len(dir_url):
            continue  # parent, sort links, absolute links elsewhere
        name = unquote(child[len(dir_url):])
        is_dir = name.endswith("/")
        name = name.rstrip("/")
        if not name or "/" in name or name in (".", ".."):
            continue
        out[name] = is_dir
    return sorted(out.items())


class Archive:
    """Reads index files and listings of one archive root through one session."""

    def __init__(self, session: requests.Session, params: DownloadPdsParams) -> None:
        self.session = session
        self.params = params
        self.base = params.base_url
        self._probe = make_session(
            retries=1, backoff=0.0, timeout=(params.connect_timeout, params.read_timeout)
        )
        self._reached = False
        self._labels: dict[str, bytes] = {}

    def close(self) -> None:
        self._probe.close()

    def get(self, url: str) -> requests.Response | None:
        """GET ``url``: the response if 200, None if 404/410; UserError otherwise."""
        session = self.session if self._reached else self._probe
        try:
            resp = session.get(url)
        except (requests.ConnectionError, requests.Timeout) as exc:
            if not self._reached:
                raise UserError(
                    f"cannot reach the archive at {url} ({_reason(exc)}); {OFFLINE_HINT}"
                ) from None
            raise UserError(f"{url}: connection failed ({_reason(exc)})") from None
        except requests.RequestException as exc:
            raise UserError(f"{url}: request failed ({_reason(exc)})") from None
        if not self._reached and resp.status_code in RETRY_STATUSES:
            # The probe only fails fast on connections; a busy server gets the full retries.
            resp = self.session.get(url)
        self._reached = True
        if resp.status_code in (404, 410):
            return None
        if resp.status_code != 200:
            raise UserError(f"{url}: HTTP {resp.status_code} {resp.reason or ''}".rstrip())
        return resp

    def locate(self, dataset: str) -> tuple[str, str, str | None]:
        """(folder name, folder URL, index label URL or None) of a data set, either case."""
        tried = []
        for name, index in ((dataset.upper(), "INDEX/INDEX.LBL"),
                            (dataset.lower(), "index/index.lbl")):
            url = self.base + quote(name) + "/"
            tried.append(url)
            resp = self.get(url + index)
            if resp is not None:
                self._labels[url + index] = resp.content
                return name, url, url + index
        for name in dict.fromkeys([dataset.upper(), dataset.lower(), dataset]):
            url = self.base + quote(name) + "/"
            if self.get(url) is not None:
                return name, url, None
        raise UserError(
            f"data set {dataset!r} not found at {self.base} (tried {', '.join(tried)})"
            + self._suggest(dataset)
        )

    def _suggest(self, dataset: str) -> str:
        try:
            resp = self.get(self.base)
        except UserError:
            return ""
        if resp is None:
            return ""
        names = [n for n, is_dir in listing_children(resp.text, self.base) if is_dir]
        close = difflib.get_close_matches(dataset.upper(), [n.upper() for n in names], n=3,
                                          cutoff=0.6)
        return f"; did you mean {', '.join(close)}?" if close else "; check --dataset"

    def index_rows(self, dataset: str, folder: str, folder_url: str, label_url: str
                   ) -> list[Candidate]:
        """Candidates from the data set's INDEX.LBL + INDEX.TAB (all rows, unfiltered)."""
        label = self._labels.get(label_url)
        if label is None:
            resp = self.get(label_url)
            if resp is None:
                raise UserError(f"{label_url}: not found")
            label = resp.content
        table = parse_index_label(label.decode("latin-1"), label_url)
        label_dir = label_url.rsplit("/", 1)[0] + "/"
        if table.structure:  # the COLUMN objects live in a separate format file
            fmt = self._get_any(label_dir, table.structure)
            if fmt is None:
                raise UserError(f"{label_dir}: the format file {table.structure} is missing")
            columns = parse_columns(fmt.decode("latin-1"), label_dir + table.structure)
            table = dataclasses.replace(table, columns=tuple(columns), structure=None)
        if not table.columns:
            raise UserError(f"{label_url}: the index table has no columns")
        tab_name = table.table_name or "INDEX.TAB"
        data = self._get_any(label_dir, tab_name)
        if data is None:
            raise UserError(f"{label_dir}: the index table {tab_name} is missing")
        rows = table.rows(data)
        col_names = [c[0] for c in table.columns]
        if rows and row_path(rows[0]) is None:
            raise UserError(
                f"{label_url}: no file path column among {', '.join(col_names)}"
            )
        pid_col = _first_column(col_names, r"PRODUCT_ID", r".*PRODUCT_ID")
        time_col = _first_column(col_names, r"START_TIME", r".*START_TIME")
        chan_col = _first_column(col_names, r"CHANNEL_ID", r".*CHANNEL.*")
        lower = folder != folder.upper() and folder == folder.lower()
        out = []
        for row in rows:
            path = row_path(row)
            if not path:
                continue
            rel = _relative_to_dataset(path, dataset)
            if lower:
                rel = rel.lower()
            channel = (row.get(chan_col) or "").upper() if chan_col else ""
            out.append(Candidate(
                dataset, folder_url, folder, rel,
                (row.get(pid_col) if pid_col else "") or PurePosixPath(rel).name.upper(),
                channel if channel in CHANNELS else channel_of(rel), kind_of(rel),
                row.get(time_col) if time_col else None, "index", row,
            ))
        return out

    def _get_any(self, folder_url: str, name: str) -> bytes | None:
        """Body of ``name`` in ``folder_url`` as written, upper- or lower-cased; None if absent."""
        name = name.replace("\\", "/").rsplit("/", 1)[-1]
        for variant in dict.fromkeys([name, name.upper(), name.lower()]):
            resp = self.get(folder_url + quote(variant))
            if resp is not None:
                return resp.content
        return None

    def walk(self, dataset: str, folder: str, folder_url: str) -> list[Candidate]:
        """Candidates found by walking the HTML listings under DATA/ (pruned by filters)."""
        start = None
        for name in ("DATA/", "data/"):
            if self.get(folder_url + name) is not None:
                start = folder_url + name
                break
        if start is None:
            raise UserError(f"{folder_url}: no usable index and no DATA/ folder to walk")
        want_channels = set(self.params.channels)
        want_kinds = set(self.params.product_types)
        queue, found, pages = [start], [], 0
        while queue:
            url = queue.pop(0)
            pages += 1
            if pages > MAX_LISTING_PAGES:
                raise UserError(f"{folder_url}: more than {MAX_LISTING_PAGES} listing pages")
            resp = self.get(url)
            if resp is None:
                continue
            for name, is_dir in listing_children(resp.text, url):
                upper = name.upper()
                if is_dir:
                    if upper in CHANNELS and upper not in want_channels:
                        continue
                    if upper in KIND_FOLDERS and KIND_FOLDERS[upper] not in want_kinds:
                        continue
                    queue.append(url + quote(name) + "/")
                elif kind_of(name) in want_kinds:
                    rel = unquote(url[len(folder_url):]) + name
                    found.append(Candidate(
                        dataset, folder_url, folder, rel, name.upper(), channel_of(rel),
                        kind_of(rel), None, "listing",
                    ))
        return found


def _relative_to_dataset(path: str, dataset: str) -> str:
    """Index paths are relative to the volume root; drop a leading data set folder."""
    parts = path.replace("\\", "/").split("/")
    if len(parts) > 1 and parts[0].upper() == dataset.upper():
        return "/".join(parts[1:])
    return path.replace("\\", "/")


def _reason(exc: BaseException) -> str:
    inner: Any = exc.args[0] if exc.args else exc
    inner = getattr(inner, "reason", inner)
    return " ".join(str(inner).split())[:160]


# ------------------------------------------------------------------------- selection


def _spread(items: list[Candidate], k: int | None, how: str) -> list[Candidate]:
    if k is None or len(items) <= k:
        return items
    if how == "first" or k == 1:
        return items[:k]
    n = len(items)
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in picks]


def filter_candidates(cands: list[Candidate], params: DownloadPdsParams) -> list[Candidate]:
    """Keep the candidates of the wanted channels, kinds and time range (order kept)."""
    start, stop = parse_time(params.start_time), parse_time(params.stop_time)
    out = []
    for c in cands:
        if c.kind not in params.product_types or c.channel not in params.channels:
            continue
        if start or stop:
            t = parse_time(c.start_time)
            if t is None or (start and t < start) or (stop and t >= stop):
                continue
        out.append(c)
    return out


def select(archive: Archive, params: DownloadPdsParams) -> list[Candidate]:
    """Chosen products of every data set, in data set then index order, checked for safety."""
    chosen: list[Candidate] = []
    for dataset in params.datasets:
        folder, folder_url, label_url = archive.locate(dataset)
        cands = None
        if label_url is not None:
            try:
                cands = archive.index_rows(dataset, folder, folder_url, label_url)
            except UserError as exc:
                if not params.listing_fallback:
                    raise
                warnings.warn(f"{exc}; walking the listings instead", stacklevel=1)
        elif not params.listing_fallback:
            raise UserError(f"{folder_url}: no INDEX/INDEX.LBL and listing_fallback is off")
        if cands is None:
            if params.start_time or params.stop_time:
                warnings.warn(f"{dataset}: no index, so the time range cannot be applied; "
                              "it is ignored for this data set", stacklevel=1)
                params_nt = dataclasses.replace(params, start_time=None, stop_time=None)
            else:
                params_nt = params
            cands = filter_candidates(archive.walk(dataset, folder, folder_url), params_nt)
        else:
            cands = filter_candidates(cands, params)
        if not cands:
            warnings.warn(f"{dataset}: no product matches channels {list(params.channels)}, "
                          f"types {list(params.product_types)}"
                          + (" and the time range" if params.start_time or params.stop_time
                             else ""), stacklevel=1)
        chosen += _spread(cands, params.max_per_dataset, params.selection)
    chosen = _spread(chosen, params.max_files, params.selection)
    for c in chosen:  # refuse paths leaving --out before anything is written
        try:
            safe_join(params.out, c.local)
        except UserError as exc:
            where = "index row" if c.source == "index" else "listing entry"
            raise UserError(f"{c.dataset}: {where} for {c.product_id!r}: {exc}") from None
        if urlsplit(c.url).netloc != urlsplit(c.dataset_url).netloc:
            raise UserError(f"{c.dataset}: {c.relpath!r} points to another host")
    return chosen


# ------------------------------------------------------------------------- verification


def verify_product(path: Path) -> None:
    """Open a downloaded product with the VIRTIS reader: the label must parse and the file
    must hold the bytes the label announces (the reader checks this); read one line."""
    # parsers.virtis adds VIRTIS semantics on top of the generic QUBE reader parsers.pds3;
    # both check the label's byte accounting against the file size.
    name = "parsers.virtis" if importlib.util.find_spec("parsers.virtis") else "parsers.pds3"
    cube = importlib.import_module(name).read(path)
    if cube.lines:
        cube.read_lines(0, 1)


# ------------------------------------------------------------------------- the stage


@dataclass
class RunReport:
    selected: int
    fetched: int
    present: int
    bytes: int
    seconds: float
    manifest: Path
    failures: list[str]


def _reuse(previous: Manifest | None, out: Path, c: Candidate) -> FetchResult | None:
    """A result for a file already complete and verified by an earlier run: same path
    below ``out``, and the file on disk still has the size and sha256 that run recorded.
    (The URL may differ: a mirror, or the demo server on another port.)"""
    if previous is None:
        return None
    entry = previous.by_path().get(c.local)
    if entry is None:
        return None
    path = safe_join(out, c.local)
    if not path.is_file() or path.stat().st_size != entry.size:
        return None
    if sha256_file(path) != entry.sha256:
        return None
    job = FetchJob(c.url, path, meta=c.meta())
    return FetchResult(c.url, path, entry.size, entry.sha256, skipped=True, job=job)


def rebase(lock: Manifest, base_url: str) -> Manifest:
    """The lock with its URLs moved from the recorded ``query.base_url`` to ``base_url``
    (the same files from a mirror); paths, sizes and sha256 stay as locked."""
    old = str(lock.query.get("base_url") or "")
    new = base_url if base_url.endswith("/") else base_url + "/"
    if not old or old == new:
        return lock
    files = []
    for e in lock.files:
        if not e.url.startswith(old):
            raise UserError(f"{e.url}: not below the lock's base_url {old}, cannot rebase it")
        files.append(dataclasses.replace(e, url=new + e.url[len(old):]))
    return Manifest(lock.source, {**lock.query, "base_url": new}, files)


def run(params: DownloadPdsParams, *, dry_run: bool = False, progress: bool | None = None,
        rebase_to: str | None = None) -> RunReport:
    """Run the stage with ``params``; return what it did (raise UserError on failure).

    With ``params.locked``, ``rebase_to`` (the --base-url given on the command line) fetches
    the locked files from that archive root instead of the recorded one.
    """
    out = params.out
    session = make_session(retries=params.retries, backoff=params.backoff,
                           timeout=(params.connect_timeout, params.read_timeout),
                           pool_size=max(4, params.jobs))
    verify = verify_product if params.verify_products else None
    t0 = time.monotonic()
    try:
        if params.locked is not None:
            lock = Manifest.read(params.locked)
            if rebase_to is not None:
                lock = rebase(lock, rebase_to)
            jobs = locked_jobs(lock, out)
            if dry_run:
                for j in jobs:
                    print(j.url)
                return RunReport(len(jobs), 0, 0, 0, 0.0, out / MANIFEST_NAME, [])
            results = fetch_all(session, jobs, params.jobs, verify, desc="download_pds",
                                progress=progress)
            bad = [r for r in results if not r.ok]
            if bad:
                raise UserError(
                    f"{params.locked}: {len(bad)} of {len(jobs)} locked files could not be "
                    f"reproduced: " + "; ".join(str(r.error) for r in bad[:3])
                    + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
                )
            manifest = Manifest(lock.source or "virtis", lock.query, entries_for(results, out))
            check_locked(lock, manifest, params.locked)
        else:
            archive = Archive(session, params)
            try:
                chosen = select(archive, params)
            finally:
                archive.close()
            if dry_run:
                for c in chosen:
                    print(f"{c.url}\t{c.channel}\t{c.kind}\t{c.start_time or '-'}")
                return RunReport(len(chosen), 0, 0, 0, 0.0, out / MANIFEST_NAME, [])
            if not chosen:
                raise UserError("nothing to download: no product matches the selection")
            out.mkdir(parents=True, exist_ok=True)
            previous = _previous_manifest(out / MANIFEST_NAME)
            reused, jobs = [], []
            for c in chosen:
                hit = _reuse(previous, out, c)
                if hit is not None:
                    reused.append(hit)
                else:
                    jobs.append(FetchJob(c.url, safe_join(out, c.local), meta=c.meta()))
            results = fetch_all(session, jobs, params.jobs, verify, desc="download_pds",
                                progress=progress) if jobs else []
            results = reused + results
            bad = [r for r in results if not r.ok]
            manifest = Manifest("virtis", params.query(), entries_for(results, out))
            if bad:
                if manifest.files:
                    manifest.write(out / MANIFEST_NAME)
                raise UserError(
                    f"{len(bad)} of {len(results)} products failed and were not kept: "
                    + "; ".join(str(r.error) for r in bad[:3])
                    + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
                    + "; rerun to retry (complete files are not fetched again)"
                )
    finally:
        session.close()
    path = manifest.write(out / MANIFEST_NAME)
    fetched = [r for r in results if r.ok and not r.skipped]
    return RunReport(
        selected=len(results), fetched=len(fetched),
        present=sum(1 for r in results if r.skipped),
        bytes=sum(r.transferred for r in fetched), seconds=time.monotonic() - t0,
        manifest=path, failures=[],
    )


def _previous_manifest(path: Path) -> Manifest | None:
    if not path.is_file():
        return None
    try:
        return Manifest.read(path)
    except UserError as exc:
        warnings.warn(f"ignoring the unreadable previous manifest ({exc})", stacklevel=2)
        return None


# ------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--params", type=Path, default=None,
                   help=f"params file (default {DEFAULT_PARAMS} if it exists); section {SECTION}")
    p.add_argument("--base-url", help=f"archive root holding the data sets (default "
                   f"{DEFAULT_BASE_URL}; the PDS SBN holdings URL works too)")
    p.add_argument("--dataset", action="append", metavar="ID",
                   help=f"data set id, repeatable (default {DEFAULT_DATASET})")
    p.add_argument("--channel", action="append", type=str.upper, metavar="CH",
                   help=f"repeatable: {', '.join(CHANNELS)}")
    p.add_argument("--product-type", action="append", metavar="T",
                   help="repeatable: raw|QUB, cal|CAL, geo|GEO")
    p.add_argument("--max-files", type=int, metavar="N",
                   help="at most N files in all (0: no limit)")
    p.add_argument("--max-per-dataset", type=int, metavar="N", help="at most N per data set")
    p.add_argument("--start", dest="start_time", metavar="TIME", help="START_TIME >= TIME (UTC)")
    p.add_argument("--stop", dest="stop_time", metavar="TIME", help="START_TIME < TIME (UTC)")
    p.add_argument("--selection", choices=("first", "spread"),
                   help="which matching rows to keep when there are more than wanted")
    p.add_argument("--out", type=Path, metavar="DIR", help="download folder")
    p.add_argument("--jobs", type=int, metavar="N", help="parallel transfers")
    p.add_argument("--retries", type=int, metavar="N", help="retries per request")
    p.add_argument("--locked", type=Path, metavar="MANIFEST",
                   help="fetch exactly the files of this manifest; fail if any sha256 differs "
                   "(with --base-url: from that mirror)")
    p.add_argument("--no-verify", action="store_true", help="do not open products after download")
    p.add_argument("--dry-run", action="store_true", help="print the selection, fetch nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_params(args: argparse.Namespace) -> DownloadPdsParams:
    """Params from the file (if any) with the command-line flags on top."""
    overrides: dict[str, Any] = {
        "base_url": args.base_url,
        "datasets": args.dataset,
        "channels": args.channel,
        "product_types": args.product_type,
        "max_per_dataset": args.max_per_dataset,
        "start_time": args.start_time,
        "stop_time": args.stop_time,
        "selection": args.selection,
        "out": str(args.out) if args.out is not None else None,
        "jobs": args.jobs,
        "retries": args.retries,
        "locked": str(args.locked) if args.locked is not None else None,
        "verify_products": False if args.no_verify else None,
    }
    if args.max_files is not None:
        overrides["max_files"] = args.max_files if args.max_files > 0 else None
    path = args.params
    if path is None and DEFAULT_PARAMS.is_file():
        path = DEFAULT_PARAMS
    if path is not None:
        params = load_section(DownloadPdsParams, SECTION, path, overrides)
    else:
        data = {k: v for k, v in overrides.items() if v is not None}
        if "max_files" in overrides:
            data["max_files"] = overrides["max_files"]
        params = from_dict(DownloadPdsParams, data, where=f"{PROG} flags")
    if args.max_files is not None and args.max_files <= 0:
        params = dataclasses.replace(params, max_files=None)
    return params


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = load_params(args)
    report = run(params, dry_run=args.dry_run, progress=False if args.no_progress else None,
                 rebase_to=args.base_url)
    if args.dry_run:
        print(f"{report.selected} product(s) would be fetched", file=sys.stderr)
        return 0
    mib = report.bytes / 2**20
    rate = mib / report.seconds if report.seconds > 0 else 0.0
    fetched = f"{report.fetched} fetched"
    if report.fetched:
        fetched += f" ({mib:.1f} MiB, {rate:.1f} MiB/s)"
    print(f"{report.selected} product(s): {fetched}, {report.present} already present; "
          f"manifest {report.manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
