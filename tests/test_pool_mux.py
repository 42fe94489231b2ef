"""Function workers driven by the pool's multiplexer (one thread for every worker's pipe).

Each test checks a guarantee of API.md section 2 on the multiplexed path: every item once,
timeouts, shutdown(wait=False), Ctrl-C, recycling, a child dying while idle, a callback
that shuts the pool down, and that a worker whose execute was replaced is still called.
"""

from __future__ import annotations

import os
import select
import signal
import tempfile
import threading
import time
from typing import Any, List

import pytest

from tests._pools import wait_until
from tests._procs import wait_gone
from tests.children.workers import double, identity, nap_or_double, pid_of
from tests.faults.children import pidfile_then_sleep
from workerkit import (
    PoolClosedError,
    WorkPool,
    WorkPoolError,
    WorkTimeoutError,
    function_worker,
)

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not hasattr(select, "epoll"), reason="the multiplexer needs epoll (Linux)"),
]

WAIT = 20.0


class InterruptingSource:
    """Yields ``items``, then raises KeyboardInterrupt (as Ctrl-C would) once ``ready()``."""

    def __init__(self, items: List[Any], ready: Any) -> None:
        self.items = list(items)
        self.ready = ready

    def has_next(self) -> bool:
        return True

    def next(self) -> Any:
        if not self.items:
            assert wait_until(self.ready, WAIT)
            raise KeyboardInterrupt
        return self.items.pop(0)


def pidfiles(directory: str) -> int:
    """How many children wrote their pid file (not counting one still being written)."""
    return sum(1 for name in os.listdir(directory) if name.endswith(".pid"))


def fork_pool(fn: Any, **kwargs: Any) -> WorkPool[Any, Any]:
    return WorkPool(lambda: function_worker(fn, start_method="fork"), **kwargs)


def mux_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("workerkit-mux-")]


def test_every_item_runs_once_and_callbacks_run_on_the_multiplexer() -> None:
    names: List[str] = []
    values: List[int] = []

    def keep(outcome: Any) -> None:
        names.append(threading.current_thread().name)
        values.append(outcome.value)

    with fork_pool(double, max_workers=2) as pool:
        summary = pool.process(range(3000), on_complete=keep)
    assert summary.completed == 3000 and summary.failed == 0
    assert sorted(values) == [2 * i for i in range(3000)]
    # The first item of each worker starts on its slot's thread; every reply is read and
    # recorded by the one multiplexer thread.
    assert set(names) == {n for n in names if n.startswith("workerkit-mux-")}


def test_the_multiplexer_ends_with_the_pool() -> None:
    pool = fork_pool(double, max_workers=2)
    assert pool.process(range(100)).completed == 100
    assert len(mux_threads()) == 1
    pool.shutdown(wait=True)
    assert mux_threads() == []
    assert not [t for t in threading.enumerate() if t.name.startswith("workerkit-worker-")]


def test_a_replaced_execute_is_still_called_for_every_item() -> None:
    seen: List[Any] = []

    def factory() -> Any:
        worker = function_worker(identity, start_method="fork")
        original = worker.execute

        def spy(item: Any) -> Any:
            seen.append(item)
            return original(item)

        worker.execute = spy  # type: ignore[method-assign]
        return worker

    with WorkPool(factory, max_workers=2) as pool:
        assert pool.process(range(200)).completed == 200
    assert sorted(seen) == list(range(200))


def test_a_timed_out_item_fails_alone_while_the_others_keep_flowing() -> None:
    done: List[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        items = [(tmp, 30.0)] + [(tmp, 0.0)] * 40
        with fork_pool(pidfile_then_sleep, max_workers=2, task_timeout=1.0) as pool:
            summary = pool.process(items, raise_on_error=False, on_complete=done.append)
        pids = [int(name.split(".")[0]) for name in os.listdir(tmp) if name.endswith(".pid")]
    assert summary.submitted == 41 and summary.completed == 40 and summary.failed == 1
    failure = summary.failures[0]
    assert failure.index == 0 and isinstance(failure.error, WorkTimeoutError)
    # The hung child was ended; the fast items did not wait for the timeout to run.
    assert all(wait_gone(pid, WAIT) for pid in pids)
    assert all(o.duration < 1.0 for o in done)


def test_shutdown_without_waiting_fails_parked_items_and_ends_their_children() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pool = fork_pool(pidfile_then_sleep, max_workers=2)
        outcome: List[Any] = []

        def run() -> None:
            try:
                outcome.append(pool.process([(tmp, 30.0)] * 4))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        assert wait_until(lambda: pidfiles(tmp) >= 2, WAIT)
        started = time.monotonic()
        pool.shutdown(wait=False)
        thread.join(WAIT)
        assert not thread.is_alive() and time.monotonic() - started < WAIT
        pids = [int(name.split(".")[0]) for name in os.listdir(tmp) if name.endswith(".pid")]
    error = outcome[0]
    assert isinstance(error, WorkPoolError)
    assert error.summary.submitted == 2 and error.summary.failed == 2
    assert all(isinstance(o.error, PoolClosedError) for o in error.summary.failures)
    assert all(wait_gone(pid, WAIT) for pid in pids)
    pool.shutdown(wait=True)
    assert mux_threads() == []


def test_ctrl_c_while_items_are_parked_ends_the_children_and_propagates() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = InterruptingSource([(tmp, 30.0)] * 2, lambda: pidfiles(tmp) >= 2)
        with fork_pool(pidfile_then_sleep, max_workers=3) as pool:
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                pool.process(source)
            assert time.monotonic() - started < WAIT
            pids = [int(name.split(".")[0]) for name in os.listdir(tmp) if name.endswith(".pid")]
            assert len(pids) == 2
            assert all(wait_gone(pid, WAIT) for pid in pids)
            assert pool.stats().alive == 0
            # The pool is still usable after the interrupt.
            assert pool.process([(tmp, 0.0)] * 10).completed == 10


def test_recycling_after_every_item_loses_nothing() -> None:
    with fork_pool(pid_of, max_workers=2, max_tasks_per_worker=1) as pool:
        values: List[int] = []
        summary = pool.process(range(30), on_complete=lambda o: values.append(o.value))
        stats = pool.stats()
    assert summary.completed == 30 and summary.failed == 0
    assert len(set(values)) == 30  # a new child for every item
    assert stats.created == 30


def test_a_child_dying_while_idle_is_replaced_without_spinning_or_failing() -> None:
    with fork_pool(pid_of, max_workers=2, min_workers=2) as pool:
        pids = set()
        pool.process(range(50), on_complete=lambda o: pids.add(o.value))
        assert len(pids) == 2
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_gone(victim, WAIT)
        cpu = time.process_time()
        time.sleep(1.0)
        # A multiplexer reporting the dead child's pipe over and over would burn a core.
        assert time.process_time() - cpu < 0.5
        after: List[int] = []
        summary = pool.process(range(50), on_complete=lambda o: after.append(o.value))
    assert summary.completed == 50 and summary.failed == 0
    assert victim not in after


def test_a_child_dying_mid_item_fails_only_that_item() -> None:
    with fork_pool(nap_or_double, max_workers=2, task_timeout=None) as pool:
        pids: List[int] = []
        pool.process(range(4), on_complete=lambda o: pids.append(o.value[1]))
        thread_result: List[Any] = []

        def run() -> None:
            thread_result.append(pool.process([-1] + list(range(100)), raise_on_error=False))

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.5)
        for pid in set(pids):
            try:
                os.kill(pid, signal.SIGKILL)  # one of them runs the 30 s item
            except ProcessLookupError:
                pass
            break
        thread.join(WAIT * 2)
        assert not thread.is_alive()
    summary = thread_result[0]
    assert summary.submitted == 101
    assert summary.completed + summary.failed == 101
    assert summary.failed <= 2  # the killed child's item (and at most the one it held next)


def test_a_callback_that_shuts_the_pool_down_does_not_hang() -> None:
    pool = fork_pool(nap_or_double, max_workers=2)
    calls: List[int] = []

    def stop(outcome: Any) -> None:
        calls.append(outcome.index)
        if len(calls) == 1:
            pool.shutdown(wait=True)

    summary = pool.process(range(20), on_complete=stop)
    assert summary.submitted == summary.completed + summary.failed
    assert summary.submitted < 20  # it stopped pulling
    assert mux_threads() == [] or wait_until(lambda: mux_threads() == [], WAIT)


# ------------------------------------------------------------------ found by review


def test_a_slow_callback_does_not_delay_a_timeout_or_shutdown_without_waiting() -> None:
    """Ending a parked item early never waits for the multiplexer: its child is killed."""
    with tempfile.TemporaryDirectory() as tmp:
        pool = fork_pool(pidfile_then_sleep, max_workers=2, task_timeout=1.0)
        failed_after: List[float] = []
        started = time.monotonic()

        def slow(_outcome: Any) -> None:
            time.sleep(4.0)  # the multiplexer is busy here while the other item overruns

        def failed(_outcome: Any) -> None:
            failed_after.append(time.monotonic() - started)

        summary = pool.process([(tmp, 0.0), (tmp, 30.0)], on_complete=slow, on_error=failed,
                               raise_on_error=False)
        pool.shutdown()
    assert summary.completed == 1 and summary.failed == 1
    assert isinstance(summary.failures[0].error, WorkTimeoutError)
    assert failed_after and failed_after[0] < 3.5  # not after the 4 s callback


def test_ctrl_c_during_a_slow_callback_ends_every_child() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        interrupt = threading.Event()
        source = InterruptingSource(
            [(tmp, 0.0), (tmp, 30.0), (tmp, 30.0)],
            lambda: interrupt.is_set() and pidfiles(tmp) >= 3,  # all three running
        )

        def slow(_outcome: Any) -> None:
            interrupt.set()
            time.sleep(3.0)  # the multiplexer is busy when Ctrl-C comes

        pool = fork_pool(pidfile_then_sleep, max_workers=3)
        try:
            with pytest.raises(KeyboardInterrupt):
                pool.process(source, on_complete=slow)
            pids = [int(name.split(".")[0]) for name in os.listdir(tmp) if name.endswith(".pid")]
            assert len(pids) == 3
            assert all(wait_gone(pid, WAIT) for pid in pids)
        finally:
            started = time.monotonic()
            pool.shutdown(wait=True)
        assert time.monotonic() - started < WAIT
        assert mux_threads() == []


def test_a_callback_may_run_process_on_the_same_pool() -> None:
    pool = fork_pool(double, max_workers=2)
    nested: List[Any] = []

    def follow_up(outcome: Any) -> None:
        if outcome.input == 0:
            nested.append(pool.process([100, 101], on_complete=lambda o: nested.append(o.value)))

    try:
        summary = pool.process(range(10), on_complete=follow_up)
    finally:
        pool.shutdown()
    assert summary.completed == 10
    assert sorted(v for v in nested if isinstance(v, int)) == [200, 202]


def test_the_multiplexer_ends_when_every_worker_timed_out_idle() -> None:
    pool = fork_pool(double, max_workers=2, min_workers=0, idle_timeout=0.2)
    try:
        assert pool.process(range(20)).completed == 20
        assert wait_until(lambda: pool.stats().alive == 0, WAIT)
        assert wait_until(lambda: mux_threads() == [], WAIT)
        assert pool.process(range(20)).completed == 20  # a new one starts on demand
    finally:
        pool.shutdown()
    assert mux_threads() == []


def test_a_progress_reporter_that_raises_does_not_break_the_pool() -> None:
    calls: List[int] = []

    def progress(done: int, total: Any) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise RuntimeError("progress bar broke")

    with fork_pool(double, max_workers=2) as pool:
        summary = pool.process(range(20), progress=progress)
        assert summary.completed == 20 and summary.failed == 0
        assert pool.process(range(5)).completed == 5


def test_a_child_killed_while_its_request_is_written_fails_that_item_alone() -> None:
    from workerkit.util import _FunctionWorker

    killed: List[int] = []

    class KilledWhileSending(_FunctionWorker):  # type: ignore[type-arg]
        def begin(self, item: Any, items: Any) -> bool:
            if not killed:
                killed.append(self.pid)
                os.kill(self.pid, signal.SIGKILL)
                wait_gone(self.pid, WAIT)
            return super().begin(item, items)

    def factory() -> Any:
        worker = function_worker(double, start_method="fork")
        worker.__class__ = KilledWhileSending
        return worker

    with WorkPool(factory, max_workers=1) as pool:
        summary = pool.process(range(6), raise_on_error=False)
    assert summary.submitted == 6 and summary.completed == 5 and summary.failed == 1
    assert summary.failures[0].index == 0


@pytest.mark.parametrize("chunksize", [1, 5])
def test_a_sources_own_next_is_called_for_every_item(chunksize: int) -> None:
    """The pool's fast pull from built-in collections never bypasses a subclass's next()."""
    from workerkit import IterableInputSource

    pulled: List[int] = []

    class Counted(IterableInputSource[int]):
        def next(self) -> int:
            item = super().next()
            pulled.append(item)
            return item

    with fork_pool(double, max_workers=2) as pool:
        summary = pool.process(Counted(list(range(60))), chunksize=chunksize)
    assert summary.completed == 60
    assert sorted(pulled) == list(range(60))


def test_a_callback_may_consume_stream_on_the_same_pool() -> None:
    pool = fork_pool(double, max_workers=2)
    nested: List[int] = []

    def follow_up(outcome: Any) -> None:
        if outcome.input == 0:
            nested.extend(o.value for o in pool.stream([100, 101, 102]))

    try:
        summary = pool.process(range(10), on_complete=follow_up)
    finally:
        pool.shutdown()
    assert summary.completed == 10
    assert sorted(nested) == [200, 202, 204]


def test_a_timeout_while_the_multiplexer_writes_the_next_item_lets_its_thread_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timer ends an item the multiplexer is still writing (widened with a sleep after
    the write): the slot's thread is told to exit, not left waiting for ever."""
    from workerkit import util

    begin = util._FunctionWorker.begin

    def slow_begin(self: Any, item: Any, items: Any) -> bool:
        sent = begin(self, item, items)
        if item[1] == 0.5 and threading.current_thread().name.startswith("workerkit-mux-"):
            time.sleep(1.0)
        return sent

    monkeypatch.setattr(util._FunctionWorker, "begin", slow_begin)
    pool = fork_pool(pidfile_then_sleep, max_workers=1, idle_timeout=None, task_timeout=0.4)
    with tempfile.TemporaryDirectory() as tmp:
        summary = pool.process([(tmp, 0.0), (tmp, 0.5)], raise_on_error=False)
    pool.shutdown(wait=True)
    assert summary.completed == 1 and summary.failed == 1
    assert isinstance(summary.failures[0].error, WorkTimeoutError)
    assert wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("workerkit-worker-")], 5.0
    )


def test_ctrl_c_while_workers_are_being_made_starts_none_of_their_items() -> None:
    """Ctrl-C comes while the pool still makes workers for items already pulled: those
    items never start (no child left running one), and each pulled item ends once."""
    with tempfile.TemporaryDirectory() as tmp:
        interrupt = threading.Event()
        # At once after the first item: the other workers may still be starting.
        source = InterruptingSource([(tmp, 0.0), (tmp, 30.0), (tmp, 30.0)], interrupt.is_set)
        pool = fork_pool(pidfile_then_sleep, max_workers=3)
        try:
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                pool.process(source, on_complete=lambda _o: interrupt.set())
            assert time.monotonic() - started < WAIT
            time.sleep(1.0)  # a worker made late would have started its item by now
            pids = [int(name.split(".")[0]) for name in os.listdir(tmp) if name.endswith(".pid")]
            assert pids and all(wait_gone(pid, WAIT) for pid in pids)
        finally:
            pool.shutdown(wait=True)


def test_large_requests_are_sent_from_the_slots_own_threads() -> None:
    """A request larger than the multiplexer's limit would hold it up while the child
    reads it: such items run on their slot's thread; small ones on the multiplexer."""
    big = b"x" * 200_000
    names: List[str] = []
    lengths: List[int] = []

    def keep(outcome: Any) -> None:
        names.append(threading.current_thread().name)
        lengths.append(len(outcome.value))

    with fork_pool(identity, max_workers=2) as pool:
        pool.process([big] * 20, on_complete=keep)
        assert lengths == [200_000] * 20
        assert all(name.startswith("workerkit-worker-") for name in names)
        names.clear()
        pool.process([b"small"] * 200, on_complete=keep)
    assert any(name.startswith("workerkit-mux-") for name in names)


def test_a_slow_callback_never_counts_against_the_next_items_timeout() -> None:
    """With a task_timeout the next item is written after the callbacks, so a callback
    longer than the timeout never fails an item whose child answered in time."""
    def slow(outcome: Any) -> None:
        if outcome.index == 0:
            time.sleep(1.5)

    with fork_pool(identity, max_workers=1, task_timeout=0.5) as pool:
        summary = pool.process([0, 1, 2], on_complete=slow, raise_on_error=False)
        created = pool.stats().created
    assert summary.completed == 3 and summary.failed == 0
    assert created == 1  # no child was killed for a timeout it did not overrun
