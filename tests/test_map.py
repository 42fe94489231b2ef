"""WorkPool.map (API.md §2): ordered results, first error, lazy input, no leftover child."""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from typing import Any, Dict, Iterator, List, Set

import pytest

from tests._procs import gone
from tests.children import workers
from workerkit import RemoteError, WorkerKitError, WorkPool

pytestmark = pytest.mark.timeout(120)




def assert_all_gone(pids: Set[int], timeout: float = 5.0) -> None:
    """Forkserver children are the forkserver's, so conftest's check cannot see them."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if not gone(p)]
        if not left:
            return
        assert time.monotonic() < deadline, f"child processes still running: {left}"
        time.sleep(0.02)


def test_map_yields_results_in_input_order(start_method: str) -> None:
    # slow_double naps 0-40 ms depending on the item, so items finish out of order.
    results = list(WorkPool.map(workers.slow_double, range(40), max_workers=2, start_method=start_method))
    assert results == [2 * n for n in range(40)]


def test_map_unordered_yields_the_same_multiset(start_method: str) -> None:
    items = [n % 7 for n in range(40)]  # duplicates: a multiset, not a set
    results = list(
        WorkPool.map(workers.slow_double, items, max_workers=2, ordered=False, start_method=start_method)
    )
    assert Counter(results) == Counter(2 * n for n in items)
    assert len(results) == len(items)


def test_map_raises_the_first_error_as_remote_error(start_method: str) -> None:
    got: List[int] = []
    with pytest.raises(RemoteError) as info:
        for value in WorkPool.map(workers.fail_on_three, range(10), max_workers=2, start_method=start_method):
            got.append(value)
    assert got == [0, 2, 4]  # everything before the failed item, in order
    assert info.value.remote_type == "builtins.ValueError"
    assert "three is not allowed (got 3)" in str(info.value)
    assert "in fail_on_three" in info.value.remote_traceback


def test_map_custom_error_type() -> None:
    with pytest.raises(RemoteError) as info:
        list(WorkPool.map(workers.raise_my_error, [1], max_workers=1))
    assert info.value.remote_type == "tests.children.workers.MyError"


def test_map_pulls_an_endless_input_lazily() -> None:
    pulled: List[int] = []

    def counting() -> Iterator[int]:
        for n in itertools.count():
            pulled.append(n)
            yield n

    results = list(itertools.islice(WorkPool.map(workers.double, counting(), max_workers=2), 20))
    assert results == [2 * n for n in range(20)]
    # Items are pulled only as workers free up (plus a bounded read-ahead for the
    # consumer); a greedy map would never return from an endless source at all.
    assert len(pulled) < 100, f"pulled {len(pulled)} items to yield 20"


def test_map_over_itertools_count_returns() -> None:
    results = list(itertools.islice(WorkPool.map(workers.square, itertools.count(), max_workers=2), 20))
    assert results == [n * n for n in range(20)]


@pytest.mark.parametrize("max_workers", [1, 2])
def test_map_honours_max_workers(start_method: str, max_workers: int) -> None:
    pids = set(WorkPool.map(workers.pid_of, range(30), max_workers=max_workers, start_method=start_method))
    assert 1 <= len(pids) <= max_workers
    assert os.getpid() not in pids
    assert_all_gone(pids)


def test_no_child_left_after_the_generator_is_exhausted(start_method: str) -> None:
    results = list(WorkPool.map(workers.double_with_pid, range(10), max_workers=2, start_method=start_method))
    assert [r[0] for r in results] == [2 * n for n in range(10)]
    pids = {r[1] for r in results}
    # The pool shut down when the last result was taken: its children are already reaped.
    assert_all_gone(pids, timeout=1.0)


def test_no_child_left_after_breaking_out_early(start_method: str) -> None:
    gen = WorkPool.map(workers.double_with_pid, range(1000), max_workers=2, start_method=start_method)
    seen: List[int] = []
    pids: Set[int] = set()
    for value, pid in gen:
        seen.append(value)
        pids.add(pid)
        if len(seen) == 3:
            break
    gen.close()
    assert seen == [0, 2, 4]
    assert_all_gone(pids, timeout=5.0)


def test_no_child_left_after_an_error() -> None:
    pids: Set[int] = set()
    gen = WorkPool.map(workers.double_with_pid, [1, 2, None, 4], max_workers=1)
    with pytest.raises(RemoteError) as info:
        for _value, pid in gen:
            pids.add(pid)
    assert info.value.remote_type == "builtins.TypeError"  # None * 2
    assert pids
    assert_all_gone(pids, timeout=5.0)


@pytest.mark.parametrize("method", [None, "spawn", "forkserver"])
def test_map_lambda_without_fork_fails_at_the_call(method: str) -> None:
    with pytest.raises(WorkerKitError, match="module-level"):
        WorkPool.map(lambda x: x, range(3), start_method=method)


def test_map_lambda_under_fork_works() -> None:
    offset = 10
    assert list(WorkPool.map(lambda x: x + offset, range(5), max_workers=2, start_method="fork")) == [
        10, 11, 12, 13, 14,
    ]


def test_map_empty_input() -> None:
    assert list(WorkPool.map(workers.double, [], max_workers=2)) == []


def test_map_reraises_an_error_of_the_source_after_its_items() -> None:
    def source() -> Iterator[int]:
        yield from range(3)
        raise OSError("the source broke")

    got: List[int] = []
    with pytest.raises(OSError, match="the source broke"):
        for value in WorkPool.map(workers.double, source(), max_workers=2):
            got.append(value)
    assert got == [0, 2, 4]


@pytest.mark.parametrize("options", [{}, {"task_timeout": 5.0}])
def test_map_of_something_not_iterable_fails_at_the_call(options: Dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="WorkPool.map\\(\\) needs an iterable of items, got int"):
        WorkPool.map(abs, 42, **options)  # type: ignore[arg-type]
