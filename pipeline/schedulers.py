"""The dask schedulers the heavy dataset stages run on (statistics, tiles).

A stage describes its work as pure functions of file paths; this module runs them on
``synchronous`` (one thread, for debugging), ``threads``, ``processes`` (local pools) or
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

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
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


def local_compute_kwargs(scheduler: str, workers: int) -> dict[str, Any]:
    """Keyword arguments of ``dask.compute`` for a local scheduler."""
    kwargs: dict[str, Any] = {"scheduler": scheduler}
    if workers and scheduler != "synchronous":
        kwargs["num_workers"] = workers
    return kwargs


def ordered_map(
    fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], scheduler: str = "threads",
    workers: int = 0, window: int = 0,
) -> Iterator[Any]:
    """Yield ``fn(*call)`` for every call, in the order of ``calls``, computed on ``scheduler``.

    At most ``window`` calls (default: twice the worker count) are computed at a time, so
    the results held in memory stay bounded whatever the number of calls; each group of
    ``window`` calls runs in parallel and is yielded in order before the next one starts.
    """
    import dask

    check_scheduler(scheduler)
    if scheduler.startswith("tcp://"):
        yield from _ordered_map_distributed(fn, calls, scheduler, window)
        return
    if not window:
        window = 2 * (workers or os.cpu_count() or 1)
    kwargs = local_compute_kwargs(scheduler, workers)
    with contextlib.ExitStack() as stack:
        if scheduler == "processes":  # one pool for all groups: workers start once
            kwargs = {"scheduler": scheduler, "pool": stack.enter_context(process_pool(workers))}
        for a in range(0, len(calls), window):
            group = [dask.delayed(fn, pure=True)(*c) for c in calls[a:a + window]]
            yield from dask.compute(*group, **kwargs)


def process_pool(workers: int = 0) -> Any:
    """A process pool like the one dask's ``processes`` scheduler makes for each compute."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import dask

    context = multiprocessing.get_context(dask.config.get("multiprocessing.context", "spawn"))
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
