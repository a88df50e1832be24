"""Leak-free train/test split of whole products, stable when products are added.

Every product gets a score ``u = int(sha256(f"{seed}:{key}")[:16], 16) / 2**64`` in [0, 1),
where ``key`` is the product id (``group_by: product``) or its scene (``group_by: scene``:
the VIRTIS observation without the channel letter, the Sentinel-2 MGRS tile), so related
products always land on the same side. A product goes to test when ``u < test_fraction``.
The score depends only on the seed and the key, so adding products never moves an
existing one. Only when the rule leaves a side with fewer than ``min_test`` /
``min_train`` keys are the keys with the lowest (resp. highest) scores moved over; with
realistic product counts this never happens, and it is recorded in the split file.

**Strips.** A data set of one or two large scenes (an airborne flight line) has too few
products for a split. ``strip_lines: N`` cuts every product into strips of N lines (the last
strip takes the remainder) and splits the strips instead: key ``<group>:<first>-<stop>``.
Strips of one product never share a pixel, but neighbouring strips are spatially close.

The products are those of the data set (params ``datasets.<name>``, :mod:`pipeline.params`):
``products/manifest.json`` (a download, or ``python -m pipeline.register``), or the files the
entry's ``files`` globs name, registered here (:func:`pipeline.register.build_manifest`).

CLI: ``python -m pipeline.split --params params.yaml --dataset NAME --out data/split/NAME.json
[--products DIR]``. Params ``split`` + ``datasets.<name>.split`` (:class:`SplitParams`).

Output (JSON, written atomically)::

    {"source": NAME, "seed": .., "test_fraction": .., "group_by": .., "strip_lines": ..,
     "products_dir": "<products folder, relative to this file>",
     "train": [{"product_id", "path" (relative to products_dir), "group", "score",
                ["strip": [first, stop)]}, ...],
     "test": [...], "forced": [keys moved by min_test/min_train]}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from parsers.atomic import atomic_open
from parsers.errors import UserError, cli_entry
from parsers.locks import lock_output
from pipeline.params import load_dataset, stage_parser, stage_settings
from pipeline.products import ProductRef, list_products, refs_from_manifest

SPLITS = ("train", "test")


@dataclass(frozen=True)
class SplitParams:
    """Settings of the split stage (params section ``split``).

    seed: hashing seed; changing it reshuffles everything.
    test_fraction: expected share of products (scenes) in the test split, in [0, 1).
    group_by: ``product`` (each product on its own) or ``scene`` (products of the same
        VIRTIS observation / Sentinel-2 MGRS tile stay together).
    min_test, min_train: minimum number of keys per side when enough keys exist.
    kinds: VIRTIS product kinds to use (manifest ``meta.kind``; ``cal`` = calibrated
        radiance, the paper's data; ``raw`` DNs and ``geo`` geometry cubes are left out).
    channels: VIRTIS channels to use (manifest ``meta.channel``), empty = all. Products of
        different channels should not share statistics: list one channel per dataset.
    strip_lines: 0 = split whole products; N > 0 = split strips of N lines (module docstring).
    """

    seed: int = 1
    test_fraction: float = 0.2
    group_by: Literal["product", "scene"] = "product"
    min_test: int = 1
    min_train: int = 1
    kinds: list[str] = field(default_factory=lambda: ["cal"])
    channels: list[str] = field(default_factory=list)
    strip_lines: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError("test_fraction must lie in [0, 1)")
        if self.min_test < 0 or self.min_train < 0 or self.strip_lines < 0:
            raise ValueError("min_test, min_train and strip_lines must be >= 0")


def score(seed: int, key: str) -> float:
    """Deterministic uniform score in [0, 1) of ``key`` under ``seed``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    return int(digest[:16], 16) / 2.0**64


_S2_TILE = re.compile(r"_T(\d{2}[A-Z]{3})(?:_|$)")
_VIRTIS_OBS = re.compile(r"^[A-Z]{1,2}(\d[\d_]*)", re.IGNORECASE)


def scene_key(source: str, product_id: str, meta: dict[str, Any] | None = None) -> str:
    """The scene a product belongs to (products of one scene must not be split apart)."""
    meta = meta or {}
    for name in ("scene", "observation", "tile"):
        if meta.get(name):
            return str(meta[name])
    stem = Path(product_id).stem
    if source == "sentinel2":
        m = _S2_TILE.search(stem.upper())
        return m.group(1) if m else stem
    # VIRTIS file names: V1_00388238696 (VIS) / I1_00388238696 (IR) / H1_... share the time.
    m = _VIRTIS_OBS.match(stem)
    return m.group(1) if m else stem


def assign(
    keys: Sequence[str], params: SplitParams
) -> tuple[dict[str, str], list[str]]:
    """Map each distinct key to "train"/"test" per the rule; also return the forced keys."""
    scores = {k: score(params.seed, k) for k in sorted(set(keys))}
    side = {k: ("test" if s < params.test_fraction else "train") for k, s in scores.items()}
    forced: list[str] = []
    by_score = sorted(scores, key=lambda k: (scores[k], k))
    if len(by_score) >= params.min_test + params.min_train:
        n_test = sum(v == "test" for v in side.values())
        for k in by_score:  # lowest scores first: they are the most "test-like"
            if n_test >= params.min_test:
                break
            if side[k] == "train":
                side[k] = "test"
                forced.append(k)
                n_test += 1
        n_train = sum(v == "train" for v in side.values())
        for k in reversed(by_score):
            if n_train >= params.min_train:
                break
            if side[k] == "test":
                side[k] = "train"
                forced.append(k)
                n_train += 1
    return side, forced


def cut_strips(
    products: Sequence[ProductRef], kind: str, strip_lines: int,
    options: dict[str, Any] | None = None,
) -> list[ProductRef]:
    """Each product as strips of ``strip_lines`` lines (``meta["strip"] = [first, stop]``);
    the last strip of a product takes the remainder. ``strip_lines`` 0: unchanged."""
    if strip_lines <= 0:
        return list(products)
    from pipeline.products import open_product

    out = []
    for p in products:
        lines = open_product(kind, p.path, options).lines
        starts = list(range(0, max(lines - strip_lines, 0) + 1, strip_lines))
        stops = [*starts[1:], lines]
        for a, b in zip(starts, stops, strict=True):
            out.append(ProductRef(p.product_id, p.path, {**p.meta, "strip": [a, b]}))
    return out


def _key(p: ProductRef, kind: str, params: SplitParams) -> str:
    group = (p.product_id if params.group_by == "product"
             else scene_key(kind, p.product_id, p.meta))
    lines = p.meta.get("strip")
    return group if lines is None else f"{group}:{lines[0]}-{lines[1]}"


def make_split(
    products: Sequence[ProductRef], kind: str, params: SplitParams
) -> dict[str, list[dict[str, Any]]]:
    """Split ``products`` (or strips of them) into {"train": [...], "test": [...],
    "forced": [...]}, sorted by product id and first line."""
    keys = [_key(p, kind, params) for p in products]
    side, forced = assign(keys, params)
    out: dict[str, list[Any]] = {"train": [], "test": [], "forced": sorted(forced)}
    order = sorted(range(len(products)), key=lambda i: (products[i].product_id,
                                                        products[i].meta.get("strip") or []))
    for i in order:
        p, key = products[i], keys[i]
        entry = {"product_id": p.product_id, "path": p.path, "group": key,
                 "score": round(score(params.seed, key), 6)}
        if p.meta.get("strip") is not None:
            entry["strip"] = list(p.meta["strip"])
        out[side[key]].append(entry)
    return out


def write_split(
    out: str | os.PathLike[str], source: str, products_dir: str | os.PathLike[str],
    params: SplitParams, products: Sequence[ProductRef], kind: str | None = None,
) -> dict[str, Any]:
    """Compute the split of data set ``source``'s ``products`` (reader ``kind``, default
    ``source``) and write it atomically to ``out``; return it."""
    out = Path(out)
    root = Path(os.path.abspath(products_dir))  # symlinked products stay under root
    split = make_split(products, kind or source, params)
    doc: dict[str, Any] = {
        "source": source, "seed": params.seed, "test_fraction": params.test_fraction,
        "group_by": params.group_by, "strip_lines": params.strip_lines,
        "products_dir": Path(os.path.relpath(root, os.path.abspath(out.parent))).as_posix(),
    }
    for name in SPLITS:
        doc[name] = [
            {**e, "path": Path(os.path.relpath(os.path.abspath(e["path"]), root)).as_posix()}
            for e in split[name]
        ]
    doc["forced"] = split["forced"]
    with atomic_open(out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    return doc


@dataclass(frozen=True)
class SplitFile:
    """A split file as read back by the later stages (absolute product paths)."""

    path: Path
    source: str
    train: list[ProductRef]
    test: list[ProductRef]
    doc: dict[str, Any]

    def products(self, split: str) -> list[ProductRef]:
        return {"train": self.train, "test": self.test}[split]


def read_split(path: str | os.PathLike[str], source: str | None = None) -> SplitFile:
    """Read a split file written by :func:`write_split` (UserError naming the file if bad)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: split file not found (run python -m pipeline.split)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable split file ({exc})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in SPLITS):
        raise UserError(f"{path}: not a split file (needs 'train' and 'test' lists)")
    if source is not None and doc.get("source") != source:
        raise UserError(f"{path}: split is for source {doc.get('source')!r}, not {source!r}")
    root = (path.parent / str(doc.get("products_dir", "."))).resolve()
    refs = {}
    for name in SPLITS:
        try:
            refs[name] = [ProductRef(str(e["product_id"]),
                                     Path(os.path.normpath(root / str(e["path"]))), e)
                          for e in doc[name]]
        except (KeyError, TypeError):
            raise UserError(f"{path}: '{name}' entries need product_id and path") from None
    def pieces(side: str) -> set[tuple[str, tuple[int, ...]]]:
        return {(p.product_id, tuple(p.meta.get("strip") or ())) for p in refs[side]}

    both = pieces("train") & pieces("test")
    if both:
        raise UserError(f"{path}: products on both sides of the split: "
                        f"{sorted(pid for pid, _ in both)[:3]}")
    return SplitFile(path, str(doc.get("source")), refs["train"], refs["test"], doc)


def dataset_products(
    name: str, params_path: str | os.PathLike[str] | None, products: str | None,
    params: SplitParams,
) -> tuple[Path, list[ProductRef]]:
    """(products folder, products) of data set ``name``: the manifest in ``products`` (or the
    data set's folder), or the data set's ``files`` registered now."""
    from pipeline.products import reader_settings

    ds = load_dataset(name, params_path)
    root = Path(products or ds.products)
    kinds, channels = (params.kinds, params.channels) if ds.kind == "virtis" else (None, None)
    if products is not None or not ds.files:
        return root, list_products(root, ds.kind, kinds, channels, name=name)
    from pipeline.register import build_manifest

    options = reader_settings(ds.kind, ds.reader, f"datasets.{name}.reader")
    manifest = build_manifest(name, ds.kind, ds.files, root, root, ds.allow_mixed, options)
    return root, refs_from_manifest(manifest, root, ds.kind, kinds, channels)


@cli_entry("python -m pipeline.split")
def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.products import reader_options

    parser = stage_parser("python -m pipeline.split", __doc__.split("\n\n")[0], SplitParams)
    parser.add_argument("--products", default=None,
                        help="folder with manifest.json (default: the data set's products)")
    parser.add_argument("--out", required=True, help="split file to write (JSON)")
    args = parser.parse_args(argv)
    params, ds = stage_settings(args, SplitParams, "split")
    lock_output(args.out, "python -m pipeline.split")
    root, products = dataset_products(args.dataset, args.params, args.products, params)
    products = cut_strips(products, ds.kind, params.strip_lines,
                          reader_options(args.dataset, args.params))
    doc = write_split(args.out, args.dataset, root, params, products, ds.kind)
    what = "strips" if params.strip_lines else "products"
    print(
        f"{args.out}: {len(doc['train'])} train / {len(doc['test'])} test {what} "
        f"(seed {params.seed}, test_fraction {params.test_fraction}, group_by {params.group_by})"
        + (f"; forced: {', '.join(doc['forced'])}" if doc["forced"] else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
