"""VIRTIS geometry planes (.GEO, .GE5): plane names, units and scale factors (mission quirks).

Neither names nor scale factors are in the labels: the VIRTIS team's IDL library hard-codes
them per plane. The tables below restate those facts in our own names
(``docs/virtis-format.md`` section 8). One function per product family, pdr
style: each docstring ends with the product types it applies to ("HITS"). Planes are
numbered from 0 in file order; a stored int32 times ``scale`` gives the value in ``unit``.
"""

from __future__ import annotations

from dataclasses import dataclass

GEO_NULL = -2147483648  # 0x80000000: cannot compute (e.g. missing HK)
ROSETTA_GEO_PLANES = {"M": 23, "H": 31}
ROSETTA_GE5_PLANES = {"M": 100, "H": 112}


@dataclass(frozen=True)
class GeoPlane:
    """One geometry plane: name, unit, the factor that turns the stored int32 into ``unit``,
    and a note where the source itself looks doubtful."""

    name: str
    unit: str
    scale: float
    note: str = ""


def _deg(name: str) -> GeoPlane:
    return GeoPlane(name, "deg", 1e-4)


def _km(name: str) -> GeoPlane:
    return GeoPlane(name, "km", 1e-3)


def _count(name: str) -> GeoPlane:
    return GeoPlane(name, "", 1.0)


def _corners(prefix: str, suffix: str = "") -> list[str]:
    """Lon of corners 1-4, lat of corners 1-4, lon of centre, lat of centre (file order)."""
    return ([f"{prefix}LONGITUDE_CORNER_{i}{suffix}" for i in range(1, 5)]
            + [f"{prefix}LATITUDE_CORNER_{i}{suffix}" for i in range(1, 5)]
            + [f"{prefix}LONGITUDE_CENTER{suffix}", f"{prefix}LATITUDE_CENTER{suffix}"])


def _rosetta_base() -> list[GeoPlane]:
    """Planes 0-21, common to M and H, .GEO and .GE5."""
    planes = [_deg(n) for n in _corners("SURFACE_")]  # 0-9
    planes += [_deg(n) for n in (
        "INCIDENCE_LOCAL_NORMAL", "EMERGENCE_LOCAL_NORMAL", "PHASE_ANGLE",  # 10-12
        "INCIDENCE_ELLIPSOID_NORMAL", "EMERGENCE_ELLIPSOID_NORMAL",  # 13-14
        "INCIDENCE_BODY_CENTER", "EMERGENCE_BODY_CENTER")]  # 15-16
    planes += [_km("SURFACE_ELEVATION"), _km("SLANT_DISTANCE"),  # 17-18
               GeoPlane("LOCAL_TIME", "h", 1e-5),  # 19
               _deg("RIGHT_ASCENSION"), _deg("DECLINATION")]  # 20-21
    return planes


def _rosetta_h_frame() -> list[GeoPlane]:
    """H planes 22-30: SCET and UTC words, sub-spacecraft point, slit, Sun direction."""
    return [
        _count("SCET_1"), _count("SCET_2"),  # SCET = SCET_1 + SCET_2 / 65536
        _count("UTC_1"), GeoPlane("UTC_2", "1e-4 s of day", 1.0),
        _deg("SUB_SPACECRAFT_LONGITUDE"), _deg("SUB_SPACECRAFT_LATITUDE"),
        _deg("SLIT_ORIENTATION"), _deg("SUN_Z_AXIS_ANGLE"), _deg("SUN_AZIMUTH_XY"),
    ]


def _extended_block() -> list[GeoPlane]:
    """The 77 planes .GE5 products add (67P shape model): from plane 23 (M) / 35 (H)."""
    xyz = [f"{a}_CORNER_{i}" for a in "XYZ" for i in range(1, 5)] + ["X_CENTER", "Y_CENTER",
                                                                     "Z_CENTER"]
    planes = [_km(n) for n in xyz]  # 0-14
    planes += [_deg(n) for n in _corners("SURFACE_", "_START") + _corners("SURFACE_", "_STOP")]
    planes += [_deg(f"{a}_LOCAL_NORMAL_CORNER_{i}") for a in ("INCIDENCE", "EMERGENCE")
               for i in range(1, 5)]  # 35-42
    planes += [_km(f"SURFACE_ELEVATION_CORNER_{i}") for i in range(1, 5)]  # 43-46
    planes.append(_km("SPACECRAFT_ALTITUDE"))  # 47
    planes += [_km(f"CENTER_DISTANCE_CORNER_{i}") for i in range(1, 5)]  # 48-51
    planes.append(_km("CENTER_DISTANCE_CENTER"))  # 52
    planes += [GeoPlane(f"LOCAL_TIME_CORNER_{i}", "h", 1e-5) for i in range(1, 5)]
    planes.append(GeoPlane("LOCAL_TIME_CENTER", "h", 1e-5))  # 57
    planes += [_deg("SUBSOLAR_LONGITUDE"), _deg("SUBSOLAR_LATITUDE")]  # 58-59
    planes.append(_count("SHADOW_VISIBILITY_FLAGS"))  # 60
    planes += [_deg(n) for n in ("LOS_NADIR_ANGLE", "LOS_NADIR_AZIMUTH",
                                 "NADIR_RIGHT_ASCENSION", "NADIR_DECLINATION",
                                 "POINTING_LONGITUDE", "POINTING_LATITUDE")]  # 61-66
    planes += [_km(f"RADIUS_CORNER_{i}") for i in range(1, 5)] + [_km("RADIUS_CENTER")]
    planes += [_count(f"PLATE_NUMBER_CORNER_{i}") for i in range(1, 5)]
    planes.append(_count("PLATE_NUMBER_CENTER"))  # 76
    return planes


_OFF_BY_ONE = ("the IDL library scales sub-spacecraft X by 1e-4 but Y and Z by 1e-3 (km); "
               "followed here, probably an off-by-one in that library")


def rosetta_planes(channel: str, extended: bool = False) -> list[GeoPlane]:
    """Rosetta geometry planes: .GEO 23 (M) / 31 (H), .GE5 100 (M) / 112 (H).

    HITS: Rosetta VIRTIS_M_VIS/VIRTIS_M_IR ``*.GEO`` (23) and ``*.GE5`` (100),
    VIRTIS_H ``*.GEO`` (31) and ``*.GE5`` (112).
    """
    planes = _rosetta_base()
    if channel == "VIRTIS_H":
        planes += _rosetta_h_frame()
        if extended:
            planes += [_deg("SLIT_TO_NORTH_POLE_ANGLE"),
                       GeoPlane("SUB_SPACECRAFT_X", "km", 1e-4, _OFF_BY_ONE),
                       _km("SUB_SPACECRAFT_Y"), _km("SUB_SPACECRAFT_Z")]
    else:
        planes.append(_count("FRAME_COMMON"))
    return planes + (_extended_block() if extended else [])


def vex_planes(channel: str) -> list[GeoPlane]:
    """Venus Express .GEO planes: 33 for M, 41 for H (surface and cloud-top geometry).

    HITS: VEX VIRTIS_M_VIS/VIRTIS_M_IR ``*.GEO`` (33 planes), VIRTIS_H ``*.GEO`` (41 planes).
    """
    planes = [_deg(n) for n in _corners("SURFACE_")]  # 0-9
    planes += [_deg("INCIDENCE_SURFACE"), _deg("EMERGENCE_SURFACE"), _deg("PHASE_SURFACE")]
    planes += [_km("SURFACE_ELEVATION"), _km("SLANT_DISTANCE")]  # 13-14
    planes.append(GeoPlane("LOCAL_TIME", "h", 1e-5))  # 15
    planes += [_deg(n) for n in _corners("CLOUD_")]  # 16-25
    planes += [_deg("INCIDENCE_CLOUDS"), _deg("EMERGENCE_CLOUDS"), _deg("PHASE_CLOUDS")]
    planes.append(_km("ELEVATION_BELOW_CLOUDS"))  # 29
    planes += [_deg("RIGHT_ASCENSION"), _deg("DECLINATION")]  # 30-31
    if channel == "VIRTIS_H":
        planes += [_count("SCET_1"), _count("SCET_2"), _count("UTC_1"), _count("UTC_2")]
        planes += [_deg(n) for n in ("SUB_SPACECRAFT_LONGITUDE", "SUB_SPACECRAFT_LATITUDE",
                                     "SLIT_ORIENTATION", "SUN_BORESIGHT_ANGLE_X",
                                     "SUN_BORESIGHT_ANGLE_Y")]
    else:
        planes.append(_count("FRAME_COMMON"))
    return planes


def geometry_planes(mission: str, channel: str, count: int) -> list[GeoPlane] | None:
    """The plane table for a product, chosen by its plane count; None when no table has
    that many planes (the caller warns and keeps the stored integers)."""
    if mission == "VEX":
        tables = [vex_planes(channel)]
    else:
        tables = [rosetta_planes(channel), rosetta_planes(channel, extended=True)]
    for table in tables:
        if len(table) == count:
            return table
    return None
