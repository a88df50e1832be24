"""Classical compression baselines, coded for real, on the same tiles SSCNet is evaluated on.

Every codec turns one physical-unit tile (B, H, W) into a list of byte strings and back.
The rate is the length of *all* those byte strings (codec streams plus side information:
per-band offsets/scales, PCA bases, NaN masks) times 8 over B*H*W, in bits per pixel per
channel (bpppc). The tile shape and dtype are fixed by the dataset and not counted.

Integer codecs and float data. JPEG 2000, JPEG-XL, JPEG and CCSDS-121 take integers. Float
tiles (VIRTIS radiance) are mapped per tile and band to uint16:
``q = round((x - min_b) / (max_b - min_b) * 65535)`` with the tile's own band min/max stored
as float32 side information (8 bytes per band, counted). "Lossless" codecs are therefore
lossless with respect to that 16-bit representation; its own error (at most half a step,
(max_b - min_b) / 131070) shows in their metrics. uint16 tiles (Sentinel-2) are coded as is.
NaN pixels are filled before coding and restored from a bit mask (np.packbits + zstd,
counted) when a tile has any.

Methods (``method`` names used in rd.csv):
- ``requant``: uniform quantisation to b bits over the band's training range (shared with
  the decoder like SSCNet's normaliser, so not counted), bit-packed; no entropy coding.
- ``pca``: per-tile PCA over bands, k components, scores uniformly quantised to q bits per
  component and zstd-coded; mean (float32), basis (float16) and score ranges counted.
- ``jpeg2000_band`` / ``jpeg2000_cube``: OpenJPEG through imagecodecs, each band a
  grayscale image / the tile as one B-component image (no MCT). ``level`` is OpenJPEG's
  target PSNR; :func:`search_level` bisects it to hit a target bpppc.
- ``jpegxl_band``: libjxl per band at a butteraugli ``distance``.
- ``sz3`` (float tiles only): SZ3 error-bounded coder on the whole tile, absolute bound =
  a fraction of the median band training range (physical units), no integer map needed.
- ``jpeg8_paper``: the SSCNet paper's JPEG setting reproduced *for comparability only*:
  uint16 cast to uint8 with wrap-around (mod 256), baseline JPEG, metrics against the wrapped
  8-bit image with peak 255. Flagged ``paper_8bit_wrap`` in every output: its numbers do not
  describe the real data.
- lossless floor: ``jpeg2000_lossless`` (reversible 5/3, one multi-component image),
  ``jpegxl_lossless`` (per band), ``ccsds121`` (libaec Rice coder, band-interleaved-by-pixel
  order so that its unit-delay predictor runs along the spectrum).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import imagecodecs
import numpy as np

Payload = list[bytes]
U16_MAX = 65535


@dataclass(frozen=True)
class BandRange:
    """Per-band training range (physical units) shared by encoder and decoder."""

    lo: np.ndarray  # (B,)
    hi: np.ndarray  # (B,)

    @property
    def span(self) -> np.ndarray:
        return np.maximum(self.hi - self.lo, np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class Codec:
    """One baseline at one setting: ``encode(tile) -> payload``, ``decode(payload) -> tile``."""

    method: str
    setting: str
    encode: Callable[[np.ndarray], Payload]
    decode: Callable[[Payload], np.ndarray]
    flagged: str = ""
    lossless: bool = False
    reference: Callable[[np.ndarray], np.ndarray] | None = None  # what metrics compare to

    @property
    def label(self) -> str:
        return f"{self.method}({self.setting})" if self.setting else self.method


@dataclass
class CodedBatch:
    """Result of coding a batch of tiles: reconstruction, total bytes, wall times."""

    recon: np.ndarray  # (N, B, H, W), input dtype (float32 for float input)
    nbytes: int
    values: int  # N * B * H * W
    input_bytes: int
    encode_s: float
    decode_s: float

    @property
    def bpppc(self) -> float:
        return 8.0 * self.nbytes / self.values


def payload_bytes(payload: Payload) -> int:
    return sum(len(p) for p in payload)


def code_tiles(codec: Codec, tiles: np.ndarray) -> CodedBatch:
    """Encode and decode each tile of (N, B, H, W); time encode and decode separately."""
    payloads = []
    t0 = time.perf_counter()
    for tile in tiles:
        payloads.append(codec.encode(tile))
    t1 = time.perf_counter()
    recon = np.stack([codec.decode(p) for p in payloads])
    t2 = time.perf_counter()
    return CodedBatch(
        recon=recon,
        nbytes=sum(payload_bytes(p) for p in payloads),
        values=int(tiles.size),
        input_bytes=int(tiles.nbytes),
        encode_s=t1 - t0,
        decode_s=t2 - t1,
    )


# --------------------------------------------------------------------------- shared pieces
@dataclass(frozen=True)
class TileFormat:
    """What encoder and decoder agree on without sending it: shape and dtype of a tile."""

    bands: int
    height: int
    width: int
    dtype: np.dtype

    @property
    def is_float(self) -> bool:
        return np.issubdtype(self.dtype, np.floating)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.bands, self.height, self.width)


def _pack_mask(tile: np.ndarray) -> tuple[np.ndarray, Payload]:
    """Fill NaNs with the band's valid mean; return (filled, [flag + zstd(packbits(mask))])."""
    if not np.issubdtype(tile.dtype, np.floating):
        return tile, [b"\x00"]
    bad = ~np.isfinite(tile)
    if not bad.any():
        return tile, [b"\x00"]
    filled = tile.astype(np.float64, copy=True)
    for b in range(tile.shape[0]):
        ok = ~bad[b]
        filled[b][bad[b]] = filled[b][ok].mean() if ok.any() else 0.0
    blob = imagecodecs.zstd_encode(np.packbits(bad.ravel()).tobytes(), level=19)
    return filled.astype(tile.dtype), [b"\x01" + blob]


def _unpack_mask(head: bytes, fmt: TileFormat) -> np.ndarray | None:
    if head[:1] == b"\x00":
        return None
    bits = np.frombuffer(imagecodecs.zstd_decode(head[1:]), dtype=np.uint8)
    n = fmt.bands * fmt.height * fmt.width
    return np.unpackbits(bits)[:n].astype(bool).reshape(fmt.shape)


def _finish(x: np.ndarray, mask: np.ndarray | None, fmt: TileFormat) -> np.ndarray:
    """Cast a decoded float64 tile to the tile dtype (round+clip for ints), restore NaNs."""
    if fmt.is_float:
        out = x.astype(fmt.dtype)
        if mask is not None:
            out[mask] = np.nan
        return out
    info = np.iinfo(fmt.dtype)
    return np.clip(np.rint(x), info.min, info.max).astype(fmt.dtype)


def to_uint16(tile: np.ndarray) -> tuple[np.ndarray, Payload]:
    """Integer representation for the integer codecs: (uint16 tile, side information).

    uint8/uint16 tiles pass through (no side information). Float tiles: the NaN mask (see
    module docstring) and per-band float32 min and max of the tile, then an affine map to
    0..65535.
    """
    if tile.dtype == np.uint16:
        return tile, []
    if tile.dtype == np.uint8:
        return tile.astype(np.uint16), []
    if not np.issubdtype(tile.dtype, np.floating):
        info = np.iinfo(tile.dtype)
        if info.min >= 0 and info.max <= U16_MAX:
            return tile.astype(np.uint16), []
    filled, mask_payload = _pack_mask(tile.astype(np.float32))
    x = filled.astype(np.float64)
    lo = x.min(axis=(1, 2)).astype(np.float32)
    hi = x.max(axis=(1, 2)).astype(np.float32)
    span = np.where(hi > lo, hi.astype(np.float64) - lo, 1.0)
    q = np.rint((x - lo[:, None, None]) / span[:, None, None] * U16_MAX)
    side = [*mask_payload, lo.tobytes() + hi.tobytes()]
    return np.clip(q, 0, U16_MAX).astype(np.uint16), side


def from_uint16(q: np.ndarray, side: Payload, fmt: TileFormat) -> np.ndarray:
    """Inverse of :func:`to_uint16` (side = what to_uint16 returned)."""
    if not fmt.is_float:
        return q.astype(fmt.dtype)
    mask = _unpack_mask(side[0], fmt)
    lohi = np.frombuffer(side[1], dtype=np.float32)
    lo, hi = lohi[: fmt.bands].astype(np.float64), lohi[fmt.bands :].astype(np.float64)
    span = np.where(hi > lo, hi - lo, 1.0)
    x = lo[:, None, None] + q.astype(np.float64) / U16_MAX * span[:, None, None]
    return _finish(x, mask, fmt)


def _n_side(fmt: TileFormat) -> int:
    return 2 if fmt.is_float else 0


# --------------------------------------------------------------------------- lossy codecs
def requant(bits: int, fmt: TileFormat, rng_: BandRange) -> Codec:
    """Uniform quantisation of each band's training range to ``bits`` bits, bit-packed."""
    if not 1 <= bits <= 16:
        raise ValueError(f"requant bits must be 1..16, got {bits}")
    lo, span = rng_.lo.reshape(-1, 1, 1), rng_.span.reshape(-1, 1, 1)
    levels = 2**bits - 1
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)

    def encode(tile: np.ndarray) -> Payload:
        filled, mask = _pack_mask(tile)
        u = np.clip((filled.astype(np.float64) - lo) / span, 0.0, 1.0)
        q = np.rint(u * levels).astype(np.uint32)
        bitplanes = ((q.reshape(-1, 1) >> shifts) & 1).astype(np.uint8)
        return [*mask, np.packbits(bitplanes.ravel()).tobytes()]

    def decode(payload: Payload) -> np.ndarray:
        mask = _unpack_mask(payload[0], fmt)
        n = fmt.bands * fmt.height * fmt.width
        planes = np.unpackbits(np.frombuffer(payload[1], dtype=np.uint8))[: n * bits]
        q = (planes.reshape(n, bits).astype(np.uint32) << shifts).sum(axis=1)
        x = lo + q.reshape(fmt.shape) / levels * span
        return _finish(x, mask, fmt)

    return Codec("requant", f"b={bits}", encode, decode)


def pca(components: int, bits: int, fmt: TileFormat) -> Codec:
    """Per-tile PCA over bands, scores quantised to ``bits`` bits and zstd-coded."""
    k = min(components, fmt.bands)
    levels = 2**bits - 1
    dt = np.uint8 if bits <= 8 else np.uint16

    def encode(tile: np.ndarray) -> Payload:
        filled, mask = _pack_mask(tile)
        x = filled.reshape(fmt.bands, -1).astype(np.float64)
        mean = x.mean(axis=1).astype(np.float32)
        xc = x - mean[:, None]
        _, vecs = np.linalg.eigh(xc @ xc.T)
        basis = vecs[:, ::-1][:, :k].astype(np.float16)
        scores = basis.astype(np.float64).T @ xc  # (k, P)
        smin = scores.min(axis=1).astype(np.float32)
        smax = scores.max(axis=1).astype(np.float32)
        span = np.where(smax > smin, smax.astype(np.float64) - smin, 1.0)
        q = np.rint((scores - smin[:, None]) / span[:, None] * levels).astype(dt)
        side = mean.tobytes() + basis.tobytes() + smin.tobytes() + smax.tobytes()
        return [*mask, side, imagecodecs.zstd_encode(q.tobytes(), level=19)]

    def decode(payload: Payload) -> np.ndarray:
        mask = _unpack_mask(payload[0], fmt)
        side = payload[1]
        b = fmt.bands
        mean = np.frombuffer(side, np.float32, b, 0).astype(np.float64)
        basis = np.frombuffer(side, np.float16, b * k, 4 * b).astype(np.float64).reshape(b, k)
        off = 4 * b + 2 * b * k
        smin = np.frombuffer(side, np.float32, k, off).astype(np.float64)
        smax = np.frombuffer(side, np.float32, k, off + 4 * k).astype(np.float64)
        span = np.where(smax > smin, smax - smin, 1.0)
        q = np.frombuffer(imagecodecs.zstd_decode(payload[2]), dtype=dt).reshape(k, -1)
        scores = smin[:, None] + q.astype(np.float64) / levels * span[:, None]
        x = (basis @ scores + mean[:, None]).reshape(fmt.shape)
        return _finish(x, mask, fmt)

    return Codec("pca", f"k={k},q={bits}", encode, decode)


def jpeg2000(level: float, fmt: TileFormat, *, cube: bool) -> Codec:
    """OpenJPEG irreversible 9/7 at target PSNR ``level`` (dB), per band or as one cube."""

    def encode(tile: np.ndarray) -> Payload:
        q, side = to_uint16(tile)
        if cube:
            return [*side, imagecodecs.jpeg2k_encode(q, level=level, planar=True, mct=False)]
        return [*side, *(imagecodecs.jpeg2k_encode(band, level=level) for band in q)]

    def decode(payload: Payload) -> np.ndarray:
        ns = _n_side(fmt)
        if cube:
            q = imagecodecs.jpeg2k_decode(payload[ns], planar=True)
        else:
            q = np.stack([imagecodecs.jpeg2k_decode(p) for p in payload[ns:]])
        return from_uint16(q.reshape(fmt.shape), payload[:ns], fmt)

    name = "jpeg2000_cube" if cube else "jpeg2000_band"
    return Codec(name, f"level={level:.2f}", encode, decode)


def jpegxl_band(distance: float, fmt: TileFormat, effort: int = 7) -> Codec:
    """libjxl lossy per band (16-bit grayscale) at butteraugli ``distance``."""

    def encode(tile: np.ndarray) -> Payload:
        q, side = to_uint16(tile)
        return [
            *side,
            *(imagecodecs.jpegxl_encode(b, distance=distance, effort=effort) for b in q),
        ]

    def decode(payload: Payload) -> np.ndarray:
        ns = _n_side(fmt)
        q = np.stack([imagecodecs.jpegxl_decode(p) for p in payload[ns:]])
        return from_uint16(q.reshape(fmt.shape), payload[:ns], fmt)

    return Codec("jpegxl_band", f"d={distance:g}", encode, decode)


def wrap_to_uint8(tile: np.ndarray) -> np.ndarray:
    """The SSCNet paper's cast: integer data to uint8 modulo 256 (float goes via uint16)."""
    q = to_uint16(tile)[0] if np.issubdtype(tile.dtype, np.floating) else tile
    return q.astype(np.uint16).astype(np.uint8)


def jpeg8_paper(quality: int, fmt: TileFormat) -> Codec:
    """Paper-style baseline JPEG of the mod-256 wrapped bands (flagged; see module doc)."""

    def encode(tile: np.ndarray) -> Payload:
        return [imagecodecs.jpeg8_encode(b, level=quality) for b in wrap_to_uint8(tile)]

    def decode(payload: Payload) -> np.ndarray:
        return np.stack([imagecodecs.jpeg8_decode(p) for p in payload]).reshape(fmt.shape)

    return Codec(
        "jpeg8_paper", f"q={quality}", encode, decode, flagged="paper_8bit_wrap",
        reference=wrap_to_uint8,
    )


def sz3(abs_tol: float, fmt: TileFormat, label: str = "") -> Codec:
    """SZ3 error-bounded float coder on the whole (B, H, W) tile: |error| <= ``abs_tol``
    (physical units) everywhere. Float tiles only (the honest anchor for float radiance)."""
    if not fmt.is_float:
        raise ValueError("sz3 codes float tiles only")

    def encode(tile: np.ndarray) -> Payload:
        filled, mask = _pack_mask(tile)
        data = np.ascontiguousarray(filled, dtype=np.float32)
        return [*mask, imagecodecs.sz3_encode(data, mode="abs", abs=float(abs_tol))]

    def decode(payload: Payload) -> np.ndarray:
        mask = _unpack_mask(payload[0], fmt)
        x = imagecodecs.sz3_decode(payload[1], fmt.shape, np.float32)
        return _finish(np.asarray(x, dtype=np.float64).reshape(fmt.shape), mask, fmt)

    return Codec("sz3", label or f"abs={abs_tol:.4g}", encode, decode)


# --------------------------------------------------------------------------- lossless floor
def jpeg2000_lossless(fmt: TileFormat) -> Codec:
    def encode(tile: np.ndarray) -> Payload:
        q, side = to_uint16(tile)
        return [*side, imagecodecs.jpeg2k_encode(q, reversible=True, planar=True, mct=False)]

    def decode(payload: Payload) -> np.ndarray:
        ns = _n_side(fmt)
        q = imagecodecs.jpeg2k_decode(payload[ns], planar=True).reshape(fmt.shape)
        return from_uint16(q, payload[:ns], fmt)

    return Codec("jpeg2000_lossless", "reversible", encode, decode, lossless=True)


def jpegxl_lossless(fmt: TileFormat, effort: int = 7) -> Codec:
    def encode(tile: np.ndarray) -> Payload:
        q, side = to_uint16(tile)
        return [*side, *(imagecodecs.jpegxl_encode(b, lossless=True, effort=effort) for b in q)]

    def decode(payload: Payload) -> np.ndarray:
        ns = _n_side(fmt)
        q = np.stack([imagecodecs.jpegxl_decode(p) for p in payload[ns:]]).reshape(fmt.shape)
        return from_uint16(q, payload[:ns], fmt)

    return Codec("jpegxl_lossless", f"effort={effort}", encode, decode, lossless=True)


def ccsds121(fmt: TileFormat) -> Codec:
    def encode(tile: np.ndarray) -> Payload:
        q, side = to_uint16(tile)
        bip = np.ascontiguousarray(q.transpose(1, 2, 0))
        return [*side, imagecodecs.aec_encode(bip, bitspersample=16)]

    def decode(payload: Payload) -> np.ndarray:
        ns = _n_side(fmt)
        raw = imagecodecs.aec_decode(payload[ns], bitspersample=16)
        bip = np.frombuffer(raw, dtype=np.uint16).reshape(fmt.height, fmt.width, fmt.bands)
        return from_uint16(np.ascontiguousarray(bip.transpose(2, 0, 1)), payload[:ns], fmt)

    return Codec("ccsds121", "rice,bip", encode, decode, lossless=True)


# --------------------------------------------------------------------------- rate search
def mean_rate(codec: Codec, tiles: np.ndarray) -> float:
    """Measured bpppc of ``codec`` over ``tiles`` (encode only)."""
    nbytes = sum(payload_bytes(codec.encode(t)) for t in tiles)
    return 8.0 * nbytes / tiles.size


def search_level(
    make: Callable[[float], Codec],
    tiles: np.ndarray,
    target_bpppc: float,
    lo: float = 20.0,
    hi: float = 130.0,
    iterations: int = 10,
) -> tuple[Codec, float] | None:
    """Bisect OpenJPEG's PSNR ``level`` until the measured rate on ``tiles`` meets the target.

    The rate grows with the level. Returns the codec whose rate is closest to the target
    without exceeding it, and its measured rate on ``tiles``; None when even ``lo`` is above
    the target (per-band streams carry ~100 header bytes each, so tiny rates are out of reach).
    """
    low_codec = make(lo)
    low_rate = mean_rate(low_codec, tiles)
    if low_rate > target_bpppc:
        return None
    best = (low_codec, low_rate)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        codec = make(mid)
        rate = mean_rate(codec, tiles)
        if rate <= target_bpppc:
            lo, best = mid, (codec, rate)
        else:
            hi = mid
    return best


# --------------------------------------------------------------------------- the default set
@dataclass(frozen=True)
class BaselineSettings:
    """Which baselines and settings to run (the ``evaluate`` params carry these fields)."""

    target_bpppc: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    requant_bits: tuple[int, ...] = (2, 4, 6, 8)
    pca: tuple[tuple[int, int], ...] = ((1, 8), (2, 8), (4, 8), (8, 10))
    jpegxl_distances: tuple[float, ...] = (0.1, 0.5, 1.0, 3.0)
    jpeg8_qualities: tuple[int, ...] = (50, 95)
    sz3_relative: tuple[float, ...] = (1e-2, 1e-3, 1e-4)  # x median band range, float only
    jpegxl_effort: int = 7
    calibration_tiles: int = 2
    jpeg2000_band: bool = True
    jpeg2000_cube: bool = True
    lossless: bool = True


def build_codecs(
    settings: BaselineSettings,
    fmt: TileFormat,
    band_range: BandRange,
    calibration: np.ndarray,
    extra_targets: Sequence[float] = (),
) -> list[Codec]:
    """Instantiate every baseline; JPEG 2000 levels are searched on ``calibration`` tiles."""
    codecs: list[Codec] = []
    codecs += [requant(b, fmt, band_range) for b in settings.requant_bits]
    codecs += [pca(k, q, fmt) for k, q in settings.pca if k <= fmt.bands]
    targets = sorted({round(float(t), 4) for t in (*settings.target_bpppc, *extra_targets)})
    calib = calibration[: max(1, settings.calibration_tiles)]
    for cube, enabled in ((False, settings.jpeg2000_band), (True, settings.jpeg2000_cube)):
        if not enabled:
            continue
        seen = set()
        for t in targets:
            found = search_level(lambda lv, c=cube: jpeg2000(lv, fmt, cube=c), calib, t)
            if found is None:
                continue
            codec = found[0]
            if codec.setting not in seen:
                seen.add(codec.setting)
                codecs.append(
                    Codec(codec.method, f"{codec.setting},target={t:g}", codec.encode,
                          codec.decode)
                )
    codecs += [jpegxl_band(d, fmt, settings.jpegxl_effort) for d in settings.jpegxl_distances]
    codecs += [jpeg8_paper(q, fmt) for q in settings.jpeg8_qualities]
    if fmt.is_float:
        span = float(np.median(band_range.span))
        codecs += [sz3(r * span, fmt, f"abs={r * span:.4g},rel={r:g}")
                   for r in settings.sz3_relative]
    if settings.lossless:
        codecs += [jpeg2000_lossless(fmt), jpegxl_lossless(fmt, settings.jpegxl_effort),
                   ccsds121(fmt)]
    return codecs
