"""The three Sentinel-2 download backends behind one interface.

Each backend module (``stac``, ``cdse``, ``dhus``) defines a class implementing the
:class:`~pipeline.sentinel2_backends.common.Backend` protocol:

- ``name`` (the ``--backend`` value), ``service`` (a human name used in error messages) and
  ``service_url``;
- ``search(query) -> SearchResult``: every product matching a :class:`Query` plus counts of
  the features passed over; the stage sorts by sensing time and applies ``max_products``
  and ``selection`` (:mod:`pipeline.selection`);
- ``locate(entries) -> list[Product]``: the products of a locked manifest, found again;
- ``fetch(products, out_dir, on_done) -> list[Fetched | Failed]``: files written under
  ``out_dir`` (atomically, resumable, retried), one result per product in order.

:func:`make_backend` picks one by name. The shared types and helpers live in
:mod:`pipeline.sentinel2_backends.common`.
"""

from __future__ import annotations

from typing import Any

from pipeline.sentinel2_backends.common import Backend

BACKENDS = ("stac", "cdse", "dhus")


def make_backend(name: str, settings: Any, bands: tuple[str, ...]) -> Backend:
    """The backend object for ``name`` ('stac', 'cdse' or 'dhus')."""
    if name == "stac":
        from pipeline.sentinel2_backends.stac import StacBackend

        return StacBackend(settings, bands)
    if name == "cdse":
        from pipeline.sentinel2_backends.cdse import CdseBackend

        return CdseBackend(settings, bands)
    if name == "dhus":
        from pipeline.sentinel2_backends.dhus import DhusBackend

        return DhusBackend(settings, bands)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
