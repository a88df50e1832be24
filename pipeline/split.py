"""Leak-free train/test split of whole products, stable when products are added.

Every product gets a score ``u = int(sha256(f"{seed}:{key}")[:16], 16) / 2**64`` in [0, 1),
where ``key`` is the product id (``group_by: product``) or its scene (``group_by: scene``:
the VIRTIS observation without the channel letter, the Sentinel-2 MGRS tile), so related
products always land on the same side. A product goes to test when ``u < test_fraction``.
The score depends only on the seed and the key, so adding products never moves an
existing one. Only when the rule leaves a side with fewer than ``min_test`` /
``min_train`` keys are the keys with the lowest (resp. highest) scores moved over; with
realistic product counts this never happens, and it is recorded in the split file.

CLI: ``python -m pipeline.split --params params.yaml --source S --products data/raw/S
--out data/split/S.json``. Params section ``split`` (:class:`SplitParams`).

Output (JSON, written atomically)::

    {"source": S, "seed": .., "test_fraction": .., "group_by": ..,
     "products_dir": "<products folder, relative to this file>",
     "train": [{"product_id", "path" (relative to products_dir), "group", "score"}, ...],
     "test": [...], "forced": [keys moved by min_test/min_train]}
"""

from __future__ import annotations

import argparse
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
from pipeline.params import DEFAULT_PARAMS, SOURCES, load_section
from pipeline.products import ProductRef, check_source, list_products

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
    """

    seed: int = 1
    test_fraction: float = 0.2
    group_by: Literal["product", "scene"] = "product"
    min_test: int = 1
    min_train: int = 1
    kinds: list[str] = field(default_factory=lambda: ["cal"])
    channels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError("test_fraction must lie in [0, 1)")
        if self.min_test < 0 or self.min_train < 0:
            raise ValueError("min_test and min_train must be >= 0")


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


def make_split(
    products: Sequence[ProductRef], source: str, params: SplitParams
) -> dict[str, list[dict[str, Any]]]:
    """Split ``products`` into {"train": [...], "test": [...], "forced": [...]} (sorted by id)."""
    groups = {
        p.product_id: (p.product_id if params.group_by == "product"
                       else scene_key(source, p.product_id, p.meta))
        for p in products
    }
    side, forced = assign(list(groups.values()), params)
    out: dict[str, list[Any]] = {"train": [], "test": [], "forced": sorted(forced)}
    for p in sorted(products, key=lambda p: p.product_id):
        key = groups[p.product_id]
        out[side[key]].append(
            {"product_id": p.product_id, "path": p.path, "group": key,
             "score": round(score(params.seed, key), 6)}
        )
    return out


def write_split(
    out: str | os.PathLike[str], source: str, products_dir: str | os.PathLike[str],
    params: SplitParams, products: Sequence[ProductRef],
) -> dict[str, Any]:
    """Compute the split of ``products`` and write it atomically to ``out``; return it."""
    out = Path(out)
    root = Path(os.path.abspath(products_dir))  # symlinked products stay under root
    split = make_split(products, source, params)
    doc: dict[str, Any] = {
        "source": source, "seed": params.seed, "test_fraction": params.test_fraction,
        "group_by": params.group_by,
        "products_dir": Path(os.path.relpath(root, os.path.abspath(out.parent))).as_posix(),
    }
    for name in SPLITS:
        doc[name] = [
            {**e, "path": Path(os.path.abspath(e["path"])).relative_to(root).as_posix()}
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
            refs[name] = [ProductRef(str(e["product_id"]), root / str(e["path"]), e)
                          for e in doc[name]]
        except (KeyError, TypeError):
            raise UserError(f"{path}: '{name}' entries need product_id and path") from None
    both = {p.product_id for p in refs["train"]} & {p.product_id for p in refs["test"]}
    if both:
        raise UserError(f"{path}: products on both sides of the split: {sorted(both)[:3]}")
    return SplitFile(path, str(doc.get("source")), refs["train"], refs["test"], doc)


@cli_entry("python -m pipeline.split")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.split", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file")
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--products", required=True, help="download folder with manifest.json")
    parser.add_argument("--out", required=True, help="split file to write (JSON)")
    parser.add_argument("--seed", type=int, help="override split.seed")
    parser.add_argument("--test-fraction", type=float, help="override split.test_fraction")
    args = parser.parse_args(argv)
    check_source(args.source)
    params = load_section(
        SplitParams, "split", args.params,
        {"seed": args.seed, "test_fraction": args.test_fraction},
    )
    lock_output(args.out, "python -m pipeline.split")
    virtis = args.source == "virtis"  # kinds/channels are VIRTIS metadata
    products = list_products(args.products, args.source, params.kinds if virtis else None,
                             params.channels if virtis else None)
    doc = write_split(args.out, args.source, args.products, params, products)
    print(
        f"{args.out}: {len(doc['train'])} train / {len(doc['test'])} test products "
        f"(seed {params.seed}, test_fraction {params.test_fraction}, group_by {params.group_by})"
        + (f"; forced: {', '.join(doc['forced'])}" if doc["forced"] else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
