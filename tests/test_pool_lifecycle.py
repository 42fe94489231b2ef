"""Worker lifecycle as API.md section 2 states it: lazy creation, init once, release after
each item, destroy exactly once, inactive workers replaced, max_tasks_per_worker,
idle_timeout down to min_workers, task_timeout, and factory/init failures.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from tests._pools import wait_until
from workerkit import Outcome, Worker, WorkPool, WorkPoolError, WorkTimeoutError

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
CHANCE = 0.2


class Recorder:
    """Lifecycle events of every worker of one test, in the order they happened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: List[Tuple[Any, str, Any]] = []  # (worker id, event, item)
        self.workers: List[RecordingWorker] = []

    def add(self, worker_id: Any, event: str, item: Any = None) -> None:
        with self.lock:
            self.events.append((worker_id, event, item))

    def of(self, worker_id: Any) -> List[str]:
        with self.lock:
            return [e for w, e, _ in self.events if w == worker_id]

    def count(self, event: str) -> int:
        with self.lock:
            return sum(1 for _, e, _ in self.events if e == event)

    def ids(self) -> List[Any]:
        with self.lock:
            return [w.id for w in self.workers]


class RecordingWorker(Worker[Any, Any]):
    """Records init/execute/release/destroy; runs ``fn`` (or returns the item) in execute."""

    def __init__(self, rec: Recorder, fn: Optional[Callable[[RecordingWorker, Any], Any]] = None):
        super().__init__()
        self.rec = rec
        self.fn = fn
        with rec.lock:
            rec.workers.append(self)
        rec.add(self.id, "created")

    def init(self) -> None:
        self.rec.add(self.id, "init")

    def execute(self, item: Any) -> Any:
        self.rec.add(self.id, "execute", item)
        return item if self.fn is None else self.fn(self, item)

    def release(self) -> None:
        self.rec.add(self.id, "release")

    def destroy(self) -> None:
        self.rec.add(self.id, "destroy")


def recording_pool(
    rec: Recorder, fn: Optional[Callable[[RecordingWorker, Any], Any]] = None, **kwargs: Any
) -> WorkPool[Any, Any]:
    return WorkPool(lambda: RecordingWorker(rec, fn), **kwargs)


class Boom(Exception):
    pass


# ------------------------------------------------------------------ creation


def test_no_worker_is_created_before_there_is_work() -> None:
    calls = []

    def factory() -> Worker[int, int]:
        calls.append(1)
        return RecordingWorker(Recorder())

    with WorkPool(factory, max_workers=4, min_workers=2) as pool:
        assert pool.stats().created == 0
        summary = pool.process([])
        assert summary.submitted == 0
        assert pool.stats().created == 0
        assert list(pool.stream(iter([]))) == []
        assert pool.stats().created == 0
    assert calls == []


def test_workers_are_created_lazily_up_to_max_workers() -> None:
    rec = Recorder()
    three = threading.Barrier(3)
    four = threading.Barrier(4)

    def work(worker: RecordingWorker, item: Tuple[str, int]) -> Any:
        phase, n = item
        if phase == "three" and n < 3:
            three.wait(WAIT)
        if phase == "four" and n < 4:
            four.wait(WAIT)
        return item

    with recording_pool(rec, work, max_workers=4) as pool:
        for n in range(5):
            pool.process([("one", n)])  # one item at a time needs one worker
        assert pool.stats().created == 1
        pool.process([("three", n) for n in range(3)])
        assert pool.stats().created == 3
        pool.process([("four", n) for n in range(40)])
        assert pool.stats().created == 4
        assert pool.stats().alive == 4


def test_init_runs_once_right_after_creation() -> None:
    rec = Recorder()
    both = threading.Barrier(2)

    def work(worker: RecordingWorker, item: int) -> int:
        if item < 2:
            both.wait(WAIT)
        return item

    with recording_pool(rec, work, max_workers=2) as pool:
        pool.process(range(10))
        pool.process(range(10))
    assert len(rec.workers) == 2
    for wid in rec.ids():
        events = rec.of(wid)
        assert events[:2] == ["created", "init"]
        assert events.count("init") == 1


def test_release_runs_after_each_execute_and_destroy_exactly_once() -> None:
    rec = Recorder()

    def work(worker: RecordingWorker, item: int) -> int:
        if item == 4:
            raise Boom("four")  # release also follows a failed execute
        return item

    with recording_pool(rec, work, max_workers=3) as pool:
        pool.process(range(20), raise_on_error=False)
    assert rec.workers
    executes = 0
    for wid in rec.ids():
        events = rec.of(wid)
        body = events[2:-1]
        assert events[:2] == ["created", "init"]
        assert events[-1] == "destroy"
        assert events.count("destroy") == 1
        assert body == ["execute", "release"] * (len(body) // 2), events
        executes += body.count("execute")
    assert executes == 20


def test_destroy_runs_exactly_once_per_worker_on_shutdown() -> None:
    rec = Recorder()
    pool = recording_pool(rec, max_workers=3, max_tasks_per_worker=2)
    pool.process(range(11))
    pool.shutdown()
    pool.shutdown()
    destroys = Counter(w for w, e, _ in rec.events if e == "destroy")
    assert set(destroys) == set(rec.ids())
    assert set(destroys.values()) == {1}
    assert pool.stats().destroyed == pool.stats().created == len(rec.workers)


def test_duck_typed_worker_with_only_execute_works() -> None:
    class Duck:
        def execute(self, item: int) -> int:
            return item * 3

    with WorkPool(Duck, max_workers=2) as pool:
        outcomes = list(pool.stream(range(10)))
        summary = pool.process(range(5))
    assert sorted(o.value for o in outcomes) == [i * 3 for i in range(10)]
    assert all(o.worker_id is not None for o in outcomes)
    assert summary.completed == 5


def test_default_worker_ids_are_unique_and_stable() -> None:
    workers = [Worker[int, int]() for _ in range(50)]
    assert len({w.id for w in workers}) == 50
    assert all(w.id == w.id for w in workers)

    rec = Recorder()
    both = threading.Barrier(2)

    def work(worker: RecordingWorker, item: int) -> Any:
        if item < 2:
            both.wait(WAIT)
        return worker.id

    with recording_pool(rec, work, max_workers=2) as pool:
        outcomes = list(pool.stream(range(20)))
    assert all(o.worker_id == o.value for o in outcomes)  # the id of the worker that ran it
    assert {o.worker_id for o in outcomes} == set(rec.ids())
    assert len(set(rec.ids())) == 2


def test_duck_typed_workers_get_distinct_ids() -> None:
    class Duck:
        def execute(self, item: int) -> int:
            return id(self)

    both = threading.Barrier(2)

    class SyncDuck(Duck):
        def execute(self, item: int) -> int:
            if item < 2:
                both.wait(WAIT)
            return id(self)

    with WorkPool(SyncDuck, max_workers=2) as pool:
        outcomes = list(pool.stream(range(10)))
    by_worker: Dict[int, set] = {}
    for o in outcomes:
        by_worker.setdefault(o.value, set()).add(o.worker_id)
    assert len(by_worker) == 2
    assert all(len(ids) == 1 for ids in by_worker.values())  # stable per worker
    assert len({next(iter(ids)) for ids in by_worker.values()}) == 2  # unique


# ------------------------------------------------------------------ inactive workers


def test_worker_inactive_after_execute_is_destroyed_and_replaced() -> None:
    rec = Recorder()

    def work(worker: RecordingWorker, item: int) -> int:
        if item == 2:
            worker.active = False  # "do not reuse me"
        return item

    with recording_pool(rec, work, max_workers=1) as pool:
        summary = pool.process(range(5))
        assert summary.failed == 0
        assert pool.stats().created == 2
        assert pool.stats().destroyed == 1
    first, second = rec.ids()
    assert rec.of(first) == ["created", "init"] + ["execute", "release"] * 3 + ["destroy"]
    assert rec.of(second)[:2] == ["created", "init"]
    assert rec.of(second).count("execute") == 2
    # destroyed right after its item, before the next item ran
    with rec.lock:
        order = [(w, e) for w, e, _ in rec.events]
    assert order.index((first, "destroy")) < order.index((second, "execute"))


def test_worker_found_inactive_between_calls_is_replaced_without_failing_an_item() -> None:
    rec = Recorder()
    with recording_pool(rec, max_workers=1) as pool:
        pool.process([0])
        [first] = rec.workers
        first.active = False  # e.g. its child died while it was idle
        summary = pool.process([1, 2])
        assert summary.failed == 0 and summary.completed == 2
        assert pool.stats().created == 2
    assert rec.of(first.id) == ["created", "init", "execute", "release", "destroy"]
    second = rec.workers[1]
    assert [item for w, e, item in rec.events if e == "execute" and w == second.id] == [1, 2]


def test_worker_found_inactive_when_handed_an_item_mid_call_is_replaced() -> None:
    rec = Recorder()
    failures: List[Outcome[Any, Any]] = []

    def on_complete(outcome: Outcome[Any, Any]) -> None:
        if outcome.index == 1:
            # After its item: too late for the after-execute check, so the pool must
            # notice when it is about to hand this worker the next item.
            [worker] = [w for w in rec.workers if w.id == outcome.worker_id]
            worker.active = False

    with recording_pool(rec, max_workers=1) as pool:
        summary = pool.process(range(5), on_complete=on_complete, on_error=failures.append)
        assert summary.completed == 5
        assert failures == []
        assert pool.stats().created == 2
    first, second = rec.ids()
    assert [i for w, e, i in rec.events if e == "execute" and w == first] == [0, 1]
    assert [i for w, e, i in rec.events if e == "execute" and w == second] == [2, 3, 4]
    assert rec.of(first).count("destroy") == 1


def test_execute_error_alone_does_not_discard_an_active_worker() -> None:
    rec = Recorder()

    def work(worker: RecordingWorker, item: int) -> int:
        if item % 2:
            raise Boom(item)
        return item

    with recording_pool(rec, work, max_workers=1) as pool:
        outcomes = list(pool.stream(range(6), ordered=True))
        assert pool.stats().created == 1
        assert rec.count("destroy") == 0
    assert [o.ok for o in outcomes] == [True, False] * 3
    assert len({o.worker_id for o in outcomes}) == 1


def test_max_tasks_per_worker_recycles_workers() -> None:
    rec = Recorder()
    with recording_pool(rec, max_workers=1, max_tasks_per_worker=3) as pool:
        outcomes = list(pool.stream(range(10)))
        stats = pool.stats()
        assert stats.created == 4
        assert stats.destroyed == 3
    served = Counter(o.worker_id for o in outcomes)
    assert sorted(served.values()) == [1, 3, 3, 3]
    assert all(o.ok for o in outcomes)


# ------------------------------------------------------------------ idle timeout


def test_idle_workers_time_out_down_to_min_workers_without_churn() -> None:
    rec = Recorder()
    barrier = threading.Barrier(4)

    def work(worker: RecordingWorker, item: int) -> int:
        barrier.wait(WAIT)
        return item

    with recording_pool(rec, work, max_workers=4, min_workers=1, idle_timeout=0.2) as pool:
        pool.process(range(4))
        assert pool.stats().created == 4
        lowest = [4]

        def settled() -> bool:
            stats = pool.stats()
            lowest[0] = min(lowest[0], stats.alive)
            return stats.destroyed >= 3

        assert wait_until(settled, 5.0), pool.stats()
        deadline = time.monotonic() + 1.0  # keep idling: the last worker must stay, unchurned
        while time.monotonic() < deadline:
            lowest[0] = min(lowest[0], pool.stats().alive)
            time.sleep(0.01)
        stats = pool.stats()
        assert stats.alive == 1
        assert stats.destroyed == 3
        assert stats.created == 4
        assert lowest[0] == 1, "alive went below min_workers"
        assert rec.count("destroy") == 3


def test_idle_timeout_with_min_workers_zero_lets_every_worker_go() -> None:
    rec = Recorder()
    barrier = threading.Barrier(3)

    def work(worker: RecordingWorker, item: int) -> int:
        barrier.wait(WAIT)
        return item

    with recording_pool(rec, work, max_workers=3, min_workers=0, idle_timeout=0.1) as pool:
        pool.process(range(3))
        assert wait_until(lambda: pool.stats().alive == 0, 5.0), pool.stats()
        assert pool.stats().destroyed == 3
        assert rec.count("destroy") == 3
        summary = pool.process(range(3))  # and the pool still works afterwards
        assert summary.completed == 3


# ------------------------------------------------------------------ task timeout


def test_task_timeout_fails_the_item_and_replaces_the_worker() -> None:
    rec = Recorder()
    stuck_destroyed = threading.Event()
    unstick = threading.Event()
    errors: List[Outcome[Any, Any]] = []

    class Stuck(RecordingWorker):
        def destroy(self) -> None:
            super().destroy()
            stuck_destroyed.set()

    def work(worker: RecordingWorker, item: int) -> int:
        if item == 1:
            unstick.wait(5.0)  # "sleeps 5 s"; set at the end of the test so the thread ends
        return item

    made = []

    def factory() -> RecordingWorker:
        worker = (Stuck if not made else RecordingWorker)(rec, work)
        made.append(worker)
        return worker

    try:
        with WorkPool(factory, max_workers=1, task_timeout=0.3) as pool:
            started = time.monotonic()
            summary = pool.process(range(5), on_error=errors.append, raise_on_error=False)
            elapsed = time.monotonic() - started
            assert elapsed < 2.5, f"process took {elapsed:.1f}s: it waited for the stuck execute"
            assert summary.failed == 1 and summary.completed == 4
            [timed_out] = errors
            assert timed_out.index == 1
            assert isinstance(timed_out.error, WorkTimeoutError)
            assert isinstance(timed_out.error, TimeoutError)
            assert timed_out.worker_id == made[0].id
            assert stuck_destroyed.wait(WAIT)
            assert pool.stats().created == 2
            second = made[1]
            assert [i for w, e, i in rec.events if e == "execute" and w == second.id] == [2, 3, 4]
    finally:
        unstick.set()
    assert rec.of(made[0].id).count("destroy") == 1


# ------------------------------------------------------------------ factory and init failures


def test_factory_failure_fails_the_waiting_item_with_that_error() -> None:
    error = Boom("factory broke")
    calls = []

    def factory() -> Worker[int, int]:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return RecordingWorker(Recorder())

    failed: List[Outcome[Any, Any]] = []
    with WorkPool(factory, max_workers=1) as pool:
        summary = pool.process(range(3), on_error=failed.append, raise_on_error=False)
    assert summary.failed == 1 and summary.completed == 2
    [outcome] = failed
    assert outcome.error is error
    assert outcome.index == 0


def test_factory_failing_twice_then_working_fails_only_two_items() -> None:
    calls = []

    def factory() -> Worker[int, int]:
        calls.append(1)
        if len(calls) <= 2:
            raise Boom(f"attempt {len(calls)}")
        return RecordingWorker(Recorder())

    with WorkPool(factory, max_workers=1) as pool:
        summary = pool.process(range(10), raise_on_error=False)
        assert pool.stats().created == 1
    assert summary.failed == 2 and summary.completed == 8
    assert [str(o.error) for o in summary.failures] == ["attempt 1", "attempt 2"]


def _always_failing(max_workers: int, factory: Callable[[], Any]) -> Tuple[WorkPoolError, int, WorkPool]:
    pulled = [0]

    def source() -> Iterator[int]:
        for i in range(1000):
            pulled[0] += 1
            yield i

    with WorkPool(factory, max_workers=max_workers) as pool:
        with pytest.raises(WorkPoolError) as caught:
            pool.process(source())
    return caught.value, pulled[0], pool


@pytest.mark.parametrize("max_workers", [1, 3])
def test_factory_that_always_fails_trips_the_breaker(max_workers: int) -> None:
    calls = []

    def factory() -> Worker[int, int]:
        calls.append(1)
        time.sleep(0.02)  # creation takes a moment, as a child process start does
        raise Boom("cannot make a worker")

    err, pulled, pool = _always_failing(max_workers, factory)
    assert isinstance(err.__cause__, Boom)
    assert err.summary is not None
    assert err.summary.submitted < 20 and pulled < 20
    limit = max_workers + 2 + max_workers  # the breaker's count plus items already in flight
    assert err.summary.failed <= limit and len(calls) <= limit
    assert err.summary.completed == 0


def test_breaker_summary_keeps_the_invariant_with_an_item_in_flight() -> None:
    # Three creations fail together, then three more start together: two fail at once
    # (five in a row: the breaker trips) while the sixth is still being created.
    lock = threading.Lock()
    calls = []
    first_round = threading.Barrier(3)
    second_round = threading.Barrier(3)

    def factory() -> Worker[int, int]:
        with lock:
            calls.append(1)
            n = len(calls)
        if n <= 3:
            first_round.wait(WAIT)
        elif n <= 6:
            second_round.wait(WAIT)
            if n == 6:
                time.sleep(0.3)  # still in flight when the breaker trips
        raise Boom(f"creation {n}")

    err, pulled, pool = _always_failing(3, factory)
    summary = err.summary
    assert summary is not None
    assert summary.completed == 0
    assert summary.submitted == summary.completed + summary.failed, summary
    assert len(summary.failures) == summary.failed


def test_init_that_always_fails_trips_the_breaker_and_destroys_each_worker() -> None:
    rec = Recorder()

    class BadInit(RecordingWorker):
        def init(self) -> None:
            super().init()
            raise Boom("init broke")

    err, pulled, pool = _always_failing(2, lambda: BadInit(rec))
    assert isinstance(err.__cause__, Boom)
    assert err.summary is not None and err.summary.submitted < 20 and pulled < 20
    assert len(rec.workers) <= 2 + 2 + 2
    for wid in rec.ids():
        assert rec.of(wid) == ["created", "init", "destroy"]
    assert all(isinstance(o.error, Boom) for o in err.summary.failures)
    assert pool.stats().alive == 0


def test_breaker_does_not_carry_over_to_the_next_call() -> None:
    broken = [True]

    def factory() -> Worker[int, int]:
        if broken[0]:
            raise Boom("cannot make a worker")
        return RecordingWorker(Recorder())

    with WorkPool(factory, max_workers=1) as pool:
        with pytest.raises(WorkPoolError):
            pool.process(range(100))
        broken[0] = False  # "fix the factory ..., then call process again"
        summary = pool.process(range(3))
        assert summary.completed == 3


def test_worker_without_execute_fails_its_item_with_type_error() -> None:
    failed: List[Outcome[Any, Any]] = []
    with WorkPool(object, max_workers=1) as pool:
        summary = pool.process([1], on_error=failed.append, raise_on_error=False)
    assert summary.failed == 1
    [outcome] = failed
    assert isinstance(outcome.error, TypeError)
    assert "execute" in str(outcome.error)
