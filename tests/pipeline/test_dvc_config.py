"""dvc.yaml and params.yaml agree with the code: stages, params sections, deps (fast)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import itertools
import re
from pathlib import Path

import pytest
import yaml

from parsers.settings import param_key
from pipeline.params import (
    DATASET_STAGES,
    SOURCES,
    DatasetParams,
    dataset_names,
    load_dataset,
    load_section,
    load_stage,
    read_params_file,
)

dvc_repo = pytest.importorskip("dvc.repo")

REPO_ROOT = Path(__file__).resolve().parents[2]

PARAMS = REPO_ROOT / "params.yaml"
MATRIX_STAGES = DATASET_STAGES
EXPECTED_STAGES = {"download_pds", "download_sentinel2"} | {
    f"{stage}@{name}" for stage in MATRIX_STAGES for name in dataset_names(PARAMS)
}

#: params section -> (module, settings dataclass) that loads it.
SECTION_CLASSES: dict[str, tuple[str, str]] = {
    "download_pds": ("pipeline.download_pds", "DownloadPdsParams"),
    "download_sentinel2": ("pipeline.download_sentinel2", "DownloadSentinel2Params"),
    "datasets.sentinel2.reader": ("parsers.sentinel2", "Sentinel2Settings"),
    "split": ("pipeline.split", "SplitParams"),
    "stats": ("pipeline.stats", "StatsParams"),
    "tiles": ("pipeline.tiles", "TileParams"),
    "train": ("training.train", "TrainParams"),
    "evaluate": ("training.evaluate", "EvaluateParams"),
}
#: The settings class of each per-data-set stage (its common section, its data set layers).
STAGE_CLASSES = {stage: SECTION_CLASSES[stage] for stage in MATRIX_STAGES}

#: Project modules that cannot change a stage's outputs (error reporting, atomic renames,
#: the params loader): they are deliberately not stage deps, so editing them reruns nothing.
INFRASTRUCTURE = {
    "parsers/__init__.py", "pipeline/__init__.py", "training/__init__.py",
    "parsers/errors.py", "parsers/atomic.py", "parsers/settings.py", "pipeline/params.py",
    "parsers/locks.py", "parsers/integrity.py",  # who may write, what is detected: no output
}
PACKAGES = ("parsers", "pipeline", "training")


@pytest.fixture(scope="module")
def stages():
    repo = dvc_repo.Repo(str(REPO_ROOT))
    try:
        yield {stage.name: stage for stage in repo.index.stages}
    finally:
        repo.close()


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _module_file(module: str) -> str:
    return module.replace(".", "/") + ".py"


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: runs only when the module is the entry point."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _walk_imported_code(tree: ast.AST):
    """Every node of ``tree`` except those under a ``__main__`` guard."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not _is_main_guard(child))


def project_imports(relpath: str, seen: set[str] | None = None) -> set[str]:
    """Project modules (repo-relative .py paths) that ``relpath`` imports, transitively."""
    seen = set() if seen is None else seen
    if relpath in seen:
        return seen
    seen.add(relpath)
    tree = ast.parse((REPO_ROOT / relpath).read_text(encoding="utf-8"))
    for node in _walk_imported_code(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] not in PACKAGES:
                continue
            for candidate in (_module_file(name), name.replace(".", "/") + "/__init__.py"):
                if (REPO_ROOT / candidate).is_file():
                    project_imports(candidate, seen)
    return seen


def test_dvc_yaml_defines_every_stage(stages) -> None:
    assert set(stages) == EXPECTED_STAGES


def test_no_stage_is_frozen(stages) -> None:
    assert [name for name, stage in stages.items() if stage.frozen] == []


def test_stage_params_exist_in_params_yaml(stages) -> None:
    params = read_params_file(PARAMS)
    for name, stage in stages.items():
        for dep in stage.params:
            assert Path(dep.def_path).name == "params.yaml", name
            for key in dep.params:
                try:
                    _lookup(params, key)
                except KeyError:
                    pytest.fail(f"stage {name}: params key '{key}' missing from params.yaml")


def test_every_params_section_is_used_by_a_stage(stages) -> None:
    used = {key for stage in stages.values() for dep in stage.params for key in dep.params}
    top = set(read_params_file(PARAMS))
    assert top <= {key.split(".")[0] for key in used}


def _class(module: str, name: str) -> type:
    if module.startswith("training."):
        pytest.importorskip("torch")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("section", sorted(SECTION_CLASSES))
def test_params_section_loads_with_its_dataclass(section: str) -> None:
    cls = _class(*SECTION_CLASSES[section])
    assert dataclasses.is_dataclass(cls)
    settings = load_section(cls, section, PARAMS)
    # Not only no unknown keys (the loader checks that) but no missing ones either:
    # params.yaml spells out every setting, so `dvc params diff` shows all of them.
    written = set(_lookup(read_params_file(PARAMS), section))
    fields = {param_key(f) for f in dataclasses.fields(settings) if f.init}
    assert written == fields, f"{section}: missing {sorted(fields - written)}"


@pytest.mark.parametrize("name", dataset_names(PARAMS))
def test_every_data_set_entry_is_complete_and_loads_in_every_stage(name: str) -> None:
    """A data set spells out every key dvc.yaml names (DVC refuses a missing params key), and
    each of its stage layers passes that stage's strict loader on top of the common one."""
    entry = read_params_file(PARAMS)["datasets"][name]
    fields = {f.name for f in dataclasses.fields(DatasetParams)}
    assert set(entry) == fields, f"datasets.{name}: missing {sorted(fields - set(entry))}"
    assert load_dataset(name, PARAMS).kind in ("virtis", "sentinel2", "cube")
    for stage, (module, cls) in STAGE_CLASSES.items():
        load_stage(_class(module, cls), stage, name, PARAMS)


def test_a_data_set_stage_reads_only_common_sections_and_its_own_entry(stages) -> None:
    """So that adding, editing or removing one data set never reruns another's chain."""
    for name, stage in stages.items():
        if "@" not in name:
            continue
        dataset = name.split("@", 1)[1]
        keys = [key for dep in stage.params for key in dep.params]
        for key in keys:
            assert key in MATRIX_STAGES or key.startswith(f"datasets.{dataset}."), (name, key)
        products = load_dataset(dataset, PARAMS).products
        for dep in stage.deps:
            path = str(dep.def_path)
            if path.endswith(".py") or Path(path).name == "params.yaml":
                continue
            assert dataset in (*Path(path).parts, Path(path).stem) or path == products, \
                (name, path)


def test_built_in_data_sets_come_from_their_download_stages() -> None:
    outs = {"virtis": "data/raw/virtis", "sentinel2": "data/raw/sentinel2"}
    for name in SOURCES:
        assert load_dataset(name, PARAMS).products == outs[name]
        assert load_dataset(name, PARAMS).kind == name


def test_stage_deps_are_exact_code_closure(stages) -> None:
    """Each stage depends on its module and everything it imports from the project."""
    for name, stage in stages.items():
        match = re.search(r"python -m ([\w.]+)", stage.cmd)
        assert match, f"{name}: command is not `python -m ...`: {stage.cmd}"
        module_file = _module_file(match.group(1))
        code_deps = {str(Path(d.def_path)) for d in stage.deps if d.def_path.endswith(".py")}
        for dep in code_deps:
            assert (REPO_ROOT / dep).is_file(), f"{name}: dep {dep} does not exist"
        needed = project_imports(module_file) - INFRASTRUCTURE
        assert module_file in code_deps, f"{name}: {module_file} missing from deps"
        assert needed <= code_deps, f"{name}: deps lack {sorted(needed - code_deps)}"
        extra = code_deps - needed
        assert not extra, f"{name}: deps on code the stage does not import: {sorted(extra)}"


def test_each_stage_declares_outputs(stages) -> None:
    for name, stage in stages.items():
        assert stage.outs, f"{name} has no outputs"
        if name.startswith(("train@", "evaluate@")):
            assert any(out.metric for out in stage.outs), f"{name} has no metrics"
            assert any(out.plot for out in stage.outs), f"{name} has no plots"


def test_top_level_rd_plot_overlays_both_sources() -> None:
    config = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    plots = {name: spec for entry in config["plots"] for name, spec in entry.items()}
    rd = plots["rate_distortion"]
    assert rd["x"] == "bpppc"
    assert set(rd["y"]) == {f"eval/{s}/rd.csv" for s in SOURCES}


def test_dag_chains_each_source(stages) -> None:
    """download -> split -> stats -> tiles -> train -> evaluate, per source, as DVC sees it.

    (`dvc repro --dry` cannot show this on a fresh clone: it stops at the first stage whose
    upstream output is missing, treeverse/dvc#9021. The end-to-end test checks --dry.)
    """
    import networkx as nx

    repo = dvc_repo.Repo(str(REPO_ROOT))
    try:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        names = {stage: stage.name for stage in graph.nodes}
        edges = {(names[a], names[b]) for a, b in graph.edges}
        assert nx.is_directed_acyclic_graph(graph)
    finally:
        repo.close()
    for source, download in (("virtis", "download_pds"), ("sentinel2", "download_sentinel2")):
        chain = [download] + [f"{stage}@{source}" for stage in MATRIX_STAGES]
        for upstream, downstream in itertools.pairwise(chain):
            assert (downstream, upstream) in edges, f"{downstream} does not depend on {upstream}"
    other = {(a, b) for a, b in edges if a.split("@")[-1] != b.split("@")[-1]
             and "@" in a and "@" in b}
    assert not other, f"stages of one source depend on the other: {sorted(other)}"


@pytest.mark.parametrize("tiny", [False, True], ids=["demo", "tiny"])
def test_demo_params_load_with_every_stage(tmp_path: Path, tiny: bool) -> None:
    """The demo's derived params.yaml passes every stage's strict loader (no pipeline run)."""
    pytest.importorskip("torch")
    from pipeline import demo

    overrides = {**demo.DEMO_OVERRIDES, **(demo.TEST_OVERRIDES if tiny else {})}
    urls = {"pds_url": "http://127.0.0.1:1/", "stac_url": "http://127.0.0.1:2/"}
    params = demo.derive_params(read_params_file(PARAMS), overrides, urls)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    assert params["download_pds"]["base_url"] == urls["pds_url"]
    assert params["download_sentinel2"]["stac_url"] == urls["stac_url"]
    for section, (module, name) in SECTION_CLASSES.items():
        load_section(_class(module, name), section, path)
    for name in dataset_names(path):
        for stage, (module, cls) in STAGE_CLASSES.items():
            load_stage(_class(module, cls), stage, name, path)


def test_demo_refuses_unknown_override() -> None:
    from parsers.errors import UserError
    from pipeline import demo

    with pytest.raises(UserError, match=re.escape("datasets.virtis.tiles.sise")):
        demo.derive_params(read_params_file(PARAMS), {"datasets.virtis.tiles.sise": 3})


def test_demo_stage_env_puts_this_python_first() -> None:
    import sys

    from pipeline import demo

    env = demo.stage_env({"PATH": "/usr/bin:/bin", "NO_PROXY": "example.org"})
    first = Path(env["PATH"].split(":")[0])
    assert (first / "python").samefile(sys.executable)
    assert "127.0.0.1" in env["NO_PROXY"].split(",") and "example.org" in env["NO_PROXY"]
