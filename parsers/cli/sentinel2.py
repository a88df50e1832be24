"""``python -m parsers.sentinel2 PRODUCT``: summarise or export a Sentinel-2 product.

The product is read by :func:`parsers.sentinel2.read` as a ``(bands, lines, samples)`` uint16
cube on the 10 m grid; ``--json`` prints the summary as one JSON object, ``--export`` writes
``.npy`` or a GeoTIFF atomically.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from parsers.errors import cli_entry
from parsers.sentinel2 import SCL_REJECT, Sentinel2Settings, check_bands, export, read
from parsers.settings import load_section


def format_summary(info: Mapping[str, Any]) -> str:
    """The human-readable summary the CLI prints."""
    offsets = info["offsets"]
    if offsets:
        radiometry = (f"offset {','.join(str(o) for o in offsets)} listed in the metadata, "
                      + ("harmonised (DN' = DN + offset)" if info["harmonised"] else
                         "NOT harmonised (raw DNs)"))
    else:
        radiometry = "no offset listed (DNs as stored)"
    t = info["transform"]
    lines = [
        f"product     {info['product_id']}",
        f"source      {info['source']}",
        f"level       {info['level'] or '?'}   baseline {info['baseline'] or '?'}   {radiometry}",
        f"bands       {' '.join(info['bands'])} ({len(info['bands'])}), "
        f"resampling {info['resampling']}",
        f"grid        {info['crs']}  {info['shape'][1]} lines x {info['shape'][2]} samples  "
        f"{info['resolution_m']:g} m  upper-left ({t[2]:.1f}, {t[5]:.1f})",
        f"transform   ({', '.join(f'{v:.10g}' for v in t)})",
        f"valid       {100 * info['valid_fraction']:.2f} % of pixels (DN > 0 in every band)",
    ]
    if "scl_fractions" in info:
        parts = ", ".join(f"{k} {100 * v:.1f}%" for k, v in info["scl_fractions"].items())
        lines.append(f"scl         {parts}")
        lines.append(f"usable      {100 * info['usable_fraction']:.2f} % (valid and SCL not "
                     f"in {list(SCL_REJECT)})")
    lines.append("band        min      max     mean   (valid pixels)")
    for b in info["band_stats"]:
        if b["min"] is None:
            lines.append(f"{b['band']:<6}          -        -        -")
        else:
            lines.append(f"{b['band']:<6} {b['min']:>8} {b['max']:>8} {b['mean']:>8.1f}")
    return "\n".join(lines)


@cli_entry("python -m parsers.sentinel2")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parsers.sentinel2",
        description="Summarise (and optionally export) a Sentinel-2 product as a 9-band "
                    "uint16 cube on the 10 m grid.",
    )
    parser.add_argument("path", help="SAFE folder or zip, band folder, multi-band GeoTIFF")
    parser.add_argument("--params", default=None,
                        help="params file (section datasets.NAME.reader: bands, resampling, "
                             "harmonise); default params.yaml when present")
    parser.add_argument("--dataset", default="sentinel2", metavar="NAME",
                        help="the data set whose reader settings apply (default sentinel2)")
    parser.add_argument("--bands", help="comma-separated band list, e.g. B02,B03,B04,B05,B06,"
                                        "B07,B8A,B11,B12 (overrides params)")
    parser.add_argument("--resampling", choices=("nearest", "bilinear"), default=None)
    parser.add_argument("--no-harmonise", action="store_true",
                        help="keep the raw DNs of PB >= 04.00 products (+1000 offset)")
    parser.add_argument("--window", type=int, nargs=4, metavar=("ROW", "COL", "H", "W"),
                        help="read only this window of the 10 m grid")
    parser.add_argument("--file-bands", help="band names of a multi-band file, in file order")
    parser.add_argument("--metadata", help="MTD_MSIL1C/2A xml for a non-SAFE input")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--export", metavar="OUT", help="write the cube to OUT.npy or OUT.tif")
    args = parser.parse_args(argv)

    settings = load_section(Sentinel2Settings, f"datasets.{args.dataset}.reader", args.params)
    bands = check_bands(args.bands) if args.bands else settings.bands
    options: dict[str, Any] = {}
    if args.file_bands:
        options["file_bands"] = [b for b in re.split(r"[,\s]+", args.file_bands) if b]
    if args.metadata:
        options["metadata"] = args.metadata
    stack = read(args.path, bands, args.resampling or settings.resampling,
                 settings.harmonise and not args.no_harmonise, window=args.window, **options)
    if args.export:
        export(stack, args.export)
    info = stack.summary()
    if args.export:
        info["exported"] = args.export
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_summary(info))
        if args.export:
            print(f"exported    {args.export}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
