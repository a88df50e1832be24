"""Fuzz the readers at scale: ``python benchmarks/fuzz_readers.py --cases 100000``.

Feeds mutated products (truncations, bit flips, byte overwrites, label edits, absurd
dimensions; see :mod:`pipeline.synthetic.fuzz`) built from the vendored real files in
``tests/data`` and from synthetic products to ``parsers.pds3``, ``parsers.virtis``,
``parsers.sentinel2`` and ``parsers.cube`` (ENVI and GeoTIFF too), in worker processes with
an address-space limit. The claim (docs/robustness.md): zero uncaught exceptions, no case
slower than 1 s, bounded memory. Prints the counts, the slowest case, the peak worker RSS,
the machine and its load, and every finding with the case index to rebuild it
(``--reproduce INDEX --out DIR``). Exit status 1 when there is any finding.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.synthetic import fuzz  # noqa: E402


def machine() -> str:
    cpus = os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {cpus} CPUs {model}, Python "
            f"{platform.python_version()}; load average {load}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--start", type=int, default=0, help="first case index")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--data", type=Path, default=REPO / "tests" / "data")
    p.add_argument("--reproduce", type=int, metavar="INDEX",
                   help="write the product of one case under --out and stop")
    p.add_argument("--out", type=Path, default=Path("fuzz-cases"))
    args = p.parse_args()
    if args.reproduce is not None:
        print(fuzz.reproduce(args.reproduce, args.seed, args.data, args.out))
        return 0
    print(f"machine: {machine()}", flush=True)

    shown = [0]

    def progress(report: fuzz.Report) -> None:
        print(f"  {report.cases} cases, {dict(report.outcomes)}, slowest "
              f"{report.max_seconds:.2f} s", flush=True)
        for r in report.failures[shown[0]:]:
            print(f"  found: {r.outcome} case {r.case.index} {r.case.seed} {r.case.mutation} "
                  f"-> {r.case.reader}: {r.detail}", flush=True)
        shown[0] = len(report.failures)

    report = fuzz.run(args.cases, seed=args.seed, start=args.start, workers=args.workers,
                      data=args.data, progress=progress)
    print(fuzz.summary(report), end="")
    print(f"after: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
