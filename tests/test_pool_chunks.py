"""``WorkPool.process/stream/start(chunksize=...)``: up to ``chunksize`` items per hand-off to
a worker (one message for a function worker), outcomes, callbacks and counts per item."""

from __future__ import annotations

import functools
import os
import pickle
import signal
import threading
import time
from typing import Any, Dict, List, Set, Tuple

import pytest

from tests._pools import pool_of, wait_until
from tests.children import workers
from workerkit import (
    ChannelClosedError,
    DynamicIterator,
    Outcome,
    RemoteError,
    Worker,
    WorkPool,
    WorkPoolError,
    WorkTimeoutError,
    function_worker,
)

pytestmark = pytest.mark.timeout(120)



# -- module-level functions for function_worker children (picklable by reference) ------


def triple(x: int) -> int:
    return 3 * x


def triple_unless_97(x: int) -> int:
    if x % 97 == 0:
        raise ValueError(f"multiple of 97: {x}")
    return triple(x)


def die_once_on_13(marker: str, x: int) -> int:
    """SIGKILLs its own child on item 13, the first time only (``marker`` remembers)."""
    if x == 13 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 1000


def logged_fail_on_5(log: str, x: int) -> int:
    """Appends one line per call to ``log``, then fails item 5."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if x == 5:
        raise ValueError("five")
    return -x


# -- thread workers ---------------------------------------------------------------------




class Collector:
    """on_complete/on_error that record every outcome, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: List[Outcome[Any, Any]] = []
        self.bad: List[Outcome[Any, Any]] = []

    def on_complete(self, o: Outcome[Any, Any]) -> None:
        with self.lock:
            self.ok.append(o)

    def on_error(self, o: Outcome[Any, Any]) -> None:
        with self.lock:
            self.bad.append(o)

    def indexes(self) -> List[int]:
        with self.lock:
            return sorted(o.index for o in self.ok + self.bad)




def contiguous_run_with(indexes: Set[int], member: int, longest: int) -> bool:
    return member in indexes and len(indexes) <= longest and max(indexes) - min(indexes) == len(indexes) - 1


# -- tests ------------------------------------------------------------------------------


def test_function_worker_chunks_give_per_item_outcomes_and_remote_errors() -> None:
    """A chunked function-worker pool reports each index once, right values, and exactly
    the failing items as RemoteError(builtins.ValueError)."""
    got = Collector()
    with WorkPool(lambda: function_worker(triple_unless_97), max_workers=2) as pool:
        summary = pool.process(range(1000), chunksize=7, raise_on_error=False,
                               on_complete=got.on_complete, on_error=got.on_error)
    bad = {x for x in range(1000) if x % 97 == 0}
    assert got.indexes() == list(range(1000)), "an index missing or repeated"
    assert all(o.input == o.index and o.value == 3 * o.index for o in got.ok)
    assert {o.index for o in got.bad} == bad
    for o in got.bad:
        assert isinstance(o.error, RemoteError) and o.error.remote_type == "builtins.ValueError"
    assert (summary.submitted, summary.completed, summary.failed) == (1000, 1000 - len(bad), len(bad))
    assert sorted(o.index for o in summary.failures) == sorted(bad)


def test_chunksize_larger_than_the_input() -> None:
    """chunksize=5000 over 100 items: one chunk, one worker, every value right."""
    got = Collector()
    with WorkPool(lambda: function_worker(triple), max_workers=2) as pool:
        summary = pool.process(range(1, 101), chunksize=5000, on_complete=got.on_complete)
    assert (summary.submitted, summary.completed, summary.failed) == (100, 100, 0)
    assert sorted((o.index, o.value) for o in got.ok) == [(i, 3 * (i + 1)) for i in range(100)]
    assert len({o.worker_id for o in got.ok}) == 1, "one chunk was split across workers"


def test_plain_worker_runs_a_chunk_item_by_item_on_one_thread() -> None:
    """A worker without execute_chunk: execute once per item, one item's error fails only
    it, and each chunk [5k, 5k+5) of a list runs consecutively on one thread."""
    calls: List[Tuple[str, int]] = []
    lock = threading.Lock()

    def fn(x: int) -> int:
        with lock:
            calls.append((threading.current_thread().name, x))
        if x == 42:
            raise KeyError(x)
        return x * 10

    got = Collector()
    with pool_of(fn, max_workers=3) as pool:
        summary = pool.process(list(range(103)), chunksize=5, raise_on_error=False,
                               on_complete=got.on_complete, on_error=got.on_error)
    assert sorted(x for _, x in calls) == list(range(103)), "execute not called once per item"
    assert (summary.submitted, summary.completed, summary.failed) == (103, 102, 1)
    assert [(o.index, type(o.error)) for o in got.bad] == [(42, KeyError)]
    assert all(o.value == 10 * o.index for o in got.ok)
    per_thread: Dict[str, List[int]] = {}
    for name, x in calls:
        per_thread.setdefault(name, []).append(x)
    for start in range(0, 103, 5):
        chunk = list(range(start, min(start + 5, 103)))
        owners = [n for n, seq in per_thread.items() if chunk[0] in seq]
        seq = per_thread[owners[0]]
        at = seq.index(chunk[0])
        assert seq[at:at + len(chunk)] == chunk, f"chunk {chunk} not run consecutively: {seq}"


class CountingSource:
    """A custom InputSource over range(n) that checks the in-flight bound at every pull."""

    def __init__(self, n: int):
        self.n = n
        self.pulled = 0
        self.finished = 0
        self.lock = threading.Lock()
        self.in_flight: List[int] = []

    def has_next(self) -> bool:
        return self.pulled < self.n

    def next(self) -> int:
        with self.lock:
            self.pulled += 1
            self.in_flight.append(self.pulled - self.finished)
            return self.pulled - 1

    def done(self) -> None:
        with self.lock:
            self.finished += 1


def test_items_in_flight_are_bounded_by_workers_times_chunksize() -> None:
    """Never more than max_workers * chunksize items pulled and not finished (+1 read-ahead)."""
    src = CountingSource(200)

    def fn(x: int) -> int:
        time.sleep(0.002)
        src.done()
        return x

    with pool_of(fn, max_workers=2) as pool:
        summary = pool.process(src, chunksize=4)
    assert (summary.submitted, summary.completed) == (200, 200)
    assert max(src.in_flight) <= 2 * 4 + 1, src.in_flight
    assert max(src.in_flight) > 2, "chunks never held several items"


def test_a_child_killed_mid_chunk_fails_only_that_chunk(tmp_path: Any) -> None:
    """SIGKILL in a chunk: its items (and only they) fail with ChannelClosedError; the
    worker is replaced and the pool keeps working."""
    fn = functools.partial(die_once_on_13, str(tmp_path / "died"))
    got = Collector()
    with WorkPool(lambda: function_worker(fn, start_method="fork"), max_workers=2) as pool:
        summary = pool.process(list(range(50)), chunksize=5, raise_on_error=False,
                               on_complete=got.on_complete, on_error=got.on_error)
        failed = {o.index for o in got.bad}
        assert contiguous_run_with(failed, 13, 5), failed
        assert all(isinstance(o.error, ChannelClosedError) for o in got.bad)
        assert got.indexes() == list(range(50))
        assert all(o.value == o.index + 1000 for o in got.ok)
        assert (summary.submitted, summary.completed, summary.failed) == (50, 50 - len(failed), len(failed))
        assert pool.stats().created >= 2
        again = pool.process(list(range(20)), chunksize=5)
        assert (again.submitted, again.completed, again.failed) == (20, 20, 0)


def test_task_timeout_fails_the_whole_chunk_and_only_it() -> None:
    """A chunk over task_timeout * len(chunk) fails as a whole with WorkTimeoutError, the
    rest completes, and the call does not wait for the stuck item."""
    release = threading.Event()

    def fn(x: int) -> int:
        if x == 7:
            release.wait(30)
        return x

    got = Collector()
    try:
        with pool_of(fn, max_workers=1, task_timeout=0.3) as pool:
            began = time.monotonic()
            summary = pool.process(list(range(20)), chunksize=4, raise_on_error=False,
                                   on_complete=got.on_complete, on_error=got.on_error)
            took = time.monotonic() - began
    finally:
        release.set()
    failed = {o.index for o in got.bad}
    assert contiguous_run_with(failed, 7, 4), failed
    assert all(isinstance(o.error, WorkTimeoutError) for o in got.bad)
    assert got.indexes() == list(range(20))
    assert all(o.value == o.index for o in got.ok)
    assert (summary.submitted, summary.completed, summary.failed) == (20, 20 - len(failed), len(failed))
    assert took < 20, f"process waited {took:.1f}s for the stuck item"


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2", None])
def test_bad_chunksize_raises_at_the_call_and_the_pool_stays_usable(bad: Any) -> None:
    """A bad chunksize is a ValueError naming chunksize at process, stream and start."""
    with pool_of(lambda x: x + 1, max_workers=2) as pool:
        with pytest.raises(ValueError, match="chunksize"):
            pool.process([1, 2, 3], chunksize=bad)
        with pytest.raises(ValueError, match="chunksize"):
            pool.stream([1, 2, 3], chunksize=bad)
        with pytest.raises(ValueError, match="chunksize"):
            pool.start([1, 2, 3], chunksize=bad)
        got = Collector()
        summary = pool.process([1, 2, 3], on_complete=got.on_complete)
        assert (summary.submitted, summary.completed, summary.failed) == (3, 3, 0)
        assert sorted(o.value for o in got.ok) == [2, 3, 4]


def test_stream_with_chunks_respects_a_slow_consumer() -> None:
    """A chunked stream runs only a bounded number of items ahead of its consumer, can be
    closed early, and the pool stays usable."""
    with pool_of(lambda x: x * 2, max_workers=2) as pool:
        gen = pool.stream(list(range(3000)), chunksize=10)
        seen = [next(gen) for _ in range(5)]
        time.sleep(0.5)
        completed = pool.stats().completed
        # Credits: 16 items per worker hand-off size (a chunk), plus the chunks in flight;
        # far below the 3000 items of the source.
        assert completed <= 5 + 16 * 10 + 2 * 10 + 2, completed
        assert all(o.ok and o.value == 2 * o.index for o in seen)
        gen.close()
        summary = pool.process([1, 2, 3], chunksize=2)
        assert (summary.submitted, summary.completed, summary.failed) == (3, 3, 0)


def test_ordered_stream_with_chunks_yields_every_index_in_order() -> None:
    """stream(ordered=True, chunksize=9) yields indexes 0..499 in order with right values."""
    with pool_of(lambda x: x - 1, max_workers=3) as pool:
        outcomes = list(pool.stream(list(range(500)), ordered=True, chunksize=9))
    assert [o.index for o in outcomes] == list(range(500))
    assert all(o.ok and o.input == o.index and o.value == o.index - 1 for o in outcomes)


def test_chunk_does_not_wait_for_a_dynamic_iterator_to_fill_it() -> None:
    """With a DynamicIterator, a chunk takes the items queued: 3 items finish while the
    iterator is open, though chunksize is 10."""
    got = Collector()
    dyn: DynamicIterator[int] = DynamicIterator()
    with pool_of(lambda x: x * 7, max_workers=2) as pool:
        future = pool.start(dyn, chunksize=10, on_complete=got.on_complete)
        try:
            dyn.extend([0, 1, 2])
            assert wait_until(lambda: len(got.indexes()) == 3), "a chunk waited to be filled"
            assert not future.done()
            dyn.extend(range(3, 15))
        finally:
            dyn.close()
        summary = future.result(timeout=60)
    assert (summary.submitted, summary.completed, summary.failed) == (15, 15, 0)
    assert sorted((o.index, o.input, o.value) for o in got.ok) == [(i, i, 7 * i) for i in range(15)]


def test_max_tasks_per_worker_counts_items_and_is_checked_after_each_chunk() -> None:
    """max_tasks_per_worker=10, chunksize=4: each worker serves 1..13 items; workers recycle."""
    got = Collector()
    with pool_of(lambda x: x, max_workers=1, max_tasks_per_worker=10) as pool:
        summary = pool.process(list(range(50)), chunksize=4, on_complete=got.on_complete)
        stats = pool.stats()
        assert stats.created >= 2 and stats.destroyed >= 1, stats
    assert (summary.submitted, summary.completed, summary.failed) == (50, 50, 0)
    served: Dict[Any, int] = {}
    for o in got.ok:
        served[o.worker_id] = served.get(o.worker_id, 0) + 1
    assert len(served) >= 2
    assert max(served.values()) <= 10 + 4 - 1, served


def test_progress_is_per_item_with_chunks() -> None:
    """progress(done, 100) with chunksize=8: done strictly increasing, last call (100, 100)."""
    calls: List[Tuple[int, Any]] = []
    with pool_of(lambda x: x, max_workers=3) as pool:
        pool.process(list(range(100)), chunksize=8, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (100, 100)
    assert all(t == 100 for _, t in calls)
    done = [d for d, _ in calls]
    assert all(a < b for a, b in zip(done, done[1:])), done


def test_function_worker_runs_fn_once_per_item_when_a_chunk_has_an_error(tmp_path: Any) -> None:
    """fn runs exactly once per item even when another item of its chunk raises."""
    log = str(tmp_path / "calls")
    fn = functools.partial(logged_fail_on_5, log)
    with WorkPool(lambda: function_worker(fn, start_method="fork"), max_workers=1) as pool:
        summary = pool.process(list(range(10)), chunksize=10, raise_on_error=False)
    assert (summary.submitted, summary.completed, summary.failed) == (10, 9, 1)
    with open(log) as f:
        calls = sorted(int(line) for line in f)
    assert calls == list(range(10)), f"fn called {len(calls)} times for 10 items: {calls}"


class ReleaseCounting(Worker[Any, Any]):
    """Counts execute and release calls (shared lists); release() raises on call 3."""

    events: List[str] = []

    def execute(self, item: Any) -> Any:
        ReleaseCounting.events.append(f"execute {item}")
        return item

    def release(self) -> None:
        ReleaseCounting.events.append("release")
        if ReleaseCounting.events.count("release") == 3:
            raise RuntimeError("release failed")


def test_plain_worker_is_released_after_each_execute_of_a_chunk() -> None:
    """release() follows every execute, inside a chunk too; one that raises replaces the
    worker and the chunk goes on without losing an item."""
    ReleaseCounting.events = []
    with WorkPool(ReleaseCounting, max_workers=1) as pool:
        summary = pool.process(list(range(20)), chunksize=5)
        stats = pool.stats()
    assert (summary.completed, summary.failed) == (20, 0)
    events = ReleaseCounting.events
    assert events.count("release") == 20
    assert [e for e in events if e != "release"] == [f"execute {i}" for i in range(20)]
    assert all(events[i + 1] == "release" for i, e in enumerate(events) if e.startswith("execute"))
    assert stats.created == 2 and stats.destroyed == 1


def test_an_unpicklable_item_in_a_chunk_fails_alone() -> None:
    """process(chunksize=): only the item that cannot be pickled fails, with its pickling
    error, at its own index; the rest of its chunk runs in the child."""
    items: List[Any] = [0, 1, 2, lambda: 3, 4, 5, 6, 7]
    with WorkPool(lambda: function_worker(workers.identity, start_method="spawn"), max_workers=1) as pool:
        summary = pool.process(items, chunksize=4, raise_on_error=False)
    assert (summary.completed, summary.failed) == (7, 1)
    (failure,) = summary.failures
    assert failure.index == 3
    assert isinstance(failure.error, (pickle.PicklingError, AttributeError, TypeError))


def test_a_release_patched_onto_worker_is_still_called(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[int] = []
    monkeypatch.setattr(Worker, "release", lambda self: calls.append(1))
    with pool_of(lambda x: x, max_workers=1) as pool:
        pool.process(range(3))
    assert len(calls) == 3


def test_a_chunk_never_takes_a_worker_past_max_tasks_per_worker() -> None:
    """max_tasks_per_worker=2 with chunksize=3: a chunk holds at most the items its worker
    may still serve, so every child serves 2 items, through process and through map."""
    from collections import Counter

    with WorkPool(lambda: function_worker(workers.pid_of), max_workers=1, max_tasks_per_worker=2) as pool:
        got: List[Outcome[int, int]] = []
        summary = pool.process(range(7), on_complete=got.append, chunksize=3)
    assert (summary.completed, summary.failed) == (7, 0)
    assert sorted(Counter(o.value for o in got).values()) == [1, 2, 2, 2]
    pids = list(WorkPool.map(workers.pid_of, range(6), max_workers=2, max_tasks_per_worker=2, chunksize=3))
    assert len(pids) == 6 and max(Counter(pids).values()) <= 2


def test_the_first_error_in_time_is_the_cause_even_inside_a_chunk_that_replied_late() -> None:
    """Chunk A: its first item fails at once, its second takes 3 s (A replies at ~3 s).
    Chunk B: its first item fails after 1 s (B replies at ~1 s). The call's __cause__ is
    A's error, which happened first, though B's reply came first."""
    items = [(0.0, True), (3.0, False), (1.0, True), (0.0, False)]
    with WorkPool(lambda: function_worker(workers.nap_then_maybe_fail), max_workers=2) as pool:
        with pytest.raises(WorkPoolError) as info:
            pool.process(items, chunksize=2)
    assert "failed after 0.0" in str(info.value.__cause__)
    assert info.value.summary is not None and info.value.summary.failed == 2


def test_the_first_error_in_time_wins_over_chunk_and_single_item_errors_recorded_late() -> None:
    """Chunks and single items in one call (max_tasks_per_worker=3 makes a worker's third
    item a single), and a slow callback that delays recording: every error is compared
    by when the child raised it, not by when the parent recorded it."""
    a, b = (0.0, False), (0.001, False)  # chunk 1 (worker 1)
    c, d = (0.5, True), (0.002, False)  # chunk 2 (worker 2): c fails after 0.5 s
    e = (0.003, True)  # worker 1's third item, a single: fails first, recorded after the callback

    def slow(outcome: Outcome[Any, Any]) -> None:
        if outcome.input == a:
            time.sleep(1.5)

    with WorkPool(lambda: function_worker(workers.nap_then_maybe_fail), max_workers=2,
                  max_tasks_per_worker=3) as pool:
        with pytest.raises(WorkPoolError) as info:
            pool.process([a, b, c, d, e], chunksize=2, on_complete=slow)
    assert "failed after 0.003" in str(info.value.__cause__)


def test_a_remote_error_keeps_when_it_was_raised_through_pickling() -> None:
    error = RemoteError("boom", "builtins.ValueError", "tb")
    error.raised_at = 123.5
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.remote_type, copy.remote_traceback, copy.raised_at) == (
        "boom", "builtins.ValueError", "tb", 123.5)
    assert pickle.loads(pickle.dumps(RemoteError("plain"))).raised_at is None
