"""Large chunks stay pipelined: frames queued both ways never deadlock, chunk items run once
each, and an early close or a dead child leaves no process behind."""

from __future__ import annotations

from typing import Any, List, Set, Tuple

import pytest

from tests.children import workers
from tests.test_map import assert_all_gone
from workerkit import ChannelClosedError, Outcome, RemoteError, WorkPool, function_worker


def padded(count: int, size: int) -> List[Tuple[int, bytes]]:
    return [(i, bytes([i % 251]) * size) for i in range(count)]


@pytest.mark.timeout(120)
def test_large_frames_both_ways_are_pipelined_without_deadlock(start_method: str) -> None:
    # 500 items of 2 KB per chunk: ~1 MB requests and ~1 MB replies, several queued per
    # child, far beyond any socket buffer in both directions at once.
    items = padded(4000, 2000)
    got = list(WorkPool.map(workers.pad_or_exit, items, max_workers=2, start_method=start_method,
                            chunksize=500))
    assert got == [padding for _, padding in items]


@pytest.mark.timeout(120)
def test_large_frames_unordered_return_every_item() -> None:
    items = padded(3000, 3000)
    got = list(WorkPool.map(workers.pad_or_exit, items, max_workers=2, ordered=False, chunksize=300))
    assert sorted(got) == sorted(padding for _, padding in items)


@pytest.mark.timeout(120)
def test_every_item_of_a_failing_chunk_runs_exactly_once() -> None:
    ok: List[Outcome[int, int]] = []
    failed: List[Outcome[int, int]] = []
    with WorkPool(lambda: function_worker(workers.count_or_fail), max_workers=1) as pool:
        summary = pool.process(range(30), chunksize=10, on_complete=ok.append, on_error=failed.append,
                               raise_on_error=False)
    assert (summary.completed, summary.failed) == (24, 6)
    # One child ran every item once, in order: item x was its (x + 1)-th call.
    assert sorted((o.input, o.value) for o in ok) == [(x, x + 1) for x in range(30) if x % 5]
    assert sorted(o.input for o in failed) == [0, 5, 10, 15, 20, 25]
    for outcome in failed:
        assert isinstance(outcome.error, RemoteError)
        assert outcome.error.remote_type == "builtins.ValueError"
        assert f"multiple of five: {outcome.input}" in str(outcome.error)


@pytest.mark.timeout(120)
def test_failing_items_of_a_mapped_chunk_raise_in_input_order() -> None:
    got: List[int] = []
    with pytest.raises(RemoteError) as info:
        for value in WorkPool.map(workers.count_or_fail, range(1, 30), max_workers=1, chunksize=8):
            got.append(value)
    assert "multiple of five: 5" in str(info.value)
    assert got == [1, 2, 3, 4]  # items 1-4 of the same chunk, each run once


@pytest.mark.timeout(120)
def test_closing_a_chunked_map_early_ends_its_children(start_method: str) -> None:
    results = WorkPool.map(workers.double_with_pid, range(200_000), max_workers=2,
                           start_method=start_method, chunksize=1000)
    pids: Set[int] = set()
    for _ in range(2500):  # into the third chunk: both children have started
        value, pid = next(results)
        pids.add(pid)
    results.close()  # type: ignore[attr-defined]
    assert pids
    assert_all_gone(pids, timeout=10.0)
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.timeout(120)
def test_a_child_dying_with_large_frames_queued_fails_only_its_chunk(start_method: str) -> None:
    items: List[Any] = padded(4000, 2000)
    items[2100] = (-1, b"")  # in the fifth chunk of 500: its child exits
    got: List[bytes] = []
    with pytest.raises(ChannelClosedError):
        for value in WorkPool.map(workers.pad_or_exit, items, max_workers=2, start_method=start_method,
                                  chunksize=500):
            got.append(value)
    # Everything before the dead child's chunk arrived, in order, and nothing after it.
    assert got == [padding for _, padding in items[:2000]]
