"""Slots that pull their call's next item themselves (workerkit/_feed.py).

A pool thread that finished an item may take its call's next item on its own thread, but
only from a source that cannot block (a built-in collection, a DynamicIterator with an item
queued), one pull at a time under the call's lock, never ahead of a waiting call or of a
stream's consumer. Generators and custom InputSources stay with the dispatcher.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest

from tests._pools import FnWorker, pool_of, wait_until
from workerkit import DynamicIterator, Outcome, Worker, WorkPool, function_worker
from workerkit._options import stream_window

pytestmark = pytest.mark.timeout(120)







def pool_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("workerkit-worker-")]


def test_list_source_every_index_once_callbacks_on_pool_threads() -> None:
    """A list pulled partly by slots: each index once, in source order, right values and
    counts; on_complete runs on pool threads only."""
    got: List[Tuple[int, Any, Any, str, int]] = []  # index, input, value, thread name, ident
    lock = threading.Lock()

    def on_complete(o: Outcome[Any, Any]) -> None:
        me = threading.current_thread()
        with lock:  # (an assert here would only be logged: callbacks' errors are swallowed)
            got.append((o.index, o.input, o.value, me.name, threading.get_ident()))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: an unserialized pull shows up sooner
    try:
        with pool_of(lambda x: x * 2, max_workers=2) as pool:
            summary = pool.process(list(range(2000)), on_complete=on_complete)
    finally:
        sys.setswitchinterval(interval)
    assert (summary.submitted, summary.completed, summary.failed) == (2000, 2000, 0)
    assert summary.failures == []
    assert sorted(g[0] for g in got) == list(range(2000)), "an index missing or repeated"
    assert all(g[1] == g[0] and g[2] == 2 * g[0] for g in got), "index not in source order"
    assert all(g[3].startswith("workerkit-worker-") for g in got)
    assert threading.get_ident() not in {g[4] for g in got}, "on_complete on the caller"


def test_concurrency_is_bounded_by_max_workers_and_real() -> None:
    """Slots pulling for themselves never run more than max_workers executes at once, and
    items really run in parallel."""
    lock = threading.Lock()
    running = peak = 0

    def work(item: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.001)
        with lock:
            running -= 1
        return item

    with pool_of(work, max_workers=3) as pool:
        summary = pool.process(list(range(300)))
    assert summary.completed == 300
    assert 2 <= peak <= 3, peak


@pytest.mark.parametrize("kind", ["dict", "deque"])
def test_source_error_during_a_slot_pull_is_reraised_and_pool_stays_usable(kind: str) -> None:
    """A dict (or deque) changed during iteration: process() raises the source's own
    RuntimeError once the items in flight finished; counts match what was pulled; the
    same pool then processes a new list."""
    src: Any = {i: i for i in range(200)} if kind == "dict" else collections.deque(range(200))
    lock = threading.Lock()
    executed: List[int] = []

    def work(key: int) -> int:
        with lock:
            executed.append(key)
            if key == 50:
                if kind == "dict":
                    src[1000] = 1000
                else:
                    src.append(1000)
        return key

    with pool_of(work, max_workers=2) as pool:
        with pytest.raises(RuntimeError, match="(changed size|mutated) during iteration"):
            pool.process(src)
        stats = pool.stats()
        assert len(executed) == len(set(executed)) and 50 in executed
        assert 1000 not in executed and len(executed) < 200
        assert stats.completed + stats.failed == len(executed)
        assert stats.failed == 0 and stats.busy == 0
        pulled = len(executed)
        summary = pool.process(list(range(100)))
        assert (summary.submitted, summary.completed, summary.failed) == (100, 100, 0)
        assert sorted(executed[pulled:]) == list(range(100))
        assert pool.stats().completed == pulled + 100


def test_a_waiting_call_gets_slots_before_the_running_call_ends() -> None:
    """Fairness: while a second call waits for a slot, the first call's slots stop pulling
    for themselves, so the second call starts before the first one finishes."""
    times: Dict[str, List[float]] = {"a": [], "b": []}
    lock = threading.Lock()

    def recorder(name: str) -> Callable[[Outcome[Any, Any]], None]:
        def on_complete(o: Outcome[Any, Any]) -> None:
            with lock:
                times[name].append(time.monotonic())
        return on_complete

    def work(item: int) -> int:
        time.sleep(0.002)
        return item

    with pool_of(work, max_workers=2) as pool:
        fut_a = pool.start(list(range(400)), on_complete=recorder("a"))
        assert wait_until(lambda: len(times["a"]) >= 10)
        fut_b = pool.start(list(range(400)), on_complete=recorder("b"))
        assert fut_a.result(60).completed == 400
        assert fut_b.result(60).completed == 400
    assert len(times["a"]) == 400 and len(times["b"]) == 400
    assert min(times["b"]) < max(times["a"]), "the second call waited for the whole first call"


def test_stream_slots_do_not_run_ahead_of_the_consumer() -> None:
    """A stream's slots pull only while the consumer has credit: a paused consumer stops
    the work after a window of outcomes ahead (``stream_window``: 16 for 2 workers);
    leaving early is clean."""
    with pool_of(lambda x: x, max_workers=2) as pool:
        got: List[int] = []
        outcomes = pool.stream(list(range(2000)))
        for outcome in outcomes:
            got.append(outcome.index)
            if len(got) == 5:
                time.sleep(0.5)
                completed = pool.stats().completed
                break
        outcomes.close()  # type: ignore[attr-defined]  # a generator: stops the stream now
        assert completed <= 5 + stream_window(2, 1) + 2 + 2, completed
        assert pool.stats().busy == 0
        summary = pool.process(list(range(50)))
        assert (summary.submitted, summary.completed) == (50, 50)


class CountingWorker(Worker[Any, Any]):
    inits = 0
    lock = threading.Lock()

    def init(self) -> None:
        with CountingWorker.lock:
            CountingWorker.inits += 1

    def execute(self, item: Any) -> Any:
        return item * 10


def test_dynamic_iterator_idle_workers_time_out_while_it_is_open() -> None:
    """An open, empty DynamicIterator holds no worker: slots go idle and time out, and new
    workers are created when items arrive again."""
    CountingWorker.inits = 0
    done: List[Outcome[Any, Any]] = []
    lock = threading.Lock()

    def on_complete(o: Outcome[Any, Any]) -> None:
        with lock:
            done.append(o)

    dyn: DynamicIterator[int] = DynamicIterator()
    pool: WorkPool[Any, Any] = WorkPool(CountingWorker, max_workers=2, min_workers=0, idle_timeout=0.2)
    with pool:
        fut = pool.start(dyn, on_complete=on_complete)
        dyn.extend(range(5))
        assert wait_until(lambda: len(done) == 5)
        assert wait_until(lambda: pool.stats().alive == 0), pool.stats()
        assert not dyn.closed and not fut.done()
        inits_before = CountingWorker.inits
        assert inits_before >= 1
        dyn.extend(range(5, 10))
        dyn.close()
        summary = fut.result(30)
    assert (summary.submitted, summary.completed, summary.failed) == (10, 10, 0)
    assert sorted(o.input for o in done) == list(range(10))
    assert sorted(o.index for o in done) == list(range(10))
    assert all(o.value == o.input * 10 for o in done)
    assert CountingWorker.inits > inits_before, "no worker was re-created"


def test_generator_waiting_for_an_event_does_not_hold_a_worker() -> None:
    """A generator is pulled by the dispatcher only: while it waits, idle workers time out
    (here it waits for exactly that), and the call still completes."""
    saw_zero: List[bool] = []
    pool = pool_of(lambda x: x + 1, max_workers=2, min_workers=0, idle_timeout=0.2)

    def gen() -> Any:
        for i in range(8):
            if i == 3:
                saw_zero.append(wait_until(lambda: pool.stats().alive == 0))
            yield i

    with pool:
        values: List[Any] = []
        summary = pool.process(gen(), on_complete=lambda o: values.append(o.value))
    assert saw_zero == [True]
    assert (summary.submitted, summary.completed) == (8, 8)
    assert sorted(values) == list(range(1, 9))


class StrictSource:
    """An InputSource that logs (call, result, thread) and fails on overlapping calls."""

    def __init__(self, n: int):
        self.items = list(range(n))
        self.pos = 0
        self.guard = threading.Lock()
        self.log: List[Tuple[str, Any, int]] = []
        self.overlaps = 0

    def _enter(self) -> None:
        if not self.guard.acquire(blocking=False):
            self.overlaps += 1
            raise AssertionError("two source calls overlap")

    def has_next(self) -> bool:
        self._enter()
        try:
            more = self.pos < len(self.items)
            self.log.append(("has_next", more, threading.get_ident()))
            return more
        finally:
            self.guard.release()

    def next(self) -> Any:
        self._enter()
        try:
            item = self.items[self.pos]
            self.pos += 1
            self.log.append(("next", item, threading.get_ident()))
            return item
        finally:
            self.guard.release()


def test_custom_input_source_is_driven_by_the_caller_only() -> None:
    """A custom InputSource is never pulled by a slot: one thread (the caller's), no
    overlap, each next() right after a has_next() that said True, each item once."""
    src = StrictSource(200)
    seen: List[int] = []
    lock = threading.Lock()

    def on_complete(o: Outcome[Any, Any]) -> None:
        with lock:
            seen.append(o.input)

    with pool_of(lambda x: x, max_workers=2) as pool:
        summary = pool.process(src, on_complete=on_complete)
    assert src.overlaps == 0
    assert summary.completed == 200 and sorted(seen) == list(range(200))
    assert {ident for _, _, ident in src.log} == {threading.get_ident()}
    nexts = [i for i, (call, _, _) in enumerate(src.log) if call == "next"]
    assert len(nexts) == 200
    for i in nexts:
        assert i > 0 and src.log[i - 1][:2] == ("has_next", True), src.log[max(0, i - 2) : i + 1]
    assert src.log[-1][:2] == ("has_next", False)


def test_shutdown_from_another_thread_stops_a_list_call() -> None:
    """shutdown(wait=True) stops slots pulling a list: it returns, the call returns its
    summary (items in flight finish, nothing fails), and every pool thread ends."""
    pool = pool_of(lambda x: time.sleep(0.001), max_workers=2)
    result: Dict[str, Any] = {}

    def call() -> None:
        try:
            result["summary"] = pool.process(list(range(100000)))
        except BaseException as exc:  # pragma: no cover - reported by the asserts below
            result["error"] = exc

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert wait_until(lambda: pool.stats().completed >= 20)
    started = time.monotonic()
    stopper = threading.Thread(target=pool.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive(), "shutdown(wait=True) did not return"
    assert time.monotonic() - started < 30
    caller.join(30)
    assert not caller.is_alive(), "process() did not end after shutdown"
    assert "error" not in result, repr(result.get("error"))
    summary = result["summary"]
    assert summary.submitted == summary.completed + summary.failed
    assert summary.failed == 0 and 20 <= summary.submitted < 100000
    assert wait_until(lambda: not pool_threads()), pool_threads()


def test_function_worker_pool_over_a_list() -> None:
    """Slots pulling for themselves also drive child-process workers: each item once."""
    outcomes: List[Outcome[Any, Any]] = []
    lock = threading.Lock()

    def on_complete(o: Outcome[Any, Any]) -> None:
        with lock:
            outcomes.append(o)

    items = list(range(-500, 500))
    pool: WorkPool[Any, Any] = WorkPool(lambda: function_worker(abs), max_workers=2)
    with pool:
        summary = pool.process(items, on_complete=on_complete)
    assert (summary.submitted, summary.completed, summary.failed) == (1000, 1000, 0)
    assert sorted(o.index for o in outcomes) == list(range(1000))
    assert all(o.input == items[o.index] and o.value == abs(o.input) for o in outcomes)


def test_a_source_that_raised_on_a_slots_pull_is_never_asked_again() -> None:
    """After the source raised on a pool thread's pull, nobody calls it again: process()
    re-raises that very exception."""
    from workerkit import IterableInputSource

    data = {i: i for i in range(400)}
    raised: List[BaseException] = []
    calls_after: List[str] = []

    class Watched(IterableInputSource[int]):
        def has_next(self) -> bool:
            if raised:
                calls_after.append(threading.current_thread().name)
            try:
                return super().has_next()
            except RuntimeError as exc:
                raised.append(exc)
                raise

    def grow(item: int) -> int:
        if item == 50:
            data[1000] = 1000  # the dict changes size: its iterator raises on the next pull
        return item

    with pool_of(grow, max_workers=2) as pool:
        with pytest.raises(RuntimeError) as caught:
            pool.process(Watched(data))
    assert len(raised) == 1 and caught.value is raised[0]
    assert calls_after == []


def _factory(make: str) -> Callable[[], Any]:
    if make == "thread":
        return lambda: FnWorker(abs)
    return lambda: function_worker(abs)


def _ends_within(target: Callable[[], Any], seconds: float) -> bool:
    """Run ``target`` on a thread; whether it ended within ``seconds``."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


@pytest.mark.parametrize("make", ["thread", "function"])
def test_leaving_a_stream_over_an_open_dynamic_iterator_does_not_wait_for_more_items(make: str) -> None:
    """Breaking out of the loop stops pulling: it must not wait in has_next() for an item
    nobody is going to add. The iterator stays usable, and nothing is lost."""
    source: DynamicIterator[int] = DynamicIterator()
    source.add(1)
    factory = _factory(make)
    with WorkPool(factory, max_workers=2) as pool:
        def leave_early() -> None:
            for _outcome in pool.stream(source):
                break

        assert _ends_within(leave_early, 30), "the stream waited for the iterator"
        source.add(2)
        source.add(3)
        source.close()
        summary = pool.process(source)
    assert summary.completed == 2  # 2 and 3: none taken and dropped by the first stream


@pytest.mark.parametrize("make", ["thread", "function"])
def test_shutdown_ends_a_process_call_waiting_on_an_open_dynamic_iterator(make: str) -> None:
    source: DynamicIterator[int] = DynamicIterator()
    source.add(1)
    factory = _factory(make)
    pool = WorkPool(factory, max_workers=2)
    results: List[Any] = []

    def run() -> None:
        try:
            results.append(pool.process(source))
        except Exception as exc:  # what process says after shutdown is not the point here
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert wait_until(lambda: pool.stats().completed == 1)
    pool.shutdown()
    thread.join(30)
    assert not thread.is_alive(), "process() stayed blocked in the iterator after shutdown()"
    source.add(5)
    assert len(source) == 1  # the iterator is intact


def test_an_item_taken_by_another_consumer_meanwhile_never_leaves_the_dispatcher_blocked() -> None:
    """The dispatcher sees an item queued in a DynamicIterator, but another consumer takes
    it before the dispatcher gets the feed's lock (forced here by holding that lock, as a
    slot's own pull does): the dispatcher goes back to waiting in slices, so shutdown()
    still ends the call."""
    source: DynamicIterator[int] = DynamicIterator()
    pool = WorkPool(lambda: function_worker(abs), max_workers=2)
    thread = threading.Thread(target=lambda: pool.process(source), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: len(pool._runs) == 1)
        (run,) = list(pool._runs)
        with run.feed.lock:
            source.add(1)
            time.sleep(0.3)  # the dispatcher's wait sees the item, then waits for the lock
            assert next(source) == 1  # another consumer takes it
        time.sleep(0.3)
        pool.shutdown()
        thread.join(30)
        assert not thread.is_alive(), "the dispatcher stayed blocked in the iterator"
    finally:
        source.close()
        thread.join(30)
        pool.shutdown()
