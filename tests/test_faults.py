"""Full disks, flipped bits and a second run on the same output (issue 16).

A full disk is simulated without root: the stage runs in a child process with a file-size
limit (``RLIMIT_FSIZE``, what ``ulimit -f`` sets), so its writes fail with EFBIG exactly where
ENOSPC would strike. The stage must print one line naming the file and the bytes it needs,
leave the previous good output untouched and no partial file behind.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest
import yaml

from parsers.locks import lock_path
from pipeline import demo
from pipeline.synthetic.datasets import build, virtis_download_dir
from pipeline.synthetic.psa_archive import build_psa_archive
from pipeline.synthetic.servers.files import serve_directory

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "RO-C-VIRTIS-3-ESC1-MTP010-V2.0"
LEFTOVERS = (".tmp", ".part", ".lock")

if resource.getrlimit(resource.RLIMIT_FSIZE)[1] != resource.RLIM_INFINITY:
    pytest.skip("a hard file-size limit is already set here", allow_module_level=True)


def run_tool(args: list[str], cwd: Path, limit: int | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m ...`` in a child process, with a file-size limit of ``limit`` bytes."""
    def limited() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1",
                "NO_PROXY": "127.0.0.1,localhost", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, preexec_fn=limited, timeout=300,
                          check=False)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith(LEFTOVERS))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_params(path: Path, overrides: dict) -> Path:
    params = demo.derive_params(demo.load_repo_params(), overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# --- disk full -----------------------------------------------------------------------------

def test_disk_full_during_a_download(tmp_path: Path) -> None:
    root = tmp_path / "psa"
    build_psa_archive(root, datasets=[DATASET], products_per_dataset=2, bands=64, samples=32,
                      lines=64, seed=1)
    out = tmp_path / "raw"
    params = write_params(tmp_path / "params.yaml", {"download_pds.retries": 1})
    with serve_directory(root) as url:
        args = ["pipeline.download_pds", "--params", str(params), "--base-url", url,
                "--dataset", DATASET, "--max-files", "2", "--out", str(out), "--no-progress"]
        assert run_tool(args, tmp_path).returncode == 0
        before = snapshot(out)
        victim = sorted(p for p in out.rglob("*.CAL"))[1]
        size = victim.stat().st_size
        victim.unlink()
        proc = run_tool(args, tmp_path, limit=size // 3)
    line = error_line(proc)
    assert f"{victim}: file too large after " in line, line
    assert f"needs {size:,} bytes" in line and "no partial file was kept" in line
    assert "file-size limit" in line
    after = snapshot(out)
    del before[victim.relative_to(out).as_posix()]
    assert after == before  # the other product and the manifest are untouched
    assert not leftovers(tmp_path)


def test_flipped_byte_in_a_download_is_caught_by_locked_and_verify(tmp_path: Path) -> None:
    root = tmp_path / "psa"
    build_psa_archive(root, datasets=[DATASET], products_per_dataset=2, bands=16, samples=16,
                      lines=16, seed=2)
    ws = tmp_path / "ws"
    out = ws / "data/raw/virtis"
    params = write_params(tmp_path / "params.yaml", {"download_pds.retries": 1})
    with serve_directory(root) as url:
        args = ["pipeline.download_pds", "--params", str(params), "--base-url", url,
                "--out", str(out), "--no-progress"]
        assert run_tool([*args, "--dataset", DATASET, "--max-files", "2"], tmp_path) \
            .returncode == 0
        product = sorted(out.rglob("*.CAL"))[0]
        good = product.read_bytes()
        flip(product, len(good) - 7)
        rel = product.relative_to(ws).as_posix()
        found = run_tool(["pipeline.verify", str(ws), "--no-load"], tmp_path)
        assert found.returncode == 1
        assert found.stdout.splitlines() == [
            f"{rel}: sha256 differs from data/raw/virtis/manifest.json (damaged?)"]
        lock = tmp_path / "lock.json"
        lock.write_bytes((out / "manifest.json").read_bytes())
        again = run_tool([*args, "--locked", str(lock)], tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"warning: {product}: its sha256 differs from the expected one (damaged or " \
           "changed since it was fetched?); fetching it again" in again.stderr
    assert product.read_bytes() == good
    assert run_tool(["pipeline.verify", str(ws), "--no-load"], tmp_path).returncode == 0


TILES = ["pipeline.tiles", "--params", "params.yaml", "--dataset", "virtis", "--split",
         "data/split/virtis.json", "--stats", "data/stats/virtis.json", "--out",
         "data/tiles/virtis", "--no-progress"]
TRAIN = ["training.train", "--params", "params.yaml", "--dataset", "virtis", "--tiles",
         "data/tiles/virtis", "--out", "models/virtis", "--no-progress"]


def in_process(args: list[str], ws: Path) -> int:
    """``main(argv)`` of the tool ``args[0]``, run in this process with ``ws`` as the cwd."""
    import importlib

    main = importlib.import_module(args[0]).main
    cwd = Path.cwd()
    os.chdir(ws)
    try:
        return main(args[1:])
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw products, split, statistics and tiles of a small VIRTIS data set."""
    ws = tmp_path_factory.mktemp("faults") / "ws"
    virtis_download_dir(ws / "data/raw/virtis", n=4, bands=24, lines=40, samples=32)
    write_params(ws / "params.yaml", {"datasets.virtis.tiles.size": 16, "split.seed": 3,
                                      "stats.workers": 1, "train.workers": 0,
                                      "train.device": "cpu", "train.epochs": 2,
                                      "train.batch_size": 4,
                                      "train.checkpoint_every": 1,
                                      "datasets.virtis.train.latent": [8, 2],
                                      "datasets.virtis.train.widths": [8, 8, 8, 8]})
    for args in (["pipeline.split", "--params", "params.yaml", "--dataset", "virtis",
                  "--products", "data/raw/virtis", "--out", "data/split/virtis.json"],
                 ["pipeline.stats", "--params", "params.yaml", "--dataset", "virtis",
                  "--split", "data/split/virtis.json", "--out", "data/stats/virtis.json",
                  "--no-progress"], TILES):
        assert in_process(args, ws) == 0
    return ws


@pytest.fixture
def ws(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built workspace."""
    return Path(shutil.copytree(built, tmp_path / "ws"))


def test_disk_full_during_a_tile_write(ws: Path) -> None:
    tiles = ws / "data/tiles/virtis"
    before = snapshot(tiles)
    size = (tiles / "train.h5").stat().st_size
    proc = run_tool(TILES, ws, limit=size // 2)
    line = error_line(proc)
    assert "error: data/tiles/virtis/train.h5: file too large after " in line, line
    needs = int(line.split("needs about ")[1].split(" bytes")[0].replace(",", ""))
    assert size / 2 < needs < size * 2, line  # extrapolated from the products written
    assert "the previous file is untouched" in line
    assert snapshot(tiles) == before and not leftovers(ws)


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_write(ws: Path) -> None:
    pytest.importorskip("torch")
    assert in_process([*TRAIN, "--stop-after-epoch", "1"], ws) == 0
    models = ws / "models/virtis"
    last = (models / "last.pt").read_bytes()
    proc = run_tool(TRAIN, ws, limit=len(last) // 2)
    line = error_line(proc)
    assert "resuming from models/virtis/last.pt after epoch 1 of 2" in proc.stdout
    assert ".pt: file too large after " in line and "needs about " in line, line
    assert (models / "last.pt").read_bytes() == last and not leftovers(ws)


# --- flipped bits --------------------------------------------------------------------------

def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def flip_tile(path: Path, index: int) -> None:
    with h5py.File(path, "r") as f:
        chunk = f["tiles"].id.get_chunk_info(index)
    flip(path, chunk.byte_offset + chunk.size // 2)


@pytest.mark.parametrize("workers", [0, 2])
def test_flipped_bit_in_a_tile_names_the_file_and_the_tile(tmp_path: Path, workers: int):
    torch = pytest.importorskip("torch")
    from training.data import TileDataset, TileReadError

    path, *_ = build(tmp_path)
    flip_tile(path, 3)
    loader = torch.utils.data.DataLoader(TileDataset(path), batch_size=2, num_workers=workers)
    with pytest.raises(TileReadError) as err:
        for _ in loader:
            pass
    message = str(err.value)
    assert message.startswith(f"{path}: tile 3: its stored bytes fail the fletcher32 checksum")
    assert "\n" not in message


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_training_on_a_damaged_tile_file_is_one_line(ws: Path, capsys) -> None:
    pytest.importorskip("torch")
    flip_tile(ws / "data/tiles/virtis/train.h5", 2)
    assert in_process(TRAIN, ws) == 2
    line = one_error(capsys)
    assert "data/tiles/virtis/train.h5: tile 2: its stored bytes fail" in line, line


def test_truncated_checkpoint_is_refused_by_resume(ws: Path, capsys) -> None:
    pytest.importorskip("torch")
    assert in_process([*TRAIN, "--stop-after-epoch", "1"], ws) == 0
    last = ws / "models/virtis/last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size * 2 // 3])
    capsys.readouterr()
    assert in_process([*TRAIN, "--resume"], ws) == 2
    assert one_error(capsys).endswith(
        "last.pt: not a readable checkpoint: truncated, damaged or not a torch.save archive; "
        "cannot resume from it")
    # Without --resume, the damaged file is named, then training starts afresh.
    assert in_process(TRAIN, ws) == 0
    err = capsys.readouterr().err
    assert "warning: models/virtis/last.pt: not a readable checkpoint" in err
    assert "starting afresh" in err


def test_flipped_bit_in_a_checkpoint_fails_its_crc(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from parsers.errors import ProductError
    from training.models import build_model, load_checkpoint, save_checkpoint

    model = build_model(arch="linear", bands=3, tile=8, latent=5, widths=(2, 3, 4, 5))
    path = save_checkpoint(tmp_path / "best.pt", {"model": model, "epoch": 1})
    data = path.read_bytes()
    weights = data.index(model.state_dict()["encoder.0.weight"].numpy().tobytes()[:16])
    flip(path, weights + 3)
    assert torch.load(path, weights_only=True)["epoch"] == 1  # torch alone loads it silently
    with pytest.raises(ProductError, match=r"best\.pt: damaged: record .*data/\d+ fails its "
                                           r"CRC-32 check"):
        load_checkpoint(path)


# --- two runs, one output ------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from parsers.locks import output_lock
    with output_lock(sys.argv[1], "python -m pipeline.tiles (the first run)"):
        Path(sys.argv[2]).write_text("ready")
        time.sleep(float(sys.argv[3]))
""")


def test_second_run_on_the_same_output_fails_or_waits(ws: Path, tmp_path: Path) -> None:
    before = snapshot(ws / "data/tiles/virtis")
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "data/tiles/virtis", str(ready),
                               "4"], cwd=ws, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        line = error_line(run_tool(TILES, ws))
        assert f"data/tiles/virtis: another run is writing it: PID {holder.pid} on " in line
        assert "(python -m pipeline.tiles (the first run))" in line
        assert snapshot(ws / "data/tiles/virtis") == before
        waited = run_tool(TILES, ws, env={"SSCNET_LOCK_WAIT": "120"})
        assert waited.returncode == 0, waited.stderr
        assert holder.poll() is not None  # it ran only after the first one finished
    finally:
        holder.kill()
        holder.wait()
    assert not (ws / lock_path(Path("data/tiles/virtis"))).exists() and not leftovers(ws)


def test_every_stage_takes_the_lock_of_its_output() -> None:
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    modules = {entry.get("do", entry)["cmd"].split()[2] for entry in spec.values()}
    assert len(modules) == 7
    for module in modules:
        source = (REPO_ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
        assert "lock_output(" in source, module


@pytest.mark.slow
def test_verify_a_workspace_with_raw_tiles_and_checkpoints(ws: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    assert in_process(TRAIN, ws) == 0
    good = run_tool(["pipeline.verify", str(ws), "--progress"], tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "all good (5 raw products, 2 tile files, 0 dvc.lock outputs, 2 checkpoints)" in \
        good.stderr and "verify: 100%" in good.stderr
    product = sorted((ws / "data/raw/virtis/DATA").glob("*.QUB"))[0]
    flip(product, product.stat().st_size - 10)
    flip_tile(ws / "data/tiles/virtis/test.h5", 1)
    best = ws / "models/virtis/best.pt"
    best.write_bytes(best.read_bytes()[:-50])
    bad = run_tool(["pipeline.verify", str(ws)], tmp_path)
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        f"data/raw/virtis/DATA/{product.name}: sha256 differs from "
        "data/raw/virtis/manifest.json (damaged?)",
        "data/tiles/virtis/test.h5: tile 1: its stored bytes fail the fletcher32 checksum (or "
        "do not decompress): the file is damaged; rebuild it with the tiles stage (HDF5: Can't "
        "synchronously read data (filter returned failure during read))",
        "models/virtis/best.pt: not a readable checkpoint: truncated, damaged or not a "
        "torch.save archive",
    ]
    assert bad.stderr.strip().splitlines()[-1].startswith("verify: 3 problem(s) in ")
    shutil.rmtree(ws / "data")
    shutil.rmtree(ws / "models")
    empty = run_tool(["pipeline.verify", str(ws)], tmp_path)
    assert empty.returncode == 2 and "no pipeline outputs here" in empty.stderr
