"""The one settings mechanism (parsers.settings): strict typed loading, layers, generated flags.

Every mistake in params.yaml or on the command line is a one-line ParamsError (or an argparse
usage error) naming the key; unknown keys come with the close known names.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from parsers.errors import ParamsError, reason
from parsers.jsonsafe import json_safe
from parsers.pds3_label import Block, Quantity
from parsers.settings import (
    add_flags,
    flag_overrides,
    from_dict,
    load_layers,
    load_section,
    read_params_file,
    to_dict,
)


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
        ("s:\n  name: a\n  nmae: b\n", "s: unknown key 'nmae' (did you mean 'name'?)"),
        ("s:\n  name: a\n  zzz: b\n", "unknown key 'zzz' (known: bands, bbox, enabled,"),
        ("s:\n  rate: 1\n", "missing required key 'name'"),
        ("s:\n  name: a\n  rate: fast\n", "s.rate: expected a number, got 'fast'"),
        ("s:\n  name: a\n  mode: l1\n", "s.mode: 'l1' is not one of 'bce', 'mse'"),
        ("s:\n  name: a\n  enabled: 1\n", "s.enabled: expected true or false"),
        ("s:\n  name: a\n  bbox: [1, 2]\n", "s.bbox: expected 4 values, got 2"),
        ("s:\n  name: a\n  inner: {size: 1.5}\n", "s.inner.size: expected an integer"),
        ("s: [1, 2]\n", "section 's' must be a mapping"),
        ("s:\n  name: [unclosed\n", "not valid YAML at line"),
        ("s:\n  name: a\n  rate: 1\n  name: b\n",
         "key 'name' at line 4 repeats the one at line 2 (YAML would keep only the last)"),
        ("s:\n  name: a\ns:\n  name: b\n", "key 's' at line 3 repeats the one at line 1"),
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


def test_several_unknown_keys_each_get_their_suggestions(tmp_path):
    path = write(tmp_path, "s:\n  name: a\n  rat: 1\n  enabeld: true\n")
    with pytest.raises(ParamsError) as info:
        load_section(Section, "s", path)
    assert ("unknown keys 'rat' (did you mean 'rate'?), 'enabeld' (did you mean 'enabled'?)"
            in str(info.value))


# ----------------------------------------------------------------------------- layers
def test_layers_merge_in_order_and_errors_name_the_layer(tmp_path):
    path = write(tmp_path, "t:\n  common: {name: a, rate: 2}\n  one: {rate: 3, mode: mse}\n")
    got = load_layers(Section, ["t.common", "t.one"], path, {"mode": "bce", "name": None})
    assert (got.name, got.rate, got.mode) == ("a", 3.0, "bce")
    assert load_layers(Section, ["t.common", "t.two"], path).rate == 2.0  # absent layer: none
    path = write(tmp_path, "t:\n  common: {name: a, rat: 2}\n  one: {rate: x}\n")
    with pytest.raises(ParamsError, match=r"t\.common: unknown key 'rat' \(did you mean 'rate'"):
        load_layers(Section, ["t.common", "t.one"], path)
    path = write(tmp_path, "t:\n  common: {name: a}\n  one: {rate: x}\n")
    with pytest.raises(ParamsError, match=r"t\.one\.rate: expected a number, got 'x'"):
        load_layers(Section, ["t.common", "t.one"], path)


def test_no_file_given_means_params_yaml_here_or_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert read_params_file(None) == {}
    (tmp_path / "params.yaml").write_text("s: {name: here}\n")
    assert load_section(Section, "s", None).name == "here"


# ----------------------------------------------------------------------------- key names
@dataclass(frozen=True)
class Keyword:
    lmbda: float = field(default=1.0, metadata={"key": "lambda", "help": "rate weight"})
    epochs: int = 1


def test_a_field_may_use_another_params_key(tmp_path):
    path = write(tmp_path, "k:\n  lambda: 250\n")
    got = load_section(Keyword, "k", path)
    assert got.lmbda == 250.0
    assert to_dict(got) == {"lambda": 250.0, "epochs": 1}
    with pytest.raises(ParamsError, match="unknown key 'lmbda' \\(did you mean 'lambda'"):
        from_dict(Keyword, {"lmbda": 1})


# ----------------------------------------------------------------------------- flags
@dataclass(frozen=True)
class Flags:
    arch: Literal["linear", "conv"] = "linear"
    latent: int | tuple[int, int] = 1000
    widths: tuple[int, ...] | None = None
    rates: list[float] = field(default_factory=lambda: [1.0])
    bands: list[str] = field(default_factory=list)
    batch_size: int = 8
    compile: bool = False
    out: Path = Path("o")
    lmbda: float = field(default=1.0, metadata={"key": "lambda"})
    progress: bool | None = None


def parse(*argv: str) -> dict:
    parser = argparse.ArgumentParser(prog="t")
    add_flags(parser, Flags)
    return flag_overrides(parser.parse_args(list(argv)), Flags)


def test_flags_come_from_the_fields_and_only_given_ones_override():
    assert parse() == {}
    got = parse("--arch", "conv", "--latent", "8x2", "--widths", "4,4,4,8", "--rates", "0.5,2",
                "--bands", "B02,B03", "--batch-size", "16", "--no-compile", "--out", "m/x",
                "--lambda", "1e3")
    assert got == {"arch": "conv", "latent": [8, 2], "widths": [4, 4, 4, 8],
                   "rates": [0.5, 2], "bands": ["B02", "B03"], "batch_size": 16,
                   "compile": False, "out": "m/x", "lambda": 1000.0}
    assert parse("--no-progress") == {"progress": False}
    assert parse("--latent", "1000")["latent"] == 1000
    assert parse("--latent", "[1024, 8]")["latent"] == [1024, 8]
    assert parse("--rates", "4")["rates"] == [4]
    built = from_dict(Flags, got)
    assert built.latent == (8, 2) and built.widths == (4, 4, 4, 8) and built.out == Path("m/x")


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-size", "x"], "argument --batch-size: expected an integer, got 'x'"),
    (["--arch", "dense"], "argument --arch: invalid choice: 'dense'"),
    (["--latent", "8x2x1"], "argument --latent: expected int | tuple[int, int], got [8, 2, 1]"),
    (["--lambda", "big"], "argument --lambda: expected a number, got 'big'"),
    (["--batch_size", "3"], "unrecognized arguments: --batch_size"),
    (["--widths", "null"], "argument --widths: 'null': a flag cannot set null; set it in "
                           "params.yaml"),
    (["--latent", "~"], "argument --latent: '~': a flag cannot set null"),
])
def test_bad_flag_values_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@dataclass(frozen=True)
class Aliased:
    datasets: tuple[str, ...] = field(default=("d0",), metadata={"flags": ("--dataset",),
                                                                  "metavar": "ID"})
    widths: list[int] | None = None
    pair: tuple[int, int] = (1, 1)
    start_time: str | None = field(default=None, metadata={"flags": ("--start",)})
    verify: bool = field(default=True, metadata={"flags": ("--check",)})


def parse_aliased(*argv: str) -> dict:
    parser = argparse.ArgumentParser(prog="t")
    add_flags(parser, Aliased)
    return flag_overrides(parser.parse_args(list(argv)), Aliased)


def test_an_alias_is_the_same_flag_and_a_repeated_list_flag_accumulates(tmp_path):
    assert parse_aliased("--dataset", "a") == parse_aliased("--datasets", "a") == {
        "datasets": ["a"]}
    both = {"datasets": ["a", "b"]}
    assert parse_aliased("--dataset", "a", "--dataset", "b") == both
    assert parse_aliased("--datasets", "a,b") == both
    assert parse_aliased("--dataset", "a", "--datasets", "[b]") == both
    assert parse_aliased("--widths", "4", "--widths", "8,16") == {"widths": [4, 8, 16]}
    # a fixed-length tuple is one value: the last one wins, as for scalars
    assert parse_aliased("--pair", "2x3", "--pair", "4x5") == {"pair": [4, 5]}
    assert parse_aliased("--start", "2014-08-06") == {"start_time": "2014-08-06"}
    assert parse_aliased("--no-check") == parse_aliased("--no-verify") == {"verify": False}
    assert parse_aliased("--check") == {"verify": True}
    # string items stay text (no YAML numbers or dates), and the first flag replaces the file
    assert parse_aliased("--dataset", "0094", "--dataset", "2014-08-06") == {
        "datasets": ["0094", "2014-08-06"]}
    path = write(tmp_path, "f: {datasets: [x, y]}\n")
    loaded = load_section(Aliased, "f", path, parse_aliased("--dataset", "a", "--dataset", "b"))
    assert loaded.datasets == ("a", "b")
    shown = argparse.ArgumentParser(prog="t")
    add_flags(shown, Aliased)
    assert "--datasets ID, --dataset ID" in shown.format_help()


def test_flag_values_are_checked_again_after_the_merge(tmp_path):
    path = write(tmp_path, "f: {batch_size: 4}\n")
    with pytest.raises(ParamsError, match=r"--latent: expected int \| tuple"):
        load_section(Flags, "f", path, {"latent": [1, 2, 3]})


# ----------------------------------------------------------------------------- one of each
def test_json_safe_makes_plain_json_values():
    label = Block()
    label.add("SIZE", Quantity(12, "BYTES"))
    label.add("AXES", (1, 2))
    got = json_safe({"label": label, "x": np.float32(1.5), "n": np.int64(3), "nan": math.nan,
                     "arr": np.array([1.0, np.inf]), "path": Path("a/b"), "s": Keyword()})
    assert got == {"label": {"SIZE": {"value": 12, "units": "BYTES"}, "AXES": [1, 2]},
                   "x": 1.5, "n": 3, "nan": None, "arr": [1.0, None], "path": "a/b",
                   "s": {"lambda": 1.0, "epochs": 1}}
    assert type(got["n"]) is int


def test_reason_is_one_short_line():
    class Wrapped(Exception):
        def __init__(self, inner):
            super().__init__(inner)

    class Inner:
        reason = "no route\n  to host"

    assert reason(Wrapped(Inner())) == "no route to host"
    assert reason(OSError("[Errno 111] Connection refused")) == "connection refused"
    assert reason(TimeoutError("read timed out")) == "timed out"
    assert reason(ValueError("Failed to resolve 'x.invalid'")) == "host name not found"
    assert len(reason(ValueError("x" * 500))) == 200
    assert reason(ValueError()) == "ValueError"
