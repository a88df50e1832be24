"""Download throughput and memory of pipeline.download_pds against one curl of the same bytes.

    python benchmarks/bench_download.py [--files 8] [--size-mb 10] [--jobs 4] [--repeat 3]

1. Writes a synthetic PSA archive of ``--files`` VIRTIS-M VIS calibrated cubes of about
   ``--size-mb`` MB each and serves it with ``pipeline.synthetic.servers.files`` on 127.0.0.1.
2. Times (best of ``--repeat``, into a fresh folder each time):
   - one ``curl`` process fetching all files one after another (keep-alive), writing files;
   - ``curl -Z`` (parallel, ``--jobs`` connections) when this curl has it;
   - the stage ``python -m pipeline.download_pds`` (index, transfer, sha256, reader check,
     manifest) with ``--jobs 1`` and ``--jobs N``, each in a child process;
   - the engine alone (``pipeline.fetch.fetch_all``, no verification), ``--jobs N``;
   first on plain loopback (CPU-bound: curl does no sha256 and starts in milliseconds, so a
   "curl, then sha256sum" row shows the same work), then with the server capped at
   ``--link-mbps`` MB/s per connection, as over a real network (network-bound).
3. Peak RSS of the stage's child process with these files and with files 8x smaller:
   a streamed download keeps the two about equal.
Prints the machine first; on a shared machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASET = "RO-C-VIRTIS-3-ESC1-MTP010-V2.0"
BANDS, SAMPLES = 432, 64


def _child(argv: list[str]) -> int:
    """Runs in a child process: one download, then prints seconds and peak RSS as JSON."""
    mode, url, out, jobs = argv[0], argv[1], Path(argv[2]), int(argv[3])
    t0 = time.perf_counter()
    if mode == "stage":
        from pipeline import download_pds

        params = out.parent / f"{out.name}.params.yaml"
        params.write_text("download_pds:\n  channels: [VIRTIS_M_VIS]\n  product_types: [cal]\n")
        rc = download_pds.main(["--params", str(params), "--base-url", url, "--out", str(out),
                                "--dataset", DATASET, "--max-files", "0", "--jobs", str(jobs),
                                "--no-progress"])
        if rc:
            return rc
    else:
        from pipeline.fetch import FetchJob, fetch_all, make_session

        urls = json.loads(argv[4])
        with make_session() as session:
            results = fetch_all(session, [FetchJob(u, out / u.rsplit("/", 1)[1]) for u in urls],
                                max_workers=jobs, progress=False)
        if not all(r.ok for r in results):
            print([r.error for r in results if not r.ok], file=sys.stderr)
            return 1
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "rss_mib": _peak_rss_kib() / 1024}))
    return 0


def _peak_rss_kib() -> int:
    """Peak RSS of this process since exec (Linux VmHWM; ru_maxrss can include the memory of
    the parent it was forked from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _run_child(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
    )
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _curl(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "NO_PROXY": "127.0.0.1"})
    return time.perf_counter() - t0


def _build(root: Path, files: int, size_mb: float) -> tuple[list[str], int]:
    from pipeline.synthetic.psa_archive import build_psa_archive

    lines = max(2, round(size_mb * 1e6 / (BANDS * SAMPLES * 4)))
    products = build_psa_archive(root, datasets=[DATASET], products_per_dataset=files,
                                 bands=BANDS, samples=SAMPLES, lines=lines)
    return [f"{DATASET}/{p.path}" for p in products], sum(p.size for p in products)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mb", type=float, default=10.0, help="approximate MB per file")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--link-mbps", type=float, default=20.0,
                        help="also measure with the server capped at this many MB/s per "
                        "connection, like a real archive link (0: skip)")
    args = parser.parse_args()

    from pipeline.synthetic.servers.files import serve_directory

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    curl = shutil.which("curl")
    curl_version = (subprocess.run([curl, "--version"], capture_output=True, text=True)
                    .stdout.split("\n")[0] if curl else "curl not found: no curl baseline")
    print(curl_version)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        rels, total = _build(tmp / "psa", args.files, args.size_mb)
        print(f"archive: {args.files} files, {total / 1e6:.1f} MB in all "
              f"(built in {time.perf_counter() - t0:.1f} s); served on 127.0.0.1; "
              f"best of {args.repeat}; times include process start-up")
        _, small_total = _build(tmp / "psa_small", args.files, args.size_mb / 8)
        links = [None] + ([args.link_mbps * 1e6] if args.link_mbps > 0 else [])
        stage_rss = None
        for bandwidth in links:
            rows = _measure(tmp, rels, args, curl, bandwidth)
            title = ("loopback, unthrottled (CPU-bound)" if bandwidth is None else
                     f"link capped at {bandwidth / 1e6:g} MB/s per connection (network-bound)")
            _print_table(title, rows, total)
            stage_rss = stage_rss or max(r[2] or 0 for r in rows)
        with serve_directory(tmp / "psa_small") as url:
            small = _run_child(["stage", url, str(tmp / "small_out"), str(args.jobs), "[]"])
    print(f"\npeak RSS of the stage: {stage_rss:.0f} MiB with {total / args.files / 1e6:.1f} MB "
          f"files, {small['rss_mib']:.0f} MiB with {small_total / args.files / 1e6:.2f} MB files "
          f"(difference {stage_rss - small['rss_mib']:+.0f} MiB; bodies stream in 1 MiB chunks, "
          f"at most 5 MiB in flight per transfer)")
    return 0


def _measure(tmp: Path, rels: list[str], args: argparse.Namespace, curl: str | None,
             bandwidth: float | None) -> list[tuple[str, float, float | None]]:
    from pipeline.synthetic.servers.files import Faults, serve_directory

    rows: list[tuple[str, float, float | None]] = []
    counter = iter(range(10**6))

    def fresh() -> Path:
        d = tmp / f"run{next(counter)}"
        d.mkdir()
        return d

    def clean() -> None:
        for d in tmp.glob("run*"):
            shutil.rmtree(d, ignore_errors=True)

    with serve_directory(tmp / "psa", Faults(bandwidth=bandwidth)) as url:
        urls = [url + r for r in rels]

        def curl_args(d: Path) -> list[str]:
            return [a for i, u in enumerate(urls) for a in (u, "-o", str(d / f"{i}"))]

        if curl:
            times = []
            for _ in range(args.repeat):
                times.append(_curl([curl, "-sS", "--fail", *curl_args(fresh())]))
                clean()
            rows.append(("curl, 1 process, sequential", min(times), None))
            if bandwidth is None and shutil.which("sha256sum"):
                times = []
                for _ in range(args.repeat):
                    d = fresh()
                    t = _curl([curl, "-sS", "--fail", *curl_args(d)])
                    t0 = time.perf_counter()
                    subprocess.run(["sha256sum", *map(str, sorted(d.iterdir()))], check=True,
                                   capture_output=True)
                    times.append(t + time.perf_counter() - t0)
                    clean()
                rows.append(("curl, then sha256sum (same work)", min(times), None))
            if "-Z" in subprocess.run([curl, "--help", "all"], capture_output=True,
                                      text=True).stdout:
                times = []
                for _ in range(args.repeat):
                    times.append(_curl([curl, "-sS", "--no-progress-meter", "--fail", "-Z",
                                        "--parallel-max", str(args.jobs), *curl_args(fresh())]))
                    clean()
                rows.append((f"curl -Z, {args.jobs} parallel", min(times), None))
        for label, mode, jobs in (
            ("download_pds stage, --jobs 1", "stage", 1),
            (f"download_pds stage, --jobs {args.jobs}", "stage", args.jobs),
            (f"fetch_all engine only, {args.jobs} workers", "engine", args.jobs),
        ):
            runs = []
            for _ in range(args.repeat):
                runs.append(_run_child([mode, url, str(fresh() / "out"), str(jobs),
                                        json.dumps(urls)]))
                clean()
            rows.append((label, min(x["seconds"] for x in runs), max(x["rss_mib"] for x in runs)))
    return rows


def _print_table(title: str, rows: list[tuple[str, float, float | None]], total: int) -> None:
    ref = rows[0][1] if rows and rows[0][0].startswith("curl") else None
    print(f"\n{title}")
    print(f"{'method':<42} {'seconds':>8} {'MB/s':>8} {'vs curl':>8} {'peak RSS':>10}")
    for label, seconds, rss in rows:
        rate = total / 1e6 / seconds
        ratio = f"{ref / seconds:.0%}" if ref else "-"
        rss_text = f"{rss:.0f} MiB" if rss is not None else "-"
        print(f"{label:<42} {seconds:8.3f} {rate:8.1f} {ratio:>8} {rss_text:>10}")


if __name__ == "__main__":
    raise SystemExit(main())
