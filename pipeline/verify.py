"""Check a finished build byte by byte: ``python -m pipeline.verify [WORKSPACE]``.

* every raw product listed in a ``data/raw/*/manifest.json`` is re-hashed (size, sha256);
* every HDF5 tile file under ``data/tiles`` is read chunk by chunk through its fletcher32
  checksums (a damaged tile is named by its index);
* every output recorded in ``dvc.lock`` (statistics, tiles, checkpoints, ...) still has the
  md5 DVC recorded (folders: DVC's ``.dir`` hash; the changed files are named when DVC's
  cache still holds the folder listing);
* every checkpoint (``models/**/*.pt``) passes the CRC-32 of each record of its archive (this
  catches truncation and flipped bits, which ``torch.load`` does not) and, when torch is
  installed, loads (``python -m training.verify_checkpoints``, run as a separate tool:
  ``pipeline`` never imports torch).

One line per problem on stdout (``PATH: problem``), a summary on stderr, exit status 1 when
anything is wrong. A progress bar counts the bytes read (on a terminal, or ``--progress``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parsers.errors import EXIT_FAILURE, EXIT_OK, UserError, cli_entry
from parsers.integrity import checkpoint_archive_problem, tile_read_problem
from pipeline.fetch import CHUNK_BYTES
from pipeline.manifest import MANIFEST_NAME, Manifest

PROG = "python -m pipeline.verify"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]

Progress = Callable[[int], Any]


# --- hashing with one read per file ------------------------------------------------------------

@dataclass
class Hashes:
    """md5 (DVC) and sha256 (manifests) of files, each file read once."""

    progress: Progress | None = None
    _done: dict[Path, tuple[str, str]] = field(default_factory=dict)

    def of(self, path: Path) -> tuple[str, str]:
        key = path.resolve()
        if key not in self._done:
            md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK_BYTES):
                    md5.update(block)
                    sha.update(block)
                    if self.progress is not None:
                        self.progress(len(block))
            self._done[key] = (md5.hexdigest(), sha.hexdigest())
        return self._done[key]


# --- the checks ----------------------------------------------------------------------------------

def manifests(ws: Path) -> list[Path]:
    return sorted((ws / "data" / "raw").glob(f"*/{MANIFEST_NAME}"))


def raw_problems(ws: Path, hashes: Hashes) -> tuple[list[str], int]:
    """Problems of the raw products against their manifests; and how many were checked."""
    problems, checked = [], 0
    for path in manifests(ws):
        root = path.parent
        try:
            manifest = Manifest.read(path)
        except UserError as exc:
            problems.append(str(exc))
            continue
        for entry in manifest.files:
            checked += 1
            file = root / entry.path
            rel = _rel(file, ws)
            if not file.is_file():
                problems.append(f"{rel}: missing (listed in {_rel(path, ws)})")
            elif file.stat().st_size != entry.size:
                problems.append(f"{rel}: {file.stat().st_size:,} bytes, {_rel(path, ws)} "
                                f"says {entry.size:,}")
            elif hashes.of(file)[1] != entry.sha256:
                problems.append(f"{rel}: sha256 differs from {_rel(path, ws)} (damaged?)")
    return problems, checked


def check_tile_file(path: Path, progress: Progress | None = None) -> list[str]:
    """Read every chunk of every dataset of a tile file through its checksums."""
    import h5py

    with contextlib.suppress(ImportError):
        import hdf5plugin  # noqa: F401  (registers the Blosc2 filter)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        first = (str(exc).splitlines() or ["?"])[0]
        return [f"{path}: cannot open as HDF5 (truncated or damaged: {first})"]
    problems = []
    with f:
        try:
            names = list(f.keys())
            dict(f.attrs)
        except (OSError, RuntimeError, KeyError) as exc:
            return [f"{path}: damaged HDF5 metadata ({str(exc).splitlines()[0]})"]
        if "tiles" not in names:
            return [f"{path}: no 'tiles' dataset (not a tile file of pipeline.tiles)"]
        # The tiles hold nearly all the bytes: the bar advances with them, to the file size.
        size, count = path.stat().st_size, max(1, f["tiles"].shape[0])
        told = [0, 0]  # tiles read, bytes told

        def advance(rows: int) -> None:
            told[0] += rows
            now = size * told[0] // count
            progress(now - told[1])
            told[1] = now

        for name in names:
            use = advance if name == "tiles" and progress is not None else None
            problems += _check_dataset(path, name, f[name], use)
    return problems


def _check_dataset(path: Path, name: str, ds: Any, advance: Progress | None) -> list[str]:
    """Read ``ds`` a chunk row at a time; ``advance(rows)`` after each."""
    if not ds.shape:
        return []
    rows = ds.chunks[0] if ds.chunks else ds.shape[0]
    problems = []
    for start in range(0, ds.shape[0], rows):
        stop = min(start + rows, ds.shape[0])
        try:
            ds[start:stop]
        except (OSError, RuntimeError) as exc:
            if name in ("tiles", "valid") and rows == 1:
                problems.append(f"{path}: {tile_read_problem(start, exc)}")
            else:
                first = (str(exc).splitlines() or ["?"])[0]
                problems.append(f"{path}: dataset '{name}' rows {start}..{stop - 1} cannot be "
                                f"read ({first}): the file is damaged")
        if advance is not None:
            advance(stop - start)
    return problems


def lock_outputs(ws: Path) -> list[tuple[str, dict[str, Any]]]:
    """(stage, out entry) for every output with an md5 in ``dvc.lock``."""
    path = ws / "dvc.lock"
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    found = []
    for stage, entry in (data.get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            if isinstance(out, dict) and out.get("path") and out.get("md5"):
                found.append((stage, out))
    return found


def lock_problems(ws: Path, hashes: Hashes) -> list[str]:
    """Outputs whose content differs from what ``dvc.lock`` recorded."""
    problems = []
    for stage, out in lock_outputs(ws):
        path = ws / out["path"]
        recorded = str(out["md5"])
        if not path.exists():
            problems.append(f"{out['path']}: missing (an output of stage {stage} in dvc.lock)")
        elif recorded.endswith(".dir"):
            problems += _dir_problems(ws, path, out, stage, hashes)
        elif hashes.of(path)[0] != recorded:
            problems.append(f"{out['path']}: md5 differs from dvc.lock (stage {stage})")
    return problems


def _dir_problems(ws: Path, path: Path, out: dict[str, Any], stage: str,
                  hashes: Hashes) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _ignored(p))
    listing = [{"md5": hashes.of(p)[0], "relpath": p.relative_to(path).as_posix()}
               for p in files]
    digest = hashlib.md5(json.dumps(listing, sort_keys=True).encode(),
                         usedforsecurity=False).hexdigest() + ".dir"
    if digest == out["md5"]:
        return []
    recorded = _cached_listing(ws, str(out["md5"]))
    if recorded is None:
        return [f"{out['path']}: contents differ from dvc.lock (stage {stage})"]
    now = {e["relpath"]: e["md5"] for e in listing}
    then = {e["relpath"]: e.get("md5") for e in recorded}
    lines = []
    for rel in sorted(set(now) | set(then)):
        where = f"{out['path']}/{rel}"
        if rel not in now:
            lines.append(f"{where}: missing (recorded in dvc.lock, stage {stage})")
        elif rel not in then:
            lines.append(f"{where}: not in dvc.lock (stage {stage})")
        elif now[rel] != then[rel]:
            lines.append(f"{where}: md5 differs from dvc.lock (stage {stage})")
    return lines or [f"{out['path']}: contents differ from dvc.lock (stage {stage})"]


def _ignored(path: Path) -> bool:
    return path.suffix == ".pyc" or "__pycache__" in path.parts


def _cached_listing(ws: Path, md5: str) -> list[dict[str, Any]] | None:
    """The folder listing DVC keeps in its cache for a ``.dir`` hash, if it is there."""
    for cache in (ws / ".dvc" / "cache" / "files" / "md5", ws / ".dvc" / "cache"):
        path = cache / md5[:2] / md5[2:]
        with contextlib.suppress(OSError, ValueError):
            listing = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(listing, list):
                return listing
    return None


def checkpoints(ws: Path) -> list[Path]:
    return sorted((ws / "models").rglob("*.pt")) if (ws / "models").is_dir() else []


def checkpoint_problems(ws: Path, paths: Sequence[Path], progress: Progress | None,
                        load: bool) -> list[str]:
    """Archive problems of each checkpoint; then, with ``load``, what the torch loader says."""
    problems, intact = [], []
    for path in paths:
        problem = checkpoint_archive_problem(path)
        if progress is not None:
            progress(path.stat().st_size)
        if problem:
            problems.append(f"{_rel(path, ws)}: {problem}")
        else:
            intact.append(path)
    if load and intact:
        problems += _load_with_torch(ws, intact)
    return problems


def _load_with_torch(ws: Path, paths: Sequence[Path]) -> list[str]:
    """Run ``python -m training.verify_checkpoints`` (torch) on ``paths``; its problem lines."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "training.verify_checkpoints", *(str(p.resolve())
                                                                for p in paths)],
        cwd=PACKAGE_ROOT, env=env, capture_output=True, text=True, check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not lines):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"{_rel(paths[0], ws)}: the checkpoint loader failed ({tail})"]
    return [_rel_line(line, ws) for line in lines]


def _rel(path: Path, ws: Path) -> str:
    with contextlib.suppress(ValueError):
        return path.resolve().relative_to(ws.resolve()).as_posix()
    return str(path)


def _rel_line(line: str, ws: Path) -> str:
    prefix = str(ws.resolve()) + os.sep
    return line[len(prefix):] if line.startswith(prefix) else line


# --- the command ---------------------------------------------------------------------------------

@dataclass
class Report:
    problems: list[str]
    products: int
    tile_files: int
    lock_outputs: int
    checkpoints: int


def _bytes_to_read(ws: Path, tiles: Iterable[Path], ckpts: Iterable[Path]) -> int:
    """Bytes the checks read: hashed files once, then tile files and checkpoints again."""
    hashed: set[Path] = set()
    for manifest in manifests(ws):
        with contextlib.suppress(UserError):
            hashed.update(manifest.parent / e.path for e in Manifest.read(manifest).files)
    for _, out in lock_outputs(ws):
        p = ws / out["path"]
        hashed.update(p.rglob("*") if p.is_dir() else [p])
    again = [*tiles, *ckpts]
    return sum(p.stat().st_size for p in {*hashed, *again} if p.is_file()) + sum(
        p.stat().st_size for p in again if p in hashed and p.is_file())


def verify(ws: Path, *, progress: bool | None = None, load_checkpoints: bool = True) -> Report:
    """Run every check on workspace ``ws``; UserError when it holds no pipeline outputs."""
    from tqdm import tqdm

    tiles = sorted((ws / "data" / "tiles").rglob("*.h5")) if (ws / "data" / "tiles").is_dir() \
        else []
    ckpts = checkpoints(ws)
    if not (manifests(ws) or tiles or ckpts or (ws / "dvc.lock").is_file()):
        raise UserError(f"{ws}: no pipeline outputs here (data/raw/*/{MANIFEST_NAME}, "
                        "data/tiles, models, dvc.lock); give the workspace folder")
    bar = tqdm(total=_bytes_to_read(ws, tiles, ckpts), desc="verify", unit="B",
               unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:
        hashes = Hashes(bar.update)
        problems, products = raw_problems(ws, hashes)
        for path in tiles:
            problems += [_rel_line(p, ws) for p in check_tile_file(path, bar.update)]
        problems += lock_problems(ws, hashes)
        load = load_checkpoints and importlib.util.find_spec("torch") is not None
        problems += checkpoint_problems(ws, ckpts, bar.update, load)
    finally:
        bar.close()
    return Report(list(dict.fromkeys(problems)), products, len(tiles), len(lock_outputs(ws)),
                  len(ckpts))


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", nargs="?", default=".", type=Path,
                        help="the DVC workspace (default: the current folder)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: on a terminal)")
    parser.add_argument("--no-load", action="store_true",
                        help="check checkpoint archives only, without loading them with torch")
    args = parser.parse_args(argv)
    if not args.workspace.is_dir():
        raise UserError(f"{args.workspace}: not a folder")
    report = verify(args.workspace, progress=args.progress, load_checkpoints=not args.no_load)
    for line in report.problems:
        print(line)
    what = (f"{report.products} raw products, {report.tile_files} tile files, "
            f"{report.lock_outputs} dvc.lock outputs, {report.checkpoints} checkpoints")
    if report.problems:
        print(f"verify: {len(report.problems)} problem(s) in {args.workspace} ({what})",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"verify: {args.workspace}: all good ({what})", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
