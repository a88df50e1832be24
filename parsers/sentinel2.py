"""Read Sentinel-2 products into one co-registered uint16 cube (bands, lines, samples), 10 m grid.

Work in progress: band tables first; the reader follows.
"""

from __future__ import annotations

# The 13 MSI bands in ESA ``band_id`` order (0..12), as used by the MTD offset lists.
ALL_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
# L2A products have no cirrus band B10.
L2A_BANDS: tuple[str, ...] = tuple(b for b in ALL_BANDS if b != "B10")
NATIVE_RESOLUTION: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}
# The paper's 9 bands are not documented; B02, B03, B04 first is certain (see the README).
DEFAULT_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")
# The first processing baseline whose products carry the -1000 radiometric offset.
OFFSET_BASELINE = "04.00"


def baseline_has_offset(baseline: str | None) -> bool:
    """True when a processing baseline ("04.00", "05.09", ...) is at or after 04.00."""
    if not baseline:
        return False
    major, _, minor = baseline.partition(".")
    return (int(major), int(minor or 0)) >= (4, 0)
