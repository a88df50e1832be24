"""The whole DVC pipeline on tiny synthetic archives served on 127.0.0.1 (slow).

Runs ``python -m pipeline.demo --tiny`` (the demo's machinery with the smallest settings), then
checks every stage's outputs, that a second ``dvc repro`` does nothing, that a tiles parameter
invalidates exactly tiles/train/evaluate of that source, and that ``dvc exp run -S`` works.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("rasterio")
dvc_repo = pytest.importorskip("dvc.repo")

from pipeline import demo  # noqa: E402
from pipeline.params import SOURCES  # noqa: E402

pytestmark = pytest.mark.slow



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
    assert {"method", "bpppc", "psnr"} <= set(rd[0].split(",")) and len(rd) > 1
    assert (ws / "eval" / source / "report.md").stat().st_size > 0
    assert (ws / "plots" / "index.html").is_file()


def test_every_file_written_is_declared(workspace) -> None:
    """Nothing a stage writes escapes DVC: each file lies under a declared out/metric/plot."""
    ws, _ = workspace
    repo = dvc_repo.Repo(str(ws))
    try:
        declared = [Path(out.fs_path) for stage in repo.index.stages for out in stage.outs]
    finally:
        repo.close()
    for top in ("data", "models", "eval"):
        for path in (ws / top).rglob("*"):
            if path.is_file() and path.name != ".gitignore":
                assert any(path == d or d in path.parents for d in declared), path


def test_second_repro_does_nothing(workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, _ = workspace
    monkeypatch.chdir(ws)  # reproduce() collects dvc.yaml relative to the cwd
    repo = dvc_repo.Repo(str(ws))
    try:
        assert repo.status() == {}
        assert repo.reproduce() == []
    finally:
        repo.close()


def test_tiles_param_invalidates_only_its_descendants(
    workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, _ = workspace
    monkeypatch.chdir(ws)  # status() names stages relative to the cwd
    path = ws / "params.yaml"
    original = path.read_text(encoding="utf-8")
    params = yaml.safe_load(original)
    layer = params["datasets"]["virtis"]["tiles"]
    key = next(iter(layer))
    value = layer[key]
    layer[key] = (not value) if isinstance(value, bool) else (
        value + 1 if isinstance(value, (int, float)) else f"{value}x")
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    try:
        repo = dvc_repo.Repo(str(ws))
        try:
            changed = set(repo.status())
        finally:
            repo.close()
        dry = subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "--dry"], cwd=ws, env=demo.stage_env(),
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        path.write_text(original, encoding="utf-8")
    running = set(re.findall(r"Running stage '([^']+)'", dry))
    assert "tiles@virtis" in running
    assert not running & {"download_pds", "download_sentinel2", "split@virtis", "stats@virtis"}
    # Status reports the stage whose own inputs changed; train/evaluate follow through the
    # tiles output. Downloads, split and statistics are untouched.
    assert changed == {"tiles@virtis"}


def test_exp_run_with_set_param(workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc exp run -S` (a latent-size sweep point) reruns train + evaluate of that source only."""
    ws, _ = workspace
    monkeypatch.chdir(ws)
    params = yaml.safe_load((ws / "params.yaml").read_text(encoding="utf-8"))
    latent = params["datasets"]["sentinel2"]["train"]["latent"] // 2
    demo.dvc(ws, "exp", "run", "-n", f"latent{latent}", "-S",
             f"datasets.sentinel2.train.latent={latent}", quiet=True)
    repo = dvc_repo.Repo(str(ws))
    try:
        assert repo.status() == {}
        exps = dict(e for group in repo.experiments.ls().values() for e in group)
    finally:
        repo.close()
    assert f"latent{latent}" in exps
    # The experiment commit carries the uncached metrics, so `dvc exp show` can compare them.
    committed = subprocess.run(
        ["git", "show", f"{exps[f'latent{latent}']}:eval/sentinel2/metrics.json"], cwd=ws,
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(committed)["sscnet_fp32"]
    metrics = json.loads((ws / "eval" / "sentinel2" / "metrics.json").read_text())
    size = params["datasets"]["sentinel2"]["tiles"]["size"]
    assert metrics["sscnet_fp32"]["cr_values"] == pytest.approx(9 * size * size / latent)
