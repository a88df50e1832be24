"""The offline demo: the real DVC pipeline, end to end, against archives served on 127.0.0.1.

``python -m pipeline.demo [--workdir DIR]`` writes a small synthetic ESA-PSA-style VIRTIS archive
and a synthetic Sentinel-2 STAC catalogue under ``DIR/archive``, serves both on 127.0.0.1, builds a
DVC workspace under ``DIR/workspace`` (a copy of ``dvc.yaml``, the project's packages and a
``params.yaml`` derived from the repository's with the base URLs pointed at the local servers and
tiny sizes), ``git init`` + ``dvc init`` + one commit there (so ``dvc exp run`` works too) and runs
``dvc repro``. Every stage, including the real download code, runs. The last line printed is the
path of the evaluation report. The VIRTIS model is trained with ``objective: rate_distortion``
(one point, lambda from params.yaml), so its report shows the real rate of the ``.sscz`` file
``training.compress`` writes; the Sentinel-2 model follows the paper's recipe.

The workspace keeps all stage outputs (tiles, checkpoints, metrics, plots, reports) and a git
commit of the result; afterwards, ``cd DIR/workspace`` and try ``dvc status``, ``dvc metrics
show``, ``dvc plots show`` or ``dvc exp run -S datasets.sentinel2.train.latent=500``. Only a
change to a download section needs the servers again (they live as long as the demo): rerun the
demo with
the same ``--workdir`` instead. Such a rerun serves on new ports, so the downloads run again.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from parsers.errors import UserError, cli_entry
from pipeline.params import SOURCES

#: The checkout this module belongs to (it holds dvc.yaml and params.yaml).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: What a workspace needs besides params.yaml: the pipeline definition and the code that
#: the stages' ``deps`` name (so DVC hashes exactly the code the stages run).
PROJECT_FILES = ("dvc.yaml", ".dvcignore")
PACKAGES = ("parsers", "pipeline", "training")

#: Placeholders in override values, filled with the local servers' URLs.
PDS_URL = "{pds_url}"
STAC_URL = "{stac_url}"


@dataclass(frozen=True)
class ArchiveSizes:
    """Size of the synthetic archives the demo serves."""

    virtis_products: int = 4
    virtis_bands: int = 432
    virtis_samples: int = 64
    virtis_lines: int = 96
    sentinel2_items: int = 6              # every third item is 60 % cloudy: 4 pass the filter
    sentinel2_size: int = 192


#: Demo settings, as dotted keys of params.yaml. Every key must already exist in the
#: repository's params.yaml (derive_params refuses new keys: the stage loaders are strict).
DEMO_OVERRIDES: dict[str, Any] = {
    "download_pds.base_url": PDS_URL,
    "download_pds.max_files": 4,
    "download_pds.jobs": 2,
    "download_pds.retries": 2,
    "download_sentinel2.stac_url": STAC_URL,
    "download_sentinel2.max_products": 4,
    "download_sentinel2.workers": 2,
    "download_sentinel2.retries": 2,
    "download_sentinel2.window_px": 0,     # the whole (small) synthetic item
    "split.seed": 3,                   # seed 1 puts 3 of the 4 demo Sentinel-2 products in test
    "stats.workers": 2,
    "datasets.virtis.tiles.size": 32,           # 432 x 32 x 32 tiles
    "datasets.sentinel2.tiles.size": 48,        # the paper's 9 x 48 x 48
    # the synthetic SCL is ~36 % cloud everywhere
    "datasets.sentinel2.tiles.max_invalid_fraction": 0.5,
    "train.epochs": 40,         # ~1 min on 2 cores: the tiny models learn something
    "train.lr": 1.0e-3,         # few steps: learn faster than the paper's 1e-4
    "train.batch_size": 8,
    "train.workers": 0,         # no DataLoader processes for a few dozen tiles
    "train.checkpoint_every": 1,
    "train.device": "cpu",
    "datasets.virtis.train.latent": [128, 4],   # conv latent for 32 px tiles (ratio 216:1)
    "datasets.virtis.train.objective": "rate_distortion",  # one entropy-coded point
    "datasets.virtis.train.widths": [16, 16, 32, 32],
    "datasets.sentinel2.train.widths": [16, 16, 32, 32],
    "evaluate.device": "cpu",
    "evaluate.rates": [0.5, 2.0],           # two JPEG 2000 rate searches
    "evaluate.requant_bits": [8],
    "evaluate.pca": [[3, 8]],
    "evaluate.jpegxl_distances": [1.0],
    "evaluate.jpeg8_qualities": [95],
    "evaluate.sz3_relative": [1.0e-3],
    "evaluate.calibration_tiles": 1,
    "evaluate.structural_baselines": False,  # SSIM for SSCNet only
    "evaluate.fsim": False,
    "datasets.virtis.evaluate.max_tiles": 2,                  # 432-band baselines are slow on CPU
    "datasets.sentinel2.evaluate.max_tiles": 8,
}

#: Even smaller settings for the end-to-end test (applied on top of DEMO_OVERRIDES).
TEST_OVERRIDES: dict[str, Any] = {
    "download_pds.max_files": 3,
    "datasets.virtis.tiles.size": 16,
    "train.epochs": 1,
    "datasets.virtis.train.latent": [64, 2],
    "datasets.virtis.train.widths": [8, 8, 16, 16],
    "datasets.sentinel2.train.widths": [8, 8, 16, 16],
    "datasets.sentinel2.train.latent": 200,
}

DEMO_SIZES = ArchiveSizes()
TEST_SIZES = ArchiveSizes(
    virtis_products=3, virtis_bands=432, virtis_samples=32, virtis_lines=48,
    sentinel2_items=4, sentinel2_size=144,
)


def derive_params(
    base: Mapping[str, Any], overrides: Mapping[str, Any], urls: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Return a deep copy of ``base`` with dotted ``overrides`` applied.

    String values may hold ``{pds_url}`` / ``{stac_url}``, filled from ``urls``. A dotted key
    that does not already exist in ``base`` is an error, so the demo can never invent a setting
    that the stages' strict loaders would reject.
    """
    params = copy.deepcopy(dict(base))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node: Any = params
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise UserError(f"demo override '{dotted}': params.yaml has no section '{part}'")
            node = node[part]
        if not isinstance(node, dict) or leaf not in node:
            raise UserError(f"demo override '{dotted}': params.yaml has no key '{leaf}'")
        if isinstance(value, str) and urls:
            value = value.format(**urls)
        node[leaf] = value
    return params


def build_archives(
    root: Path, sizes: ArchiveSizes = DEMO_SIZES, seed: int = 0
) -> tuple[Path, Path]:
    """Write the synthetic PSA archive and STAC catalogue under ``root``; return both roots."""
    from pipeline.synthetic.psa_archive import build_psa_archive
    from pipeline.synthetic.servers.stac import build_stac_catalogue

    psa_root = root / "psa"
    stac_root = root / "stac"
    # A finished archive of the same sizes is reused (a rerun in the same --workdir).
    stamp = f"{sizes!r} seed={seed}\n"

    def fresh(folder: Path) -> bool:
        marker = folder / ".complete"
        if marker.is_file() and marker.read_text(encoding="utf-8") == stamp:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True

    if fresh(psa_root):
        build_psa_archive(
            psa_root, datasets=[DEMO_DATASET], channels=["VIRTIS_M_VIS"],
            products_per_dataset=sizes.virtis_products, bands=sizes.virtis_bands,
            samples=sizes.virtis_samples, lines=sizes.virtis_lines, seed=seed,
        )
        (psa_root / ".complete").write_text(stamp, encoding="utf-8")
    if fresh(stac_root):
        build_stac_catalogue(stac_root, n_items=sizes.sentinel2_items, size=sizes.sentinel2_size,
                             seed=seed)
        (stac_root / ".complete").write_text(stamp, encoding="utf-8")
    return psa_root, stac_root


#: The data set the synthetic archive holds (one mission phase, calibrated, like the real default).
DEMO_DATASET = "RO-C-VIRTIS-3-ESC1-MTP010-V2.0"


@contextlib.contextmanager
def serving(psa_root: Path, stac_root: Path) -> Iterator[dict[str, str]]:
    """Serve both archives on 127.0.0.1 for the duration of the block; yield their URLs."""
    from pipeline.synthetic.servers.files import serve_directory
    from pipeline.synthetic.servers.stac import serve_stac_catalogue

    with serve_directory(psa_root) as pds_url, serve_stac_catalogue(stac_root) as stac_url:
        yield {"pds_url": str(pds_url), "stac_url": str(stac_url)}


@functools.cache
def python_bindir() -> Path:
    """A folder whose ``python`` is this interpreter: its own folder (a venv's ``bin``), or,
    when that has no ``python`` or another one (e.g. only ``python3``), a temporary folder
    with a ``python`` link to ``sys.executable``."""
    here = Path(sys.executable).parent
    found = shutil.which("python", path=str(here))
    if found and os.path.samefile(found, sys.executable):
        return here
    shim = Path(tempfile.mkdtemp(prefix="sscnet-demo-python-"))
    (shim / "python").symlink_to(sys.executable)
    return shim


def stage_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``dvc`` and its stage commands.

    ``python`` in the stage commands must be this interpreter (the one with the project's
    dependencies), loopback traffic must bypass proxies, and DVC must not phone home.
    """
    env = dict(os.environ if base is None else base)
    bindir = str(python_bindir())
    rest = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *rest])
    for key in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in env.get(key, "").split(",") if h]
        env[key] = ",".join(dict.fromkeys([*hosts, "127.0.0.1", "localhost"]))
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "sscnet demo")
    env.setdefault("GIT_AUTHOR_EMAIL", "demo@localhost")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run(cmd: Sequence[str], cwd: Path, quiet: bool = False) -> None:
    stdout = subprocess.DEVNULL if quiet else None
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, env=stage_env(), stdout=stdout, check=False)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]}: not found (the demo needs git and DVC installed)") from None
    if proc.returncode != 0:
        raise UserError(f"{' '.join(cmd[:4])} failed in {cwd} (exit {proc.returncode})")


def dvc(workspace: Path, *args: str, quiet: bool = False) -> None:
    """Run ``dvc ARGS`` (this interpreter's DVC) in ``workspace``."""
    _run([sys.executable, "-m", "dvc", *args], workspace, quiet=quiet)


def create_workspace(
    workspace: Path, params: Mapping[str, Any], source_root: Path = REPO_ROOT
) -> Path:
    """Create (or refresh) a DVC workspace: code + dvc.yaml + ``params``, git + DVC initialised.

    An existing workspace keeps its DVC cache and outputs; only the code, dvc.yaml and
    params.yaml are refreshed and committed, so DVC decides what to rerun.
    """
    if not (source_root / "dvc.yaml").is_file():
        raise UserError(f"{source_root}: no dvc.yaml here; run the demo from a project checkout")
    workspace.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy2(source_root / name, workspace / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package in PACKAGES:
        shutil.rmtree(workspace / package, ignore_errors=True)
        shutil.copytree(source_root / package, workspace / package, ignore=ignore)
    (workspace / "params.yaml").write_text(
        "# Written by python -m pipeline.demo: the repository's params.yaml with demo sizes\n"
        "# and the base URLs pointed at archives served on 127.0.0.1.\n"
        + yaml.safe_dump(dict(params), sort_keys=False),
        encoding="utf-8",
    )
    # Cached outputs get their .gitignore entries from DVC itself. Outputs with cache: false
    # (metrics, plots) must stay visible to git: experiments commit them, and `dvc exp show`
    # / `dvc metrics diff` read them from those commits.
    (workspace / ".gitignore").write_text("__pycache__/\n*.pyc\n/plots/\n", encoding="utf-8")
    if not (workspace / ".git").exists():
        _run(["git", "init", "-q", "-b", "main"], workspace)
    if not (workspace / ".dvc").exists():
        dvc(workspace, "init", "-q")
        # No phoning home from an offline demo; stage dvc.lock and .gitignore edits in git.
        (workspace / ".dvc" / "config").write_text(
            "[core]\n    analytics = false\n    check_update = false\n    autostage = true\n",
            encoding="utf-8",
        )
    # Custom plot templates (the rate-distortion overlay) live beside DVC's config.
    templates = source_root / ".dvc" / "plots"
    if templates.is_dir():
        shutil.copytree(templates, workspace / ".dvc" / "plots", dirs_exist_ok=True)
    commit_all(workspace, "demo workspace: code, dvc.yaml, params.yaml")
    return workspace


def commit_all(workspace: Path, message: str) -> None:
    """``git add -A`` + commit in the workspace (nothing when nothing changed)."""
    _run(["git", "add", "-A"], workspace)
    status = subprocess.run(
        ["git", "diff", "--cached", "--quiet"], cwd=workspace, env=stage_env(), check=False
    )
    if status.returncode != 0:
        _run(["git", "commit", "-q", "-m", message], workspace)


def report_paths(workspace: Path) -> list[Path]:
    """The evaluation reports the pipeline wrote, one per source (those that exist)."""
    return [p for s in SOURCES if (p := workspace / "eval" / s / "report.md").is_file()]


def summary_lines(workspace: Path) -> list[str]:
    """One line per SSCNet model: rate and distortion from ``eval/<source>/metrics.json`` (the
    fp32 latent of a paper-recipe model, or the real .sscz rate of an entropy-coded one)."""
    keys = ("bpppc", "latent_bpppc", "header_share", "cr_values", "psnr", "ssim", "sam")
    lines = []
    for source in SOURCES:
        path = workspace / "eval" / source / "metrics.json"
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(metrics, dict):
            continue
        models = [("SSCNet fp32", metrics.get("sscnet_fp32"))]
        rd = metrics.get("sscnet_rd")
        if isinstance(rd, dict):
            models.append((f"SSCNet entropy-coded ({rd.get('setting')}), real rate", rd))
        for name, m in models:
            if isinstance(m, dict):
                parts = [f"{k} {m[k]:.4g}" for k in keys if isinstance(m.get(k), (int, float))]
                lines.append(f"demo: {source}: {name}: " + ", ".join(parts))
    return lines


def load_repo_params(source_root: Path = REPO_ROOT) -> dict[str, Any]:
    """The repository's params.yaml as a dict."""
    from pipeline.params import read_params_file

    return read_params_file(source_root / "params.yaml")


def default_workdir() -> Path:
    """A fresh folder in the current directory (``demo-workdir-*`` is git-ignored)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path.cwd() / f"demo-workdir-{stamp}"


@contextlib.contextmanager
def demo_session(
    workdir: Path,
    overrides: Mapping[str, Any] = DEMO_OVERRIDES,
    sizes: ArchiveSizes = DEMO_SIZES,
    source_root: Path = REPO_ROOT,
) -> Iterator[Path]:
    """Build the archives, serve them and prepare the workspace; yield it while serving."""
    workdir = workdir.resolve()
    psa_root, stac_root = build_archives(workdir / "archive", sizes)
    with serving(psa_root, stac_root) as urls:
        params = derive_params(load_repo_params(source_root), overrides, urls)
        yield create_workspace(workdir / "workspace", params, source_root)


@cli_entry("python -m pipeline.demo")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.demo",
        description="Run the whole DVC pipeline offline, against synthetic archives on 127.0.0.1.",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None,
        help="folder for the archives and the DVC workspace (default: a fresh ./demo-workdir-*)",
    )
    parser.add_argument(
        "--tiny", action="store_true",
        help="the end-to-end test's even smaller settings (about a minute less)",
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or default_workdir()
    overrides = {**DEMO_OVERRIDES, **TEST_OVERRIDES} if args.tiny else DEMO_OVERRIDES
    sizes = TEST_SIZES if args.tiny else DEMO_SIZES
    started = time.monotonic()
    print(f"demo: building synthetic archives and the DVC workspace under {workdir}", flush=True)
    with demo_session(workdir, overrides, sizes) as workspace:
        print(f"demo: dvc repro in {workspace}", flush=True)
        dvc(workspace, "repro")
    # A baseline commit (dvc.lock + uncached metrics) for `dvc exp show` / `dvc metrics diff`.
    commit_all(workspace, "demo: dvc repro")
    dvc(workspace, "plots", "show", "-o", "plots", quiet=True)
    reports = report_paths(workspace)
    if not reports:
        raise UserError(f"{workspace}: dvc repro finished but wrote no eval/*/report.md")
    elapsed = time.monotonic() - started
    for line in summary_lines(workspace):
        print(line)
    plots = workspace / "plots" / "index.html"
    print(f"demo: finished in {elapsed:.0f} s; all plots (dvc plots show): {plots}")
    print(f"demo: try: cd {workspace} && dvc status && dvc metrics show && "
          "dvc exp run -S datasets.virtis.train.lambda=100")
    # The VIRTIS report last: it is the hyperspectral case the project is about.
    for path in reports[::-1][:-1]:
        print(f"demo: report: {path}")
    print(reports[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
