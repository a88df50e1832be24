"""The layering rules of docs/architecture.md, checked on the import graph of the source tree.

- the library never imports its command lines (``parsers.cli``) or the test and demo machinery
  (``pipeline.synthetic``); only the CLI modules, the synthetic package itself and the demo may;
- code under ``if __name__ == "__main__":`` runs only as an entry point and is exempt;
- data flows one way: ``parsers`` imports neither ``pipeline`` nor ``training``, ``pipeline``
  does not import ``training``, and neither imports torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("parsers", "pipeline", "training")
MAY_IMPORT_CLI = ("parsers/cli/",)
MAY_IMPORT_SYNTHETIC = ("pipeline/synthetic/", "pipeline/demo.py")


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imported_modules(path: Path) -> set[str]:
    """Absolute module names ``path`` imports anywhere except under a ``__main__`` guard."""
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        stack.extend(c for c in ast.iter_child_nodes(node) if not _is_main_guard(c))
    return found


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO_ROOT / pkg).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("path", _sources(), ids=_rel)
def test_library_never_imports_cli_or_synthetic(path: Path) -> None:
    rel = _rel(path)
    modules = imported_modules(path)
    if not rel.startswith(MAY_IMPORT_CLI):
        assert not [m for m in modules if _within(m, "parsers.cli")], \
            f"{rel} imports a reader CLI module"
    if not rel.startswith(MAY_IMPORT_SYNTHETIC):
        assert not [m for m in modules if _within(m, "pipeline.synthetic")], \
            f"{rel} imports the synthetic test/demo machinery"


@pytest.mark.parametrize("path", _sources(), ids=_rel)
def test_data_flows_one_way(path: Path) -> None:
    rel = _rel(path)
    modules = {m.split(".")[0] for m in imported_modules(path)}
    if rel.startswith("parsers/"):
        assert not modules & {"pipeline", "training", "torch"}, rel
    if rel.startswith("pipeline/"):
        assert not modules & {"training", "torch"}, rel


def test_reader_modules_reach_their_cli_only_as_entry_points() -> None:
    for reader in ("pds3", "virtis", "sentinel2", "cube"):
        source = (REPO_ROOT / "parsers" / f"{reader}.py").read_text(encoding="utf-8")
        assert f"from parsers.cli.{reader} import main" in source, reader
        imported = imported_modules(REPO_ROOT / "parsers" / f"{reader}.py")
        assert f"parsers.cli.{reader}" not in imported, reader


def test_tests_never_import_conftest_and_never_read_shared() -> None:
    for path in (REPO_ROOT / "tests").rglob("*.py"):
        if path.name == "test_architecture.py":
            continue
        modules = imported_modules(path)
        assert not {m for m in modules if m.split(".")[-1] == "conftest"}, path
        text = path.read_text(encoding="utf-8")
        assert "../shared" not in text and "shared/realdata" not in text, path
