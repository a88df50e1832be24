"""Typed settings from ``params.yaml``: the one mechanism every stage and CLI uses.

A tool declares its settings as a frozen dataclass and loads them with :func:`load_section`
(one dotted section) or :func:`load_layers` (several sections merged in order, e.g. the
common ``train`` settings and one data set's ``train`` part; :mod:`pipeline.params` names
the layers of the pipeline stages). The loader is strict: an unknown key, a missing
required key or a value of the wrong type is a :class:`~parsers.errors.ParamsError` that
names the file and the dotted key, and an unknown key comes with the close known names, so
a typo in params.yaml never passes silently.

Command-line overrides are generated from the same dataclass (:func:`add_flags`,
:func:`flag_overrides`): one flag per field, ``--batch-size`` for ``batch_size``, with the
field's type deciding how the text is read (``--flag/--no-flag`` for booleans, ``a,b,c``
or ``[a, b]`` for lists, ``8x2`` for a pair of integers).

A variable-length list field (``list[X]``, ``tuple[X, ...]``, either or ``None``) may be
given more than once: the first occurrence replaces the params value, later ones add to it
(``--dataset A --dataset B`` is ``--datasets A,B``); its items are kept as text when the item
type is a string.

Field metadata shapes the flag (``dataclasses.field(metadata={...})``):

- ``"key"``: the params key when it is not a Python name (``"lambda"``); the flag follows it;
- ``"help"``: the flag's help text;
- ``"flags"``: extra option strings for the same flag, e.g. ``("--dataset",)`` beside
  ``--datasets``; a boolean's alias gets its ``--no-`` form too (``--verify``/``--no-verify``);
- ``"metavar"``: the name of the value in ``--help`` (default: the key in capitals).

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``pathlib.Path``,
``Literal[...]``, ``X | None``, unions, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``dict[str, X]``, ``Any`` and nested dataclasses.

This module lives in ``parsers`` (the bottom layer) so that the reader CLIs use it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from parsers.errors import ParamsError
from parsers.jsonsafe import json_safe

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")
PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- the file

class DuplicateKeyError(yaml.YAMLError):
    """A mapping names one key twice (plain YAML keeps the last one silently)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader's own error names an unhashable key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(f"key {key!r} at line {line} repeats the one at line "
                                        f"{seen[key]} (YAML would keep only the last)")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_params_file(path: PathLike | None = DEFAULT_PARAMS) -> dict[str, Any]:
    """The whole params file as a dict (an empty file is an empty dict).

    ``None`` means "./params.yaml when there is one, else no settings at all" (tools that
    also run outside a DVC project); a path that is given must exist.
    """
    if path is None:
        if not DEFAULT_PARAMS.is_file():
            return {}
        path = DEFAULT_PARAMS
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read params file ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def params_label(path: PathLike | None) -> str:
    """How messages name the params file (``params.yaml`` when ``path`` is None)."""
    return str(DEFAULT_PARAMS if path is None else Path(path))


def section_of(data: Mapping[str, Any], section: str, where: str) -> dict[str, Any]:
    """The dotted ``section`` of ``data``: {} when absent, ParamsError when not a mapping."""
    node: Any = data
    for part in section.split("."):
        if not isinstance(node, Mapping):
            break
        node = node.get(part)
        if node is None:
            return {}
    if not isinstance(node, Mapping):
        raise ParamsError(f"{where}: section '{section}' must be a mapping")
    return dict(node)


# --------------------------------------------------------------------------- loading

def load_section(
    cls: type[T],
    section: str,
    path: PathLike | None = DEFAULT_PARAMS,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Load the dotted ``section`` (e.g. ``"download_pds"``) of a params file into ``cls``.

    ``overrides`` (e.g. from :func:`flag_overrides`) replace keys of the section; ``None``
    values are ignored. A missing section is allowed when every field has a default.
    """
    return load_layers(cls, [section], path, overrides)


def load_layers(
    cls: type[T],
    sections: Sequence[str],
    path: PathLike | None = DEFAULT_PARAMS,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Merge the dotted ``sections`` of a params file in order (later ones win), then the
    non-None ``overrides``, into ``cls``. Errors name the section each key came from."""
    label = params_label(path)
    data = read_params_file(path)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for section in sections:
        for key, value in section_of(data, section, label).items():
            merged[key] = value
            origin[key] = f"{label}: {section}"
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
            origin[key] = f"--{key.replace('_', '-')}"
    where = f"{label}: {sections[-1]}" if sections else label
    return from_dict(cls, merged, where=where, origin=origin)


def param_key(field: dataclasses.Field) -> str:
    """The params.yaml key of a dataclass field (its name unless metadata says otherwise)."""
    return str(field.metadata.get("key", field.name))


def _fields_by_key(cls: type) -> dict[str, dataclasses.Field]:
    return {param_key(f): f for f in dataclasses.fields(cls) if f.init}


def unknown_key_message(unknown: Sequence[str], known: Sequence[str]) -> str:
    """``unknown key 'lrr' (did you mean 'lr'?)`` for each unknown key; the known keys when
    none is close."""
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(known), n=3, cutoff=0.6)
        hint = " or ".join(f"'{c}'" for c in close)
        parts.append(f"'{key}'" + (f" (did you mean {hint}?)" if close else ""))
    noun = "key" if len(unknown) == 1 else "keys"
    text = f"unknown {noun} {', '.join(parts)}"
    if not any("did you mean" in p for p in parts):
        text += f" (known: {', '.join(sorted(known))})"
    return text


def from_dict(
    cls: type[T], data: Mapping[str, Any], where: str = "params",
    origin: Mapping[str, str] | None = None,
) -> T:
    """Build dataclass ``cls`` from ``data`` (params keys), checking every key and type.

    ``origin`` maps a key to where it came from (a section, a flag) for the messages;
    keys without one are reported under ``where``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    origin = origin or {}
    hints = typing.get_type_hints(cls)
    fields = _fields_by_key(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        places = sorted({origin.get(k, where) for k in unknown})
        raise ParamsError(f"{'; '.join(places)}: {unknown_key_message(unknown, list(fields))}")
    kwargs = {}
    for key, field in fields.items():
        if key in data:
            here = origin.get(key, where)
            name = here if here.startswith("--") else f"{here}.{key}"
            kwargs[field.name] = _convert(data[key], hints[field.name], name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{where}: missing required key '{key}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ParamsError(f"{where}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """A settings dataclass as plain YAML/JSON values, keyed by params key (see json_safe)."""
    return json_safe(obj)


def _type_name(tp: Any) -> str:
    """``int | tuple[int, int]``, ``BandSelection | list[int] | None``: as a user reads it."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", None) or str(tp)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, args, where)
    if origin is typing.Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ParamsError(f"{where}: {value!r} is not one of {choices}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        return _convert_sequence(value, origin, args, where)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    return _convert_scalar(value, tp, where)


def _convert_union(value: Any, tp: Any, args: tuple[Any, ...], where: str) -> Any:
    if value is None and type(None) in args:
        return None
    deeper: list[ParamsError] = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, where)
        except ParamsError as exc:
            # An arm that took the value's shape and failed inside says more than "expected".
            if not str(exc).startswith(f"{where}: expected"):
                deeper.append(exc)
    if deeper:
        raise deeper[0]
    raise ParamsError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _convert_sequence(value: Any, origin: Any, args: tuple[Any, ...], where: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ParamsError(f"{where}: expected a list, got {value!r}")
    if origin is list:
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise ParamsError(f"{where}: expected {len(args)} values, got {len(value)}")
    pairs = enumerate(zip(args, value, strict=True))
    return tuple(_convert(v, a, f"{where}[{i}]") for i, (a, v) in pairs)


def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParamsError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ParamsError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        # YAML turns unquoted dates into date objects; accept them as ISO strings.
        if hasattr(value, "isoformat"):
            return value.isoformat()
        raise ParamsError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise ParamsError(f"{where}: expected a path string, got {value!r}")
    raise TypeError(f"{where}: unsupported params field type {tp!r}")


# --------------------------------------------------------------------------- flags

def flag_name(key: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


def _strings_only(tp: Any) -> bool:
    """True when every value of ``tp`` is a string (text is taken as it is)."""
    if tp in (str, Path):
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in args)
    if origin in (typing.Union, types.UnionType):
        return all(_strings_only(a) for a in args if a is not type(None))
    return False


def _has_sequence(tp: Any) -> tuple[bool, bool]:
    """(some arm of ``tp`` is a list/tuple, all its items are numbers)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        items = [a for a in args if a is not Ellipsis]
        return True, all(a in (int, float) for a in items)
    if origin in (typing.Union, types.UnionType):
        found = [_has_sequence(a) for a in args]
        seqs = [numeric for is_seq, numeric in found if is_seq]
        return bool(seqs), bool(seqs) and all(seqs)
    return False, False


def _yaml_value(text: str) -> Any:
    """Numbers as Python reads them (``1e3`` too), else YAML (``true``, ``[1, 2]``), else text."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_flag_text(text: str, tp: Any) -> Any:
    """The plain (YAML-like) value of a flag's text for a field of type ``tp``.

    Strings stay as given; lists are ``a,b,c`` or YAML ``[a, b]``; numeric pairs may be
    ``8x2``; the rest is read as YAML.
    """
    if _strings_only(tp):
        return text
    is_seq, numeric = _has_sequence(tp)
    stripped = text.strip()
    if is_seq and not stripped.startswith(("[", "{")):
        parts = [p for p in re.split(r"[,\s]+", stripped) if p]
        if numeric and len(parts) == 1 and re.fullmatch(r"\d+(x\d+)+", parts[0].lower()):
            parts = parts[0].lower().split("x")
        sequence = _optional_of(tp) or tp
        if len(parts) > 1 or typing.get_origin(sequence) in (list, tuple):
            if _text_items(sequence):
                return parts
            return [_yaml_value(p) for p in parts]
    return _yaml_value(stripped)


def _text_items(tp: Any) -> bool:
    """True when ``tp`` is a list/tuple of strings (its items are taken as they are)."""
    items = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return typing.get_origin(tp) in (list, tuple) and all(_strings_only(a) for a in items)


def _variable_list(tp: Any) -> bool:
    """True for ``list[X]`` and ``tuple[X, ...]`` (either or None), not fixed-length tuples."""
    tp = _optional_of(tp) or tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    return origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis)


class _Accumulate(argparse.Action):
    """A repeated list flag: the first occurrence replaces the params value, later ones
    extend it (the attribute is absent until the flag is given, see :func:`add_flags`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        items = list(values) if isinstance(values, (list, tuple)) else [values]
        given = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, items if given is None else [*given, *items])


def _flag_type(tp: Any, flag: str):
    def convert(text: str) -> Any:
        if not _strings_only(tp) and _yaml_value(text.strip()) is None:
            # overrides skip None, so the flag would silently do nothing
            raise argparse.ArgumentTypeError(
                f"{text!r}: a flag cannot set null; set it in params.yaml")
        value = parse_flag_text(text, tp)
        try:
            _convert(value, tp, flag)
        except ParamsError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from None
        return value

    return convert


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
    skip: Sequence[str] = (),
) -> None:
    """One override flag per field of settings dataclass ``cls`` (except ``skip`` keys),
    shaped by the field's metadata (``help``, ``flags``, ``metavar``; see the module text).

    A flag that is not given leaves no attribute behind: :func:`flag_overrides` takes only
    the flags given. (A flag cannot set a setting to null: edit params.yaml for that.)
    """
    hints = typing.get_type_hints(cls)
    for key, field in _fields_by_key(cls).items():
        if key in skip:
            continue
        tp = hints[field.name]
        flag = flag_name(key)
        aliases = field.metadata.get("flags", ())
        names = [flag, *([aliases] if isinstance(aliases, str) else aliases)]
        kwargs: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS,
                                  "help": field.metadata.get("help")}
        if tp is bool or _optional_of(tp) is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        literal = tp if typing.get_origin(tp) is typing.Literal else None
        if literal is not None:
            kwargs["choices"] = typing.get_args(literal)
        else:
            kwargs["type"] = _flag_type(tp, flag)
            kwargs["metavar"] = field.metadata.get("metavar", key.upper())
        if _variable_list(tp):
            kwargs["action"] = _Accumulate
        parser.add_argument(*names, **kwargs)


def _optional_of(tp: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else None
    return None


def flag_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings given as flags (made by :func:`add_flags`), keyed by params key."""
    given = vars(args)
    return {key: given[key] for key in _fields_by_key(cls) if key in given}
