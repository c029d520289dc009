"""`workers.map_in_workers`: results in input order from spawned workers, and from this process
too when it takes part (`here`)."""

from __future__ import annotations

import os
import time

import pytest

from auditmesh.workers import map_in_workers

FAILING = {3, 40}


def _opened(_: object) -> None:
    pass


def _task(number: int) -> tuple[int, int]:
    """Long enough (10 ms) that this process cannot finish every task before a worker has
    started."""
    time.sleep(0.01)
    if number in FAILING:
        raise ValueError(number)
    return number, os.getpid()


def test_results_in_order_from_workers_alone() -> None:
    results = list(map_in_workers(2, _opened, None, _task, [0, 1, 2]))
    assert [n for n, _ in results] == [0, 1, 2]
    assert os.getpid() not in {pid for _, pid in results}


def test_this_process_takes_part_and_order_holds() -> None:
    """With `here`, this process runs the tasks no worker has started, from the back, and the
    one worker the queue's head; every task runs once and comes back in order."""
    numbers = [n for n in range(60) if n not in FAILING]
    results = list(map_in_workers(2, _opened, None, _task, numbers, here=_task))
    assert [n for n, _ in results] == numbers
    pids = {pid for _, pid in results}
    assert os.getpid() in pids and len(pids) == 2  # a spawned worker did some too
    assert {pid for n, pid in results if n >= 50} == {os.getpid()}  # the tail ran here


def test_the_first_failure_in_order_is_raised() -> None:
    """Task 40 fails in this process before task 3 fails in the worker: 3's error is the one
    raised, after the results before it, as with one process."""
    seen: list[int] = []
    with pytest.raises(ValueError, match="^3$"):
        for number, _ in map_in_workers(2, _opened, None, _task, range(60), here=_task):
            seen.append(number)
    assert seen == [0, 1, 2]


def test_one_job_with_here_runs_everything_here() -> None:
    results = list(map_in_workers(1, _opened, None, _task, [0, 1, 2], here=_task))
    assert results == [(0, os.getpid()), (1, os.getpid()), (2, os.getpid())]


def test_this_process_goes_on_helping_after_a_task_of_its_own_failed() -> None:
    """Task 59 fails here first; the error is raised only in its turn, and until then this
    process still takes the tasks before it, rather than leaving them all to the worker."""
    ran_here: list[int] = []

    def here(number: int) -> tuple[int, int]:
        ran_here.append(number)
        return _task(number if number != 59 else 3)  # 3 fails, as task 3 does

    with pytest.raises(ValueError, match="^3$"):
        list(map_in_workers(2, _opened, None, _task, range(60), here=here))
    assert ran_here[0] == 59 and len(ran_here) > 1


def test_done_is_told_of_each_task_that_succeeded_once_wherever_it_ran() -> None:
    """`done(position)` as each task succeeds, here or in a worker, for a progress bar: every
    succeeded position once, failed ones never; the tail ran here, so it was told before
    the results in order reached it."""
    told: list[int] = []
    numbers = list(range(60))
    with pytest.raises(ValueError, match="^3$"):
        for _ in map_in_workers(2, _opened, None, _task, numbers, here=_task, done=told.append):
            pass
    assert len(told) == len(set(told)) and not set(told) & FAILING
    assert {59, 58, 0, 1, 2} <= set(told)  # the tail here, the head in the worker
