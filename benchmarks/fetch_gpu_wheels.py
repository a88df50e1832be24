"""Download the wheels that ``benchmarks/gpu_check.sh`` needs on an offline GPU machine.

    python benchmarks/fetch_gpu_wheels.py            # into benchmarks/wheels/ (git-ignored)
    python benchmarks/fetch_gpu_wheels.py --check    # only verify what is already there

The GPU machine runs Python 3.12 with a CUDA torch, numpy, h5py, tqdm and pyyaml, and cannot
reach a package index. Everything else the check imports travels with the repository copy
as cp312 manylinux wheels: exactly the pinned list below (the versions the CPU test suite
runs with), nothing more. The script then checks that

* every requirement of every wheel (for Python 3.12 on Linux x86-64) is either in the list
  or part of the GPU image (``IMAGE``), and
* the repository's tracked files plus the wheels stay under ``--limit-mib`` (default 60 MiB;
  the machine takes at most 64 MiB).

Left out on purpose: hdf5plugin (46 MB; the check writes its tile files without Blosc2 when
it is missing) and dvclive/dvc (hundreds of MB; training then logs to stdout and last.pt).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "benchmarks" / "wheels"

#: distribution -> (version, why the GPU check needs it)
WHEELS: dict[str, tuple[str, str]] = {
    "pytest": ("9.2.0", "runs the gpu-marked tests"),
    "pluggy": ("1.7.0", "pytest"),
    "iniconfig": ("2.3.1", "pytest"),
    "packaging": ("26.4", "pytest, matplotlib"),
    "pygments": ("2.21.0", "pytest"),
    "imagecodecs": ("2026.3.6", "training.evaluate imports the baseline codecs"),
    "matplotlib": ("3.11.2", "training.evaluate writes its figures"),
    "contourpy": ("1.3.3", "matplotlib"),
    "cycler": ("0.12.1", "matplotlib"),
    "fonttools": ("4.68.0", "matplotlib"),
    "kiwisolver": ("1.5.1", "matplotlib"),
    "pillow": ("13.0.0", "matplotlib"),
    "pyparsing": ("3.3.3", "matplotlib"),
    "python-dateutil": ("2.9.0.post0", "matplotlib"),
    "six": ("1.17.0", "python-dateutil"),
}

#: Distributions the GPU image already holds (the CUDA torch brings the rest of this list).
IMAGE = {
    "torch", "numpy", "h5py", "tqdm", "pyyaml", "filelock", "typing-extensions", "sympy",
    "mpmath", "networkx", "jinja2", "markupsafe", "fsspec", "setuptools", "triton",
}

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "extra": ""}


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def download(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
           "--dest", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += [f"{name}=={version}" for name, (version, _) in WHEELS.items()]
    subprocess.run(cmd, check=True)


def wheel_name(path: Path) -> tuple[str, str]:
    """(canonical distribution name, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def remove_strays(dest: Path) -> list[str]:
    """Delete wheels that are not (this version of) a listed distribution."""
    removed = []
    for path in sorted(dest.glob("*.whl")):
        name, version = wheel_name(path)
        if WHEELS.get(name, ("",))[0] != version:
            path.unlink()
            removed.append(path.name)
    return removed


def requirements(path: Path) -> list[str]:
    """Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def check(dest: Path) -> list[str]:
    """Problems with the wheel folder: missing wheels and unmet requirements."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    problems = []
    present = {wheel_name(p)[0]: p for p in dest.glob("*.whl")}
    problems += [f"missing wheel {n}=={v}" for n, (v, _) in WHEELS.items() if n not in present]
    for name, path in sorted(present.items()):
        for line in requirements(path):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
                continue
            dep = canonical(req.name)
            if dep in IMAGE:
                continue
            if dep not in WHEELS:
                problems.append(f"{name} needs {line}: neither a listed wheel nor in the image")
            elif not req.specifier.contains(Version(WHEELS[dep][0]), prereleases=True):
                problems.append(f"{name} needs {line}, but the list pins {dep} "
                                f"{WHEELS[dep][0]}")
    return problems


def tracked_bytes() -> int:
    """Bytes of the files git tracks in the repository (what travels besides the wheels)."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                         check=True).stdout
    return sum((REPO / name).stat().st_size for name in out.decode().split("\0")
               if name and (REPO / name).is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", type=Path, default=DEST)
    ap.add_argument("--check", action="store_true", help="verify only, download nothing")
    ap.add_argument("--limit-mib", type=float, default=60.0)
    args = ap.parse_args(argv)
    if not args.check:
        download(args.dest)
        for name in remove_strays(args.dest):
            print(f"removed {name} (not in the list)")
    problems = check(args.dest)
    wheels = sum(p.stat().st_size for p in args.dest.glob("*.whl"))
    repo = tracked_bytes()
    total_mib = (wheels + repo) / 2**20
    print(f"{len(list(args.dest.glob('*.whl')))} wheels, {wheels / 2**20:.1f} MiB, in "
          f"{args.dest}; repository {repo / 2**20:.1f} MiB; together {total_mib:.1f} MiB "
          f"(limit {args.limit_mib:g} MiB)")
    if total_mib > args.limit_mib:
        problems.append(f"repository + wheels {total_mib:.1f} MiB > {args.limit_mib:g} MiB")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
