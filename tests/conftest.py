"""Shared pytest fixtures and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real sample files shipped beside the checkout (never copied into the repository).
REALDATA = Path(os.environ.get("SSCNET_REALDATA", REPO_ROOT.parent / "shared" / "realdata"))

# Tests talk only to servers they start on 127.0.0.1: keep proxies out of the way.
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")


def realdata(relative: str) -> Path:
    """Path of a file under ../shared/realdata; skip the test cleanly when it is absent."""
    path = REALDATA / relative
    if not path.exists():
        pytest.skip(f"real sample data not available: {path}")
    return path
