"""The settings of the pipeline stages: which sections of ``params.yaml`` each one reads.

The mechanism (strict typed loading into frozen dataclasses, close-name suggestions for
unknown keys, override flags generated from the fields) is :mod:`parsers.settings`, which
the reader CLIs use too; this module re-exports it and adds the stage layering:

* a stage that runs once (``download_pds``, ``split``, ``stats``) reads its own section;
* a stage that runs per data set reads two layers, the stage's common settings and the
  data set's own part (:func:`stage_sections`), merged by :func:`load_stage`, with
  command-line overrides on top.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from parsers.settings import (
    DEFAULT_PARAMS,
    add_flags,
    flag_overrides,
    from_dict,
    load_layers,
    load_section,
    read_params_file,
    to_dict,
)

T = TypeVar("T")

#: The data sets of the pipeline, in stage order (dvc.yaml runs a chain for each).
SOURCES: tuple[str, ...] = ("virtis", "sentinel2")

__all__ = [
    "DEFAULT_PARAMS", "SOURCES", "add_flags", "flag_overrides", "from_dict", "load_layers",
    "load_section", "load_stage", "read_params_file", "stage_sections", "to_dict",
]


def stage_sections(stage: str, dataset: str) -> list[str]:
    """The params sections of ``stage`` for ``dataset``, common layer first."""
    return [f"{stage}.common", f"{stage}.{dataset}"]


def load_stage(
    cls: type[T],
    stage: str,
    dataset: str,
    path: str | os.PathLike[str] | None = DEFAULT_PARAMS,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Settings of ``stage`` for ``dataset``: its common layer, the data set's layer, then
    the non-None ``overrides``. ``path=None``: ./params.yaml when present, else defaults."""
    return load_layers(cls, stage_sections(stage, dataset), path, overrides)
