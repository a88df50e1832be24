"""Split: whole products, deterministic, stable when products are added, leak-free."""

from __future__ import annotations

import json

import pytest

from pipeline.products import ProductRef
from pipeline.split import SplitParams, assign, main, make_split, read_split, scene_key
from pipeline.synthetic.datasets import s2_download_dir, virtis_download_dir


def ids(n, start=0):
    return [f"V1_{i:011d}" for i in range(start, start + n)]


def test_deterministic_and_fraction():
    params = SplitParams(seed=7, test_fraction=0.2)
    a, _ = assign(ids(2000), params)
    b, _ = assign(list(reversed(ids(2000))), params)
    assert a == b
    share = sum(v == "test" for v in a.values()) / len(a)
    assert 0.17 < share < 0.23


def test_adding_products_never_moves_existing_ones():
    params = SplitParams(seed=1, test_fraction=0.3)
    before, _ = assign(ids(50), params)
    after, _ = assign(ids(80), params)
    assert all(after[k] == v for k, v in before.items())


def test_seed_changes_assignment():
    a, _ = assign(ids(200), SplitParams(seed=1))
    b, _ = assign(ids(200), SplitParams(seed=2))
    assert a != b


def test_min_test_forces_lowest_scores_only_when_needed():
    side, forced = assign(["a", "b"], SplitParams(test_fraction=0.0, min_test=1))
    assert sorted(side.values()) == ["test", "train"] and len(forced) == 1
    side, forced = assign(["a"], SplitParams(test_fraction=0.0, min_test=1))
    assert side == {"a": "train"} and forced == []


def test_scene_grouping_keeps_a_tile_together():
    refs = [ProductRef(f"S2A_MSIL2A_201707{d:02d}T101031_N0205_R022_T32TNR_x", None)
            for d in range(1, 30)]
    refs += [ProductRef(f"S2A_MSIL2A_201707{d:02d}T101031_N0205_R022_T33TAB_x", None)
             for d in range(1, 30)]
    split = make_split(refs, "sentinel2", SplitParams(group_by="scene", test_fraction=0.5))
    for side in ("train", "test"):
        groups = {e["group"] for e in split[side]}
        other = {e["group"] for e in split["test" if side == "train" else "train"]}
        assert not groups & other
    assert scene_key("virtis", "I1_00388238696.QUB") == scene_key("virtis", "V1_00388238696.QUB")


@pytest.mark.parametrize("source", ["virtis", "sentinel2"])
def test_cli_writes_readable_split(tmp_path, source, capsys):
    root = (virtis_download_dir if source == "virtis" else s2_download_dir)(tmp_path / "raw")
    params = tmp_path / "params.yaml"
    params.write_text("split:\n  seed: 3\n  test_fraction: 0.3\n")
    out = tmp_path / "split" / f"{source}.json"
    assert main(["--params", str(params), "--source", source, "--products", str(root),
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["seed"] == 3 and doc["products_dir"] == "../raw"
    split = read_split(out, source)
    train = {p.product_id for p in split.train}
    test = {p.product_id for p in split.test}
    assert train and test and not train & test
    assert all(p.path.exists() for p in split.train + split.test)
    if source == "virtis":  # the geometry cube is not a radiance product
        assert not any(p.path.suffix == ".GEO" for p in split.train + split.test)
        assert len(train | test) == 4
    # rerun: same file content
    first = out.read_text()
    main(["--params", str(params), "--source", source, "--products", str(root),
          "--out", str(out)])
    assert out.read_text() == first


def test_cli_errors_are_one_line(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("split: {}\n")
    rc = main(["--params", str(params), "--source", "virtis", "--products",
               str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "manifest not found" in err and len(err.strip().splitlines()) == 1
    params.write_text("split: {test_fraction: 1.5}\n")
    rc = main(["--params", str(params), "--source", "virtis", "--products",
               str(tmp_path), "--out", str(tmp_path / "s.json")])
    assert rc == 2 and "test_fraction" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
