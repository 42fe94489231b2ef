"""``WorkPool.map(chunksize=...)``: several items per message, results and errors per item."""

from __future__ import annotations

import itertools
import pickle
from typing import List

import pytest

from tests.children import workers
from workerkit import RemoteError, WorkPool


@pytest.mark.timeout(120)
@pytest.mark.parametrize("chunksize", [2, 7, 1000])
def test_chunked_map_returns_every_result_in_order(start_method: str, chunksize: int) -> None:
    got = list(WorkPool.map(workers.square, range(100), max_workers=2, start_method=start_method,
                            chunksize=chunksize))
    assert got == [x * x for x in range(100)]


@pytest.mark.timeout(120)
def test_chunked_map_unordered_returns_the_same_items() -> None:
    got = list(WorkPool.map(workers.double, range(50), max_workers=2, ordered=False, chunksize=4))
    assert sorted(got) == [2 * x for x in range(50)]


@pytest.mark.timeout(120)
def test_an_error_in_a_chunk_fails_only_its_item_and_raises_in_order() -> None:
    got: List[int] = []
    with pytest.raises(RemoteError) as info:
        for value in WorkPool.map(workers.fail_on_three, range(10), max_workers=2, chunksize=4):
            got.append(value)
    assert info.value.remote_type == "builtins.ValueError"
    assert got == [workers.fail_on_three(x) for x in range(3)]  # items 0-2 of the same chunk


@pytest.mark.timeout(120)
def test_an_unpicklable_result_in_a_chunk_fails_only_its_item() -> None:
    got: List[object] = []
    with pytest.raises(RemoteError):
        for value in WorkPool.map(workers.return_lambda, [1, 2, "lambda", 4], max_workers=1, chunksize=4):
            got.append(value)
    assert got == [1, 2]  # the items before it in the same chunk still arrive


@pytest.mark.timeout(120)
def test_chunked_map_reads_its_input_lazily() -> None:
    first = list(itertools.islice(WorkPool.map(workers.double, itertools.count(), chunksize=5), 12))
    assert first == [2 * x for x in range(12)]


@pytest.mark.timeout(120)
def test_chunked_map_with_pool_options_uses_the_pool() -> None:
    got = list(WorkPool.map(workers.square, range(30), max_workers=2, chunksize=4, max_tasks_per_worker=2))
    assert got == [x * x for x in range(30)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_chunksize_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        WorkPool.map(workers.double, range(3), chunksize=bad)  # type: ignore[arg-type]


@pytest.mark.timeout(120)
def test_chunked_map_recycles_workers_by_items_not_chunks() -> None:
    # 4 items per worker, 4 items per chunk: every chunk gets a fresh child.
    pids = list(WorkPool.map(workers.pid_of, range(12), max_workers=1, chunksize=4, max_tasks_per_worker=4))
    assert len(pids) == 12
    assert [len(set(pids[i:i + 4])) for i in (0, 4, 8)] == [1, 1, 1]
    assert len(set(pids)) == 3


@pytest.mark.timeout(120)
def test_an_unpicklable_item_in_a_mapped_chunk_fails_at_its_own_position() -> None:
    items: List[object] = [0, 1, 2, 3, 4, lambda: 5, 6, 7]
    got: List[object] = []
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        for value in WorkPool.map(workers.identity, items, max_workers=1, chunksize=3,
                                  start_method="spawn"):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]  # items 3 and 4 share the bad item's chunk and still arrive

