"""Input sources: lazy pulling, None items, and the thread-safe DynamicIterator."""

from __future__ import annotations

import collections.abc
import threading
from typing import Iterator, List, Optional

import pytest

from workerkit.input import DynamicIterator, InputSource, IterableInputSource, as_input_source

pytestmark = pytest.mark.timeout(30)

# How long to wait to conclude that a thread is blocked. Only used to check that something
# has NOT happened yet; every positive wait below is on an event or a join.
BLOCKED_FOR = 0.2
JOIN_TIMEOUT = 5.0


def drain(src: InputSource[object]) -> List[object]:
    """Pull every item the way a pool does: has_next() first, then next()."""
    out: List[object] = []
    while src.has_next():
        out.append(src.next())
    return out


def start_thread(target: object, *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def join_all(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), f"{thread.name} did not finish"


# --- ported from the seed library's input source tests ---------------------------------


def test_iterable_source_yields_list_items_in_order() -> None:
    src = IterableInputSource([1, 2, 3])
    assert drain(src) == [1, 2, 3]
    assert not src.has_next()


def test_iterator_source_yields_items_in_order() -> None:
    src = IterableInputSource(iter([1, 2, 3]))
    assert drain(src) == [1, 2, 3]
    assert not src.has_next()


def test_generator_function_source_yields_items_in_order() -> None:
    def gen() -> Iterator[str]:
        for i in range(5):
            yield f"{i}-"

    src = IterableInputSource(gen())
    assert drain(src) == ["0-", "1-", "2-", "3-", "4-"]
    assert not src.has_next()


def test_event_source_fed_by_timers_blocks_next_for_each_item() -> None:
    dyn: DynamicIterator[int] = DynamicIterator()
    src = IterableInputSource(dyn)
    timers: List[threading.Timer] = []

    # Each timer schedules the next one, 10 ms apart, so the items arrive in a fixed order
    # even on a loaded machine (independent timers could fire out of order).
    def fire(value: int) -> None:
        if value <= 5:
            dyn.add(value)
            schedule(value + 1)
        else:
            dyn.close()

    def schedule(value: int) -> None:
        timer = threading.Timer(0.01, fire, args=(value,))
        timers.append(timer)
        timer.start()

    schedule(1)
    # next() without has_next(): each call must block until a timer adds the item.
    received = [src.next() for _ in range(5)]
    assert received == [1, 2, 3, 4, 5]
    with pytest.raises(StopIteration):
        src.next()  # blocks until the closing timer fires
    assert not src.has_next()
    assert len(timers) == 6
    join_all(*timers)


# --- IterableInputSource ----------------------------------------------------------------


def test_none_items_pass_through() -> None:
    src = IterableInputSource([None, 0, None])
    assert src.has_next()  # a buffered None is still an item
    assert src.has_next()
    assert src.next() is None
    assert drain(src) == [0, None]
    assert not src.has_next()


def test_has_next_reads_at_most_one_item_ahead() -> None:
    pulled = 0

    def gen() -> Iterator[int]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield i

    src = IterableInputSource(gen())
    assert pulled == 0
    assert src.has_next()
    assert pulled == 1
    assert src.has_next()
    assert src.has_next()
    assert pulled == 1
    assert src.next() == 0
    assert pulled == 1
    assert src.next() == 1  # next() without has_next() pulls exactly the item it returns
    assert pulled == 2


def test_exhausted_iterator_is_not_advanced_again() -> None:
    class CountingIterator:
        def __init__(self) -> None:
            self.calls = 0

        def __iter__(self) -> CountingIterator:
            return self

        def __next__(self) -> int:
            self.calls += 1
            if self.calls == 1:
                return 7
            raise StopIteration

    it = CountingIterator()
    src = IterableInputSource(it)
    assert drain(src) == [7]
    assert it.calls == 2
    assert not src.has_next()
    assert not src.has_next()
    with pytest.raises(StopIteration):
        src.next()
    assert it.calls == 2


def test_next_without_has_next_raises_stop_iteration_when_exhausted() -> None:
    src = IterableInputSource(range(2))
    assert src.next() == 0
    assert src.next() == 1
    with pytest.raises(StopIteration):
        src.next()


def test_iterator_exception_propagates_unchanged() -> None:
    boom = RuntimeError("boom")

    def gen() -> Iterator[int]:
        yield 1
        raise boom

    src = IterableInputSource(gen())
    assert src.has_next()
    assert src.next() == 1
    with pytest.raises(RuntimeError) as info:
        src.has_next()
    assert info.value is boom

    def failing_at_once() -> Iterator[int]:
        raise boom
        yield 0  # pragma: no cover - makes this a generator

    with pytest.raises(RuntimeError) as info:
        IterableInputSource(failing_at_once()).next()
    assert info.value is boom


def test_iterable_source_rejects_non_iterable() -> None:
    with pytest.raises(
        TypeError, match="IterableInputSource needs an iterable or iterator, got int"
    ):
        IterableInputSource(5)  # type: ignore[arg-type]


def test_iterable_source_satisfies_the_protocol() -> None:
    assert isinstance(IterableInputSource([]), InputSource)
    assert not isinstance([1, 2], InputSource)


# --- as_input_source --------------------------------------------------------------------


def test_as_input_source_rejects_non_iterable() -> None:
    with pytest.raises(
        TypeError, match="process\\(\\) needs an InputSource or an iterable, got int"
    ):
        as_input_source(5)  # type: ignore[arg-type]


def test_as_input_source_passes_input_sources_through() -> None:
    class Countdown:
        def __init__(self) -> None:
            self.left = 2

        def has_next(self) -> bool:
            return self.left > 0

        def next(self) -> int:
            self.left -= 1
            return self.left

    custom = Countdown()
    assert as_input_source(custom) is custom
    wrapped = IterableInputSource([1])
    assert as_input_source(wrapped) is wrapped


def test_as_input_source_wraps_iterables() -> None:
    src = as_input_source([1, None, 3])
    assert isinstance(src, IterableInputSource)
    assert drain(src) == [1, None, 3]
    assert drain(as_input_source("ab")) == ["a", "b"]
    dyn: DynamicIterator[int] = DynamicIterator()
    dyn.extend([4, 5])
    dyn.close()
    assert drain(as_input_source(dyn)) == [4, 5]


# --- DynamicIterator --------------------------------------------------------------------


def test_dynamic_iterator_is_an_iterator() -> None:
    dyn: DynamicIterator[int] = DynamicIterator()
    assert isinstance(dyn, collections.abc.Iterator)
    assert iter(dyn) is dyn


@pytest.mark.parametrize("maxsize", [0, 16])
def test_every_item_is_delivered_exactly_once_across_threads(maxsize: int) -> None:
    producers, consumers, per_producer = 4, 4, 5000
    dyn: DynamicIterator[int] = DynamicIterator(maxsize=maxsize)
    start = threading.Barrier(producers + consumers)
    consumed: List[List[int]] = [[] for _ in range(consumers)]

    def produce(index: int) -> None:
        items = range(index * per_producer, (index + 1) * per_producer)
        start.wait()
        if index % 2:
            dyn.extend(items)
        else:
            for item in items:
                dyn.add(item)

    def consume(index: int) -> None:
        start.wait()
        for item in dyn:
            consumed[index].append(item)

    producer_threads = [start_thread(produce, i) for i in range(producers)]
    consumer_threads = [start_thread(consume, i) for i in range(consumers)]
    join_all(*producer_threads)
    dyn.close()
    join_all(*consumer_threads)

    everything = [item for part in consumed for item in part]
    assert len(everything) == producers * per_producer  # no duplicates, nothing lost
    assert sorted(everything) == list(range(producers * per_producer))
    assert len(dyn) == 0


def test_close_still_delivers_queued_items() -> None:
    dyn: DynamicIterator[Optional[int]] = DynamicIterator()
    dyn.extend([1, None, 3])
    dyn.close()
    assert dyn.closed
    assert len(dyn) == 3
    assert list(dyn) == [1, None, 3]
    assert list(dyn) == []


def test_add_first_puts_item_at_front() -> None:
    dyn: DynamicIterator[str] = DynamicIterator()
    dyn.add("b")
    dyn.add("c")
    dyn.add("a", first=True)
    dyn.add("d")
    dyn.close()
    assert list(dyn) == ["a", "b", "c", "d"]


def test_len_counts_queued_items() -> None:
    dyn: DynamicIterator[int] = DynamicIterator()
    assert len(dyn) == 0
    dyn.extend(range(3))
    assert len(dyn) == 3
    next(dyn)
    assert len(dyn) == 2


def test_full_queue_blocks_add_until_an_item_is_taken() -> None:
    dyn: DynamicIterator[int] = DynamicIterator(maxsize=2)
    dyn.add(1)
    dyn.add(2)
    started, added = threading.Event(), threading.Event()

    def produce() -> None:
        started.set()
        dyn.add(3)
        added.set()

    thread = start_thread(produce)
    assert started.wait(JOIN_TIMEOUT)
    assert not added.wait(BLOCKED_FOR), "add() on a full queue returned without blocking"
    assert len(dyn) == 2
    assert next(dyn) == 1
    join_all(thread)
    assert added.is_set()
    dyn.close()
    assert list(dyn) == [2, 3]


def test_extend_respects_maxsize() -> None:
    dyn: DynamicIterator[int] = DynamicIterator(maxsize=2)
    started, done = threading.Event(), threading.Event()

    def produce() -> None:
        started.set()
        dyn.extend(range(6))
        done.set()

    thread = start_thread(produce)
    assert started.wait(JOIN_TIMEOUT)
    assert not done.wait(BLOCKED_FOR), "extend() overfilled a bounded queue"
    assert len(dyn) == 2
    received = [next(dyn) for _ in range(6)]
    join_all(thread)
    assert done.is_set()
    assert received == list(range(6))


def test_close_wakes_every_blocked_consumer() -> None:
    dyn: DynamicIterator[int] = DynamicIterator()
    waiting = threading.Barrier(4)
    outcomes: List[str] = []
    lock = threading.Lock()

    def consume() -> None:
        waiting.wait()
        try:
            next(dyn)
            result = "item"
        except StopIteration:
            result = "stopped"
        with lock:
            outcomes.append(result)

    threads = [start_thread(consume) for _ in range(3)]
    waiting.wait()
    assert not _finished(threads, BLOCKED_FOR), "next() on an empty open iterator did not block"
    assert outcomes == []
    dyn.close()
    join_all(*threads)
    assert outcomes == ["stopped"] * 3


def _finished(threads: List[threading.Thread], timeout: float) -> bool:
    """Whether every thread ends within ``timeout`` seconds (used to prove they block)."""
    for thread in threads:
        thread.join(timeout)
    return not any(thread.is_alive() for thread in threads)


def test_close_fails_a_producer_blocked_on_a_full_queue() -> None:
    dyn: DynamicIterator[int] = DynamicIterator(maxsize=1)
    dyn.add(1)
    started = threading.Event()
    errors: List[BaseException] = []

    def produce() -> None:
        started.set()
        try:
            dyn.add(2)
        except ValueError as exc:
            errors.append(exc)

    thread = start_thread(produce)
    assert started.wait(JOIN_TIMEOUT)
    assert not _finished([thread], BLOCKED_FOR)
    dyn.close()
    join_all(thread)
    assert len(errors) == 1
    assert "closed" in str(errors[0])
    assert list(dyn) == [1]  # the queued item survives, the refused one never appears


def test_add_and_extend_after_close_raise_value_error() -> None:
    dyn: DynamicIterator[int] = DynamicIterator()
    dyn.add(1)
    dyn.close()
    dyn.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        dyn.add(2)
    with pytest.raises(ValueError, match="closed"):
        dyn.add(2, first=True)
    with pytest.raises(ValueError, match="closed"):
        dyn.extend([3, 4])
    bounded: DynamicIterator[int] = DynamicIterator(maxsize=3)
    bounded.close()
    with pytest.raises(ValueError, match="closed"):
        bounded.extend([3, 4])
    assert list(dyn) == [1]


def test_negative_maxsize_is_rejected() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        DynamicIterator(maxsize=-1)
