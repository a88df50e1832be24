"""PyTorch dataset over the HDF5 tile files of :mod:`pipeline.tiles`, and the normalisations.

Tiles are stored in physical units; normalisation happens here, when reading, with the
training-split statistics stored in the file (``attrs["stats"]``, the stats.json content):

============== =========================================================================
mode           y =
============== =========================================================================
paper_minmax   (x - min_b) / (max_b - min_b), per band (the paper's VIRTIS recipe)
global_max     x / max over all bands (the paper's Sentinel-2 recipe; offset 0)
robust         (x - p0.1_b) / (p99.9_b - p0.1_b), clipped to [0, 1] (outliers do not
               squeeze the bulk of the data into a sliver of [0, 1])
zscore         (x - mean_b) / std_b
============== =========================================================================

Invalid values (NaN in VIRTIS tiles, ``valid == False`` pixels of Sentinel-2 tiles) never
reach the model: they become 0 after normalisation, and ``return_mask=True`` returns the
validity mask so that losses and metrics can ignore them. A band whose scale is 0 or
unknown (constant or empty band) uses scale 1.

The HDF5 file is opened lazily, once per process (DataLoader worker), never in
``__init__``: h5py handles must not cross a fork.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from parsers.errors import ProductError, UserError
from parsers.integrity import tile_read_problem
from parsers.jsonsafe import from_attr

MODES: tuple[str, ...] = ("paper_minmax", "global_max", "robust", "zscore")
ROBUST_PERCENTILES: tuple[str, str] = ("0.1", "99.9")


def _array(values: Any, n: int, name: str) -> np.ndarray:
    if values is None:
        raise ValueError(f"statistics lack {name}")
    arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"statistics {name}: {arr.size} values for {n} bands")
    return arr


class Normaliser:
    """Per-band affine map ``y = (x - offset) / scale`` (then clipped to [0, 1] if ``clip``).

    Works on numpy arrays and torch tensors of shape (B, H, W) or (N, B, H, W) (bands on
    axis -3), and on spectra (B,) / (N, B) via :meth:`normalise_spectra`.
    """

    def __init__(self, mode: str, offset: Any, scale: Any, clip: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"normalisation {mode!r}: expected one of {', '.join(MODES)}")
        offset = np.asarray(offset, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        offset = np.where(np.isfinite(offset), offset, 0.0)
        scale = np.where(np.isfinite(scale) & (scale != 0), scale, 1.0)
        self.mode, self.clip = mode, bool(clip)
        self.offset, self.scale = offset, scale
        self._torch: dict[tuple[Any, Any], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def bands(self) -> int:
        return int(self.offset.size)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], mode: str) -> Normaliser:
        """Build from a stats.json document (:mod:`pipeline.stats`)."""
        n = int(stats["bands"])
        if mode == "paper_minmax":
            lo, hi = _array(stats["min"], n, "min"), _array(stats["max"], n, "max")
            return cls(mode, lo, hi - lo)
        if mode == "global_max":
            top = np.nanmax(_array(stats["max"], n, "max"))
            return cls(mode, np.zeros(n), np.full(n, top))
        if mode == "robust":
            pct = stats.get("percentiles") or {}
            lo_key, hi_key = ROBUST_PERCENTILES
            if lo_key not in pct or hi_key not in pct:
                raise ValueError(f"statistics lack the {lo_key}/{hi_key} percentiles")
            lo, hi = _array(pct[lo_key], n, lo_key), _array(pct[hi_key], n, hi_key)
            return cls(mode, lo, hi - lo, clip=True)
        if mode == "zscore":
            return cls(mode, _array(stats["mean"], n, "mean"), _array(stats["std"], n, "std"))
        raise ValueError(f"normalisation {mode!r}: expected one of {', '.join(MODES)}")

    def state_dict(self) -> dict[str, Any]:
        """Plain-python state (for checkpoints); :meth:`from_state_dict` restores it."""
        return {"mode": self.mode, "offset": self.offset.tolist(),
                "scale": self.scale.tolist(), "clip": self.clip}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Normaliser:
        return cls(state["mode"], state["offset"], state["scale"], state.get("clip", False))

    def _params(self, x: Any, ndim_tail: int) -> tuple[Any, Any]:
        shape = (-1,) + (1,) * ndim_tail
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            key = (x.device, dtype)
            if key not in self._torch:
                self._torch[key] = (
                    torch.as_tensor(self.offset, dtype=dtype, device=x.device),
                    torch.as_tensor(self.scale, dtype=dtype, device=x.device),
                )
            off, sc = self._torch[key]
            return off.reshape(shape), sc.reshape(shape)
        return (self.offset.astype(np.float32).reshape(shape),
                self.scale.astype(np.float32).reshape(shape))

    def _check(self, x: Any, axis: int) -> None:
        if x.shape[axis] != self.bands:
            raise ValueError(f"array with {x.shape[axis]} bands on axis {axis}, "
                             f"normaliser has {self.bands}")

    def normalise(self, x: Any) -> Any:
        """Physical units -> model input, for (B, H, W) or (N, B, H, W). float32 out."""
        self._check(x, -3)
        return self._forward(x, 2)

    def denormalise(self, y: Any) -> Any:
        """Model output -> physical units (exact inverse unless ``clip`` cut values off)."""
        self._check(y, -3)
        return self._inverse(y, 2)

    def normalise_spectra(self, x: Any) -> Any:
        """Same as :meth:`normalise` for spectra (B,) or (N, B) (bands on the last axis)."""
        self._check(x, -1)
        return self._forward(x, 0)

    def denormalise_spectra(self, y: Any) -> Any:
        self._check(y, -1)
        return self._inverse(y, 0)

    def _forward(self, x: Any, tail: int) -> Any:
        off, sc = self._params(x, tail)
        if isinstance(x, torch.Tensor):
            y = (x.to(off.dtype) - off) / sc
            return y.clamp_(0.0, 1.0) if self.clip else y
        y = (np.asarray(x, dtype=np.float32) - off) / sc
        return np.clip(y, 0.0, 1.0, out=y) if self.clip else y

    def _inverse(self, y: Any, tail: int) -> Any:
        off, sc = self._params(y, tail)
        if isinstance(y, torch.Tensor):
            return y.to(off.dtype) * sc + off
        return np.asarray(y, dtype=np.float32) * sc + off

    def __repr__(self) -> str:
        return f"Normaliser(mode={self.mode!r}, bands={self.bands}, clip={self.clip})"


def _h5py() -> Any:
    """h5py, with hdf5plugin's filters (Blosc2, Zstd, LZ4) registered when it is installed.

    Only files written with those filters need it (:func:`_check_filters` says so); an
    offline GPU machine without it still reads gzip, lzf and uncompressed tile files.
    """
    import h5py

    with contextlib.suppress(ImportError):
        import hdf5plugin  # noqa: F401  (registers the filters)
    return h5py


def _check_filters(path: str | os.PathLike[str], dataset: Any) -> None:
    """ProductError when a filter of ``dataset`` is not available to this h5py."""
    h5py = _h5py()
    plist = dataset.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _, _, name = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            raise ProductError(path, f"tiles are compressed with HDF5 filter {code} ({label}), "
                                     "which needs the hdf5plugin package")


def tile_file_fingerprint(path: str | os.PathLike[str]) -> str:
    """A cheap identity of a tile file's content: sha256 of its size, attributes and tile
    index (which products, where). A rebuilt file with other tiles gets another one."""
    h = hashlib.sha256(str(Path(path).stat().st_size).encode())
    with _h5py().File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        h.update(json.dumps(attrs, sort_keys=True, default=str).encode())
        if "index" in f:
            h.update(np.ascontiguousarray(f["index"][()]).tobytes())
    return h.hexdigest()


class TileReadError(UserError):
    """A tile HDF5 refused to read (fletcher32 mismatch, damaged chunk): names the file and
    the tile index.

    A DataLoader worker's exception reaches the main process rebuilt from one string (the
    worker's traceback); that string is reduced to the original one-line message here, so
    the training command still reports one line.
    """

    def __init__(self, path: str | os.PathLike[str], index: int | None = None,
                 cause: BaseException | None = None) -> None:
        if index is None:  # re-raised by torch from a DataLoader worker
            lines = [line for line in str(path).splitlines() if line.strip()]
            last = lines[-1] if lines else str(path)
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            super().__init__(last[len(prefix):] if last.startswith(prefix) else last)
            return
        super().__init__(f"{path}: {tile_read_problem(index, cause or OSError('?'))}")


def read_tile_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a tile file: counts, shapes, source, split, statistics, params."""
    with _h5py().File(path, "r") as f:
        if "tiles" not in f:
            raise ValueError(f"{path}: no 'tiles' dataset (not a pipeline.tiles file)")
        tiles = f["tiles"]
        _check_filters(path, tiles)
        attrs = dict(f.attrs)
        out = {
            "n": int(tiles.shape[0]), "bands": int(tiles.shape[1]),
            "tile_size": int(tiles.shape[2]),
            "tile_shape": (int(tiles.shape[2]), int(tiles.shape[3])),
            "dtype": str(tiles.dtype), "chunks": tiles.chunks,
            "has_valid": "valid" in f,
            "wavelength": f["wavelength"][()] if "wavelength" in f else None,
        }
    for key, value in attrs.items():
        if key not in out:
            out[key] = from_attr(value)
    return out


class TileDataset(Dataset):
    """Tiles of one HDF5 file as float32 tensors (B, H, W), normalised.

    Args:
        path: a ``train.h5`` / ``test.h5`` written by :mod:`pipeline.tiles`.
        normalisation: one of :data:`MODES` (ignored when ``normaliser`` is given).
        return_index: also return ``{"index", "product_id", "line0", "sample0"}``.
        return_mask: also return the validity mask, bool tensor (B, H, W).
        stats: statistics to normalise with (default: the file's ``attrs["stats"]``,
            i.e. those of the training split).
        normaliser: a ready :class:`Normaliser` (e.g. restored from a checkpoint).

    Items: ``x``; ``(x, mask)``; ``(x, index)``; or ``(x, mask, index)``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        normalisation: str = "paper_minmax",
        return_index: bool = False,
        return_mask: bool = False,
        stats: Mapping[str, Any] | None = None,
        normaliser: Normaliser | None = None,
    ) -> None:
        self.path = Path(path)
        self.info = read_tile_attrs(self.path)
        self.stats = dict(stats) if stats is not None else self.info.get("stats")
        if normaliser is None:
            if not self.stats:
                raise ValueError(f"{self.path}: no statistics in the file; pass stats=")
            normaliser = Normaliser.from_stats(self.stats, normalisation)
        if normaliser.bands != self.info["bands"]:
            raise ValueError(f"{self.path}: {self.info['bands']} bands, normaliser has "
                             f"{normaliser.bands}")
        self.normaliser = normaliser
        self.normalisation = normaliser.mode
        self.return_index = return_index
        self.return_mask = return_mask
        self._h5: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.info["n"]

    @property
    def bands(self) -> int:
        return self.info["bands"]

    @property
    def tile_size(self) -> int:
        """Tile height (= width) in pixels."""
        return int(self.info["tile_shape"][0])

    @property
    def source(self) -> str | None:
        return self.info.get("source")

    @property
    def wavelength(self) -> np.ndarray | None:
        return self.info.get("wavelength")

    def _file(self) -> Any:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = _h5py().File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``i`` in physical units (B, H, W) and its validity mask (B, H, W)."""
        f = self._file()
        try:
            x = f["tiles"][i]
            pixels = f["valid"][i] if "valid" in f else None
        except OSError as exc:
            raise TileReadError(self.path, i, exc) from None
        valid = np.isfinite(x) if x.dtype.kind == "f" else np.ones(x.shape, dtype=bool)
        if pixels is not None:
            valid &= pixels[None, :, :]
        return x, valid

    def index(self, i: int) -> dict[str, Any]:
        row = self._file()["index"][i]
        pid = row["product_id"]
        return {"index": int(i), "product_id": pid.decode() if isinstance(pid, bytes) else pid,
                "line0": int(row["line0"]), "sample0": int(row["sample0"])}

    def __getitem__(self, i: int) -> Any:
        if not -len(self) <= i < len(self):
            raise IndexError(f"tile {i} out of range 0..{len(self) - 1}")
        i = int(i) % len(self)
        x, valid = self.raw(i)
        y = self.normaliser.normalise(x)
        y[~valid] = 0.0
        out: list[Any] = [torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))]
        if self.return_mask:
            out.append(torch.from_numpy(valid))
        if self.return_index:
            out.append(self.index(i))
        return out[0] if len(out) == 1 else tuple(out)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"], state["_pid"] = None, None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown h5py may be gone
            self.close()
