"""Review findings (3): slots that pull for themselves, chunksize, FrameReader.

Each test demonstrates one suspected bug with real threads / processes / sockets. Tests
that fail on the current code are marked ``xfail(strict=True)`` with the cause.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List

import pytest

from workerkit import DynamicIterator, IterableInputSource, Outcome, Worker, WorkPool

pytestmark = pytest.mark.timeout(120)

WAIT = 10.0  # generous bound for something that must happen


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------------------------------
# 1. The dispatcher keeps a worker while has_next() waits for a producer
# ---------------------------------------------------------------------------------------


class _GatedWorker(Worker[int, int]):
    """Item 0 blocks until ``gate`` is set; every other item returns at once."""

    gate = threading.Event()
    started0 = threading.Event()

    def execute(self, item: int) -> int:
        if item == 0:
            type(self).started0.set()
            assert type(self).gate.wait(WAIT)
        return item


def _slot_steals_the_item_the_dispatcher_saw(
    pool: WorkPool[int, int], dyn: "DynamicIterator[int]", done: List[Outcome[int, int]]
) -> Any:
    """Drive the pool into: the dispatcher's has_next() saw item 1, a slot took item 1
    itself, then the dispatcher took the freed slot and called has_next() again, which
    now waits for the (idle) producer with the slot in hand."""
    _GatedWorker.gate.clear()
    _GatedWorker.started0.clear()
    dyn.add(0)
    # An explicit IterableInputSource: the dispatcher asks has_next() before a free slot.
    fut = pool.start(IterableInputSource(dyn), on_complete=done.append)
    assert _GatedWorker.started0.wait(WAIT)
    time.sleep(0.3)  # the dispatcher now waits in has_next() (the iterator is empty)
    dyn.add(1)  # has_next() -> True; the dispatcher now waits for the only slot
    time.sleep(0.3)
    _GatedWorker.gate.set()  # item 0 ends; its slot pulls item 1 itself, runs it, goes idle
    assert wait_until(lambda: len(done) == 2)
    time.sleep(0.3)
    return fut


@pytest.mark.xfail(strict=True, reason=(
    "pool.py _pull_loop: after a slot pulled the item has_next() saw, the dispatcher calls "
    "has_next() again (second feed.lock block) while holding the slot it acquired; for a "
    "DynamicIterator that blocks until the producer adds an item, so the worker stays "
    "BUSY, unusable by other calls"))
def test_dispatcher_never_holds_a_worker_while_has_next_waits() -> None:
    """Contract order per item is has_next(), then a free worker, then next(): while the
    source waits for its producer, no worker is taken. A second call on the same pool (one
    worker) must run, and stats() must show the worker idle, not busy."""
    dyn: DynamicIterator[int] = DynamicIterator()
    done: List[Outcome[int, int]] = []
    pool: WorkPool[int, int] = WorkPool(_GatedWorker, max_workers=1)
    fut = None
    try:
        fut = _slot_steals_the_item_the_dispatcher_saw(pool, dyn, done)
        stats = pool.stats()
        other = pool.start([10, 11])
        try:
            summary = other.result(5.0)
        except Exception as exc:  # TimeoutError: the only worker is held by the dispatcher
            pytest.fail(f"a second call could not get the idle worker: {exc!r}; stats={stats}")
        assert summary.completed == 2
        assert stats.busy == 0, stats  # nothing was executing
    finally:
        dyn.close()
        if fut is not None:
            assert fut.result(WAIT).completed == 2
        pool.shutdown()


@pytest.mark.xfail(strict=True, reason=(
    "pool.py _pull_loop: the dispatcher blocks in has_next() holding a BUSY slot, which "
    "shutdown() never retires; _join_threads then waits for that slot's thread forever"))
def test_shutdown_returns_while_a_dynamic_source_waits_for_its_producer() -> None:
    """shutdown(wait=True) with no item executing must return promptly, even though the
    call's DynamicIterator is still open (items not pulled stay in their source)."""
    dyn: DynamicIterator[int] = DynamicIterator()
    done: List[Outcome[int, int]] = []
    pool: WorkPool[int, int] = WorkPool(_GatedWorker, max_workers=1)
    shut = threading.Thread(target=pool.shutdown, daemon=True)
    try:
        _slot_steals_the_item_the_dispatcher_saw(pool, dyn, done)
        shut.start()
        shut.join(5.0)
        assert not shut.is_alive(), f"shutdown() hangs; stats={pool.stats()}"
    finally:
        dyn.close()  # unblocks the dispatcher (and a hung shutdown)
        if shut.is_alive():
            shut.join(WAIT)


# ---------------------------------------------------------------------------------------
# 2. Ctrl-C while the dispatcher fills a chunk
# ---------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason=(
    "_feed.py Feed.make_job: 'except BaseException' keeps a KeyboardInterrupt raised while "
    "filling a chunk in feed.error; _drive then treats it as a source error: run.wait() for "
    "every item in flight, no _destroy_all_workers"))
def test_keyboard_interrupt_while_filling_a_chunk_destroys_workers_at_once() -> None:
    """KeyboardInterrupt in process stops pulling, destroys the workers and propagates
    without waiting for the items in flight, also with chunksize > 1."""
    release = threading.Event()
    first_running = threading.Event()
    destroyed: List[Any] = []
    lock = threading.Lock()

    class Blocking(Worker[int, int]):
        def __init__(self) -> None:
            super().__init__()
            self.stop = threading.Event()

        def execute(self, item: int) -> int:
            if item == 0:
                first_running.set()
                # Returns once destroyed (its child ended), or when the test is done.
                while not (self.stop.is_set() or release.is_set()):
                    time.sleep(0.01)
            return item

        def destroy(self) -> None:
            self.stop.set()
            with lock:
                destroyed.append(self.id)

    def source() -> Any:
        yield 0
        yield 1  # the first chunk: [0, 1]; item 0 blocks
        assert first_running.wait(WAIT)
        yield 2
        raise KeyboardInterrupt  # Ctrl-C while the dispatcher fills the second chunk

    outcome: Dict[str, Any] = {}

    def call() -> None:
        started = time.monotonic()
        try:
            pool.process(source(), chunksize=2)
            outcome["result"] = "returned"
        except BaseException as exc:
            outcome["result"] = exc
        outcome["took"] = time.monotonic() - started

    pool: WorkPool[int, int] = WorkPool(Blocking, max_workers=2)
    caller = threading.Thread(target=call, daemon=True)
    try:
        caller.start()
        caller.join(5.0)
        assert not caller.is_alive(), "process() waits for the items in flight after Ctrl-C"
        assert isinstance(outcome["result"], KeyboardInterrupt), outcome
        with lock:
            assert len(destroyed) >= 1
    finally:
        release.set()
        caller.join(WAIT)
        pool.shutdown()
