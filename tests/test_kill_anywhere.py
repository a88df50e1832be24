"""Kill any stage at any moment, rerun it, get the same result (slow).

Every stage of ``dvc.yaml`` (the VIRTIS instance of the matrix stages, both downloads) runs as
its real command in a workspace built from the demo's tiny settings, against the loopback
archives. The stage's process group is SIGKILLed at seeded random moments (``KILL_POINTS``
kills that land, default 5; ``KILL_SEED``): most after the stage took its output lock, i.e.
while it works, one in five anywhere from the start. After every kill, each file under one of
the stage's final output names must be complete. A final rerun must then produce outputs
identical to those of an uninterrupted run (byte for byte; checkpoints: the same weights and
history in deterministic mode; evaluation: everything except measured throughput), and leave
no temporary file, partial download or lock behind. A rerun of ``train`` after a kill that
left an unfinished ``last.pt`` must say it resumes from it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("rasterio")

from parsers.integrity import checkpoint_archive_problem  # noqa: E402
from parsers.locks import lock_path  # noqa: E402
from pipeline import demo  # noqa: E402
from pipeline.verify import check_tile_file  # noqa: E402

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("KILL_POINTS", "5"))
SEED = int(os.environ.get("KILL_SEED", "16"))
STAGES = ("download_pds", "download_sentinel2", "split@virtis", "stats@virtis",
          "tiles@virtis", "train@virtis", "evaluate@virtis")
OVERRIDES = {**demo.DEMO_OVERRIDES, **demo.TEST_OVERRIDES,
             "train.epochs": 3, "train.deterministic": True,
             "evaluate.baselines": False}  # their codecs write nothing of their own
TEMPORARY = re.compile(r"(^\..*\.tmp$)|(\.part$)|(\.lock$)")
TIMING = re.compile(r"mbps|MB/s|throughput|coder.share", re.I)  # coder share: a time ratio


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: list[str]
    outs: list[str]  # outs, metrics and plots of dvc.yaml, relative to the workspace

    @property
    def out_arg(self) -> Path:
        return Path(self.cmd[self.cmd.index("--out") + 1])


def load_stages() -> dict[str, Stage]:
    """The stages of dvc.yaml, ``foreach`` stages expanded for the virtis data set."""
    spec = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    dataset = demo.load_repo_params()["datasets"]["virtis"]
    stages = {}
    for name, entry in spec.items():
        each = "foreach" in entry
        body = entry["do"] if each else entry

        def fill(text: str, each: bool = each) -> str:
            if not each:
                return text
            text = text.replace("${key}", "virtis")
            return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(dataset[m.group(1)]), text)

        outs = [fill(next(iter(o)) if isinstance(o, dict) else o)
                for kind in ("outs", "metrics", "plots") for o in body.get(kind, [])]
        key = f"{name}@virtis" if each else name
        stages[key] = Stage(key, shlex.split(fill(body["cmd"])), outs)
    return stages


@dataclass
class Run:
    rc: int | None
    killed: bool
    seconds: float
    lock_seen: float | None
    log: str


def run_stage(ws: Path, stage: Stage, kill_after: float | None = None,
              after_lock: bool = True) -> Run:
    """Run the stage in ``ws``; SIGKILL its process group ``kill_after`` seconds after it
    took its output lock (``after_lock``) or after it started."""
    env = demo.stage_env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    log = ws / ".stage.log"
    t0 = time.monotonic()
    lock = ws / lock_path(stage.out_arg)
    lock_seen = None
    with open(log, "w") as fh:
        proc = subprocess.Popen(stage.cmd, cwd=ws, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = None if kill_after is None or after_lock else t0 + kill_after
        killed = False
        while proc.poll() is None:
            now = time.monotonic()
            if lock_seen is None and lock.exists():
                lock_seen = now - t0
                if kill_after is not None and after_lock:
                    deadline = now + kill_after
            if deadline is not None and now >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
        rc = proc.wait(timeout=120)
    return Run(rc, killed, time.monotonic() - t0, lock_seen, log.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """Serve the tiny archives and run every stage once, uninterrupted, in ``ref``."""
    root = tmp_path_factory.mktemp("kill")
    psa, stac = demo.build_archives(root / "archive", demo.TEST_SIZES)
    stages = load_stages()
    with demo.serving(psa, stac) as urls:
        params = demo.derive_params(demo.load_repo_params(), OVERRIDES, urls)
        ref = root / "ref"
        ref.mkdir()
        (ref / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        timing = {}
        for name in STAGES:
            done = run_stage(ref, stages[name])
            assert done.rc == 0, done.log[-3000:]
            assert done.lock_seen is not None, f"{name} never took its output lock"
            timing[name] = done
        yield root, ref, stages, timing


def prepare(ws: Path, ref: Path, stages: dict[str, Stage], name: str) -> None:
    """A workspace holding params.yaml and the outputs of the stages before ``name``."""
    ws.mkdir()
    shutil.copy2(ref / "params.yaml", ws / "params.yaml")
    for before in STAGES[:STAGES.index(name)]:
        for out in stages[before].outs:
            src, dst = ref / out, ws / out
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, dst)


def files_under(ws: Path, outs: list[str]) -> dict[str, Path]:
    found = {}
    for out in outs:
        p = ws / out
        for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []):
            if f.is_file() and not TEMPORARY.search(f.name):
                found[f.relative_to(ws).as_posix()] = f
    return found


def remove_outputs(ws: Path, stage: Stage) -> None:
    for out in stage.outs:
        p = ws / out
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# --- "complete" and "the same" -------------------------------------------------------------

def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if not TIMING.search(k)}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def mask_table_timing(text: str, sep: str) -> str:
    """Blank the cells of Markdown table columns whose header names a throughput."""
    out, masked = [], set()
    for line in text.splitlines():
        cells = line.split(sep)
        if TIMING.search(line) and len(cells) > 2:
            masked = {i for i, c in enumerate(cells) if TIMING.search(c)}
        elif len(cells) <= 2:
            masked = set()
        out.append(sep.join("#" if i in masked else c for i, c in enumerate(cells)))
    return "\n".join(out)


def mask_csv_timing(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    masked = {i for i, c in enumerate(rows[0] if rows else []) if TIMING.search(c)}
    return [["#" if i in masked else c for i, c in enumerate(r)] for r in rows]


def same_content(rel: str, got: Path, want: Path) -> bool:
    """Equal bytes, except throughput figures of the evaluation and timings in checkpoints."""
    if got.read_bytes() == want.read_bytes():
        return True
    if rel.startswith("eval/"):
        if got.suffix == ".json":
            return without_timing(json.loads(got.read_text())) == \
                without_timing(json.loads(want.read_text()))
        if got.suffix == ".csv":
            return mask_csv_timing(got.read_text()) == mask_csv_timing(want.read_text())
        if got.suffix == ".md":
            return mask_table_timing(got.read_text(), "|") == \
                mask_table_timing(want.read_text(), "|")
        if got.suffix == ".html":
            def numbers(p: Path) -> str:
                return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", p.read_text())
            return numbers(got) == numbers(want) and got.read_text().rstrip().endswith("</html>")
    if got.suffix == ".pt":
        return same_checkpoint(got, want)
    return False


def same_checkpoint(got: Path, want: Path) -> bool:
    a = torch.load(got, map_location="cpu", weights_only=True)
    b = torch.load(want, map_location="cpu", weights_only=True)
    if a["model"].keys() != b["model"].keys() or a["epoch"] != b["epoch"]:
        return False
    if not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]):
        return False

    def history(c: dict) -> list:
        return [{k: v for k, v in h.items() if k not in ("seconds", "tiles_per_s")}
                for h in c.get("history", [])]

    return history(a) == history(b) and a.get("best") == b.get("best")


def complete(rel: str, path: Path, ref: Path) -> str | None:
    """Why ``path`` (under a final name, seen right after a kill) is not a complete file."""
    want = ref / rel
    if want.is_file() and same_content(rel, path, want):
        return None
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".h5":
            problems = check_tile_file(path)
            return "; ".join(problems) or None
        elif path.suffix == ".pt":
            return checkpoint_archive_problem(path)
        elif path.suffix == ".tsv":
            rows = path.read_text().split("\n")
            if rows[-1] != "" or len({r.count("\t") for r in rows[:-1]}) != 1:
                return "a partial row"
        else:
            return "differs from the uninterrupted run"
    except ValueError as exc:
        return f"does not parse ({exc})"
    return None


def epoch_of(last: Path) -> int | None:
    if checkpoint_archive_problem(last):
        return None
    return int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"])


# --- the test ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STAGES)
def test_kill_anywhere_then_rerun_gives_the_same_result(reference, name: str,
                                                        tmp_path: Path) -> None:
    _root, ref, stages, timing = reference
    stage = stages[name]
    ws = tmp_path / "ws"
    prepare(ws, ref, stages, name)
    rng = random.Random(f"{SEED}:{name}")
    work = timing[name].seconds - timing[name].lock_seen
    landed = attempts = 0
    last = ws / stage.out_arg / "last.pt"
    while landed < KILLS:
        attempts += 1
        assert attempts <= 6 * KILLS, f"{name}: only {landed} of {KILLS} kills landed"
        anywhere = attempts % 5 == 1
        delay = rng.uniform(0, timing[name].seconds if anywhere else work)
        resumable = epoch_of(last) if last.is_file() else None
        run = run_stage(ws, stage, kill_after=delay, after_lock=not anywhere)
        if resumable is not None and 0 < resumable < 3 and not run.killed:
            assert f"after epoch {resumable} of 3" in run.log, run.log[-2000:]
        if not run.killed:
            assert run.rc == 0, run.log[-3000:]
            remove_outputs(ws, stage)  # start over so that the next kill lands mid-run
            continue
        landed += 1
        for rel, path in files_under(ws, stage.outs).items():
            problem = complete(rel, path, ref)
            assert problem is None, f"{name}: after a kill at {delay:.2f} s: {rel}: {problem}"
    final = run_stage(ws, stage)
    assert final.rc == 0, final.log[-3000:]
    got, want = files_under(ws, stage.outs), files_under(ref, stage.outs)
    assert sorted(got) == sorted(want)
    different = [rel for rel in want if not same_content(rel, got[rel], want[rel])]
    assert not different, f"{name}: differs from the uninterrupted run: {different}"
    print(f"{name}: {landed} kills landed in {attempts} runs")
    strays = [p.relative_to(ws).as_posix() for p in ws.rglob("*") if TEMPORARY.search(p.name)]
    assert not strays, f"{name}: left behind {strays}"


def test_training_resumes_from_its_last_checkpoint_and_says_so(reference, tmp_path: Path):
    """A deterministic kill point: the run stopped after epoch 1 (--stop-after-epoch), the
    plain command continues it, logs that, and ends with the uninterrupted weights."""
    _root, ref, stages, _timing = reference
    stage = stages["train@virtis"]
    ws = tmp_path / "ws"
    prepare(ws, ref, stages, "train@virtis")
    first = Stage(stage.name, [*stage.cmd, "--stop-after-epoch", "1"], stage.outs)
    assert run_stage(ws, first).rc == 0
    again = run_stage(ws, stage)
    assert again.rc == 0, again.log[-3000:]
    assert f"resuming from {stage.out_arg / 'last.pt'} after epoch 1 of 3" in again.log
    for rel in ("models/virtis/last.pt", "models/virtis/best.pt"):
        assert same_checkpoint(ws / rel, ref / rel), rel
    assert math.isfinite(json.loads((ws / "models/virtis/dvclive/metrics.json").read_text())
                         ["train"]["loss"])


def test_dvc_repro_after_a_kill_resumes_training(reference, tmp_path: Path) -> None:
    """``dvc repro`` itself killed mid-training: DVC keeps last.pt (persist), the rerun
    takes over the stale locks (DVC's and ours), continues from last.pt and says so."""
    pytest.importorskip("dvc")
    _root, ref, stages, _timing = reference
    ws = tmp_path / "ws"
    prepare(ws, ref, stages, "train@virtis")
    for name in ("dvc.yaml", *demo.PACKAGES):
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, ws / name)
    env = {**demo.stage_env(), "PYTHONPATH": ""}

    def dvc(*args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=ws, env=env,
                                stdout=kw.get("out", subprocess.PIPE),
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    assert dvc("init", "--no-scm", "-q").wait(timeout=120) == 0
    log = ws.parent / "repro.log"
    with open(log, "w") as fh:
        first = dvc("repro", "-s", "train@virtis", out=fh)
        deadline = time.monotonic() + 300
        while not (ws / "models/virtis/last.pt").is_file():  # epoch 1 done (atomic rename)
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert epoch_of(ws / "models/virtis/last.pt") in (1, 2)
    second = dvc("repro", "-s", "train@virtis")
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-3000:]
    assert re.search(r"resuming from models/virtis/last\.pt after epoch [12] of 3", out), out
    for rel in ("models/virtis/last.pt", "models/virtis/best.pt"):
        assert same_checkpoint(ws / rel, ref / rel), rel
