"""The project's user-facing error type.

Anything that is the user's (or the input file's) fault raises :class:`UserError` (or a
subclass) with a one-line message naming the file or value and what is wrong. The CLI
front in :mod:`parsers.cli` prints exactly that line and exits non-zero; no traceback.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """A problem with the input, the parameters or the environment, not a bug."""


class ProductError(UserError):
    """A product file is missing, truncated, malformed or unsupported."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{os.path.basename(self.path) or self.path}: {problem}")


class ParamsError(UserError):
    """A parameter in params.yaml or on the command line is missing or invalid."""
