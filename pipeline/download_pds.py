"""Download products of a PDS3 archive (ESA PSA, PDS SBN, PDS Rings node), reproducibly.

    python -m pipeline.download_pds --params params.yaml --out data/raw/virtis
    python -m pipeline.download_pds --dataset RO-C-VIRTIS-3-ESC1-MTP010-V2.0 --max-files 4
    python -m pipeline.download_pds --base-url URL --dataset COVIMS_0094 --dry-run
    python -m pipeline.download_pds --locked data/raw/virtis/manifest.json --out elsewhere

Made for Rosetta VIRTIS, usable for any PDS3 data set or volume with an index. The archive's
own index is used: ``INDEX/INDEX.LBL`` is parsed by :mod:`parsers.pds3_label` (the project's
one label parser, fast parser only: a malformed label is an answer in milliseconds, never a
hang) and ``INDEX.TAB`` read by :mod:`parsers.pds3_table` (rows from the line ends, fields
by ``START_BYTE`` and checked). File path, product id, start time, channel and size are found
by column name, never by position. Rows are filtered by channel and product type (both
optional: omitted or ``any`` keeps every row), time range and count, and the files are
fetched with :mod:`pipeline.fetch` (retries, Range resume, sha256, atomic rename). A data set
without a usable index is walked through its HTML listings (``listing_fallback``). Each QUBE
product is opened with the VIRTIS reader (VIRTIS) or the generic PDS3 reader (any other
instrument) before it is kept. ``DIR/manifest.json`` records URL, path, size, sha256 and the
index row of every file; ``--locked MANIFEST`` fetches exactly those files again and fails if
any byte differs. ``--dry-run`` prints the plan: archive-relative path, size (when the index
gives it) and start time of each selected product, tab-separated; nothing is fetched.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import difflib
import html.parser
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests

from parsers import pds3, virtis
from parsers.errors import ProductError, UserError, cli_entry, reason
from parsers.locks import lock_output
from parsers.pds3_label import parse_label_text, read_label
from parsers.pds3_table import TableLayout, read_rows, table_layout
from pipeline.fetch import (
    PART_SUFFIX,
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
from pipeline.params import (
    DEFAULT_PARAMS,
    add_flags,
    flag_overrides,
    from_dict,
    load_section,
    to_dict,
)
from pipeline.selection import pick

PROG = "python -m pipeline.download_pds"
SECTION = "download_pds"
DEFAULT_BASE_URL = "https://archives.esac.esa.int/psa/ftp/INTERNATIONAL-ROSETTA-MISSION/VIRTIS/"
DEFAULT_DATASET = "RO-C-VIRTIS-3-ESC1-MTP010-V2.0"
CHANNELS = ("VIRTIS_M_VIS", "VIRTIS_M_IR", "VIRTIS_H")
KIND_EXTENSIONS = {"raw": (".QUB",), "cal": (".CAL",), "geo": (".GEO", ".GE5")}
QUBE_KINDS = tuple(KIND_EXTENSIONS)  # opened with a QUBE reader before they are kept
ANY = "any"  # channel / product type filter that keeps every row
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
    """Settings of the ``download_pds`` stage (params.yaml section ``download_pds``).

    Each field is also an override flag of the CLI (:func:`build_parser`), its help text
    and aliases in the field's metadata. ``max_files``/``max_per_dataset`` 0 means no limit
    (stored as None), in the file as on the command line."""

    base_url: str = field(default=DEFAULT_BASE_URL, metadata={
        "metavar": "URL", "help": "archive root holding the data sets (default: the ESA PSA "
        "VIRTIS folder; the PDS SBN holdings URL works too); with --locked: the mirror"})
    datasets: tuple[str, ...] = field(default=(DEFAULT_DATASET,), metadata={
        "flags": ("--dataset",), "metavar": "ID",
        "help": "data set id (a folder under the base URL), repeatable"})
    channels: tuple[str, ...] = field(default=(), metadata={
        "flags": ("--channel",), "metavar": "CH",
        "help": f"channel filter, repeatable: {', '.join(CHANNELS)}, a value of the index's "
        "channel column, or any (every channel)"})
    product_types: tuple[str, ...] = field(default=(), metadata={
        "flags": ("--product-type",), "metavar": "T",
        "help": "product type filter, repeatable: raw|QUB, cal|CAL, geo|GEO|GE5, a file "
        "extension (img, lbl), or any (every type)"})
    max_files: int | None = field(default=4, metadata={
        "metavar": "N", "help": "at most N files over all data sets (0: no limit)"})
    max_per_dataset: int | None = field(default=None, metadata={
        "metavar": "N", "help": "at most N files per data set (0: no limit)"})
    start_time: str | None = field(default=None, metadata={
        "flags": ("--start",), "metavar": "TIME",
        "help": "keep rows with START_TIME >= TIME (ISO UTC)"})
    stop_time: str | None = field(default=None, metadata={
        "flags": ("--stop",), "metavar": "TIME",
        "help": "keep rows with START_TIME < TIME (ISO UTC)"})
    selection: Literal["first", "spread"] = field(default="spread", metadata={
        "help": "which rows to keep when more match than wanted: the first ones, or spread "
        "evenly over the index"})
    out: Path = field(default=Path("data/raw/virtis"), metadata={
        "metavar": "DIR", "help": "download folder"})
    jobs: int = field(default=4, metadata={"metavar": "N", "help": "parallel transfers"})
    retries: int = field(default=5, metadata={"metavar": "N", "help": "retries per request"})
    backoff: float = field(default=0.5, metadata={
        "metavar": "S", "help": "first retry delay, seconds (doubles per failure)"})
    connect_timeout: float = field(default=10.0, metadata={
        "metavar": "S", "help": "connect timeout, seconds"})
    read_timeout: float = field(default=60.0, metadata={
        "metavar": "S", "help": "read timeout, seconds"})
    verify_products: bool = field(default=True, metadata={
        "flags": ("--verify",),
        "help": "open each product with its reader before keeping it (default: yes)"})
    listing_fallback: bool = field(default=True, metadata={
        "help": "walk the HTML listings when a data set has no usable index (default: yes)"})
    locked: Path | None = field(default=None, metadata={
        "metavar": "MANIFEST", "help": "fetch exactly the files of this manifest; fail if "
        "any sha256 differs (with --base-url: from that mirror)"})

    def __post_init__(self) -> None:
        try:
            check_url(self.base_url)
        except UserError as exc:
            raise ValueError(f"base_url: {exc}") from None
        if not self.base_url.endswith("/"):
            object.__setattr__(self, "base_url", self.base_url + "/")
        if not self.datasets:
            raise ValueError("datasets: give at least one data set id")
        object.__setattr__(self, "channels", _channel_filter(self.channels))
        object.__setattr__(self, "product_types", _kind_filter(self.product_types))
        for name in ("max_files", "max_per_dataset"):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, None)  # 0, like null: no limit
            elif getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 1 (0 or null: no limit)")
        if self.jobs < 1 or self.retries < 0:
            raise ValueError("jobs must be >= 1 and retries >= 0")
        for name in ("start_time", "stop_time"):
            value = getattr(self, name)
            if value is not None and parse_time(value) is None:
                raise ValueError(f"{name}: {value!r} is not an ISO date/time")

    def wants(self, channel: str | None, kind: str | None) -> bool:
        """True when a product of ``channel`` and ``kind`` passes the filters."""
        return ((not self.channels or channel in self.channels)
                and (not self.product_types or kind in self.product_types))

    def query(self) -> dict[str, Any]:
        """The selection part of the settings, recorded in the manifest."""
        keys = ("base_url", "datasets", "channels", "product_types", "max_files",
                "max_per_dataset", "start_time", "stop_time", "selection")
        return {k: to_dict(getattr(self, k)) for k in keys}


def _channel_filter(values: Sequence[str]) -> tuple[str, ...]:
    """Upper-cased channel names; () when empty or ``any`` is among them."""
    out = []
    for v in values:
        name = str(v).strip().upper().replace("-", "_")
        if name == ANY.upper():
            return ()
        if not re.fullmatch(r"[A-Z0-9_]+", name):
            raise ValueError(f"channels: {v!r} is not a channel name (e.g. {CHANNELS[0]}, any)")
        out.append(name)
    return tuple(dict.fromkeys(out))


def _kind_filter(values: Sequence[str]) -> tuple[str, ...]:
    """Product kinds (raw/cal/geo via their aliases, else a file extension, lower case);
    () when empty or ``any`` is among them."""
    out = []
    for v in values:
        name = str(v).strip().lower().lstrip(".")
        if name == ANY:
            return ()
        if name not in KIND_ALIASES and not re.fullmatch(r"[a-z0-9]{1,8}", name):
            raise ValueError(f"product_types: {v!r} is not raw/QUB, cal/CAL, geo/GEO, any, "
                             "or a file extension")
        out.append(KIND_ALIASES.get(name, name))
    return tuple(dict.fromkeys(out))


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
    size: int | None = None  # bytes, when the index gives it

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
        if self.size is not None:
            meta["index_size"] = self.size
        if self.row is not None:
            meta["index_row"] = self.row
        return meta

    def plan_line(self) -> str:
        """The ``--dry-run`` line: archive-relative path, size (or -), start time (or -)."""
        size = "-" if self.size is None else str(self.size)
        return f"{self.local}\t{size}\t{self.start_time or '-'}"


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
    """Product kind from a file name's extension, any letter case: raw/cal/geo for the
    QUBE extensions, else the extension itself in lower case (None without one)."""
    suffix = PurePosixPath(name).suffix.upper()
    for kind, exts in KIND_EXTENSIONS.items():
        if suffix in exts:
            return kind
    return suffix[1:].lower() or None


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


def parse_index_label(text: str, where: str) -> TableLayout:
    """The table layout an index label describes; UserError naming ``where`` (the label's
    URL) and the problem when the label does not parse or has no usable TABLE object."""
    try:
        return table_layout(parse_label_text(text, where, pvl_fallback=False), where)
    except ProductError as exc:
        raise UserError(f"{where}: {exc.problem}") from None


def parse_columns(text: str, where: str) -> TableLayout:
    """The COLUMN objects of a ``^STRUCTURE`` format file (as a layout without a file)."""
    from parsers.pds3_label import table_columns

    try:
        if not re.search(r"(?im)^[ \t]*END[ \t]*$", text):
            text += "\r\nEND\r\n"  # format files are label fragments, often without END
        block = parse_label_text(text, where, pvl_fallback=False)
        return TableLayout("STRUCTURE", tuple(table_columns(block, where)))
    except ProductError as exc:
        raise UserError(f"{where}: {exc.problem}") from None


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
                    f"cannot reach the archive at {url} ({reason(exc)}); {OFFLINE_HINT}"
                ) from None
            raise UserError(f"{url}: connection failed ({reason(exc)})") from None
        except requests.RequestException as exc:
            raise UserError(f"{url}: request failed ({reason(exc)})") from None
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
        # PSA: upper case; PDS SBN: lower case; PDS Rings node: COVIMS_0094/index/index.lbl
        for name, index in ((dataset.upper(), "INDEX/INDEX.LBL"),
                            (dataset.lower(), "index/index.lbl"),
                            (dataset.upper(), "index/index.lbl")):
            url = self.base + quote(name) + "/"
            tried.append(url + index)
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
        """Candidates from the data set's index label + table (all rows, unfiltered)."""
        label = self._labels.get(label_url)
        if label is None:
            resp = self.get(label_url)
            if resp is None:
                raise UserError(f"{label_url}: not found")
            label = resp.content
        return index_candidates(label, label_url, self._get_any, dataset, folder, folder_url)

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
        params = self.params
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
                    if want_channels and upper in CHANNELS and upper not in want_channels:
                        continue
                    if (want_kinds and upper in KIND_FOLDERS
                            and KIND_FOLDERS[upper] not in want_kinds):
                        continue
                    queue.append(url + quote(name) + "/")
                    continue
                rel = unquote(url[len(folder_url):]) + name
                if params.wants(channel_of(rel), kind_of(name)):
                    found.append(Candidate(
                        dataset, folder_url, folder, rel, name.upper(), channel_of(rel),
                        kind_of(rel), None, "listing",
                    ))
        return found


def index_candidates(
    label: bytes, label_url: str, get: Callable[[str, str], bytes | None], dataset: str,
    folder: str, folder_url: str,
) -> list[Candidate]:
    """Candidates from an index label's bytes; ``get(folder_url, name)`` returns the bytes of
    a file next to the label (the table, a ``^STRUCTURE`` file) or None when it is absent.

    Any problem with the label or the table is a UserError naming the file (one line).
    """
    layout = parse_index_label(label.decode("latin-1"), label_url)
    label_dir = label_url.rsplit("/", 1)[0] + "/"
    if layout.structure:  # the COLUMN objects live in a separate format file
        fmt = get(label_dir, layout.structure)
        if fmt is None:
            raise UserError(f"{label_dir}: the format file {layout.structure} is missing")
        columns = parse_columns(fmt.decode("latin-1"), label_dir + layout.structure).columns
        layout = dataclasses.replace(layout, columns=columns, structure=None)
    tab_name = layout.file_name or "INDEX.TAB"
    data = get(label_dir, tab_name)
    if data is None:
        raise UserError(f"{label_dir}: the index table {tab_name} is missing")
    try:
        table = read_rows(layout, data, label_dir + tab_name)
    except ProductError as exc:
        raise UserError(f"{label_dir + tab_name}: {exc.problem}") from None
    for note in table.notes:
        warnings.warn(f"{label_dir + tab_name}: {note}", stacklevel=1)
    names = [c.name for c in layout.columns]
    cols = _IndexColumns.of(names)
    lower = folder != folder.upper() and folder == folder.lower()
    out = []
    for row in table.rows:
        path = row_path(row)
        if path:
            rel = _relative_to_dataset(path, dataset)
            out.append(cols.candidate(row, dataset, folder_url, folder,
                                      rel.lower() if lower else rel))
    if not out:
        raise UserError(f"{label_url}: no file path column among {', '.join(names)}")
    return out


@dataclass(frozen=True)
class _IndexColumns:
    """Which index columns hold the product id, start time, channel and file size."""

    pid: str | None
    time: str | None
    channel: str | None
    size: str | None

    @classmethod
    def of(cls, names: Sequence[str]) -> _IndexColumns:
        return cls(
            _first_column(names, r"PRODUCT_ID", r".*PRODUCT_ID"),
            _first_column(names, r"START_TIME", r".*START_TIME", r"IMAGE_TIME"),
            _first_column(names, r"CHANNEL_ID", r".*CHANNEL.*"),
            _first_column(names, r"FILE_SIZE", r"FILE_BYTES", r"PRODUCT_SIZE",
                          r".*FILE_SIZE"),
        )

    def candidate(self, row: dict[str, str], dataset: str, folder_url: str, folder: str,
                  rel: str) -> Candidate:
        raw = (row.get(self.channel) or "").upper().replace("-", "_") if self.channel else ""
        channel = raw if raw in CHANNELS else channel_of(rel) or raw or None
        size = row.get(self.size, "") if self.size else ""
        return Candidate(
            dataset, folder_url, folder, rel,
            (row.get(self.pid) if self.pid else "") or PurePosixPath(rel).name.upper(),
            channel, kind_of(rel), (row.get(self.time) or None) if self.time else None,
            "index", row, int(size) if size.isdigit() else None,
        )


def _relative_to_dataset(path: str, dataset: str) -> str:
    """Index paths are relative to the volume root (some with a leading '/'); drop a
    leading data set folder."""
    path = path.replace("\\", "/").lstrip("/")
    parts = path.split("/")
    if len(parts) > 1 and parts[0].upper() == dataset.upper():
        return "/".join(parts[1:])
    return path


# ------------------------------------------------------------------------- selection


def filter_candidates(cands: list[Candidate], params: DownloadPdsParams) -> list[Candidate]:
    """Keep the candidates of the wanted channels, kinds and time range (order kept)."""
    start, stop = parse_time(params.start_time), parse_time(params.stop_time)
    out = []
    for c in cands:
        if not params.wants(c.channel, c.kind):
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
        all_cands = cands
        if cands is None:
            if params.start_time or params.stop_time:
                warnings.warn(f"{dataset}: no index, so the time range cannot be applied; "
                              "it is ignored for this data set", stacklevel=1)
                params_nt = dataclasses.replace(params, start_time=None, stop_time=None)
            else:
                params_nt = params
            all_cands = archive.walk(dataset, folder, folder_url)
            cands = filter_candidates(all_cands, params_nt)
        else:
            cands = filter_candidates(cands, params)
        if not cands:
            warnings.warn(f"{dataset}: no product matches {_filters(params)}"
                          + (" and the time range" if params.start_time or params.stop_time
                             else "") + _seen(all_cands), stacklevel=1)
        chosen += pick(cands, params.max_per_dataset, params.selection)
    chosen = pick(chosen, params.max_files, params.selection)
    for c in chosen:  # refuse paths leaving --out before anything is written
        try:
            safe_join(params.out, c.local)
        except UserError as exc:
            where = "index row" if c.source == "index" else "listing entry"
            raise UserError(f"{c.dataset}: {where} for {c.product_id!r}: {exc}") from None
        if urlsplit(c.url).netloc != urlsplit(c.dataset_url).netloc:
            raise UserError(f"{c.dataset}: {c.relpath!r} points to another host")
    return chosen


def _filters(params: DownloadPdsParams) -> str:
    return (f"channels {list(params.channels) or ANY}, "
            f"types {list(params.product_types) or ANY}")


def _seen(cands: Sequence[Candidate] | None) -> str:
    """What the index offers, to help fix a filter (e.g. '; the index has channels X')."""
    if not cands:
        return ""
    channels = sorted({c.channel for c in cands if c.channel})[:6]
    kinds = sorted({c.kind for c in cands if c.kind})[:6]
    return (f"; the data set has channels {channels or '-'}, types {kinds or '-'} "
            f"({len(cands)} products)")


# ------------------------------------------------------------------------- verification


def verify_product(path: Path) -> None:
    """Open a downloaded QUBE product (raw/cal/geo kinds; other files are only hashed):
    the label must parse and the file must hold the bytes the label announces (the reader
    checks this); read one line. VIRTIS products go through :mod:`parsers.virtis`, any
    other instrument's through the generic :mod:`parsers.pds3`."""
    name = path.name[: -len(PART_SUFFIX)] if path.name.endswith(PART_SUFFIX) else path.name
    if kind_of(name) not in QUBE_KINDS:
        return
    label, _ = read_label(path)
    reader: Any = virtis if "VIRTIS" in str(label.get("INSTRUMENT_ID", "")).upper() else pds3
    cube = reader.read(path)
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
                for e in lock.files:
                    print(f"{e.path}\t{e.size}\t{e.meta.get('start_time') or '-'}")
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
                    print(c.plan_line())
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
    """``--params``, ``--dry-run``, ``--no-progress`` and one override flag per field of
    :class:`DownloadPdsParams` (``--dataset`` also spelt ``--datasets``, and so on)."""
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"The overrides replace the keys of params section {SECTION}; a repeated list "
        "flag adds to\nthe list it starts (--dataset A --dataset B is --datasets A,B).",
    )
    p.add_argument("--params", type=Path, default=None,
                   help=f"params file (default {DEFAULT_PARAMS} if it exists); section {SECTION}")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (path, size, start time per product); fetch nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_flags(p.add_argument_group("overrides of the params (DownloadPdsParams keys)"),
              DownloadPdsParams)
    return p


def load_params(args: argparse.Namespace) -> DownloadPdsParams:
    """Params from the file (if any) with the command-line flags on top."""
    overrides = flag_overrides(args, DownloadPdsParams)
    if args.params is None and not DEFAULT_PARAMS.is_file():
        # No params.yaml here: defaults plus flags (typed and validated the same way).
        return from_dict(DownloadPdsParams, overrides, where=f"{PROG} flags")
    return load_section(DownloadPdsParams, SECTION, args.params or DEFAULT_PARAMS, overrides)


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = load_params(args)
    if not args.dry_run:
        lock_output(params.out, PROG)
    report = run(params, dry_run=args.dry_run, progress=False if args.no_progress else None,
                 rebase_to=getattr(args, "base_url", None))
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
