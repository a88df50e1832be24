"""compress/decompress: exact round trips, determinism, and one-line refusals of bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from parsers.errors import ProductError, UserError
from tests.training.rd_helpers import grid_tiles, rd_checkpoint, stats_of
from training import compress as C
from training import decompress as D
from training.codec import Codec
from training.data import Normaliser

pytestmark = pytest.mark.usefixtures("one_thread")


def expected_reconstruction(codec: Codec, cube: np.ndarray, kind: str) -> np.ndarray:
    """What decompress must give: the model's own reconstruction of the same (edge-padded)
    tiles, computed in one batch here, with invalid values back as NaN."""
    norm = Normaliser.from_state_dict(codec.ckpt["normaliser"])
    size = codec.tile_shape[1]
    x = norm.normalise(cube)
    invalid = ~np.isfinite(cube) if cube.dtype.kind == "f" else cube == 0
    x[invalid] = 0.0
    tiles = x if kind == "tiles" else grid_tiles(x, size)
    y = norm.denormalise(codec.decode_batch(codec.encode_batch(tiles)))
    if kind == "cube":
        b, lines, samples = cube.shape
        rows, cols = -(-lines // size), -(-samples // size)
        y = y.reshape(rows, cols, b, size, size).transpose(2, 0, 3, 1, 4)
        y = y.reshape(b, rows * size, cols * size)[:, :lines, :samples]
    if cube.dtype.kind == "f":
        y = y.astype(cube.dtype)
        y[invalid] = np.nan
    else:
        y = np.clip(np.rint(y), 0, np.iinfo(cube.dtype).max).astype(cube.dtype)
        y[invalid] = 0
    return y


def run_cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_tile_file_round_trip_is_the_model_reconstruction(codec_files, nan_tiles, tmp_path,
                                                          capsys) -> None:
    ckpt, sscz_path = str(codec_files["ckpt"]), tmp_path / "t.sscz"
    code, out, _ = run_cli(C.main, [str(codec_files["tiles"]), "--checkpoint", ckpt, "--out",
                                    str(sscz_path), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    size = sscz_path.stat().st_size
    assert report["bytes"] == size
    assert report["bpppc"] == pytest.approx(size * 8 / nan_tiles.size, rel=1e-12)
    assert report["tiles"] == 10 and report["native_bits"] == 32
    assert run_cli(D.main, [str(sscz_path), "--checkpoint", ckpt, "--out",
                            str(tmp_path / "t.npy")], capsys)[0] == 0
    got = np.load(tmp_path / "t.npy")
    want = expected_reconstruction(Codec(ckpt), nan_tiles, "tiles")
    assert got.dtype == np.float32 and got.tobytes() == want.tobytes()  # bit for bit
    assert np.array_equal(np.isnan(got), ~np.isfinite(nan_tiles))  # NaN and -inf -> NaN
    assert np.isnan(got[4]).all()


def test_virtis_cube_with_edge_tiles_to_h5_and_tif(tmp_path, capsys) -> None:
    from parsers import virtis
    from pipeline.synthetic.virtis_products import write_virtis_product

    product = write_virtis_product(tmp_path / "V1_00000000001.QUB", bands=6, lines=40,
                                   samples=36)
    cube = virtis.read(product).load(contiguous=True)  # (6, 40, 36), NaN at special values
    assert np.isnan(cube).any()
    ckpt = rd_checkpoint(tmp_path / "rd.pt", grid_tiles(cube, 16), stats_of(cube), steps=10)
    code, out, _ = run_cli(C.main, [str(product), "--checkpoint", str(ckpt), "--out",
                                    str(tmp_path / "v.sscz"), "--json"], capsys)
    assert code == 0 and json.loads(out)["tiles"] == 9  # 3 x 3 tiles of 16 px over 40 x 36
    want = expected_reconstruction(Codec(ckpt), cube, "cube")
    for name in ("v.h5", "v.tif"):
        assert run_cli(D.main, [str(tmp_path / "v.sscz"), "--checkpoint", str(ckpt),
                                "--out", str(tmp_path / name)], capsys)[0] == 0
    import h5py
    import rasterio

    with h5py.File(tmp_path / "v.h5") as f:
        assert f["cube"][()].tobytes() == want.tobytes()
        assert np.allclose(f["wavelength"][()], virtis.read(product).wavelengths)
    with rasterio.open(tmp_path / "v.tif") as src:
        assert src.read().tobytes() == want.tobytes()


def test_sentinel2_geotiff_uint16_with_nodata(tmp_path, capsys) -> None:
    from parsers import sentinel2
    from pipeline.synthetic.sentinel2_products import write_multiband_geotiff

    tif = write_multiband_geotiff(tmp_path / "s2.tif", size_10m=96, nodata_fraction=0.05)
    cube = sentinel2.read(tif).data
    assert (cube == 0).any() and cube.dtype == np.uint16
    ckpt = rd_checkpoint(tmp_path / "s2.pt", grid_tiles(cube.astype(np.float32), 48),
                         stats_of(cube, "sentinel2"), arch="linear", latent=24, steps=10,
                         normalisation="global_max")
    assert C.main([str(tif), "--checkpoint", str(ckpt), "--out", str(tmp_path / "s.sscz")]) == 0
    assert D.main([str(tmp_path / "s.sscz"), "--checkpoint", str(ckpt), "--out",
                   str(tmp_path / "s.npy")]) == 0
    got = np.load(tmp_path / "s.npy")
    want = expected_reconstruction(Codec(ckpt), cube, "cube")
    assert got.dtype == np.uint16 and np.array_equal(got, want)
    assert np.array_equal(got == 0, cube == 0)
    assert D.main([str(tmp_path / "s.sscz"), "--checkpoint", str(ckpt), "--out",
                   str(tmp_path / "s.tif")]) == 0
    back = sentinel2.read(tmp_path / "s.tif")  # georeferenced, band names kept
    original = sentinel2.read(tif)
    assert back.transform == original.transform and back.crs == original.crs
    assert back.band_names == original.band_names and np.array_equal(back.data, want)


def test_decoding_does_not_depend_on_threads_or_batch_size(codec_files, tmp_path) -> None:
    codec = Codec(codec_files["ckpt"])
    C.compress(codec_files["tiles"], codec, tmp_path / "a.sscz", batch_size=4)  # 1 thread
    torch.set_num_threads(2)
    D.decompress(tmp_path / "a.sscz", codec, tmp_path / "a.npy", batch_size=3)
    D.decompress(tmp_path / "a.sscz", Codec(codec_files["ckpt"]), tmp_path / "b.npy",
                 batch_size=10)
    assert np.load(tmp_path / "a.npy").tobytes() == np.load(tmp_path / "b.npy").tobytes()
    C.compress(codec_files["tiles"], codec, tmp_path / "b.sscz", batch_size=10)
    assert (tmp_path / "a.sscz").read_bytes() == (tmp_path / "b.sscz").read_bytes()


@pytest.fixture(scope="module")
def small_file(codec_files, tmp_path_factory) -> tuple[bytes, np.ndarray]:
    """A 4-tile .sscz (and its decoded array) for the corruption tests."""
    import h5py

    root = tmp_path_factory.mktemp("small")
    with h5py.File(codec_files["tiles"]) as f, h5py.File(root / "t.h5", "w") as g:
        g.create_dataset("tiles", data=f["tiles"][:4])
    codec = Codec(codec_files["ckpt"])
    C.compress(root / "t.h5", codec, root / "t.sscz")
    D.decompress(root / "t.sscz", codec, root / "t.npy")
    return (root / "t.sscz").read_bytes(), np.load(root / "t.npy")


def _decode_bytes(data: bytes, codec: Codec, tmp: Path) -> np.ndarray:
    (tmp / "x.sscz").write_bytes(data)
    out = tmp / "x.npy"
    D.decompress(tmp / "x.sscz", codec, out)
    return np.load(out)


def test_every_truncation_is_a_one_line_error(small_file, codec_files, tmp_path) -> None:
    data, _ = small_file
    codec = Codec(codec_files["ckpt"])
    messages = set()
    for cut in range(len(data)):
        with pytest.raises(ProductError) as err:
            _decode_bytes(data[:cut], codec, tmp_path)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("x.sscz: ")
        messages.add(msg)
        assert not (tmp_path / "x.npy").exists()
    assert any("truncated in tile 2 of 4" in m for m in messages), messages
    assert any("end marker missing" in m for m in messages)
    assert any("truncated in the header" in m for m in messages)


def test_byte_flips_never_give_a_wrong_array(small_file, codec_files, tmp_path) -> None:
    data, good = small_file
    codec = Codec(codec_files["ckpt"])
    rng = np.random.default_rng(0)
    refused = 0
    for pos in rng.choice(len(data), 150, replace=False):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(8))
        try:
            got = _decode_bytes(bytes(flipped), codec, tmp_path)
        except UserError as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        assert got.tobytes() == good.tobytes()  # a flip that changes nothing decoded
    assert refused == 150  # CRCs cover the header, every record and the end marker


def test_refusals_are_one_line_and_leave_no_output(codec_files, nan_tiles, small_file,
                                                   tmp_path, capsys) -> None:
    data, _ = small_file
    (tmp_path / "x.sscz").write_bytes(data)
    other = rd_checkpoint(tmp_path / "other.pt", nan_tiles, stats_of(nan_tiles), steps=1,
                          seed=5)
    code, _, err = run_cli(D.main, [str(tmp_path / "x.sscz"), "--checkpoint", str(other),
                                    "--out", str(tmp_path / "o.npy")], capsys)
    assert code == 2 and "written with model" in err and err.count("\n") == 1
    version = bytearray(data)
    version[8] = 7
    (tmp_path / "v.sscz").write_bytes(bytes(version))
    code, _, err = run_cli(D.main, [str(tmp_path / "v.sscz"), "--checkpoint",
                                    str(codec_files["ckpt"]), "--out", str(tmp_path / "o.npy")],
                           capsys)
    assert code == 2 and "format version 7 is not supported" in err
    assert not (tmp_path / "o.npy").exists()


def test_compress_refuses_unusable_checkpoints_and_inputs(codec_files, tmp_path,
                                                          capsys) -> None:
    from training.models import build_model, save_checkpoint

    model = build_model(arch="conv", bands=6, tile=16, latent=(8, 4), widths=(8, 8, 8, 8))
    save_checkpoint(tmp_path / "rec.pt", {"model": model, "config": model.config()})
    tiles = str(codec_files["tiles"])
    cases = [
        ([tiles, "--checkpoint", str(tmp_path / "rec.pt")], "has no entropy model"),
        ([str(tmp_path / "nope.QUB"), "--checkpoint", str(codec_files["ckpt"])],
         "no such file"),
        ([tiles, "--checkpoint", str(codec_files["ckpt"]), "--batch-size", "0"],
         "--batch-size"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(C.main, [*argv, "--out", str(tmp_path / "o.sscz")], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.sscz").exists()
    code, _, err = run_cli(C.main, [tiles, "--checkpoint", str(codec_files["ckpt"]), "--out",
                                    str(tmp_path / "o.bin")], capsys)
    assert code == 2 and ".sscz" in err
