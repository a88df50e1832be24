"""Where the heavy dataset stages run their tasks (statistics, tiles).

A stage describes its work as pure functions of file paths; this module runs them on
``synchronous`` (one thread, for debugging), ``threads``, ``processes`` (local pools, the
same ``concurrent.futures`` pools dask's local schedulers use, fed with a sliding window) or
``tcp://host:port`` (an existing ``dask.distributed`` scheduler: a LocalCluster, a
``dask-jobqueue`` cluster on Slurm/PBS, ...; workers must see the same file paths and have
the project installed). Results never depend on the scheduler: stages fix the task
boundaries and the order in which results are combined.

A worker that dies mid-task (killed, out of memory, node lost) is handled by dask.distributed:
the scheduler gives its tasks to another worker (a task is retried up to
``distributed.scheduler.allowed-failures`` times, 3 by default), and since every task only
reads its input files, the output is the same.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from parsers.errors import ParamsError, UserError

CONNECT_TIMEOUT = "10s"  # how long to try reaching a tcp:// scheduler
LOCAL = ("threads", "processes", "synchronous")


def check_scheduler(value: str) -> str:
    """Return ``value`` if it names a scheduler we can use, else raise ParamsError."""
    if value in LOCAL or value.startswith("tcp://"):
        return value
    raise ParamsError(
        f"scheduler {value!r}: expected threads, processes, synchronous or tcp://host:port"
    )


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A ``distributed.Client`` on the scheduler at ``address`` (UserError if unreachable)."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError(
            "--scheduler tcp://... needs dask.distributed: pip install 'sscnet-pipeline[cluster]'"
        ) from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise UserError(f"cannot reach the dask scheduler at {address}: {exc}") from None
    with client:
        yield client


def ordered_map(
    fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], scheduler: str = "threads",
    workers: int = 0, window: int = 0, preload: Sequence[str] = (),
) -> Iterator[Any]:
    """Yield ``fn(*call)`` for every call, in the order of ``calls``, computed on ``scheduler``.

    At most ``window`` calls (default: twice the worker count) are submitted and not yet
    yielded at a time, so the results held in memory stay bounded whatever the number of
    calls; as soon as the oldest result is taken, the next call is submitted (no worker
    waits for a slow neighbour). ``preload``: modules the worker processes of the
    ``processes`` scheduler import once, before they start (see :func:`process_pool`).
    """
    check_scheduler(scheduler)
    if scheduler.startswith("tcp://"):
        yield from _ordered_map_distributed(fn, calls, scheduler, window)
        return
    if scheduler == "synchronous":
        for call in calls:
            yield fn(*call)
        return
    n = workers or os.cpu_count() or 1
    pool = ThreadPoolExecutor(n) if scheduler == "threads" else process_pool(n, preload)
    try:
        yield from _sliding(pool.submit, fn, calls, window or 2 * n)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _sliding(submit: Callable[..., Any], fn: Callable[..., Any],
             calls: Sequence[tuple[Any, ...]], window: int) -> Iterator[Any]:
    pending: collections.deque[Any] = collections.deque()
    rest = iter(calls)
    for call in itertools.islice(rest, window):
        pending.append(submit(fn, *call))
    while pending:
        result = pending.popleft().result()
        call = next(rest, None)
        if call is not None:
            pending.append(submit(fn, *call))
        yield result


def process_pool(workers: int = 0, preload: Sequence[str] = ()) -> Any:
    """A pool of worker processes; ``forkserver`` where the platform has it, else ``spawn``.

    With ``forkserver`` one server process imports ``preload`` (numpy, numba and the compiled
    kernels, h5py, ...) once and every worker is forked from it ready to run, instead of
    each worker importing them again (about a second of CPU each, which is most of a small
    stage's time). Both methods start clean processes: no thread or lock of the calling
    process is copied into a worker.
    """
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", *preload])
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=context)


def _ordered_map_distributed(
    fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], address: str, window: int,
) -> Iterator[Any]:
    with connect(address) as client:
        if not window:
            threads = sum(client.nthreads().values())
            window = 2 * max(1, threads)
        futures: list[Any] = []
        submitted = 0

        def submit_more() -> None:
            nonlocal submitted
            while submitted < len(calls) and len(futures) < window:
                futures.append(client.submit(fn, *calls[submitted], pure=True))
                submitted += 1

        submit_more()
        while futures:
            head = futures.pop(0)
            result = head.result()
            head.release()
            submit_more()
            yield result
