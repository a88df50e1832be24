"""Tile chunks made outside HDF5 are the bytes HDF5 itself stores, and read back as the tiles."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest

from pipeline.tile_chunks import blosc2_chunks, fletcher32
from pipeline.tiles import ChunkEncoder, TileLayout


def stored_by_hdf5(data: np.ndarray, **kwargs) -> list[bytes]:
    """Chunk bytes HDF5 writes for ``data`` (one chunk per first-axis entry)."""
    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("x", data=data, chunks=(1, *data.shape[1:]), **kwargs)
        zeros = (0,) * (data.ndim - 1)
        out = []
        for i in range(len(data)):
            mask, raw = ds.id.read_direct_chunk((i, *zeros))
            assert mask == 0
            out.append(bytes(raw))
        return out


@pytest.mark.parametrize("length", [1, 2, 3, 719, 720, 721, 4096, 100_001])
@pytest.mark.parametrize("fill", ["random", "ones"])
def test_fletcher32_is_hdf5s_checksum(length, fill):
    """Against HDF5's fletcher32 filter, also on all-0xFF data (the largest sums, where the
    C code's 32-bit additions wrap) and odd lengths."""
    rng = np.random.default_rng(length)
    data = rng.integers(0, 256, length, np.uint8) if fill == "random" \
        else np.full(length, 0xFF, np.uint8)
    (stored,) = stored_by_hdf5(data[None], fletcher32=True)
    assert stored[:-4] == data.tobytes()
    assert stored[-4:] == np.array([fletcher32(data)], "<u4").tobytes()


@pytest.mark.parametrize(("dtype", "compression", "shuffle"), [
    ("<f4", "blosc2-lz4", "bit"), ("<f4", "blosc2-zstd", "byte"), ("<u2", "blosc2-zstd", "bit"),
])
def test_encoded_chunks_are_what_hdf5_stores(dtype, compression, shuffle):
    rng = np.random.default_rng(7)
    tiles = (rng.lognormal(3, 1, (3, 12, 16, 16)) * 10).astype(dtype)
    if dtype == "<f4":
        tiles[0, 2, :5, :7] = np.nan
        tiles[1] = 0.0  # a very compressible chunk
    layout = TileLayout(12, 16, dtype, False, compression, 3, shuffle)
    encoder = blosc2_chunks(layout.datasets()["tiles"], tiles[0].nbytes)
    assert encoder is not None
    want = stored_by_hdf5(tiles, **{k: v for k, v in layout.datasets()["tiles"].items()
                                    if k not in ("shape", "maxshape", "chunks", "dtype")})
    pixel_major = np.ascontiguousarray(tiles.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    for i in range(len(tiles)):
        assert encoder.encode(tiles[i]).tobytes() == want[i]
        assert encoder.encode(pixel_major[i]).tobytes() == want[i]  # a strided view


def test_chunk_encoder_fast_path_reads_back(tmp_path):
    """Chunks from the fast path written with direct chunk writes read back as the tiles."""
    rng = np.random.default_rng(3)
    tiles = rng.normal(100, 5, (4, 6, 8, 8)).astype(np.float32)
    tiles[2, :, 1, 1] = np.nan
    layout = TileLayout(6, 8, "<f4", False)
    with ChunkEncoder(layout) as enc:
        assert enc.file is None  # nothing went through HDF5
        enc.add([t for t in tiles], None)
        chunks = enc.chunks()["tiles"]
    with h5py.File(tmp_path / "t.h5", "w") as f:
        ds = f.create_dataset("tiles", **{**layout.datasets()["tiles"], "shape": tiles.shape})
        for i, c in enumerate(chunks):
            ds.id.write_direct_chunk((i, 0, 0, 0), c)
    with h5py.File(tmp_path / "t.h5") as f:
        np.testing.assert_array_equal(f["tiles"][:], tiles)


def test_other_pipelines_have_no_fast_path():
    for compression in ("gzip", "lzf", "none"):
        layout = TileLayout(3, 4, "<f4", False, compression)
        assert blosc2_chunks(layout.datasets()["tiles"], 3 * 16 * 4) is None
