"""Which products a download stage keeps when more match than it may fetch.

Both download stages (PDS and Sentinel-2) choose the same way, from a list that is already in
a deterministic order (index order for PDS, sensing time then id for Sentinel-2):

- ``first``: the first ``k`` items;
- ``spread``: ``k`` items evenly spaced over the list, first and last included (index
  ``round(i * (n - 1) / (k - 1))`` for ``i = 0 .. k-1``), so a time-ordered list is sampled
  over its whole date range.

The same inputs always give the same choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

T = TypeVar("T")
Selection = Literal["first", "spread"]
SELECTIONS: tuple[str, ...] = ("first", "spread")


def pick(items: Sequence[T], k: int | None, how: str = "spread") -> list[T]:
    """At most ``k`` of ``items`` (all when ``k`` is None), chosen by ``how``, order kept."""
    if how not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, not {how!r}")
    items = list(items)
    if k is None or len(items) <= k:
        return items
    if k <= 0:
        return []
    if how == "first" or k == 1:
        return items[:k]
    n = len(items)
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in picks]
