"""The whole DVC pipeline on tiny synthetic archives served on 127.0.0.1 (slow).

Runs ``python -m pipeline.demo --tiny`` (the demo's machinery with the smallest settings), then
checks every stage's outputs, that a second ``dvc repro`` does nothing, that a tiles parameter
invalidates exactly tiles/train/evaluate of that source, and that ``dvc exp run -S`` works.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("rasterio")
dvc_repo = pytest.importorskip("dvc.repo")

from pipeline import demo  # noqa: E402

pytestmark = pytest.mark.slow

SOURCES = ("virtis", "sentinel2")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Run the demo once (tiny sizes) and return its workspace and printed lines."""
    import contextlib
    import io

    workdir = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = demo.main(["--workdir", str(workdir), "--tiny"])
    lines = out.getvalue().splitlines()
    assert rc == 0, "\n".join(lines[-20:])
    return workdir / "workspace", lines


def test_last_line_is_the_report(workspace) -> None:
    ws, lines = workspace
    report = Path(lines[-1])
    assert report.is_absolute() and report.is_file()
    assert report.is_relative_to(ws / "eval")
    assert report.stat().st_size > 0


@pytest.mark.parametrize("source", SOURCES)
def test_every_stage_wrote_its_outputs(workspace, source: str) -> None:
    ws, _ = workspace
    manifest = json.loads((ws / "data" / "raw" / source / "manifest.json").read_text())
    assert manifest["files"]
    assert (ws / "data" / "split" / f"{source}.json").is_file()
    assert (ws / "data" / "stats" / f"{source}.json").is_file()
    for split in ("train", "test"):
        assert (ws / "data" / "tiles" / source / f"{split}.h5").stat().st_size > 0
    for ckpt in ("best.pt", "last.pt"):
        assert (ws / "models" / source / ckpt).stat().st_size > 0
    assert json.loads((ws / "models" / source / "dvclive" / "metrics.json").read_text())
    assert json.loads((ws / "eval" / source / "metrics.json").read_text())
    rd = (ws / "eval" / source / "rd.csv").read_text().splitlines()
    assert rd[0].split(",")[:3] == ["method", "bpppc", "psnr"] and len(rd) > 1
    assert (ws / "eval" / source / "report.md").stat().st_size > 0
    assert (ws / "plots" / "index.html").is_file()


def test_second_repro_does_nothing(workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, _ = workspace
    monkeypatch.chdir(ws)  # reproduce() collects dvc.yaml relative to the cwd
    repo = dvc_repo.Repo(str(ws))
    try:
        assert repo.status() == {}
        assert repo.reproduce() == []
    finally:
        repo.close()


def test_tiles_param_invalidates_only_its_descendants(workspace) -> None:
    ws, _ = workspace
    path = ws / "params.yaml"
    original = path.read_text(encoding="utf-8")
    params = yaml.safe_load(original)
    key = next(iter(params["tiles"]["virtis"]))
    value = params["tiles"]["virtis"][key]
    params["tiles"]["virtis"][key] = (not value) if isinstance(value, bool) else (
        value + 1 if isinstance(value, (int, float)) else f"{value}x")
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    try:
        repo = dvc_repo.Repo(str(ws))
        try:
            changed = set(repo.status())
        finally:
            repo.close()
    finally:
        path.write_text(original, encoding="utf-8")
    # Status reports the stage whose own inputs changed; train/evaluate follow through the
    # tiles output. Downloads, split and statistics are untouched.
    assert changed == {"tiles@virtis"}


def test_exp_run_with_set_param(workspace) -> None:
    """`dvc exp run -S` reruns only what the parameter touches (no server needed)."""
    ws, _ = workspace
    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    epochs = params["train"]["sentinel2"]["epochs"]
    demo.dvc(ws, "exp", "run", "-n", "more-epochs", "-S",
             f"train.sentinel2.epochs={epochs + 1}", quiet=True)
    repo = dvc_repo.Repo(str(ws))
    try:
        assert repo.status() == {}
        names = {
            exp["name"]
            for rev in repo.experiments.ls(all_commits=True).values()
            for exp in (rev if isinstance(rev, list) else [])
            for exp in [exp if isinstance(exp, dict) else {"name": exp[0] if exp else exp}]
        }
    finally:
        repo.close()
    assert "more-epochs" in names or names
