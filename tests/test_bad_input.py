"""Every misuse gets a clear error at the call that caused it (issue 2, section 4)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from workerkit import DynamicIterator, PoolClosedError, Worker, WorkPool

pytestmark = pytest.mark.timeout(60)


class Echo(Worker[Any, Any]):
    def execute(self, item: Any) -> Any:
        return item


class Pulls:
    """A generator that counts how many items were taken from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.pulled += 1
            yield i


@pytest.mark.parametrize("factory", [None, 42, "Echo", Echo()])
def test_factory_that_is_not_callable_is_a_type_error(factory: Any) -> None:
    with pytest.raises(TypeError, match="factory"):
        WorkPool(factory)


@pytest.mark.parametrize("max_workers", [0, -1, 1.5, True])
def test_bad_max_workers_is_a_value_error(max_workers: Any) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        WorkPool(Echo, max_workers=max_workers)


def test_min_workers_above_max_workers_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        WorkPool(Echo, max_workers=2, min_workers=3)


def test_negative_min_workers_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        WorkPool(Echo, max_workers=2, min_workers=-1)


@pytest.mark.parametrize("option", ["idle_timeout", "task_timeout", "max_tasks_per_worker"])
def test_negative_limits_are_value_errors(option: str) -> None:
    with pytest.raises(ValueError, match=option):
        WorkPool(Echo, max_workers=1, **{option: -1})


@pytest.mark.parametrize("option", ["task_timeout", "max_tasks_per_worker"])
def test_zero_limits_are_value_errors(option: str) -> None:
    with pytest.raises(ValueError, match=option):
        WorkPool(Echo, max_workers=1, **{option: 0})


def test_source_that_is_not_iterable_is_a_type_error_and_the_pool_stays_usable() -> None:
    with WorkPool(Echo, max_workers=2) as pool:
        with pytest.raises(TypeError, match="iterable"):
            pool.process(5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="iterable"):
            pool.stream(5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="iterable"):
            pool.start(5)  # type: ignore[arg-type]
        summary = pool.process([1, 2, 3])
        assert summary.completed == 3
        assert pool.stats().failed == 0


@pytest.mark.parametrize("callback", ["on_complete", "on_error"])
def test_callback_that_is_not_callable_is_a_type_error(callback: str) -> None:
    source = Pulls(5)
    with WorkPool(Echo, max_workers=1) as pool:
        with pytest.raises(TypeError, match=callback):
            pool.process(source, **{callback: "print"})
        assert source.pulled == 0
        assert pool.process([1]).completed == 1


def test_progress_of_a_wrong_type_is_a_type_error() -> None:
    source = Pulls(5)
    with WorkPool(Echo, max_workers=1) as pool:
        with pytest.raises(TypeError, match="progress"):
            pool.process(source, progress="yes")  # type: ignore[arg-type]
        assert source.pulled == 0
        assert pool.stats().created == 0


def test_start_with_a_bad_callback_fails_at_the_call() -> None:
    with WorkPool(Echo, max_workers=1) as pool:
        with pytest.raises(TypeError, match="on_complete"):
            pool.start([1, 2], on_complete=42)


def test_start_with_an_unknown_keyword_fails_at_the_call() -> None:
    with WorkPool(Echo, max_workers=1) as pool:
        with pytest.raises(TypeError):
            pool.start([1, 2], on_compete=print)


def test_using_a_shut_down_pool_is_a_pool_closed_error() -> None:
    pool = WorkPool(Echo, max_workers=1)
    pool.process([1])
    pool.shutdown()
    with pytest.raises(PoolClosedError, match="shut down"):
        pool.process([1])
    with pytest.raises(PoolClosedError):
        pool.stream([1])
    with pytest.raises(PoolClosedError):
        pool.start([1])
    with pytest.raises(PoolClosedError):
        with pool:
            pool.process([2])


def test_dynamic_iterator_add_after_close_is_a_value_error() -> None:
    feed: DynamicIterator[int] = DynamicIterator()
    feed.add(1)
    feed.close()
    with pytest.raises(ValueError, match="close"):
        feed.add(2)
    with pytest.raises(ValueError, match="close"):
        feed.extend([3])
    assert list(feed) == [1]
