"""Every third-party module the repository imports is installed by ``pip install -e '.[all]'``.

A clean clone installs only what pyproject.toml declares, so a module that is merely present in
a developer's environment passes every local run and fails CI. This test reads the imports of
all Python files (library, benchmarks, tests) and checks each third-party one against the
declared requirements and what they pull in.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

REPO_ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"parsers", "pipeline", "training", "tests", "benchmarks"}
FOLDERS = ("parsers", "pipeline", "training", "benchmarks", "tests")


def _name(requirement: str) -> str:
    """The normalised distribution name at the start of a requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def declared() -> set[str]:
    """Distributions named in pyproject.toml (core and every extra), without self-references."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs.extend(extra)
    return {_name(r) for r in reqs} - {_name(project["name"])}


def closure(names: set[str]) -> set[str]:
    """``names`` plus everything their installed metadata requires, transitively."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(_name(r) for r in md.requires(name) or [])
        except md.PackageNotFoundError:
            continue
    return seen


def third_party_imports() -> dict[str, str]:
    """Top-level third-party module -> one file that imports it."""
    found: dict[str, str] = {}
    for folder in FOLDERS:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    mods = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    top = mod.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, path.relative_to(REPO_ROOT).as_posix())
    return found


def test_every_imported_package_is_declared_in_pyproject() -> None:
    provides = md.packages_distributions()
    installable = closure(declared())
    missing = []
    for module, where in sorted(third_party_imports().items()):
        dists = {_name(d) for d in provides.get(module, [])}
        if not dists & installable:
            missing.append(f"{module} (imported by {where}; installed from {sorted(dists) or '?'})")
    assert not missing, "not installed by pip install -e '.[all]': " + "; ".join(missing)


def test_the_check_sees_a_missing_declaration() -> None:
    assert "constriction" in declared(), "the entropy coder must be a declared dependency"
    assert "affine" in closure({"rasterio"}) and "affine" not in declared()
