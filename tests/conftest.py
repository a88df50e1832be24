"""Shared pytest fixtures: the vendored real sample files, loopback-only networking."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(__file__).resolve().parent / "data"

# Tests talk only to servers they start on 127.0.0.1: keep proxies out of the way.
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")


def _data_file(relative: str) -> Path:
    path = DATA_DIR / relative
    if not path.exists():  # vendored with the repository: a missing file is a broken checkout
        raise FileNotFoundError(f"tests/data/{relative} is missing (see tests/data/SOURCES.md)")
    return path


@pytest.fixture
def realdata() -> Callable[[str], Path]:
    """``realdata("cassini_vims/v1815243432_1.qub")``: path of a vendored real sample file."""
    return _data_file


@pytest.fixture
def repo_root() -> Path:
    """The repository checkout the tests run from."""
    return REPO_ROOT
