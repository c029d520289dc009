"""Spawned worker processes for whole-ledger scans (`log verify`, `log verify --indexes`)."""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

R = TypeVar("R")


def map_in_workers(
    jobs: int,
    open_in_worker: Callable[[Any], None],
    opened_with: object,
    work: Callable[..., R],
    *arguments: Iterable[Any],
    here: Callable[..., R] | None = None,
    done: Callable[[int], None] | None = None,
) -> Iterator[R]:
    """`work(*args)` for each tuple of `arguments`, in `jobs` processes that each first ran
    `open_in_worker(opened_with)` (e.g. to open the ledger once); results in input order.
    Spawned, not forked: no SQLite handle crosses a fork.

    With `here` (the same work on this process's own resources), this process is one of the
    `jobs`: while the others start (an interpreter and its imports each, a few tenths of a
    second) and after, it runs the tasks none of them has taken yet, from the last one back.

    `done(position)` is told of each task that succeeded as it does, in whatever order they
    finish (for a progress bar), from this thread or the pool's."""
    tasks = list(zip(*arguments, strict=True))
    tell = done if done is not None else _nobody
    if here is not None and jobs <= 1:
        for position, task in enumerate(tasks):
            result = here(*task)
            tell(position)
            yield result
        return
    spawn = multiprocessing.get_context("spawn")
    workers = jobs - 1 if here is not None else jobs
    with ProcessPoolExecutor(
        workers, mp_context=spawn, initializer=open_in_worker, initargs=(opened_with,)
    ) as pool:
        futures = [pool.submit(work, *task) for task in tasks]
        for position, future in enumerate(futures):
            future.add_done_callback(functools.partial(_tell_success, tell, position))
        try:
            if here is None:
                for future in futures:
                    yield future.result()
            else:
                yield from _shared(futures, tasks, here, tell)
        finally:
            for future in futures:  # stopped early: what no worker has started, never runs
                future.cancel()


def _nobody(_: int) -> None:
    pass


def _tell_success(tell: Callable[[int], None], position: int, future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None:
        tell(position)


def _shared(
    futures: Sequence[Future[R]],
    tasks: Sequence[tuple[Any, ...]],
    here: Callable[..., R],
    tell: Callable[[int], None],
) -> Iterator[R]:
    """Results in order, this process taking queued tasks from the back (a future it can
    cancel is one no worker has started; the pool marks a few queued ones started early)
    until it meets the workers. A task of its own that failed is raised in its turn: an
    earlier one may fail too, so this process goes on helping with those meanwhile."""
    done_here: dict[int, Callable[[], R]] = {}
    at, last = 0, len(tasks)
    while last > at and futures[last - 1].cancel():
        last -= 1
        done_here[last] = outcome = _outcome(here, tasks[last])
        if not isinstance(outcome, _Raise):
            tell(last)
        while at < last and futures[at].done():
            yield futures[at].result()
            at += 1
    for index in range(at, len(tasks)):
        yield done_here[index]() if index in done_here else futures[index].result()


class _Raise:
    """A task's exception, raised when its result's turn comes."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self) -> Any:
        raise self.exc


def _outcome(here: Callable[..., R], task: tuple[Any, ...]) -> Callable[[], R]:
    try:
        value = here(*task)
    except Exception as exc:  # e.g. VerificationError: an earlier task's must come first
        return _Raise(exc)
    return lambda: value
