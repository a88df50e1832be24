"""Statistics and tiles give the same results on every scheduler, also when a worker dies.

Byte-identical tile files and bit-identical statistics for: serial (synchronous), 2 threads,
2 processes and a 2-worker dask.distributed LocalCluster (``tcp://``).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from pipeline.products import list_products
from pipeline.stats import (
    HistogramSpec,
    StatsParams,
    compute_stats,
    make_tasks,
    product_metadata,
    stats_document,
)
from pipeline.tiles import TileParams, write_split_tiles

FIELDS = ("count", "invalid", "minimum", "maximum", "mean", "m2", "hist")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Two small sources: VIRTIS cal cubes (NaN specials) and Sentinel-2 L2A SAFEs (masks)."""
    from pipeline.synthetic.datasets import s2_download_dir, virtis_download_dir

    root = tmp_path_factory.mktemp("raw")
    out = {}
    for source, folder in (
        ("virtis", virtis_download_dir(root / "virtis", n=3, bands=16, lines=48, samples=32)),
        ("sentinel2", s2_download_dir(root / "s2", n=2, size=96)),
    ):
        refs = list_products(folder, source, ["cal"] if source == "virtis" else None)
        stats = compute_stats(source, make_tasks(source, refs), HistogramSpec(),
                              "synchronous", progress=False)
        doc = stats_document(source, stats, [r.product_id for r in refs], StatsParams(),
                             product_metadata(source, refs[0]))
        out[source] = (refs, stats, doc)
    return out


def run_both(tmp_path, datasets, scheduler, workers=2):
    """(statistics, tile file bytes) per source on one scheduler, several tasks per product."""
    results = {}
    for source, (refs, _, doc) in datasets.items():
        stats = compute_stats(source, make_tasks(source, refs, task_lines=16),
                              HistogramSpec(), scheduler, workers, chunk_mb=0.01,
                              progress=False)
        params = TileParams(size=16, scheduler=scheduler, workers=workers, task_mb=0.02)
        out = tmp_path / f"{source}-{scheduler.replace('/', '_').replace(':', '_')}.h5"
        counts = write_split_tiles(out, source, "train", refs, params, doc, progress=False)
        assert counts["kept"] > 0
        results[source] = (stats, out.read_bytes())
    return results


def assert_same(results, reference):
    for source, (stats, blob) in results.items():
        ref_stats, ref_blob = reference[source]
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(stats, name), getattr(ref_stats, name))
        assert blob == ref_blob, f"{source}: tile files differ"


@pytest.mark.slow
def test_local_schedulers_give_identical_outputs(tmp_path, datasets):
    serial = run_both(tmp_path, datasets, "synchronous", 1)
    assert_same(run_both(tmp_path, datasets, "threads", 2), serial)
    assert_same(run_both(tmp_path, datasets, "processes", 2), serial)


@pytest.mark.slow
def test_local_cluster_and_a_killed_worker_give_identical_outputs(tmp_path, datasets):
    distributed = pytest.importorskip("distributed")
    serial = run_both(tmp_path, datasets, "synchronous", 1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert_same(run_both(tmp_path, datasets, address), serial)
        killer = WorkerKiller(address)
        killer.start()
        try:
            assert_same(run_both(tmp_path, datasets, address), serial)
        finally:
            killer.join()
        assert killer.killed, "no worker was busy while the stages ran"


class WorkerKiller(threading.Thread):
    """SIGKILL the first worker seen with a task assigned (once), from a second client."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address, self.killed = address, None
        from distributed import Client

        self.client = Client(address)
        self.pids = self.client.run(os.getpid)

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                busy = [w for w, keys in self.client.processing().items() if keys]
                if busy:
                    os.kill(self.pids[busy[0]], signal.SIGKILL)
                    self.killed = busy[0]
                    return
                time.sleep(0.005)
        finally:
            self.client.close()
