"""VIRTIS geometry planes (.GEO): plane names, units and scale factors (mission quirks).

The scale factors are not in the labels; they are hard-coded per plane in the VIRTIS team's
IDL library (``docs/virtis-format.md`` §9). One function per product family, pdr style:
each docstring ends with the product types it applies to ("HITS").

Plane names marked ``PLANE_<i>`` are planes whose meaning the reference did not capture
(their coefficient is known); ``.GE5`` coefficients are not captured at all [gap].
"""

from __future__ import annotations

from dataclasses import dataclass

GEO_NULL = -2147483648  # 0x80000000: cannot compute (e.g. missing HK)


@dataclass(frozen=True)
class GeoPlane:
    """One geometry plane: name, unit and the factor that turns the stored int32 into units."""

    name: str
    unit: str
    scale: float


def _deg(name: str) -> GeoPlane:
    return GeoPlane(name, "deg", 1e-4)


_CORNERS = [f"SURFACE_LONGITUDE_CORNER_{i}" for i in range(1, 5)] + ["SURFACE_LONGITUDE_CENTER"]
_CORNERS += [f"SURFACE_LATITUDE_CORNER_{i}" for i in range(1, 5)] + ["SURFACE_LATITUDE_CENTER"]
_ANGLES = ["INCIDENCE_ANGLE", "EMERGENCE_ANGLE", "PHASE_ANGLE"]


def rosetta_planes(channel: str) -> list[GeoPlane]:
    """Rosetta .GEO planes: 23 for M, 31 for H.

    HITS: Rosetta VIRTIS_M_VIS/VIRTIS_M_IR ``*.GEO`` (23 planes), VIRTIS_H ``*.GEO`` (31 planes).
    """
    planes = [_deg(n) for n in _CORNERS + _ANGLES]
    planes += [_deg(f"PLANE_{i}") for i in range(13, 17)]
    planes += [
        GeoPlane("SURFACE_ELEVATION", "km", 1e-3),
        GeoPlane("SLANT_DISTANCE", "km", 1e-3),
        GeoPlane("LOCAL_TIME", "h", 1e-5),
        _deg("RIGHT_ASCENSION"),
        _deg("DECLINATION"),
    ]
    if channel == "VIRTIS_H":
        planes += [
            GeoPlane("SCET_1", "", 1.0), GeoPlane("SCET_2", "", 1.0),
            GeoPlane("UTC_1", "", 1.0), GeoPlane("UTC_2", "", 1.0),
            _deg("SUB_SPACECRAFT_LONGITUDE"), _deg("SUB_SPACECRAFT_LATITUDE"),
            _deg("SLIT_ORIENTATION"), _deg("SUN_ANGLE_1"), _deg("SUN_ANGLE_2"),
        ]
    else:
        planes.append(GeoPlane("FRAME_COMMON", "", 1.0))
    return planes


def vex_planes(channel: str) -> list[GeoPlane]:
    """Venus Express .GEO planes: 33 for M, 41 for H.

    HITS: VEX VIRTIS_M_VIS/VIRTIS_M_IR ``*.GEO`` (33 planes), VIRTIS_H ``*.GEO`` (41 planes).
    """
    planes = [_deg(n) for n in _CORNERS + _ANGLES]  # 0-12
    planes += [GeoPlane("SURFACE_ELEVATION", "km", 1e-3), GeoPlane("SLANT_DISTANCE", "km", 1e-3)]
    planes.append(GeoPlane("LOCAL_TIME", "h", 1e-5))  # 15
    planes += [_deg(f"PLANE_{i}") for i in range(16, 29)]
    planes.append(GeoPlane("PLANE_29", "km", 1e-3))
    planes += [_deg("RIGHT_ASCENSION"), _deg("DECLINATION")]  # 30-31
    planes.append(GeoPlane("PLANE_32", "", 1.0))
    if channel == "VIRTIS_H":
        planes += [GeoPlane(f"PLANE_{i}", "", 1.0) for i in range(33, 36)]
        planes += [_deg(f"PLANE_{i}") for i in range(36, 41)]
    return planes


def geometry_planes(mission: str, channel: str, count: int) -> list[GeoPlane] | None:
    """The plane table for a product, or None when the plane count matches no known table."""
    table = vex_planes(channel) if mission == "VEX" else rosetta_planes(channel)
    return table if len(table) == count else None
