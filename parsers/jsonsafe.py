"""The one converter from the project's values to plain JSON/YAML values.

:func:`json_safe` turns settings dataclasses (keyed by their params keys), label blocks,
named tuples such as label quantities (``{"value": .., "units": ..}``), numpy scalars and
arrays, paths, and non-finite floats (``null``: JSON has no NaN) into dicts, lists, str,
int, float, bool and None, recursively. ``json.dumps(json_safe(x))`` then never fails on
these types and never writes ``NaN``. :func:`from_attr` is the way back for HDF5
attributes the project writes (JSON text, bytes, numpy scalars).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON-able data (see the module docstring)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {str(f.metadata.get("key", f.name)): json_safe(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a named tuple
        return {k: json_safe(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v) for v in items]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def from_attr(value: Any) -> Any:
    """An HDF5 attribute as a plain value: bytes decoded, numpy scalars as Python numbers,
    and JSON lists/objects (how the stages store structured attributes) parsed; a string
    that only looks like JSON stays a string."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and (value[:1] in "[{" or value == "null"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value
