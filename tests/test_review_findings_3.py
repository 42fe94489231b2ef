"""Review findings (3): slots that pull for themselves, chunksize, FrameReader.

Each test demonstrates one bug a review found, with real threads / processes / sockets;
each was fixed after it was found.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import struct
import threading
import time
from typing import Any, Dict, List

import pytest

from tests._pools import wait_until
from workerkit import DynamicIterator, IterableInputSource, Outcome, Worker, WorkPool
from workerkit.comm._wire import FrameReader, enable_read_slices

pytestmark = pytest.mark.timeout(120)

WAIT = 10.0  # generous bound for something that must happen




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
    pool: WorkPool[int, int], dyn: DynamicIterator[int], done: List[Outcome[int, int]]
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


# ---------------------------------------------------------------------------------------
# 3. A DynamicIterator subclass: slots bypass its __next__
# ---------------------------------------------------------------------------------------


class _Tagging(DynamicIterator[int]):
    """A DynamicIterator subclass whose iteration tags each item (an ordinary override)."""

    def __next__(self) -> Any:  # type: ignore[override]
        return ("tagged", super().__next__())


class _Echo(Worker[Any, Any]):
    def execute(self, item: Any) -> Any:
        return item


def test_a_dynamic_iterator_subclass_is_iterated_through_its_own_next() -> None:
    """Every item a pool takes from an iterator comes from that iterator's __next__."""
    dyn = _Tagging()
    dyn.extend(range(300))
    dyn.close()
    inputs: List[Any] = []
    lock = threading.Lock()

    def on_complete(o: Outcome[Any, Any]) -> None:
        with lock:
            inputs.append(o.input)

    with WorkPool(_Echo, max_workers=2) as pool:
        summary = pool.process(dyn, on_complete=on_complete)
    assert summary.completed == 300
    untagged = [i for i in inputs if not isinstance(i, tuple)]
    assert untagged == [], f"{len(untagged)} items bypassed __next__, e.g. {untagged[:5]}"
    assert sorted(i[1] for i in inputs) == list(range(300))


# ---------------------------------------------------------------------------------------
# 4. FrameReader: an exception in the middle of a frame's body loses the frame
# ---------------------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise _Interrupted()


def test_frame_reader_keeps_a_frame_whose_read_was_interrupted() -> None:
    """A read interrupted by a signal (KeyboardInterrupt in the main thread) must leave the
    stream intact: reading again returns the whole frame, then the next one."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    reader, writer = multiprocessing.Pipe()
    assert enable_read_slices(reader, 0.02)
    body = os.urandom(200_000)
    frame = struct.pack("!i", len(body)) + body
    half = 100_000
    sender = threading.Thread(target=os.write, args=(writer.fileno(), frame[:half]))
    sender.start()  # the socket buffer may not take all of it at once
    frames = FrameReader(reader.fileno())
    old = signal.signal(signal.SIGALRM, _raise_interrupted)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)  # while the body is half read
        with pytest.raises(_Interrupted):
            while frames.read_sliced() is None:
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    sender.join(WAIT)

    def write_rest() -> None:
        try:
            os.write(writer.fileno(), frame[half:])
            writer.send_bytes(b"next")
        except OSError:
            pass  # the reader gave up and closed the pipe

    rest = threading.Thread(target=write_rest)
    rest.start()
    got = None
    deadline = time.monotonic() + WAIT
    try:
        while got is None and time.monotonic() < deadline:
            got = frames.read_sliced()
        assert got is not None and len(got) == len(body) and bytes(got) == body
        assert frames.read_sliced() == b"next"
    finally:
        writer.close()  # unblocks the rest-writer if the reader gave up
        rest.join(WAIT)
        reader.close()
