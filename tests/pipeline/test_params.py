"""The pipeline's settings: data set entries and the stage layers (common + data set)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from parsers.errors import ParamsError
from pipeline.params import (
    BandSelection,
    dataset_names,
    load_dataset,
    load_stage,
)


@dataclass(frozen=True)
class Stage:
    size: int = 64
    rate: float = 1.0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


ENTRIES = """
tiles: {size: 32, rate: 2.0}
datasets:
  mine:
    kind: cube
    products: cubes
    files: ['*.hdr']
    bands: [3, 1]
    tiles: {size: 8}
  other:
    kind: cube
    products: more
    bands: {wavelength_nm: [400, 900], exclude_nm: [[755, 770]]}
"""


def test_data_sets_and_their_layers(tmp_path: Path) -> None:
    path = write(tmp_path, ENTRIES)
    assert dataset_names(path) == ["mine", "other"]
    mine = load_dataset("mine", path)
    assert (mine.kind, mine.products, mine.files) == ("cube", "cubes", ["*.hdr"])
    assert mine.bands == BandSelection(indices=[3, 1])  # a plain list means indices
    assert load_dataset("other", path).bands == BandSelection(
        wavelength_nm=(400.0, 900.0), exclude_nm=[(755.0, 770.0)])
    assert load_stage(Stage, "tiles", "mine", path) == Stage(size=8, rate=2.0)
    assert load_stage(Stage, "tiles", "other", path) == Stage(size=32, rate=2.0)
    assert load_stage(Stage, "tiles", "mine", path, {"rate": 5, "size": None}) == \
        Stage(size=8, rate=5.0)


def test_built_in_names_need_no_entry(tmp_path: Path) -> None:
    path = write(tmp_path, "tiles: {size: 16}\n")
    virtis = load_dataset("virtis", path)
    assert (virtis.kind, virtis.products) == ("virtis", "data/raw/virtis")
    assert load_stage(Stage, "tiles", "sentinel2", path).size == 16


@pytest.mark.parametrize(("text", "name", "message"), [
    (ENTRIES, "mien", "data set 'mien' is not in section 'datasets' (did you mean 'mine'?)"),
    (ENTRIES, "zzz", "data set 'zzz' is not in section 'datasets'; it has mine, other"),
    ("datasets:\n  a: {kind: envi, products: x}\n", "a",
     "datasets.a.kind: 'envi' is not one of 'virtis', 'sentinel2', 'cube'"),
    ("datasets:\n  a: {kind: cube}\n", "a", "datasets.a: missing required key 'products'"),
    ("datasets:\n  a: {kind: cube, products: x, tile: {size: 8}}\n", "a",
     "datasets.a: unknown key 'tile' (did you mean 'tiles'"),
    ("datasets:\n  a: {kind: cube, products: x, bands: {indices: [1, 1]}}\n", "a",
     "bands.indices repeats a band"),
    ("datasets:\n  a: {kind: cube, products: x, bands: {wavelength_nm: [900, 400]}}\n", "a",
     "wavelength range [900.0, 400.0] is empty"),
    ("datasets:\n  a: {kind: cube, products: x, tiles: {sise: 8}}\n", "a",
     "datasets.a.tiles: unknown key 'sise' (did you mean 'size'?)"),
    # a misspelt top-level section would otherwise be ignored and its settings lost
    (ENTRIES + "evaluat: {max_tiles: 3}\n", "mine",
     "unknown section 'evaluat' (did you mean 'evaluate'?)"),
    (ENTRIES + "zzz: {}\n", "mine", "unknown section 'zzz' (the sections are download_pds,"),
])
def test_mistakes_name_the_data_set_and_key(tmp_path: Path, text: str, name: str,
                                            message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_stage(Stage, "tiles", name, path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
