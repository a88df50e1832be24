"""benchmarks/gpu_check.sh end to end on the CPU (--dry-run), and the wheel helper's checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks import fetch_gpu_wheels as W

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_runs_every_phase_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    phases = report["phases"]
    assert {n: p["status"] for n, p in phases.items()} == {
        n: "ok" for n in ("env", "tests", "train_step", "data", "evaluate", "ddp", "profile")}
    assert phases["env"]["torch"] and phases["env"]["dry_run"] is True
    assert phases["tests"]["skipped"] >= 5 and not phases["tests"]["problems"]
    runs = phases["train_step"]["runs"]
    assert {(r["variant"], r["precision"]) for r in runs} == {
        (v, p) for v in ("virtis-conv-1024x8", "sentinel2-linear-1000") for p in ("fp32", "bf16")}
    assert all(r["tiles_per_s"] > 0 and r["step_ms"] > 0 for r in runs)
    for row in phases["data"]["runs"]:
        assert row["loader_alone_tiles_per_s"] > 0
        for cache in ("none", "device"):
            assert len(row[f"train_{cache}"]["tiles_per_s_by_epoch"]) == 2
    for row in phases["evaluate"]["runs"]:
        assert row["exit_code"] == 0 and "cpu" in row["cli_throughput"]
        assert row["fp32"]["encode_mbps"] > 0 and row["bf16"]["precision"] == "bf16 autocast"
    assert phases["ddp"]["backend"] == "gloo" and len(phases["ddp"]["tiles_per_s_by_epoch"]) == 2
    profile = phases["profile"]
    assert profile["top"] and profile["by_category_ms"]["convolution"] > 0
    summary = (out / "summary.txt").read_text()
    assert "DRY RUN" in summary and "DataLoader alone" in summary
    assert (out / "log.txt").stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "log.txt", "summary.txt"]


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal wheel file holding only its METADATA (what the helper reads)."""
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{meta}")
    return path


def test_wheel_helper_finds_unmet_requirements(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(W, "WHEELS", {"alpha": ("1.0", "test"), "beta": ("2.0", "alpha")})
    _wheel(tmp_path, "alpha", "1.0", ["beta>=2", "numpy>=1.20", "gamma; extra == 'all'",
                                      "delta; python_version < '3.11'"])
    assert W.check(tmp_path) == ["missing wheel beta==2.0"]
    _wheel(tmp_path, "beta", "2.0", ["alpha>=1.5", "epsilon"])
    assert W.check(tmp_path) == [
        "beta needs alpha>=1.5, but the list pins alpha 1.0",
        "beta needs epsilon: neither a listed wheel nor in the image"]
    _wheel(tmp_path, "stray", "0.1", [])
    assert W.remove_strays(tmp_path) == ["stray-0.1-py3-none-any.whl"]
