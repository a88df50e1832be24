"""The docs are part of the clone: every link and every path they show exists in it.

- every relative Markdown link in README.md and docs/*.md resolves to a file of the repository,
  and its ``#anchor``, when it has one and points into a Markdown file, to a heading there;
- every repository path the README shows (in backticks or in a code block) exists;
- every ``python -m parsers.X`` / ``pipeline.X`` / ``training.X`` in README.md and docs/*.md
  names a module of the repository;
- the README stays a front door (at most 300 lines), its test command is the one CI runs, and
  no page points at the team's reference folder beside the checkout, which a clone does not have;
- docs/README.md lists every page of docs/, and every ``docs/*.md`` a source file cites exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
PATH_PREFIXES = ("parsers/", "pipeline/", "training/", "tests/", "benchmarks/", "docs/")
TOP_FILES = ("params.yaml", "dvc.yaml", "pyproject.toml")
PACKAGES = ("parsers", "pipeline", "training")
OUTSIDE = "../" + "shared"  # the reference folder beside the team's checkout (spelt apart so
# that tests/test_architecture.py, which forbids the path in tests, does not flag this check)

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
# A module name; not followed by ".<placeholder>" (python -m pipeline.<stage> is a template).
_PYTHON_M = re.compile(r"python3? -m ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?![.\w<])")


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _prose(text: str) -> str:
    """The text without fenced code blocks (links inside code are not links)."""
    return _FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_prose(path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    text = _INLINE_CODE.sub("", _prose(path.read_text(encoding="utf-8")))
    links = _LINK.findall(text)
    return [u for u in links if not re.match(r"^[a-z][a-z0-9+.-]*:", u, re.IGNORECASE)]


def _candidate(token: str) -> str | None:
    """The repository path a backticked or code token shows, or None if it shows none."""
    token = token.strip().strip("\"'(),;:").split("::")[0]
    if token in TOP_FILES:
        return token
    if not token.startswith(PATH_PREFIXES) or " " in token:
        return None
    # A template (docs/<page>.md, tests/data/...): only the part before the placeholder.
    cut = min((i for i in (token.find(c) for c in "<{[$") if i >= 0), default=len(token))
    if "..." in token:
        cut = min(cut, token.find("..."))
    if cut < len(token):
        return token[:cut].rsplit("/", 1)[0] + "/"
    return token


def readme_paths() -> list[str]:
    text = README.read_text(encoding="utf-8")
    tokens = _INLINE_CODE.findall(_prose(text))
    for block in _FENCE.finditer(text):
        tokens.extend(re.split(r"[\s=]+", block.group(0)))
    return sorted({p for p in map(_candidate, tokens) if p})


def _exists(rel: str) -> bool:
    if any(c in rel for c in "*?"):
        return any(REPO_ROOT.glob(rel))
    return (REPO_ROOT / rel).exists()


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for url in relative_links(page):
        target, _, anchor = url.partition("#")
        dest = (page.parent / target).resolve() if target else page
        if not dest.exists() or not dest.is_relative_to(REPO_ROOT):
            broken.append(f"{url}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{url}: no heading #{anchor} in {_rel(dest)}")
    assert not broken, f"{_rel(page)}: " + "; ".join(broken)


def test_every_path_the_readme_shows_exists() -> None:
    paths = readme_paths()
    assert "tests/data/" in paths or any(p.startswith("tests/data/") for p in paths)
    missing = [p for p in paths if not _exists(p)]
    assert not missing, f"README.md shows paths a clone does not have: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_module_run_with_python_m_exists(page: Path) -> None:
    missing = []
    for module in set(_PYTHON_M.findall(page.read_text(encoding="utf-8"))):
        if module.split(".")[0] not in PACKAGES:
            continue
        base = REPO_ROOT.joinpath(*module.split("."))
        if not (base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()):
            missing.append(module)
    assert not missing, f"{_rel(page)} runs modules that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_page_points_outside_the_clone(page: Path) -> None:
    assert OUTSIDE not in page.read_text(encoding="utf-8"), _rel(page)


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move reference material to docs/"
    assert (REPO_ROOT / "docs" / "README.md").is_file()
    assert "docs/README.md" in "\n".join(lines)


def test_readme_test_command_is_what_ci_runs() -> None:
    commands = re.findall(r"^python -m pytest.*$", README.read_text(encoding="utf-8"),
                          re.MULTILINE)
    assert commands, "README.md shows no `python -m pytest` command"
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in commands:  # the whole line, as a user would paste it
        assert command in ci_lines, f".ci/run does not run the README's line {command!r}"


def test_the_checks_catch_what_they_should(tmp_path: Path) -> None:
    assert _candidate("tests/data/SOURCES.md") == "tests/data/SOURCES.md"
    assert _candidate("docs/<page>.md") == "docs/"
    assert _candidate("data/raw/virtis") is None and _candidate("python -m parsers.pds3") is None
    assert _PYTHON_M.findall("python -m pipeline.<stage> and python -m parsers.cube FILE") == [
        "parsers.cube"]
    assert _slug("6. Scene classes (SCL) and the `validity` mask") == \
        "6-scene-classes-scl-and-the-validity-mask"
    page = tmp_path / "page.md"
    page.write_text("# A title\n[x](other.md#a) [y](https://example.org) `[z](no.md)`\n"
                    "```\n[w](inside-code.md)\n```\n", encoding="utf-8")
    assert relative_links(page) == ["other.md#a"]
    assert anchors(page) == {"a-title"}


_DOC_CITATION = re.compile(r"\bdocs/[\w.-]+\.md\b")


def test_every_docs_page_the_code_cites_exists() -> None:
    missing = []
    for pkg in (*PACKAGES, "tests", "benchmarks", "docs"):
        for path in sorted((REPO_ROOT / pkg).rglob("*.py")):
            for cited in set(_DOC_CITATION.findall(path.read_text(encoding="utf-8"))):
                if not (REPO_ROOT / cited).is_file():
                    missing.append(f"{_rel(path)} cites {cited}")
    assert not missing, "; ".join(sorted(missing))


def test_the_docs_index_lists_every_page() -> None:
    index = REPO_ROOT / "docs" / "README.md"
    listed = {(index.parent / u.partition("#")[0]).resolve() for u in relative_links(index)}
    unlisted = [_rel(p) for p in PAGES[1:] if p != index and p.resolve() not in listed]
    assert not unlisted, f"docs/README.md does not list {unlisted}"
