"""Credentials never leave the environment or ~/.netrc (issue 16).

The Sentinel-2 download stage runs as a real command (its stdout and stderr kept as log files)
against the loopback CDSE and DHuS imitations, with a password made up for this test: good
credentials from the environment and from a netrc file, a wrong password, a token service
that cannot be reached, tokens that expire mid-run. Then every byte the runs wrote (outputs,
manifests, logs, and with DVC its lock file and cache) is searched for the password, in the
plain, URL-encoded and HTTP Basic (base64) spellings.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import yaml

pytest.importorskip("rasterio")

from pipeline.synthetic.servers import cdse as fake_cdse
from pipeline.synthetic.servers import dhus as fake_dhus
from pipeline.synthetic.servers.sentinel2_hub import make_products

REPO_ROOT = Path(__file__).resolve().parents[2]
USER = "carol@example.org"
BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    return make_products(tmp_path_factory.mktemp("safe"), 3)


@pytest.fixture
def secret() -> str:
    return f"pw-{secrets.token_hex(8)}-ends"


def spellings(password: str) -> list[bytes]:
    forms = {password, quote(password), quote_plus(password),
             base64.b64encode(f"{USER}:{password}".encode()).decode()}
    return [f.encode() for f in forms]


def run_stage(ws: Path, name: str, args: list[str], env: dict[str, str]) -> int:
    """``python -m pipeline.download_sentinel2 ARGS`` in ``ws``; output kept in logs/NAME."""
    logs = ws / "logs"
    logs.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("CDSE_", "DHUS_")) and k != "NETRC"}
    with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.download_sentinel2", "--params", "params.yaml",
             "--no-progress", *args], cwd=ws, stdout=out, stderr=err, timeout=300, check=False,
            env={**clean, "PYTHONPATH": str(REPO_ROOT), "NO_PROXY": "127.0.0.1,localhost",
                 "NETRC": str(ws.parent / "no-netrc"), **env},
        ).returncode


def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    body = {"download_sentinel2": {"backoff": 0.05, "retries": 2, "max_cloud": 30.0},
            "datasets": {"sentinel2": {"kind": "sentinel2", "products": "data/raw/sentinel2",
                                       "reader": {"bands": BANDS}}}}
    (ws / "params.yaml").write_text(yaml.safe_dump(body))
    return ws


def cdse_args(urls: dict[str, str], out: str) -> list[str]:
    args = ["--backend", "cdse", "--out", out]
    for key, value in urls.items():
        args += ["--" + key.replace("_", "-"), value]
    return args


def leaks(root: Path, passwords: list[str]) -> list[str]:
    """Files under ``root`` holding any spelling of any of ``passwords``."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.relative_to(root)}" for pw in passwords for form in spellings(pw)
                  if form in data]
    return found


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_run_writes_the_password_anywhere(tmp_path: Path, products, secret: str) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    ws = workspace(tmp_path)
    env = {"CDSE_USERNAME": USER, "CDSE_PASSWORD": secret}
    hub = fake_cdse.CdseHub(list(products), user=USER, password=secret,
                            revoke_after_downloads=1)
    with fake_cdse.serve_cdse(hub) as urls:
        assert run_stage(ws, "cdse", cdse_args(urls, "data/cdse"), env) == 0
        assert len(list((ws / "data/cdse").glob("*.zip"))) == 3
        assert run_stage(ws, "cdse-wrong", cdse_args(urls, "data/cdse-wrong"),
                         {**env, "CDSE_PASSWORD": wrong}) == 2
        unreachable = {**urls, "cdse_token_url": f"http://127.0.0.1:{closed_port()}/token"}
        assert run_stage(ws, "cdse-down", cdse_args(unreachable, "data/cdse-down"), env) == 2
    assert "refused the" in (ws / "logs/cdse-wrong.err").read_text()  # it failed on the grant
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {secret}\n")
    netrc.chmod(0o600)
    dhub = fake_dhus.DhusHub(list(products), user=USER, password=secret)
    with fake_dhus.serve_dhus(dhub) as url:
        dhus = ["--backend", "dhus", "--dhus-url", url]
        assert run_stage(ws, "dhus", [*dhus, "--out", "data/dhus"], {"NETRC": str(netrc)}) == 0
        netrc.write_text(f"machine 127.0.0.1 login {USER} password {wrong}\n")
        assert run_stage(ws, "dhus-wrong", [*dhus, "--out", "data/dhus-wrong"],
                         {"NETRC": str(netrc)}) == 2
    assert len(list((ws / "data/dhus").glob("*.zip"))) == 3
    assert leaks(ws, [secret, wrong]) == []
    assert leaks(tmp_path, [wrong]) == ["netrc"]  # the search does find a password


@pytest.mark.slow
def test_dvc_lock_and_cache_never_hold_the_password(tmp_path: Path, products,
                                                    secret: str) -> None:
    pytest.importorskip("dvc")
    ws = workspace(tmp_path)
    env = {"CDSE_USERNAME": USER, "CDSE_PASSWORD": secret, "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(REPO_ROOT), "NO_PROXY": "127.0.0.1,localhost"}
    hub = fake_cdse.CdseHub(list(products), user=USER, password=secret)
    with fake_cdse.serve_cdse(hub) as urls:
        args = cdse_args(urls, "data/raw/sentinel2")
        stage = {"stages": {"download_sentinel2": {
            "cmd": " ".join([sys.executable, "-m", "pipeline.download_sentinel2",
                             "--params", "params.yaml", "--no-progress", *args]),
            "params": ["download_sentinel2"], "outs": ["data/raw/sentinel2"]}}}
        (ws / "dvc.yaml").write_text(yaml.safe_dump(stage))
        for cmd in (["init", "--no-scm", "-q"], ["repro", "-q"]):
            proc = subprocess.run([sys.executable, "-m", "dvc", *cmd], cwd=ws, timeout=300,
                                  capture_output=True, text=True, check=False,
                                  env={**os.environ, **env})
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert not [f for f in spellings(secret) if f.decode() in proc.stdout + proc.stderr]
    assert (ws / "dvc.lock").is_file() and list((ws / ".dvc" / "cache").rglob("*"))
    assert leaks(ws, [secret]) == []
