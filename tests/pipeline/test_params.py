"""The strict typed params loader: every mistake in params.yaml is a one-line ParamsError."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from parsers.errors import ParamsError
from pipeline.params import from_dict, load_section, to_dict


@dataclass(frozen=True)
class Inner:
    size: int = 64
    stride: int | None = None


@dataclass(frozen=True)
class Section:
    name: str
    rate: float = 1e-4
    mode: Literal["bce", "mse"] = "bce"
    bands: list[str] = field(default_factory=lambda: ["B02", "B03"])
    bbox: tuple[float, float, float, float] = (8.5, 44.7, 11.4, 46.6)
    out: Path = Path("out")
    inner: Inner = field(default_factory=Inner)
    enabled: bool = True


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_loads_nested_section_with_types(tmp_path):
    path = write(
        tmp_path,
        "train:\n  virtis:\n    name: x\n    rate: 1\n    bands: [B04]\n"
        "    bbox: [1, 2, 3, 4]\n    out: models/v\n    inner: {size: 32}\n",
    )
    got = load_section(Section, "train.virtis", path)
    assert got == Section(
        name="x", rate=1.0, bands=["B04"], bbox=(1.0, 2.0, 3.0, 4.0), out=Path("models/v"),
        inner=Inner(size=32),
    )
    assert isinstance(got.rate, float)
    assert to_dict(got)["out"] == "models/v"


def test_overrides_win_and_none_is_ignored(tmp_path):
    path = write(tmp_path, "s:\n  name: a\n  mode: bce\n")
    got = load_section(Section, "s", path, overrides={"mode": "mse", "name": None})
    assert (got.name, got.mode) == ("a", "mse")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("s:\n  name: a\n  nmae: b\n", "unknown key(s) nmae"),
        ("s:\n  rate: 1\n", "missing required key 'name'"),
        ("s:\n  name: a\n  rate: fast\n", "s.rate: expected a number, got 'fast'"),
        ("s:\n  name: a\n  mode: l1\n", "s.mode: 'l1' is not one of 'bce', 'mse'"),
        ("s:\n  name: a\n  enabled: 1\n", "s.enabled: expected true or false"),
        ("s:\n  name: a\n  bbox: [1, 2]\n", "s.bbox: expected 4 values, got 2"),
        ("s:\n  name: a\n  inner: {size: 1.5}\n", "s.inner.size: expected an integer"),
        ("s: [1, 2]\n", "section 's' must be a mapping"),
        ("s:\n  name: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_mistakes_are_one_line_params_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_section(Section, "s", path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match=r"nope\.yaml: params file not found"):
        load_section(Section, "s", tmp_path / "nope.yaml")


def test_yaml_dates_are_accepted_as_iso_strings():
    @dataclass(frozen=True)
    class Dates:
        start: str

    start = __import__("datetime").date(2017, 1, 1)
    assert from_dict(Dates, {"start": start}).start == "2017-01-01"
