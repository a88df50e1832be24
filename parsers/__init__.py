"""Readers for the files the pipeline consumes (PDS3 QUBEs, VIRTIS, Sentinel-2).

This package has no network code and does not import torch. It also holds the few
cross-cutting helpers every layer shares: :mod:`parsers.errors` (the one user-error
type), :mod:`parsers.errors` (one-line error reporting for every ``python -m`` tool) and
:mod:`parsers.atomic` (write-to-temporary-then-rename).
"""

__version__ = "0.1.0"
