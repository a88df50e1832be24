"""Pixel access shared by the cube readers: one band, one spectrum, the valid mask.

A reader mixes in :class:`CubeAccess` and provides ``bands``, ``samples``,
``lines_available`` (the lines the file holds), ``window(lines, samples, bands)`` and
``load()``; both give float32 ``(bands, lines, samples)`` with NaN where a value is special
or no-data.
"""

from __future__ import annotations

import numpy as np


class CubeAccess:
    """``band``, ``spectrum`` and ``valid_mask`` on top of a reader's ``window`` and ``load``."""

    bands: int
    samples: int
    lines_available: int

    def window(self, lines: slice, samples: slice, bands: slice | None = None) -> np.ndarray:
        raise NotImplementedError

    def load(self, contiguous: bool = False) -> np.ndarray:
        raise NotImplementedError

    def band(self, i: int) -> np.ndarray:
        """float32 ``(L, S)`` image of band ``i`` (negative counts from the last band)."""
        if not -self.bands <= i < self.bands:
            raise IndexError(f"band {i} outside 0..{self.bands - 1}")
        i %= self.bands
        return self.window(slice(None), slice(None), slice(i, i + 1))[0]

    def spectrum(self, line: int, sample: int) -> np.ndarray:
        """float32 ``(B,)`` spectrum of one pixel."""
        if not (0 <= line < self.lines_available and 0 <= sample < self.samples):
            raise IndexError(f"pixel ({line}, {sample}) outside the {self.lines_available} x "
                             f"{self.samples} image")
        return self.window(slice(line, line + 1), slice(sample, sample + 1))[:, 0, 0]

    def valid_mask(self, data: np.ndarray | None = None) -> np.ndarray:
        """bool ``(B, L, S)``: True where a value is neither special nor no-data.

        ``data`` is the cube from ``load()``; without it the cube is loaded.
        """
        data = self.load() if data is None else data
        return ~np.isnan(data)
