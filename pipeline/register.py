"""Local data sets: ``python -m pipeline.register NAME FILE_OR_GLOB... --out DIR``.

Writes ``DIR/manifest.json`` in the shape the download stages write (:mod:`pipeline.manifest`),
so that ``split``, ``stats``, ``tiles``, ``train`` and ``evaluate`` treat the files like a
downloaded source. Each product is opened with the data set's reader (``--kind``: ``cube``
for any PDS3 QUBE, ENVI or GeoTIFF file; ``virtis``; ``sentinel2``) and every file of it is
listed with its size, sha256 and the reader's facts (``meta``: format, dtype, bands, lines,
samples, wavelength_nm), paths relative to DIR (they may lead outside it: the files stay
where they are). An ENVI product is its header and its binary file, whichever of the two a
pattern matched.

* Every product must have the band count and wavelengths of the first one (same count, every
  centre within :data:`WAVELENGTH_TOLERANCE_NM`) unless ``--allow-mixed``; the error names
  the odd file.
* A rerun over the same files writes the identical manifest (sorted, no time stamps).
* ``pipeline.split`` checks every size and sha256 again before it uses a registered
  manifest (:func:`pipeline.products.list_products`).

The split stage of a data set whose params entry lists ``files`` calls
:func:`build_manifest` itself, so ``dvc repro`` needs no separate step.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parsers.errors import UserError, cli_entry
from pipeline.fetch import sha256_file
from pipeline.manifest import MANIFEST_NAME, Manifest, ManifestEntry
from pipeline.params import KINDS

PROG = "python -m pipeline.register"
#: Wavelengths of two products agree when every band centre differs by at most this (nm).
WAVELENGTH_TOLERANCE_NM = 0.1


def expand(patterns: Sequence[str], root: str | os.PathLike[str] = ".") -> list[Path]:
    """The files the globs or paths ``patterns`` name (relative ones under ``root``), sorted.

    A pattern that matches nothing is an error naming it.
    """
    found: set[Path] = set()
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else os.path.join(root, pattern)
        hits = [Path(p) for p in glob.glob(full, recursive=True)]
        if not glob.has_magic(pattern) and Path(full).exists():
            hits = [Path(full)]
        hits = [p for p in hits if p.is_file() or p.suffix.upper() == ".SAFE"]
        if not hits:
            raise UserError(f"{pattern}: no such file (nothing matches under {root})")
        found.update(Path(os.path.normpath(p)) for p in hits)
    return sorted(found)


def probe(kind: str, path: Path, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Open ``path`` with the ``kind`` reader: product id, its files, and the facts for meta."""
    from parsers.wavelengths import to_nanometres
    from pipeline.products import open_product, product_files

    product = open_product(kind, path, options)
    wl = None
    if product.wavelengths is not None:
        nm, _ = to_nanometres(np.asarray(product.wavelengths, np.float64),
                              product.wavelength_unit)
        wl = [round(float(v), 4) for v in nm]
    meta: dict[str, Any] = {
        "format": getattr(product, "format", kind), "dtype": str(np.dtype(product.dtype)),
        "bands": product.bands, "lines": product.lines, "samples": product.samples,
        "wavelength_nm": wl,
    }
    return {"product_id": product.product_id, "files": product_files(product), "meta": meta}


def _disagreement(first: dict[str, Any], other: dict[str, Any]) -> str | None:
    a, b = first["meta"], other["meta"]
    if a["bands"] != b["bands"]:
        return f"{b['bands']} bands, the first file has {a['bands']}"
    wa, wb = a["wavelength_nm"], b["wavelength_nm"]
    if (wa is None) != (wb is None):
        return "wavelengths " + ("missing" if wb is None else "given") + \
            ", the first file's are " + ("given" if wa is not None else "missing")
    if wa is not None:
        diff = np.abs(np.asarray(wa) - np.asarray(wb))
        worst = int(np.argmax(diff))
        if diff[worst] > WAVELENGTH_TOLERANCE_NM:
            return (f"band {worst} is at {wb[worst]:g} nm, the first file's at "
                    f"{wa[worst]:g} nm")
    return None


def _probe_all(kind: str, files: Sequence[Path], options: dict[str, Any] | None
               ) -> list[dict[str, Any]]:
    """One probe per product (a file already part of an earlier product is skipped)."""
    products: list[dict[str, Any]] = []
    seen: dict[Path, str] = {}
    for path in files:
        if path.resolve() in seen:
            continue
        found = probe(kind, path, options)
        if any(p["product_id"] == found["product_id"] for p in products):
            raise UserError(f"{path}: product id {found['product_id']!r} again (two products "
                            "with the same id cannot both be registered)")
        for f in found["files"]:
            seen[Path(f).resolve()] = found["product_id"]
        found["given"] = path
        products.append(found)
    return products


def build_manifest(
    name: str, kind: str, patterns: Sequence[str], out: str | os.PathLike[str],
    root: str | os.PathLike[str] = ".", allow_mixed: bool = False,
    options: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of data set ``name`` for the files ``patterns`` name (under ``root``),
    with paths relative to the folder ``out`` (see the module docstring)."""
    if kind not in KINDS:
        raise UserError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    products = _probe_all(kind, expand(patterns, root), options)
    first = products[0]
    for other in products[1:]:
        odd = None if allow_mixed else _disagreement(first, other)
        if odd:
            raise UserError(f"{other['given']}: {odd} ({first['given'].name}); register "
                            "files of one instrument setting, or pass --allow-mixed")
    base = Path(os.path.abspath(out))
    entries = []
    for p in products:
        for f in p["files"]:
            rel = Path(os.path.relpath(os.path.abspath(f), base)).as_posix()
            entries.append(ManifestEntry(p["product_id"], rel, "", f.stat().st_size,
                                         sha256_file(f), dict(p["meta"])))
    query = {"register": {"kind": kind, "patterns": list(patterns),
                          "allow_mixed": allow_mixed}}
    return Manifest(name, query, entries)


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the data set's name (the manifest's source)")
    parser.add_argument("files", nargs="+", metavar="FILE_OR_GLOB",
                        help="cube files or globs (quote globs for recursive **)")
    parser.add_argument("--out", required=True, type=Path, help="folder for manifest.json")
    parser.add_argument("--kind", choices=KINDS, default="cube",
                        help="the reader (default: cube = PDS3 QUBE, ENVI or GeoTIFF)")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="accept files whose band count or wavelengths differ")
    args = parser.parse_args(argv)
    manifest = build_manifest(args.name, args.kind, args.files, args.out,
                              allow_mixed=args.allow_mixed)
    path = manifest.write(args.out / MANIFEST_NAME)
    n = len({f.product_id for f in manifest.files})
    meta = manifest.files[0].meta
    print(f"{path}: {n} product(s), {len(manifest.files)} file(s), {meta['bands']} bands "
          f"({meta['format']}, {meta['dtype']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
