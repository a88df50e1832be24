"""The shared reader CLI: ``python -m parsers.virtis`` and ``python -m parsers.pds3``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parsers import virtis
from parsers.cli import pds3 as pds3_cli
from parsers.cli import virtis as virtis_cli
from pipeline.synthetic.virtis_products import write_virtis_product

REPO_ROOT = Path(__file__).resolve().parents[2]

MAINS = {"virtis": virtis_cli.main, "pds3": pds3_cli.main}


@pytest.fixture(scope="module")
def cal(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "V1_00377420372.CAL"
    return write_virtis_product(path, kind="cal", bands=432, samples=64, lines=32, seed=1)


@pytest.mark.parametrize("module", ["virtis", "pds3"])
def test_summary(cal, capsys, module):
    assert MAINS[module]([str(cal)]) == 0
    out = capsys.readouterr().out
    assert "V1_00377420372.CAL" in out
    assert "432 x 32 x 64" in out and "BIP" in out and "REAL 4 B big-endian" in out
    assert "1 backplane, 3 bottomplanes" in out and "corners not stored" in out
    assert "valid fraction" in out and "band  wavelength" in out
    if module == "virtis":
        assert "VIRTIS_M_VIS  level 3" in out and "SCET" in out


def test_json_has_the_documented_keys(cal, capsys):
    assert virtis_cli.main([str(cal), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("bands", "lines", "samples", "core_type", "suffix_items", "valid_fraction",
                "channel", "processing_level", "wavelength_range"):
        assert key in info
    assert (info["bands"], info["lines"], info["samples"]) == (432, 32, 64)
    assert info["channel"] == "VIRTIS_M_VIS" and info["processing_level"] == 3
    assert info["suffix_items"] == {"backplane": 1, "sideplane": 0, "bottomplane": 3}
    assert 0.99 < info["valid_fraction"] < 1.0
    lo, hi = info["wavelength_range"]
    assert 0.2 < lo < 0.3 and 1.0 < hi < 1.1


def test_export_npy_and_h5(cal, tmp_path, capsys):
    out = tmp_path / "cube.npy"
    assert virtis_cli.main([str(cal), "--export", str(out)]) == 0
    want = virtis.read(cal).load()
    np.testing.assert_array_equal(np.load(out), want)
    h5py = pytest.importorskip("h5py")
    out5 = tmp_path / "cube.h5"
    assert virtis_cli.main([str(cal), "--export", str(out5)]) == 0
    with h5py.File(out5, "r") as h5:
        np.testing.assert_array_equal(h5["core"][...], want)
        assert h5["backplanes"].shape == (1, 32, 64)
        assert h5["bottomplanes"].shape == (3, 432, 64)
        assert h5["wavelengths"].shape == (432,)
        assert json.loads(h5.attrs["label"])["QUBE"]["CORE_ITEMS"] == [432, 64, 32]
        assert h5.attrs["PRODUCT_ID"] == "V1_00377420372.CAL"


def test_png_and_spectrum(cal, tmp_path, capsys):
    png = tmp_path / "b.png"
    assert virtis_cli.main([str(cal), "--band", "100", "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert pds3_cli.main([str(cal), "--spectrum", "3", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 433 and lines[0].startswith("#")
    assert virtis_cli.main([str(cal), "--spectrum", "3", "4"]) == 0
    wl, value = capsys.readouterr().out.strip().splitlines()[1].split()
    assert 0.2 < float(wl) < 0.3 and float(value) > 0


def test_real_vims_summary(realdata, capsys):
    path = realdata("cassini_vims/v1815243432_1.qub")
    assert pds3_cli.main([str(path), "--json"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["interleave"] == "BIL" and info["suffix_layout"]["corners_stored"]
    assert info["suffix_items"] == {"backplane": 4, "sideplane": 1, "bottomplane": 0}
    assert abs(info["valid_fraction"] - (1 - 6144 / (352 * 4 * 16))) < 1e-12
    assert "FILE_RECORDS" in captured.err  # the warning is one line on stderr


@pytest.mark.parametrize("module", ["virtis", "pds3"])
def test_bad_input_is_one_stderr_line_and_no_output(tmp_path, capsys, module):
    trunc = write_virtis_product(tmp_path / "V1_x.CAL", kind="cal", bands=432, samples=64,
                                 lines=4, truncate_bytes=200_000)
    out = tmp_path / "never.npy"
    cases = [
        [str(tmp_path / "missing.CAL")],
        [str(trunc), "--export", str(out)],
        [str(trunc), "--json"],
        [str(tmp_path)],
    ]
    (tmp_path / "empty.QUB").write_bytes(b"")
    cases.append([str(tmp_path / "empty.QUB")])
    (tmp_path / "junk.QUB").write_bytes(bytes(range(256)) * 20)
    cases.append([str(tmp_path / "junk.QUB")])
    for argv in cases:
        assert MAINS[module](argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0], (argv, captured.err)
        assert "Traceback" not in captured.err
    assert not out.exists()
    assert not list(tmp_path.glob(".never*"))  # no temporary left behind


def test_usage_errors(cal, tmp_path, capsys):
    for argv in ([str(cal), "--png", str(tmp_path / "x.png")],
                 [str(cal), "--band", "999", "--png", str(tmp_path / "x.png")],
                 [str(cal), "--export", str(tmp_path / "x.txt")],
                 [str(cal), "--spectrum", "99", "0"],
                 [str(cal), "--bogus"]):
        assert virtis_cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
    assert not list(tmp_path.iterdir())


def test_module_entry_points_run(cal):
    proc = subprocess.run([sys.executable, "-m", "parsers.pds3", str(cal), "--json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["bands"] == 432
    proc = subprocess.run([sys.executable, "-m", "parsers.virtis", "/nonexistent/V1_a.CAL"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "python -m parsers.virtis: error: V1_a.CAL: file not found"
