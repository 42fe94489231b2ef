"""WorkPool behaviours of API.md section 2: dispatch, process/stream/start, errors, shutdown,
stats, progress and Ctrl-C. Worker lifecycle lives in test_pool_lifecycle.py.

Every wait that means "this has happened" is on an Event, a Barrier or a join; a sleep only
gives something the chance to go wrong ("nothing else was pulled meanwhile").
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest

from tests._pools import pool_of
from workerkit import (
    DynamicIterator,
    IterableInputSource,
    Outcome,
    PoolClosedError,
    PoolStats,
    ProcessSummary,
    Worker,
    WorkPool,
    WorkPoolError,
)

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # generous bound for an Event/Barrier that must be reached
CHANCE = 0.2  # time given to something that must NOT happen
REPO = Path(__file__).resolve().parents[1]




def identity(item: Any) -> Any:
    return item


class Boom(Exception):
    """An error raised on purpose by a test's execute."""


class LoggingSource:
    """An InputSource over a list that logs each call and the thread that made it."""

    def __init__(self, items: List[Any]):
        self.items = list(items)
        self.pos = 0
        self.lock = threading.Lock()
        self.log: List[str] = []
        self.threads: Set[int] = set()

    def _record(self, call: str) -> None:
        with self.lock:
            self.log.append(call)
            self.threads.add(threading.get_ident())

    def has_next(self) -> bool:
        self._record("has_next")
        return self.pos < len(self.items)

    def next(self) -> Any:
        self._record("next")
        item = self.items[self.pos]
        self.pos += 1
        return item

    def snapshot(self) -> List[str]:
        with self.lock:
            return list(self.log)


class CountingGen:
    """An iterator that counts how often it was advanced."""

    def __init__(self, inner: Iterator[Any]):
        self.inner = inner
        self.pulled = 0

    def __iter__(self) -> CountingGen:
        return self

    def __next__(self) -> Any:
        item = next(self.inner)
        self.pulled += 1
        return item


def start_thread(target: Callable[..., Any], *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def join(thread: threading.Thread) -> None:
    thread.join(WAIT)
    assert not thread.is_alive(), f"{thread.name} did not finish"


# ------------------------------------------------------------------ thread-driven dispatch


def test_at_most_max_workers_executes_run_at_once() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    all_three = threading.Barrier(3)

    def work(item: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            if item < 3:
                all_three.wait(WAIT)  # proves three really run together
            else:
                time.sleep(0.005)  # gives a fourth execute the chance to overlap
        finally:
            with lock:
                running -= 1
        return item

    with pool_of(work, max_workers=3) as pool:
        summary = pool.process(range(30))
    assert summary.completed == 30
    assert peak == 3


def test_execute_runs_on_pool_threads_not_the_caller_thread() -> None:
    caller = threading.get_ident()
    seen: Set[int] = set()
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            seen.add(threading.get_ident())
        return item

    with pool_of(work, max_workers=2) as pool:
        pool.process(range(20))
    assert seen
    assert caller not in seen


def test_source_is_driven_from_one_thread() -> None:
    src = LoggingSource(list(range(40)))
    with pool_of(identity, max_workers=4) as pool:
        pool.process(src)
    assert len(src.threads) == 1
    assert src.threads == {threading.get_ident()}  # process dispatches on the caller's thread


def test_stream_drives_its_source_from_one_thread() -> None:
    src = LoggingSource(list(range(40)))
    with pool_of(identity, max_workers=4) as pool:
        outcomes = list(pool.stream(src))
    assert len(outcomes) == 40
    assert len(src.threads) == 1


# ------------------------------------------------------------------ order per item


def test_nothing_is_pulled_before_a_worker_is_free() -> None:
    first_started = threading.Event()
    release = threading.Event()

    def work(item: int) -> int:
        if item == 0:
            first_started.set()
            assert release.wait(WAIT)
        return item

    src = LoggingSource([0, 1, 2])
    with pool_of(work, max_workers=1) as pool:
        future = pool.start(src)
        assert first_started.wait(WAIT)
        time.sleep(CHANCE)  # the chance to pull item 1 while the only worker is busy
        during = src.snapshot()
        release.set()
        future.result(WAIT)
    # has_next() for the second item may have happened, next() must not have
    assert during in (["has_next", "next"], ["has_next", "next", "has_next"])
    assert src.snapshot() == ["has_next", "next"] * 3 + ["has_next"]


def test_endless_generator_in_stream_is_pulled_only_as_far_as_needed() -> None:
    max_workers = 2
    gen = CountingGen(itertools.count())
    with pool_of(identity, max_workers=max_workers) as pool:
        outcomes = pool.stream(gen)
        seen = 0
        for _ in outcomes:
            seen += 1
            if seen == 50:
                break
        outcomes.close()  # type: ignore[attr-defined]
        pulled = gen.pulled
        time.sleep(CHANCE)  # the chance to keep pulling after the loop was left
        assert gen.pulled == pulled
    assert 50 <= pulled <= 50 + 4 * max_workers + 16 + 2


# ------------------------------------------------------------------ process, outcomes, errors


def test_process_returns_summary_with_invariant() -> None:
    def work(item: int) -> int:
        if item % 4 == 0:
            raise Boom(item)
        return item * 2

    with pool_of(work, max_workers=3) as pool:
        summary = pool.process(range(20), raise_on_error=False)
    assert isinstance(summary, ProcessSummary)
    assert summary.submitted == 20
    assert summary.failed == 5
    assert summary.completed == 15
    assert summary.submitted == summary.completed + summary.failed
    assert sorted(o.index for o in summary.failures) == [0, 4, 8, 12, 16]
    assert summary.duration >= 0


def test_on_complete_and_on_error_get_outcomes_on_the_driving_pool_thread() -> None:
    caller = threading.get_ident()
    lock = threading.Lock()
    executed_on: Dict[int, int] = {}
    completes: List[Tuple[Outcome[int, int], int]] = []
    errors: List[Tuple[Outcome[int, int], int]] = []

    def work(item: int) -> int:
        with lock:
            executed_on[item] = threading.get_ident()
        if item == 3:
            raise Boom("three")
        return item * 10

    def on_complete(outcome: Outcome[int, int]) -> None:
        with lock:
            completes.append((outcome, threading.get_ident()))

    def on_error(outcome: Outcome[int, int]) -> None:
        with lock:
            errors.append((outcome, threading.get_ident()))

    with pool_of(work, max_workers=2) as pool:
        summary = pool.process(
            [f for f in range(6)], on_complete=on_complete, on_error=on_error, raise_on_error=False
        )
    assert summary.completed == 5 and summary.failed == 1
    assert sorted(o.index for o, _ in completes) == [0, 1, 2, 4, 5]
    for outcome, thread in completes:
        assert outcome.ok
        assert outcome.error is None
        assert outcome.input == outcome.index
        assert outcome.value == outcome.index * 10
        assert outcome.result() == outcome.index * 10
        assert outcome.worker_id is not None
        assert outcome.duration >= 0
        assert thread != caller
        assert thread == executed_on[outcome.index]
    [(failed, thread)] = errors
    assert failed.index == 3 and failed.input == 3
    assert not failed.ok
    assert isinstance(failed.error, Boom)
    assert failed.value is None
    assert failed.worker_id is not None
    assert failed.duration >= 0
    with pytest.raises(Boom):
        failed.result()
    assert thread != caller
    assert thread == executed_on[3]


def test_outcome_is_frozen() -> None:
    with pool_of(identity, max_workers=1) as pool:
        [outcome] = list(pool.stream([1]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.value = 2  # type: ignore[misc]


def test_raise_on_error_raises_after_all_items_with_first_error_in_time_as_cause() -> None:
    five_failed = threading.Event()
    finished: List[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        if item == 2:
            assert five_failed.wait(WAIT)  # fails only after item 5 has failed
            raise Boom("two")
        if item == 5:
            raise Boom("five")
        with lock:
            finished.append(item)
        return item

    def on_error(outcome: Outcome[int, int]) -> None:
        if outcome.index == 5:
            five_failed.set()

    with pool_of(work, max_workers=3) as pool:
        with pytest.raises(WorkPoolError) as caught:
            pool.process(range(10), on_error=on_error)
    err = caught.value
    assert isinstance(err.__cause__, Boom)
    assert str(err.__cause__) == "five"
    assert err.summary is not None
    assert err.summary.submitted == 10
    assert err.summary.failed == 2
    assert err.summary.completed == 8
    assert sorted(o.index for o in err.summary.failures) == [2, 5]
    assert sorted(finished) == [0, 1, 3, 4, 6, 7, 8, 9]  # every item finished before the raise
    assert "2 of 10" in str(err)


def test_raise_on_error_false_returns_the_summary() -> None:
    def work(item: int) -> int:
        if item == 1:
            raise Boom("one")
        return item

    with pool_of(work, max_workers=2) as pool:
        summary = pool.process(range(4), raise_on_error=False)
    assert (summary.submitted, summary.completed, summary.failed) == (4, 3, 1)
    assert isinstance(summary.failures[0].error, Boom)


def test_errors_are_per_call_and_kept_on_the_pool() -> None:
    def work(item: int) -> int:
        if item < 0:
            raise Boom(item)
        return item

    with pool_of(work, max_workers=2) as pool:
        with pytest.raises(WorkPoolError):
            pool.process([1, -1, 2, -2])
        assert sorted(o.input for o in pool.errors) == [-2, -1]
        assert all(isinstance(o.error, Boom) for o in pool.errors)
        summary = pool.process([1, 2, 3])  # raises nothing: no carry-over
        assert summary.failed == 0
        assert pool.errors == []


# ------------------------------------------------------------------ source errors


def test_source_generator_error_is_reraised_after_in_flight_items_finish() -> None:
    about_to_raise = threading.Event()
    completed: List[int] = []
    lock = threading.Lock()

    def gen() -> Iterator[int]:
        yield from range(3)
        about_to_raise.set()
        raise ValueError("source broke")

    def work(item: int) -> int:
        assert about_to_raise.wait(WAIT)  # all three are in flight when the source breaks
        time.sleep(0.05)  # the chance for process to return before they finish
        return item

    def on_complete(outcome: Outcome[int, int]) -> None:
        with lock:
            completed.append(outcome.index)

    # a fourth worker stays free, so the source is asked for item 3 whatever the order
    with pool_of(work, max_workers=4) as pool:
        with pytest.raises(ValueError, match="source broke"):
            pool.process(gen(), on_complete=on_complete)
        assert sorted(completed) == [0, 1, 2]
        assert pool.stats().busy == 0


def test_source_next_error_is_reraised_after_in_flight_items_finish() -> None:
    third_pulled = threading.Event()
    completed: List[int] = []
    lock = threading.Lock()

    class BreakingSource:
        def __init__(self) -> None:
            self.n = 0

        def has_next(self) -> bool:
            return True

        def next(self) -> int:
            if self.n == 3:
                third_pulled.set()
                raise RuntimeError("next broke")
            self.n += 1
            return self.n - 1

    def work(item: int) -> int:
        assert third_pulled.wait(WAIT)
        time.sleep(0.05)
        return item

    def on_complete(outcome: Outcome[int, int]) -> None:
        with lock:
            completed.append(outcome.index)

    with pool_of(work, max_workers=4) as pool:
        with pytest.raises(RuntimeError, match="next broke"):
            pool.process(BreakingSource(), on_complete=on_complete)
        assert sorted(completed) == [0, 1, 2]
        # a source error is not an item failure
        assert pool.errors == []


# ------------------------------------------------------------------ stream


def test_stream_unordered_yields_every_outcome_once() -> None:
    with pool_of(lambda i: i * i, max_workers=4) as pool:
        outcomes = list(pool.stream(range(100)))
    assert sorted(o.index for o in outcomes) == list(range(100))
    assert all(o.ok and o.value == o.input * o.input for o in outcomes)


def test_stream_ordered_yields_in_input_order_when_early_items_are_slow() -> None:
    lock = threading.Lock()
    later_done: Set[int] = set()
    later_all_done = threading.Event()
    finish_order: List[int] = []

    def work(item: int) -> int:
        if item == 0:
            assert later_all_done.wait(WAIT)  # item 0 finishes only after items 1..5
        with lock:
            finish_order.append(item)
            if 1 <= item <= 5:
                later_done.add(item)
                if len(later_done) == 5:
                    later_all_done.set()
        return item

    with pool_of(work, max_workers=3) as pool:
        outcomes = list(pool.stream(range(12), ordered=True))
    assert [o.index for o in outcomes] == list(range(12))
    assert [o.value for o in outcomes] == list(range(12))
    assert all(finish_order.index(0) > finish_order.index(k) for k in range(1, 6))


def test_stream_yields_failed_outcomes_and_does_not_raise() -> None:
    def work(item: int) -> int:
        if item % 3 == 0:
            raise Boom(item)
        return item

    with pool_of(work, max_workers=2) as pool:
        outcomes = list(pool.stream(range(9), ordered=True))
    assert [o.index for o in outcomes] == list(range(9))
    failed = [o for o in outcomes if not o.ok]
    assert [o.index for o in failed] == [0, 3, 6]
    assert all(isinstance(o.error, Boom) for o in failed)


def test_breaking_out_of_stream_stops_pulling_and_waits_for_in_flight_items() -> None:
    lock = threading.Lock()
    started: Set[int] = set()
    finished: Set[int] = set()

    def work(item: int) -> int:
        with lock:
            started.add(item)
        time.sleep(0.02)  # keeps items in flight when the loop is left
        with lock:
            finished.add(item)
        return item

    gen = CountingGen(iter(range(1000)))
    with pool_of(work, max_workers=3) as pool:
        outcomes = pool.stream(gen)
        for outcome in outcomes:
            if outcome.index >= 5:
                break
        outcomes.close()  # type: ignore[attr-defined]
        with lock:
            assert started == finished  # no execute still running after close() returned
        pulled = gen.pulled
        time.sleep(CHANCE)
        assert gen.pulled == pulled  # nothing pulled after leaving the loop
    assert pulled < 1000
    assert pulled <= 6 + 16 + 3 + 2


# ------------------------------------------------------------------ start


def test_start_returns_a_future_of_the_summary() -> None:
    with pool_of(lambda i: i + 1, max_workers=2) as pool:
        future = pool.start(range(10))
        assert isinstance(future, Future)
        summary = future.result(WAIT)
    assert isinstance(summary, ProcessSummary)
    assert (summary.submitted, summary.completed, summary.failed) == (10, 10, 0)


def test_start_surfaces_errors_through_the_future() -> None:
    def work(item: int) -> int:
        if item == 2:
            raise Boom("two")
        return item

    with pool_of(work, max_workers=2) as pool:
        future = pool.start(range(5))
        error = future.exception(WAIT)
    assert isinstance(error, WorkPoolError)
    assert isinstance(error.__cause__, Boom)
    assert error.summary is not None and error.summary.failed == 1


def test_start_runs_process_on_another_thread() -> None:
    caller = threading.get_ident()
    src = LoggingSource([1, 2, 3])
    with pool_of(identity, max_workers=1) as pool:
        pool.start(src).result(WAIT)
    assert len(src.threads) == 1
    assert caller not in src.threads


# ------------------------------------------------------------------ subclassing (seed's ImageCompressor)


class ImageProcessor(Worker[str, str]):
    def execute(self, image: str) -> str:
        return f"{image}.compressed"


class Compressor(WorkPool[str, str]):
    """The seed's ImageCompressor: a domain pool fed through a DynamicIterator."""

    def __init__(self) -> None:
        super().__init__(ImageProcessor, max_workers=2)
        self.pending: DynamicIterator[str] = DynamicIterator()
        self.lock = threading.Lock()
        self.results: List[str] = []

    def begin(self) -> Future[ProcessSummary]:
        return self.start(IterableInputSource(self.pending), on_complete=self._collect)

    def convert(self, *images: str) -> None:
        self.pending.extend(images)

    def _collect(self, outcome: Outcome[str, str]) -> None:
        with self.lock:
            assert outcome.value is not None
            self.results.append(outcome.value)


def test_subclass_fed_by_dynamic_iterator_from_another_thread() -> None:
    images = [f"img{i}.png" for i in range(25)]
    with Compressor() as compressor:
        future = compressor.begin()

        def producer() -> None:
            for start in range(0, len(images), 5):
                compressor.convert(*images[start:start + 5])
            compressor.pending.close()

        thread = start_thread(producer)
        summary = future.result(WAIT)
        join(thread)
    assert summary.submitted == len(images)
    assert summary.completed == len(images)
    assert sorted(compressor.results) == sorted(f"{i}.compressed" for i in images)


# ------------------------------------------------------------------ shutdown and stats


def test_shutdown_is_idempotent() -> None:
    pool = pool_of(identity, max_workers=2)
    pool.process(range(5))
    pool.shutdown()
    pool.shutdown()
    pool.shutdown(wait=False)
    assert pool.stats().alive == 0


def test_process_stream_start_after_shutdown_raise_pool_closed_error() -> None:
    pool = pool_of(identity, max_workers=1)
    pool.shutdown()
    with pytest.raises(PoolClosedError):
        pool.process([1])
    with pytest.raises(PoolClosedError):
        pool.stream([1])
    with pytest.raises(PoolClosedError):
        pool.start([1])


def _shutdown_during_item_3(source: Any) -> Tuple[List[int], List[threading.Thread]]:
    """Process ``source`` with one worker; item 3 shuts the pool down from another thread."""
    processed: List[int] = []
    threads: List[threading.Thread] = []

    def work(item: int) -> int:
        processed.append(item)
        if item == 3:
            threads.append(start_thread(pool.shutdown))
            time.sleep(CHANCE)  # the chance for the dispatcher to pull item 4 anyway
        return item

    pool = pool_of(work, max_workers=1)
    try:
        pool.process(source)
    finally:
        for thread in threads:
            join(thread)
        pool.shutdown()
    return processed, threads


def test_shutdown_leaves_unpulled_items_in_an_iterator() -> None:
    it = iter(range(100))
    processed, _ = _shutdown_during_item_3(it)
    assert processed == [0, 1, 2, 3]
    remaining = list(it)
    assert remaining[:1] == [4], f"item 4 was silently dropped; the iterator resumed at {remaining[:1]}"
    assert len(processed) + len(remaining) == 100


def test_shutdown_leaves_unpulled_items_in_an_input_source() -> None:
    src = IterableInputSource(range(100))
    processed, _ = _shutdown_during_item_3(src)
    assert processed == [0, 1, 2, 3]
    remaining = []
    while src.has_next():
        remaining.append(src.next())
    assert remaining[0] == 4
    assert sorted(processed + remaining) == list(range(100))


def test_with_block_shuts_down_and_destroys_every_worker() -> None:
    lock = threading.Lock()
    destroyed: List[int] = []

    class W(Worker[int, int]):
        def execute(self, item: int) -> int:
            return item

        def destroy(self) -> None:
            with lock:
                destroyed.append(self.id)

    with WorkPool(W, max_workers=3) as pool:
        pool.process(range(30))
        created = pool.stats().created
        assert created >= 1
    stats = pool.stats()
    assert stats.alive == 0
    assert stats.destroyed == created == len(destroyed)
    with pytest.raises(PoolClosedError):
        pool.process([1])


def test_stats_is_a_frozen_snapshot_with_right_counts_at_rest() -> None:
    both = threading.Barrier(2)

    def work(item: int) -> int:
        if item < 2:
            both.wait(WAIT)  # two workers exist at once
        if item == 7:
            raise Boom("seven")
        return item

    with pool_of(work, max_workers=2) as pool:
        assert pool.stats() == PoolStats(0, 0, 0, 0, 0, 0, 0)
        pool.process(range(10), raise_on_error=False)
        stats = pool.stats()
        assert isinstance(stats, PoolStats)
        assert stats.alive == 2
        assert stats.busy == 0
        assert stats.idle == 2
        assert stats.created == 2
        assert stats.destroyed == 0
        assert stats.completed == 9
        assert stats.failed == 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.alive = 5  # type: ignore[misc]
        pool.process(range(3))
        assert stats.completed == 9  # a snapshot: later work does not change it
        assert pool.stats().completed == 12
    after = pool.stats()
    assert (after.alive, after.busy, after.idle, after.destroyed) == (0, 0, 0, 2)


# ------------------------------------------------------------------ progress


def test_progress_callable_gets_done_and_total_for_a_list() -> None:
    calls: List[Tuple[int, Optional[int]]] = []
    lock = threading.Lock()

    def progress(done: int, total: Optional[int]) -> None:
        with lock:
            calls.append((done, total))

    with pool_of(identity, max_workers=2) as pool:
        pool.process(list(range(10)), progress=progress)
    assert [done for done, _ in calls] == list(range(1, 11))
    assert {total for _, total in calls} == {10}


def test_progress_callable_gets_none_total_for_a_generator() -> None:
    calls: List[Tuple[int, Optional[int]]] = []

    with pool_of(identity, max_workers=1) as pool:
        pool.process((i for i in range(7)), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(d, None) for d in range(1, 8)]


def test_progress_total_is_none_for_a_dynamic_iterator() -> None:
    # A DynamicIterator's len() is what is queued now, not how many items will come.
    calls: List[Tuple[int, Optional[int]]] = []
    feed: DynamicIterator[int] = DynamicIterator()
    feed.extend([1, 2])
    first_running = threading.Event()

    def work(item: int) -> int:
        first_running.set()
        return item

    def produce() -> None:
        assert first_running.wait(WAIT)  # more items arrive while the pool runs
        feed.extend([3, 4, 5])
        feed.close()

    producer = start_thread(produce)
    with pool_of(work, max_workers=1) as pool:
        pool.process(feed, progress=lambda d, t: calls.append((d, t)))
    join(producer)
    assert [d for d, _ in calls] == [1, 2, 3, 4, 5]
    assert {t for _, t in calls} == {None}, f"total must be unknown (None), got {calls}"


def test_progress_total_through_start_is_the_length_of_a_list() -> None:
    calls: List[Tuple[int, Optional[int]]] = []
    with pool_of(identity, max_workers=1) as pool:
        pool.start(list(range(4)), progress=lambda d, t: calls.append((d, t))).result(WAIT)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_progress_done_never_goes_backwards_with_many_workers() -> None:
    calls: List[int] = []

    def progress(done: int, total: Optional[int]) -> None:
        calls.append(done)  # list.append is atomic; the order is the order of the calls

    with pool_of(identity, max_workers=8) as pool:
        for _ in range(5):
            calls.clear()
            pool.process(range(2000), progress=progress)
            assert sorted(calls) == list(range(1, 2001))
            backwards = [(a, b) for a, b in zip(calls, calls[1:]) if b < a]
            assert backwards == [], f"progress went backwards: {backwards[:5]}"


def test_progress_true_draws_a_tqdm_bar(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    with pool_of(identity, max_workers=2) as pool:
        pool.process(list(range(10)), progress=True)
    err = capsys.readouterr().err
    assert "10/10" in err
    assert "100%" in err


def test_progress_true_without_tqdm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` fail as if not installed
    gen = CountingGen(iter(range(5)))
    with pool_of(identity, max_workers=1) as pool:
        with pytest.raises(ImportError, match="pip install"):
            pool.process(gen, progress=True)
        assert gen.pulled == 0
        assert pool.process([1, 2]).completed == 2


# ------------------------------------------------------------------ KeyboardInterrupt


def test_keyboard_interrupt_from_the_source_destroys_workers_and_propagates() -> None:
    lock = threading.Lock()
    destroys: Dict[Any, int] = {}
    two_started = threading.Barrier(3)
    release = threading.Event()

    class Blocking(Worker[int, int]):
        def execute(self, item: int) -> int:
            two_started.wait(WAIT)
            assert release.wait(WAIT)
            return item

        def destroy(self) -> None:
            with lock:
                destroys[self.id] = destroys.get(self.id, 0) + 1

    class InterruptingSource:
        def __init__(self) -> None:
            self.n = 0

        def has_next(self) -> bool:
            return True

        def next(self) -> int:
            if self.n == 2:
                two_started.wait(WAIT)  # both items are executing
                raise KeyboardInterrupt
            self.n += 1
            return self.n - 1

    with WorkPool(Blocking, max_workers=3) as pool:
        try:
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                pool.process(InterruptingSource())
            # propagated while the two executes were still blocked: it did not wait for them
            assert time.monotonic() - started < WAIT / 2
            stats = pool.stats()
            assert stats.alive == 0
            assert stats.created == 2
            with lock:
                assert sorted(destroys.values()) == [1, 1]
        finally:
            release.set()
    with lock:
        assert sorted(destroys.values()) == [1, 1]  # destroyed once, not again on shutdown
    assert pool.stats().destroyed == 2


CTRL_C_SCRIPT = r"""
import signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)
from workerkit import Worker, WorkPool

class Blocking(Worker):
    def __init__(self):
        super().__init__()
        self.stop = threading.Event()

    def execute(self, item):
        sys.stdout.write("started\n")  # one write: two threads' prints never interleave
        sys.stdout.flush()
        self.stop.wait(20)   # like a child process that only ends when destroyed
        return item

    def destroy(self):
        sys.stdout.write("destroyed\n")
        sys.stdout.flush()
        self.stop.set()

with WorkPool(Blocking, max_workers=2) as pool:
    pool.process(SOURCE)
print("process returned", flush=True)
"""


def _run_ctrl_c(source_expr: str) -> Tuple[int, str, str, float]:
    """Run the script, press Ctrl-C once two executes started; return (rc, out, err, seconds)."""
    script = CTRL_C_SCRIPT.replace("SOURCE", source_expr)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    out: List[str] = []
    err: List[str] = []

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            lines.put(line)

    def read_err() -> None:
        assert proc.stderr is not None
        err.append(proc.stderr.read())

    readers = [start_thread(read_out), start_thread(read_err)]
    try:
        started = 0
        deadline = time.monotonic() + 20
        while started < 2:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    for reader in readers:
                        join(reader)
                    pytest.fail(f"the script did not start its items: stdout={out!r} stderr={err!r}")
                continue
            started += line.strip() == "started"
        time.sleep(CHANCE)  # the dispatcher settles into its wait
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for reader in readers:
            join(reader)
    assert rc is not None, f"still running 10 s after Ctrl-C; stdout={out!r} stderr={err!r}"
    return rc, "".join(out), "".join(err), seconds


def test_ctrl_c_while_pulling_an_endless_source_stops_without_hanging() -> None:
    rc, out, err, seconds = _run_ctrl_c("__import__('itertools').count()")
    assert rc != 0
    assert "KeyboardInterrupt" in err
    assert out.count("destroyed") == 2
    assert "process returned" not in out
    assert seconds < 10


def test_ctrl_c_while_waiting_for_the_last_items_stops_without_hanging() -> None:
    # The source is exhausted; process() only waits for the two items in flight.
    rc, out, err, seconds = _run_ctrl_c("[1, 2]")
    assert rc != 0
    assert "KeyboardInterrupt" in err
    assert out.count("destroyed") == 2
    assert seconds < 10
