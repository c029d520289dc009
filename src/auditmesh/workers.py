"""Spawned worker processes for whole-ledger scans (`log verify`, `log verify --indexes`)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

R = TypeVar("R")


def map_in_workers(
    jobs: int,
    open_in_worker: Callable[[Any], None],
    opened_with: object,
    work: Callable[..., R],
    *arguments: Iterable[Any],
) -> Iterator[R]:
    """`work(*args)` for each tuple of `arguments`, in `jobs` processes that each first ran
    `open_in_worker(opened_with)` (e.g. to open the ledger once); results in input order.
    Spawned, not forked: no SQLite handle crosses a fork."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=spawn, initializer=open_in_worker, initargs=(opened_with,)
    ) as pool:
        yield from pool.map(work, *arguments)
