"""The settings of the pipeline: data sets, and which sections of ``params.yaml`` each stage reads.

The mechanism (strict typed loading into frozen dataclasses, close-name suggestions for
unknown keys, override flags generated from the fields) is :mod:`parsers.settings`, which
the reader CLIs use too; this module re-exports it and adds what is particular to the
pipeline:

* **data sets** (:class:`DatasetParams`): the named entries of section ``datasets``, each with
  a reader kind, where its products are, the bands to keep, and its own layer of every
  per-data-set stage (``split``, ``stats``, ``tiles``, ``train``, ``evaluate``);
* **stage layers** (:func:`load_stage`): a per-data-set stage reads its common section
  (``tiles``) and then the data set's part (``datasets.<name>.tiles``), with command-line
  overrides on top. Stages that run once (the downloads) read one section
  (:func:`~parsers.settings.load_section`).
"""

from __future__ import annotations

import argparse
import difflib
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from parsers.errors import ParamsError
from parsers.settings import (
    DEFAULT_PARAMS,
    add_flags,
    flag_overrides,
    from_dict,
    load_layers,
    params_label,
    read_params_file,
    section_of,
    to_dict,
)
from parsers.settings import load_section as _load_section

T = TypeVar("T")
PathLike = str | os.PathLike[str]

__all__ = [
    "DATASET_STAGES", "DEFAULT_PARAMS", "KINDS", "SECTIONS", "SOURCES", "BandSelection",
    "DatasetParams", "add_flags", "dataset_names", "flag_overrides", "from_dict", "load_dataset",
    "load_layers", "load_section", "load_stage", "read_params", "read_params_file",
    "stage_parser", "stage_sections", "stage_settings", "to_dict",
]

Kind = Literal["virtis", "sentinel2", "cube"]
#: The readers a data set can use: the VIRTIS reader, the Sentinel-2 reader, and
#: :func:`parsers.cube.open_cube` for any PDS3 QUBE, ENVI or GeoTIFF cube.
KINDS: tuple[str, ...] = typing.get_args(Kind)
#: The data sets the download stages fetch (dvc.yaml's download_pds / download_sentinel2).
SOURCES: tuple[str, ...] = ("virtis", "sentinel2")
#: The stages dvc.yaml runs once per data set, in order.
DATASET_STAGES: tuple[str, ...] = ("split", "stats", "tiles", "train", "evaluate")
#: The top-level sections of params.yaml; any other is a typo (an error naming close ones).
SECTIONS: tuple[str, ...] = ("download_pds", "download_sentinel2", "datasets", *DATASET_STAGES)


def read_params(path: PathLike | None = DEFAULT_PARAMS) -> dict[str, Any]:
    """The whole params file, with every top-level section checked to be one of SECTIONS."""
    data = read_params_file(path)
    unknown = [key for key in data if key not in SECTIONS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), SECTIONS, n=2, cutoff=0.6)
        hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
                else f"the sections are {', '.join(SECTIONS)}")
        raise ParamsError(f"{params_label(path)}: unknown section {key!r} ({hint})")
    return data


def load_section(cls: type[T], section: str, path: PathLike | None = DEFAULT_PARAMS,
                 overrides: Mapping[str, Any] | None = None) -> T:
    """:func:`parsers.settings.load_section` on a params file whose sections are checked."""
    read_params(path)
    return _load_section(cls, section, path, overrides)


@dataclass(frozen=True)
class BandSelection:
    """Params ``datasets.<name>.bands``: which bands of every product to keep (null: all).

    indices: 0-based band indices, kept in this order (a plain list means this).
    wavelength_nm: ``[lo, hi]``: the bands whose centre lies in this closed range (nm).
    exclude_nm: ``[[lo, hi], ...]``: drop the bands in these ranges (e.g. water vapour).
    """

    indices: list[int] | None = None
    wavelength_nm: tuple[float, float] | None = None
    exclude_nm: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.indices is not None:
            if not self.indices or min(self.indices) < 0:
                raise ValueError("bands.indices must list band numbers >= 0")
            if len(set(self.indices)) != len(self.indices):
                raise ValueError("bands.indices repeats a band")
            if self.wavelength_nm or self.exclude_nm:
                raise ValueError("bands: give indices or wavelength ranges, not both")
        for lo, hi in [*([self.wavelength_nm] if self.wavelength_nm else []), *self.exclude_nm]:
            if not lo < hi:
                raise ValueError(f"bands: wavelength range [{lo}, {hi}] is empty (lo < hi)")


@dataclass(frozen=True)
class DatasetParams:
    """One entry of params section ``datasets`` (docs/datasets.md).

    kind: the reader (:data:`KINDS`).
    products: the folder the stages read: it holds ``manifest.json`` (a download stage or
        ``python -m pipeline.register`` wrote it), or the files that ``files`` names. DVC
        watches this folder.
    files: globs relative to ``products`` (or absolute): the data set is these files,
        registered when the split runs; [] = the products ``products/manifest.json`` lists.
    allow_mixed: accept files whose band count or wavelengths differ from the first one's.
    bands: which bands to keep (:class:`BandSelection`; a list = indices; null = all).
    reader: the kind's reader settings (sentinel2: bands, resampling, harmonise; cube:
        drop_bad_bands; virtis: none).
    split, stats, tiles, train, evaluate: this data set's layer over the stage's common
        section (same keys as that section).
    """

    kind: Kind
    products: str
    files: list[str] = field(default_factory=list)
    allow_mixed: bool = False
    bands: BandSelection | list[int] | None = None
    reader: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    tiles: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bands = self.bands
        if bands is None:
            bands = BandSelection()
        elif isinstance(bands, list):
            bands = BandSelection(indices=bands)
        object.__setattr__(self, "bands", bands)
        if not self.products:
            raise ValueError("products must name a folder")


def _datasets(data: Mapping[str, Any], label: str) -> dict[str, Any]:
    return section_of(data, "datasets", label)


def dataset_names(path: PathLike | None = DEFAULT_PARAMS) -> list[str]:
    """The data sets params section ``datasets`` names, in file order."""
    return list(_datasets(read_params(path), params_label(path)))


def load_dataset(name: str, path: PathLike | None = DEFAULT_PARAMS) -> DatasetParams:
    """Data set ``name`` of params section ``datasets`` (strictly checked).

    A params file without that entry still knows the data sets named after a kind
    (``virtis``, ``sentinel2``: products in ``data/raw/<name>``); any other name is an error
    that suggests the close names.
    """
    label = params_label(path)
    entries = _datasets(read_params(path), label)
    if name not in entries:
        if name in KINDS and name != "cube":
            return DatasetParams(kind=name, products=f"data/raw/{name}")  # type: ignore[arg-type]
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        known = f"; it has {', '.join(entries)}" if entries and not close else ""
        raise ParamsError(f"{label}: data set {name!r} is not in section 'datasets'{hint}{known}")
    entry = entries[name]
    if not isinstance(entry, Mapping):
        raise ParamsError(f"{label}: datasets.{name} must be a mapping")
    return from_dict(DatasetParams, entry, where=f"{label}: datasets.{name}")


def stage_sections(stage: str, dataset: str) -> list[str]:
    """The params sections of ``stage`` for ``dataset``, common layer first."""
    return [stage, f"datasets.{dataset}.{stage}"]


def load_stage(
    cls: type[T],
    stage: str,
    dataset: str,
    path: PathLike | None = DEFAULT_PARAMS,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Settings of ``stage`` for ``dataset``: the common section ``stage``, the data set's
    layer ``datasets.<dataset>.<stage>``, then the non-None ``overrides``.
    ``path=None``: ./params.yaml when present, else defaults."""
    load_dataset(dataset, path)  # the data set must exist (and be well formed)
    return load_layers(cls, stage_sections(stage, dataset), path, overrides)


def stage_parser(prog: str, description: str, cls: type) -> argparse.ArgumentParser:
    """The command line every per-data-set stage shares: ``--params``, ``--dataset`` (also
    spelt ``--source``) and one override flag per field of its settings class ``cls``; the
    stage adds its own arguments to the returned parser."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--params", default=None,
                        help="params file (default: ./params.yaml when present, else defaults)")
    parser.add_argument("--dataset", "--source", dest="dataset", required=True,
                        help="the data set (an entry of params section datasets)")
    add_flags(parser.add_argument_group(f"overrides of the params ({cls.__name__} keys)"), cls)
    return parser


def stage_settings(args: argparse.Namespace, cls: type[T], stage: str
                   ) -> tuple[T, DatasetParams]:
    """(settings of ``stage`` for the data set the command line names, that data set), from a
    parser made by :func:`stage_parser`."""
    dataset = load_dataset(args.dataset, args.params)  # what load_stage checks first
    settings = load_layers(cls, stage_sections(stage, args.dataset), args.params,
                           flag_overrides(args, cls))
    return settings, dataset
