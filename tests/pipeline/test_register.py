"""Local data sets: register real cubes, refuse mixed ones, check hashes on rebuild, select
bands, cut strips, and let the split stage register a data set's files itself."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from parsers.cube import open_cube
from pipeline import register, split
from pipeline.manifest import Manifest
from pipeline.products import open_product, select_bands

pytest.importorskip("rasterio")

AVIRIS = "hyperspectral/avirisng"
RDN = "ang20170323t202244_rdn_7000-7010"
VIMS = "cassini_vims"


@pytest.fixture(autouse=True)
def _quiet_vims_layout_warnings():
    # The vendored VIMS files are shorter than their labels say (complete data; the reader
    # warns). Not what these tests are about.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*FILE_RECORDS x RECORD_BYTES.*")
        yield


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_register_real_envi_chunk(realdata, tmp_path: Path, capsys) -> None:
    folder = realdata(AVIRIS)
    out = tmp_path / "ds"
    # The glob matches the header and the binary: one product of two files.
    assert register.main(["aviris", str(folder / "*rdn*"), "--out", str(out)]) == 0
    assert "1 product(s), 2 file(s), 425 bands (envi, float32)" in capsys.readouterr().out
    manifest = Manifest.read(out / "manifest.json")
    assert manifest.source == "aviris" and manifest.registered
    assert {f.product_id for f in manifest.files} == {RDN}
    for entry in manifest.files:
        path = manifest.path_of(out, entry)
        assert path.parent == folder.resolve() or path.parent == folder
        assert entry.size == path.stat().st_size
        assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        meta = entry.meta
        assert (meta["format"], meta["bands"], meta["lines"], meta["samples"]) == \
            ("envi", 425, 10, 10)
        assert meta["wavelength_nm"][0] == pytest.approx(376.86)
        assert meta["wavelength_nm"][-1] == pytest.approx(2500.54)
    first = (out / "manifest.json").read_bytes()
    assert register.main(["aviris", str(folder / "*rdn*"), "--out", str(out)]) == 0
    assert (out / "manifest.json").read_bytes() == first  # a rerun: the identical manifest


def test_mixed_bands_are_refused_naming_the_odd_file(realdata, tmp_path: Path,
                                                     capsys) -> None:
    out = tmp_path / "ds"
    args = ["aviris", str(realdata(AVIRIS) / "*"), "--out", str(out)]
    assert register.main(args) == 2
    err = one_line_error(capsys)
    assert "ang20170323t202244_obs_7000-7010: 11 bands, the first file has 3" in err
    assert "--allow-mixed" in err and not out.exists()
    assert register.main([*args, "--allow-mixed"]) == 0
    manifest = Manifest.read(out / "manifest.json")
    assert sorted({f.meta["bands"] for f in manifest.files}) == [3, 11, 425]


def test_real_vims_cubes_differ_in_wavelengths(realdata, tmp_path: Path, capsys) -> None:
    out = tmp_path / "vims"
    args = ["vims", str(realdata(VIMS) / "*.qub"), "--out", str(out)]
    assert register.main(args) == 2
    err = one_line_error(capsys)
    assert "v1815243432_1.qub: band 351 is at 5122.5 nm, the first file's at 5108 nm" in err
    assert register.main([*args, "--allow-mixed"]) == 0
    assert len({f.product_id for f in Manifest.read(out / "manifest.json").files}) == 2


@pytest.mark.parametrize(("pattern", "message"), [
    ("nothing*.hdr", "nothing*.hdr: no such file"),
    (f"{VIMS}/v1487096932_1.lbl", "data file not found: v1487096932_1.qub"),
    ("SOURCES.md", "unknown format; tried PDS3 QUBE"),
])
def test_bad_inputs_are_one_line(realdata, tmp_path: Path, capsys, pattern: str,
                                 message: str) -> None:
    out = tmp_path / "ds"
    assert register.main(["x", str(realdata(".") / pattern), "--out", str(out)]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def _copy_chunk(realdata, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for suffix in ("", ".hdr"):
        shutil.copy(realdata(AVIRIS) / f"{RDN}{suffix}", dest / f"{RDN}{suffix}")
    return dest


def _params(tmp_path: Path, entry: str, split_section: str = "") -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(f"split: {{seed: 1, test_fraction: 0.5{split_section}}}\n"
                    f"datasets:\n  aviris:\n{entry}")
    return path


def test_split_checks_every_hash_of_a_registered_data_set(realdata, tmp_path: Path,
                                                          capsys) -> None:
    cubes = _copy_chunk(realdata, tmp_path / "cubes")
    out = tmp_path / "raw"
    assert register.main(["aviris", str(cubes / "*.hdr"), "--out", str(out)]) == 0
    params = _params(tmp_path, f"    kind: cube\n    products: {out}\n", ", strip_lines: 5")
    argv = ["--params", str(params), "--dataset", "aviris", "--out", str(tmp_path / "s.json")]
    assert split.main(argv) == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    strips = sorted(e["strip"] for side in ("train", "test") for e in doc[side])
    assert strips == [[0, 5], [5, 10]] and len(doc["train"]) == len(doc["test"]) == 1
    data = bytearray((cubes / RDN).read_bytes())
    data[1000] ^= 0xFF  # one flipped byte in the radiance
    (cubes / RDN).write_bytes(bytes(data))
    assert split.main(argv) == 2
    err = one_line_error(capsys)
    assert f"{RDN}: sha256 differs from the manifest" in err and "register them again" in err


def test_split_registers_the_files_a_data_set_names(realdata, tmp_path: Path) -> None:
    """The dvc.yaml path: the params entry names files; the split stage registers them."""
    cubes = _copy_chunk(realdata, tmp_path / "cubes")
    params = _params(tmp_path, f"    kind: cube\n    products: {cubes}\n    files: ['*.hdr']\n",
                     ", strip_lines: 4")
    out = tmp_path / "s.json"
    assert split.main(["--params", str(params), "--dataset", "aviris", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    entries = doc["train"] + doc["test"]
    assert {e["product_id"] for e in entries} == {RDN}
    assert sorted(e["strip"] for e in entries) == [[0, 4], [4, 10]]  # last one: the remainder
    assert all(e["path"] == f"{RDN}.hdr" for e in entries)


def test_band_selection_and_strip_views_read_the_right_values(realdata) -> None:
    path = realdata(AVIRIS) / f"{RDN}.hdr"
    cube = open_cube(path).load()  # (425, 10, 10)
    whole = open_product("cube", path)
    assert whole.wavelength_unit == "nm" and whole.bands == 425
    # 400-1000 nm without the 760 nm oxygen band: indices from the header's wavelengths.
    select = {"wavelength_nm": [400.0, 1000.0], "exclude_nm": [[755.0, 770.0]]}
    idx = select_bands(select, whole)
    wl = np.asarray(whole.wavelengths)
    expected = np.flatnonzero((wl >= 400) & (wl <= 1000) & ~((wl >= 755) & (wl <= 770)))
    assert idx == expected.tolist() and 100 < len(idx) < 130
    view = open_product("cube", path, {"select": select}, lines=(5, 10))
    assert (view.bands, view.lines, view.samples) == (len(idx), 5, 10)
    data, valid = view.read_block(1, 3)
    np.testing.assert_array_equal(data, cube[expected][:, 6:8])
    assert valid is None and view.line_numbers.tolist() == [5, 6, 7, 8, 9]
    picked = open_product("cube", path, {"select": {"indices": [424, 0]}})
    np.testing.assert_array_equal(picked.read_block(0, 10)[0], cube[[424, 0]])
    np.testing.assert_allclose(picked.wavelengths, wl[[424, 0]])


@pytest.mark.parametrize(("select", "message"), [
    ({"indices": [425]}, "band index 425 outside 0..424"),
    ({"wavelength_nm": [3000.0, 4000.0]}, "no band lies in the selected wavelengths"),
])
def test_impossible_band_selections_are_one_line_errors(realdata, select: dict,
                                                        message: str) -> None:
    from parsers.errors import UserError

    with pytest.raises(UserError, match=message):
        open_product("cube", realdata(AVIRIS) / f"{RDN}.hdr", {"select": select})
