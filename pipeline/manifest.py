"""``DIR/manifest.json``: what a download stage fetched (or :mod:`pipeline.register` found on
disk), and the lock that replays it.

Format (shared by every download stage and ``pipeline.register``, read by ``pipeline.split``)::

    {"source": "virtis" | "sentinel2" | <data set name>, "query": {...},
     "files": [{"product_id": str, "path": str (relative to DIR, '/'-separated),
                "url": str, "size": int, "sha256": str, "meta": {...}}, ...]}

A registered manifest has ``query.register`` (kind, patterns, allow_mixed), an empty ``url``
and reader facts in ``meta`` (format, dtype, bands, lines, samples, wavelength_nm); its paths
may lead outside DIR (``../cubes/a.hdr``): the files stay where they are.

A manifest written by one run, passed back with ``--locked``, makes a later run fetch exactly
those files (:func:`locked_jobs`) and fail loudly when any byte differs
(:func:`check_locked`): that is what makes dataset builds reproducible.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parsers.atomic import atomic_open
from parsers.errors import UserError
from pipeline.fetch import FetchJob, FetchResult, safe_join, sha256_file

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ManifestEntry:
    """One file: its id, path relative to the download folder, URL, size, sha256, metadata."""

    product_id: str
    path: str
    url: str
    size: int
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id, "path": self.path, "url": self.url,
            "size": self.size, "sha256": self.sha256, "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> ManifestEntry:
        if not isinstance(data, dict):
            raise UserError(f"{where}: a file entry must be a JSON object, got {data!r:.60}")
        missing = [k for k in ("product_id", "path", "url", "size", "sha256") if k not in data]
        if missing:
            raise UserError(f"{where}: file entry lacks {', '.join(missing)}")
        size = data["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise UserError(f"{where}: {data['path']}: size must be a non-negative integer")
        sha = str(data["sha256"]).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise UserError(f"{where}: {data['path']}: sha256 is not 64 hex digits")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise UserError(f"{where}: {data['path']}: meta must be a JSON object")
        return cls(str(data["product_id"]), str(data["path"]), str(data["url"]), size, sha, meta)

    @classmethod
    def from_result(
        cls, result: FetchResult, root: str | os.PathLike[str], product_id: str,
        meta: dict[str, Any] | None = None,
    ) -> ManifestEntry:
        """Entry for a successful :class:`FetchResult` whose file lies under ``root``."""
        if not result.ok:
            raise ValueError(f"{result.url}: failed results have no manifest entry")
        rel = Path(result.path).resolve().relative_to(Path(root).resolve()).as_posix()
        return cls(product_id, rel, result.url, result.size, result.sha256, dict(meta or {}))


@dataclass
class Manifest:
    """The manifest of one download folder (see the module docstring for the format)."""

    source: str
    query: dict[str, Any] = field(default_factory=dict)
    files: list[ManifestEntry] = field(default_factory=list)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Manifest:
        """Load and validate a manifest; UserError naming the file on any problem."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: manifest not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read manifest ({exc})") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON (line {exc.lineno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("files"), list):
            raise UserError(f"{path}: not a manifest (expected an object with a 'files' list)")
        files = [ManifestEntry.from_dict(f, str(path)) for f in data["files"]]
        seen: set[str] = set()
        for f in files:
            if f.path in seen:
                raise UserError(f"{path}: {f.path} is listed twice")
            seen.add(f.path)
        query = data.get("query") or {}
        return cls(str(data.get("source", "")), query if isinstance(query, dict) else {}, files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "query": self.query,
            "files": [f.to_dict() for f in self.files],
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file + rename), files sorted by path for stable diffs."""
        path = Path(path)
        data = self.to_dict()
        data["files"] = sorted(data["files"], key=lambda f: f["path"])
        with atomic_open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=False)
            fh.write("\n")
        return path

    def by_path(self) -> dict[str, ManifestEntry]:
        return {f.path: f for f in self.files}

    def add(self, entry: ManifestEntry) -> None:
        """Add ``entry``, replacing any entry with the same path."""
        self.files = [f for f in self.files if f.path != entry.path] + [entry]

    @property
    def registered(self) -> bool:
        """Written by :mod:`pipeline.register`: local files, possibly outside the folder."""
        return "register" in self.query

    def path_of(self, root: str | os.PathLike[str], entry: ManifestEntry) -> Path:
        """Where ``entry`` lies: under ``root`` for a download (a path leaving it is refused),
        anywhere relative to ``root`` for registered local files."""
        if self.registered:
            return Path(os.path.normpath(Path(root) / entry.path))
        return safe_join(root, entry.path)

    def paths(self, root: str | os.PathLike[str]) -> list[Path]:
        """Absolute paths of the files (see :meth:`path_of`)."""
        return [self.path_of(root, f) for f in self.files]


def read_if_exists(path: str | os.PathLike[str]) -> Manifest | None:
    """The manifest at ``path``, or None when there is none (a broken one is still an error)."""
    return Manifest.read(path) if Path(path).is_file() else None


def locked_jobs(locked: Manifest, root: str | os.PathLike[str]) -> list[FetchJob]:
    """Fetch jobs that reproduce ``locked`` under ``root``: same URLs, sizes and sha256."""
    return [
        FetchJob(
            e.url, safe_join(root, e.path), expected_size=e.size, expected_sha256=e.sha256,
            meta={"product_id": e.product_id, **e.meta},
        )
        for e in locked.files
    ]


def compare(locked: Manifest, current: Manifest) -> list[str]:
    """Human-readable differences between a lock and a newer manifest (empty: identical).

    Entries are matched by path; url, size and sha256 must agree. ``meta`` is not compared.
    """
    problems = []
    old, new = locked.by_path(), current.by_path()
    for p in sorted(set(old) - set(new)):
        problems.append(f"{p}: in the lock but not fetched")
    for p in sorted(set(new) - set(old)):
        problems.append(f"{p}: fetched but not in the lock")
    for p in sorted(set(old) & set(new)):
        a, b = old[p], new[p]
        for key in ("url", "size", "sha256"):
            if getattr(a, key) != getattr(b, key):
                problems.append(
                    f"{p}: {key} {getattr(b, key)} differs from the locked {getattr(a, key)}"
                )
    return problems


def check_locked(locked: Manifest, current: Manifest, lock_path: str | os.PathLike[str]) -> None:
    """Raise UserError listing every difference between ``current`` and the lock."""
    problems = compare(locked, current)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise UserError(
            f"{lock_path}: the download does not match the lock: " + "; ".join(problems[:5]) + more
        )


def check_files(manifest: Manifest, root: str | os.PathLike[str]) -> list[str]:
    """Problems of the files on disk against ``manifest`` (missing, size, sha256)."""
    problems = []
    for entry in manifest.files:
        path = manifest.path_of(root, entry)
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{entry.path}: size {path.stat().st_size}, manifest says {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest")
    return problems


def results_failed_lock(results: Sequence[FetchResult]) -> list[str]:
    """Errors of failed results, one line each (for a --locked run's final message)."""
    return [f"{r.url}: {r.error}" if r.url not in (r.error or "") else str(r.error)
            for r in results if not r.ok]


def entries_for(
    results: Iterable[FetchResult], root: str | os.PathLike[str]
) -> list[ManifestEntry]:
    """Manifest entries for the successful results; ``job.meta`` gives product_id and meta."""
    out = []
    for r in results:
        if not r.ok:
            continue
        meta = dict(r.job.meta) if r.job is not None else {}
        pid = str(meta.pop("product_id", Path(r.path).stem))
        out.append(ManifestEntry.from_result(r, root, pid, meta))
    return out
