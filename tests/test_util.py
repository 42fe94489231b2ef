"""Process workers (API.md §4): spawned_worker, function_worker, executor_worker.

Real child processes, real pipes, real signals. Every child a test starts is checked to
be gone afterwards (explicitly by pid: forkserver children are the forkserver's, not
ours, so the autouse leftover check in conftest cannot see them).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional

import pytest

from tests._procs import gone, wait_gone
from tests.children import doubler, workers
from workerkit import (
    ChannelClosedError,
    Outcome,
    ParentCommChannel,
    RemoteError,
    Worker,
    WorkerKitError,
    WorkPool,
    WorkPoolError,
    WorkTimeoutError,
    WorkUtil,
    executor_worker,
    function_worker,
    spawned_worker,
)

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0  # generous: a loaded CI box can take seconds to start an interpreter
WORKERS_FILE = workers.__file__


def _line_of(marker: str) -> int:
    """Line number (1-based) of the line of tests/children/workers.py holding ``marker``."""
    with open(WORKERS_FILE) as f:
        for number, line in enumerate(f, 1):
            if marker in line:
                return number
    raise AssertionError(f"marker {marker!r} not found in {WORKERS_FILE}")






def assert_all_gone(pids: List[int]) -> None:
    left = [p for p in pids if not wait_gone(p)]
    assert not left, f"child processes still running: {left}"


def by_index(outcomes: Any) -> List[Outcome[Any, Any]]:
    return sorted(outcomes, key=lambda o: o.index)


# -- spawned_worker handlers ----------------------------------------------------------


def wait_ready(channel: ParentCommChannel) -> Future[Any]:
    return channel.listen_once("ready")


def ask_double(channel: ParentCommChannel, item: int) -> int:
    response = channel.listen_once("response")  # listen first, then ask
    channel.send("request", {"data": item})
    return int(response.result(WAIT)["data"])


class Recorder:
    """A factory wrapper that remembers every worker it made."""

    def __init__(self, make: Callable[[], Worker[Any, Any]]):
        self._make = make
        self.made: List[Worker[Any, Any]] = []
        self._lock = threading.Lock()

    def __call__(self) -> Worker[Any, Any]:
        worker = self._make()
        with self._lock:
            self.made.append(worker)
        return worker

    @property
    def pids(self) -> List[int]:
        return [int(w.id) for w in self.made]


# == spawned_worker ===================================================================


def test_work_util_spawned_worker_is_spawned_worker() -> None:
    assert WorkUtil.spawned_worker is spawned_worker


@pytest.mark.parametrize("via", ["spawned_worker", "WorkUtil.spawned_worker"])
def test_doubling_conversation_as_a_pool(start_method: str, via: str) -> None:
    make = spawned_worker if via == "spawned_worker" else WorkUtil.spawned_worker
    factory = Recorder(
        lambda: make(
            "tests.children.doubler:main", start_method=start_method, init=wait_ready, execute=ask_double
        )
    )
    with WorkPool(factory, max_workers=2) as pool:
        outcomes = by_index(pool.stream(range(1, 11)))
        stats = pool.stats()
    assert [o.error for o in outcomes] == [None] * 10
    assert [o.value for o in outcomes] == [2 * n for n in range(1, 11)]
    assert 1 <= stats.created <= 2 and stats.completed == 10 and stats.failed == 0
    assert {o.worker_id for o in outcomes} <= set(factory.pids)  # worker id is the child's pid
    assert os.getpid() not in factory.pids
    final = pool.stats()
    assert final.alive == 0 and final.destroyed == final.created == len(factory.made)
    assert_all_gone(factory.pids)


def test_init_future_is_waited_for(start_method: str) -> None:
    futures: List[Future[Any]] = []

    def init(channel: ParentCommChannel) -> Future[Any]:
        future = channel.listen_once("ready")
        futures.append(future)
        return future

    worker = spawned_worker(
        workers.delayed_ready_child, args=(0.6,), start_method=start_method,
        init=init, execute=ask_double,
    )
    pid = int(worker.id)
    try:
        started = time.monotonic()
        worker.init()
        elapsed = time.monotonic() - started
        assert len(futures) == 1 and futures[0].done()
        assert futures[0].result(0) == {"type": "ready", "pid": pid}
        assert elapsed >= 0.5, f"init returned after {elapsed:.3f}s, before the child's ready"
        assert worker.execute(21) == 42
    finally:
        worker.destroy()
    assert wait_gone(pid)


def test_init_future_is_waited_for_in_a_pool(start_method: str) -> None:
    ready_done: List[bool] = []
    futures: Dict[int, Future[Any]] = {}

    def init(channel: ParentCommChannel) -> Future[Any]:
        futures[channel.id] = channel.listen_once("ready")
        return futures[channel.id]

    def execute(channel: ParentCommChannel, item: int) -> int:
        ready_done.append(futures[channel.id].done())
        return ask_double(channel, item)

    factory = Recorder(lambda: spawned_worker(
        workers.delayed_ready_child, args=(0.4,), start_method=start_method, init=init, execute=execute,
    ))
    with WorkPool(factory, max_workers=1) as pool:
        summary = pool.process([1, 2, 3])
    assert summary.completed == 3
    assert ready_done == [True, True, True]
    assert_all_gone(factory.pids)


def test_execute_handler_returning_a_future_is_waited_for(start_method: str) -> None:
    def execute(channel: ParentCommChannel, item: int) -> Future[Any]:
        response = channel.listen_once("response")
        channel.send("request", {"data": item})
        return response  # the seed's handlers return promises

    factory = Recorder(lambda: spawned_worker(
        doubler.main, start_method=start_method, init=wait_ready, execute=execute,
    ))
    with WorkPool(factory, max_workers=2) as pool:
        outcomes = by_index(pool.stream(range(6)))
    assert [o.value for o in outcomes] == [{"type": "response", "data": 2 * n} for n in range(6)]
    assert_all_gone(factory.pids)


def test_child_starts_when_the_factory_is_called(start_method: str) -> None:
    worker = spawned_worker(doubler.main, start_method=start_method, execute=ask_double)
    try:
        pid = worker.id
        assert isinstance(pid, int) and pid > 0 and pid != os.getpid()
        assert not gone(pid), "no child process right after spawned_worker() returned"
        assert worker.active is True
        worker.init()  # no init handler: nothing to wait for
        assert worker.execute(4) == 8
    finally:
        worker.destroy()
    assert wait_gone(pid)


def test_id_is_the_child_pid_and_active_follows_the_channel(start_method: str) -> None:
    seen: List[int] = []

    def execute(channel: ParentCommChannel, item: int) -> int:
        seen.append(channel.id)
        return ask_double(channel, item)

    worker = spawned_worker(doubler.main, start_method=start_method, init=wait_ready, execute=execute)
    pid = worker.id
    try:
        worker.init()
        assert worker.execute(3) == 6
        assert seen == [pid]
        assert worker.active is True
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while worker.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.active is False, "worker still active 5 s after its child was killed"
        assert worker.id == pid  # stable even once the child is gone
    finally:
        worker.destroy()
    assert wait_gone(pid)


def test_destroy_handler_runs_then_the_channel_is_destroyed(start_method: str) -> None:
    log: List[Any] = []
    acks: List[Future[Any]] = []

    def destroy(channel: ParentCommChannel) -> Future[Any]:
        log.append(("destroy-handler", channel.id, channel.active))
        ack = channel.listen_once("bye-ack")
        channel.send("bye")
        acks.append(ack)
        return ack  # the worker waits for it before destroying the channel

    worker = spawned_worker(
        workers.farewell_child, start_method=start_method,
        init=wait_ready, execute=ask_double, destroy=destroy,
    )
    pid = worker.id
    worker.init()
    assert worker.execute(10) == 20
    assert log == []
    worker.destroy()
    assert log == [("destroy-handler", pid, True)]  # ran once, on a live channel
    assert acks[0].done() and acks[0].result(0) == {"type": "bye-ack", "pid": pid}
    assert worker.active is False
    assert wait_gone(pid, 1.0), "destroy() returned but the child was not reaped"
    worker.destroy()  # idempotent: the handler does not run again
    assert len(log) == 1


def test_pool_runs_each_destroy_handler_exactly_once(start_method: str) -> None:
    destroyed: List[int] = []
    lock = threading.Lock()

    def destroy(channel: ParentCommChannel) -> None:
        assert channel.active
        ack = channel.listen_once("bye-ack")
        channel.send("bye")
        assert ack.result(WAIT)["pid"] == channel.id
        with lock:
            destroyed.append(channel.id)

    factory = Recorder(lambda: spawned_worker(
        workers.farewell_child, start_method=start_method,
        init=wait_ready, execute=ask_double, destroy=destroy,
    ))
    with WorkPool(factory, max_workers=2) as pool:
        assert pool.process(range(8)).completed == 8
        assert destroyed == []  # nothing destroyed while the pool lives
    assert sorted(destroyed) == sorted(factory.pids)
    assert_all_gone(factory.pids)


def test_init_timeout_fails_the_item_and_ends_the_child(start_method: str) -> None:
    factory = Recorder(lambda: spawned_worker(
        workers.silent_child, start_method=start_method,
        init=wait_ready, execute=ask_double, init_timeout=1.0,
    ))
    with WorkPool(factory, max_workers=1) as pool:
        started = time.monotonic()
        summary = pool.process(["x"], raise_on_error=False)
        elapsed = time.monotonic() - started
    assert summary.submitted == 1 and summary.failed == 1
    error = summary.failures[0].error
    assert isinstance(error, WorkTimeoutError), repr(error)
    assert "init_timeout" in str(error)
    assert elapsed < 15, f"took {elapsed:.1f}s to give up on a silent child"
    assert len(factory.made) == 1
    assert_all_gone(factory.pids)


def test_init_handler_error_fails_the_waiting_item(start_method: str) -> None:
    error = LookupError("the child is not to my liking")

    def init(channel: ParentCommChannel) -> None:
        raise error

    factory = Recorder(lambda: spawned_worker(
        doubler.main, start_method=start_method, init=init, execute=ask_double,
    ))
    with WorkPool(factory, max_workers=1) as pool:
        with pytest.raises(WorkPoolError) as info:
            pool.process([1])
    assert info.value.__cause__ is error
    summary = info.value.summary
    assert summary is not None and summary.failed == 1
    assert summary.failures[0].error is error
    assert_all_gone(factory.pids)  # a child whose init failed is ended, not leaked


def test_pool_of_spawned_workers_survives_a_child_killed_mid_item(start_method: str) -> None:
    reached = threading.Event()
    victim: Dict[str, int] = {}

    def execute(channel: ParentCommChannel, item: int) -> int:
        response = channel.listen_once("response")
        if item == 5:
            channel.send("request", {"data": item, "hang": True})  # never answered
            victim["pid"] = channel.id
            reached.set()
        else:
            channel.send("request", {"data": item})
        event = response.result(WAIT)
        assert event["pid"] == channel.id
        return int(event["data"])

    factory = Recorder(lambda: spawned_worker(
        workers.hanging_doubler, start_method=start_method, init=wait_ready, execute=execute,
    ))
    with WorkPool(factory, max_workers=2) as pool:
        future = pool.start(range(20), raise_on_error=False)
        assert reached.wait(WAIT), "item 5 never reached its child"
        os.kill(victim["pid"], signal.SIGKILL)
        summary = future.result(WAIT * 2)
        stats = pool.stats()
        errors = pool.errors
    assert summary.submitted == 20 and summary.completed == 19 and summary.failed == 1
    (failure,) = summary.failures
    assert errors == [failure]
    assert failure.index == 5 and failure.input == 5
    assert failure.worker_id == victim["pid"]
    assert isinstance(failure.error, ChannelClosedError), repr(failure.error)
    assert failure.error.exitcode == -signal.SIGKILL
    assert stats.created == 3, stats  # the killed worker was replaced
    assert stats.failed == 1 and stats.completed == 19
    final = pool.stats()
    assert final.alive == 0 and final.destroyed == 3
    assert len(factory.made) == 3
    assert_all_gone(factory.pids)


# == function_worker ==================================================================


def fn_pool(fn: Callable[[Any], Any], start_method: Optional[str], max_workers: int = 1,
            **kwargs: Any) -> tuple[WorkPool[Any, Any], Recorder]:
    factory = Recorder(lambda: function_worker(fn, start_method=start_method, **kwargs))
    return WorkPool(factory, max_workers=max_workers), factory


def test_function_worker_results_and_worker_id_is_the_child_pid(start_method: str) -> None:
    pool, factory = fn_pool(workers.double_with_pid, start_method, max_workers=2)
    with pool:
        outcomes = by_index(pool.stream(range(12)))
    assert [o.error for o in outcomes] == [None] * 12
    assert [o.value[0] for o in outcomes] == [2 * n for n in range(12)]
    for o in outcomes:
        assert o.worker_id == o.value[1]  # the worker's id is its child's pid
    pids = {o.value[1] for o in outcomes}
    assert os.getpid() not in pids and pids <= set(factory.pids)
    assert_all_gone(factory.pids)


def test_function_worker_exception_becomes_remote_error(start_method: str) -> None:
    pool, factory = fn_pool(workers.fail_on_three, start_method)
    with pool:
        outcomes = list(pool.stream([2, 3, 4], ordered=True))
    assert [o.value for o in outcomes] == [4, None, 8]
    error = outcomes[1].error
    assert isinstance(error, RemoteError), repr(error)
    assert error.remote_type == "builtins.ValueError"
    raise_line = _line_of("# RAISE-VALUE-ERROR")
    tb = error.remote_traceback
    assert "Traceback (most recent call last)" in tb
    assert "in fail_on_three" in tb
    assert f'workers.py", line {raise_line}, in fail_on_three' in tb
    assert 'raise ValueError(f"three is not allowed (got {x})")' in tb
    assert "ValueError: three is not allowed (got 3)" in tb
    text = str(error)
    assert "builtins.ValueError" in text and "three is not allowed (got 3)" in text
    assert "in fail_on_three" in text and f"line {raise_line}" in text
    # An error from fn alone does not discard the worker: one child served all three.
    assert len({o.worker_id for o in outcomes}) == 1 and len(factory.made) == 1
    assert_all_gone(factory.pids)


def test_function_worker_custom_exception_type(start_method: str) -> None:
    pool, factory = fn_pool(workers.raise_my_error, start_method)
    with pool:
        (outcome,) = pool.stream(["boom"])
    error = outcome.error
    assert isinstance(error, RemoteError)
    assert error.remote_type == "tests.children.workers.MyError"
    assert "custom failure for 'boom'" in str(error)
    assert "in raise_my_error" in error.remote_traceback
    # The remote error survives pickling (e.g. to be sent on by the caller).
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.remote_type, copy.remote_traceback, str(copy)) == (
        error.remote_type, error.remote_traceback, str(error))
    assert_all_gone(factory.pids)


def test_function_worker_initializer_runs_once_per_child(start_method: str) -> None:
    pool, factory = fn_pool(
        workers.read_tag, start_method, max_workers=2,
        initializer=workers.set_tag, initargs=("hello",),
    )
    with pool:
        outcomes = by_index(pool.stream(range(10)))
    assert [o.error for o in outcomes] == [None] * 10
    for o in outcomes:
        tag, calls, pid = o.value
        assert tag == "hello" and calls == 1 and pid == o.worker_id
    assert workers.INIT_TAG is None and workers.INIT_CALLS == 0  # never ran in the parent
    assert_all_gone(factory.pids)


def test_function_worker_initializer_error_fails_the_waiting_item(start_method: str) -> None:
    pool, factory = fn_pool(
        workers.double, start_method,
        initializer=workers.failing_initializer, initargs=("cannot set up",),
    )
    with pool:
        summary = pool.process([1], raise_on_error=False)
    assert summary.failed == 1
    error = summary.failures[0].error
    assert isinstance(error, RemoteError), repr(error)
    assert error.remote_type == "builtins.RuntimeError"
    assert "cannot set up" in str(error)
    assert "in failing_initializer" in error.remote_traceback
    assert_all_gone(factory.pids)


def test_function_worker_init_timeout(start_method: str) -> None:
    pool, factory = fn_pool(
        workers.double, start_method,
        initializer=workers.sleeping_initializer, initargs=(30.0,), init_timeout=1.0,
    )
    with pool:
        started = time.monotonic()
        summary = pool.process([1], raise_on_error=False)
        elapsed = time.monotonic() - started
    assert summary.failed == 1
    error = summary.failures[0].error
    assert isinstance(error, WorkTimeoutError), repr(error)
    assert elapsed < 15, f"took {elapsed:.1f}s to give up on a 30 s initializer"
    assert_all_gone(factory.pids)


def test_function_worker_child_exit_fails_only_that_item(start_method: str) -> None:
    pool, factory = fn_pool(workers.exit_on_negative, start_method)
    with pool:
        outcomes = list(pool.stream([1, -1, 2, -2, 3], ordered=True))
        stats = pool.stats()
    ok = [o.value for o in outcomes if o.ok]
    assert ok == [2, 4, 6]
    for failed, how in ((outcomes[1], "sys.exit(3)"), (outcomes[3], "os._exit(3)")):
        assert isinstance(failed.error, ChannelClosedError), f"{how}: {failed.error!r}"
        assert failed.error.exitcode == 3, f"{how}: exitcode {failed.error.exitcode}"
    # Each death is followed by a fresh worker (a new child).
    assert outcomes[1].worker_id == outcomes[0].worker_id
    assert outcomes[2].worker_id != outcomes[1].worker_id
    assert outcomes[3].worker_id == outcomes[2].worker_id
    assert outcomes[4].worker_id != outcomes[3].worker_id
    assert stats.created == 3 and stats.completed == 3 and stats.failed == 2
    assert_all_gone(factory.pids)


@pytest.mark.parametrize("method", [None, "spawn", "forkserver"])
def test_function_worker_lambda_without_fork_fails_at_the_call(method: Optional[str]) -> None:
    with pytest.raises(WorkerKitError, match="module-level"):
        function_worker(lambda x: x, start_method=method)
    with pytest.raises(WorkerKitError, match="module-level"):
        function_worker(workers.double, start_method=method, initializer=lambda: None)


def test_function_worker_lambda_under_fork_works() -> None:
    offset = 100
    pool, factory = fn_pool(lambda x: (x + offset, os.getpid()), "fork")
    with pool:
        outcomes = list(pool.stream(range(5), ordered=True))
    assert [o.value[0] for o in outcomes] == [100, 101, 102, 103, 104]
    assert all(o.value[1] != os.getpid() for o in outcomes)
    assert_all_gone(factory.pids)


def test_function_worker_unpicklable_item_fails_only_that_item(start_method: str) -> None:
    pool, factory = fn_pool(workers.identity, start_method)
    with pool:
        outcomes = list(pool.stream([1, threading.Lock(), 2], ordered=True))
    assert outcomes[0].value == 1 and outcomes[2].value == 2
    assert isinstance(outcomes[1].error, (TypeError, pickle.PicklingError)), repr(outcomes[1].error)
    assert len({o.worker_id for o in outcomes}) == 1 and len(factory.made) == 1  # same worker
    assert_all_gone(factory.pids)


def test_function_worker_unpicklable_result_fails_only_that_item(start_method: str) -> None:
    pool, factory = fn_pool(workers.return_lambda, start_method)
    with pool:
        outcomes = list(pool.stream(["a", "lambda", "b"], ordered=True))
    assert outcomes[0].value == "a" and outcomes[2].value == "b"
    assert isinstance(outcomes[1].error, RemoteError), repr(outcomes[1].error)
    assert "lambda" in str(outcomes[1].error)
    assert len({o.worker_id for o in outcomes}) == 1 and len(factory.made) == 1
    assert_all_gone(factory.pids)


def test_function_worker_ten_megabyte_round_trip(start_method: str) -> None:
    blob = os.urandom(10 * 1024 * 1024)
    pool, factory = fn_pool(workers.byte_length_and_copy, start_method)
    with pool:
        (outcome,) = pool.stream([blob])
    assert outcome.error is None
    assert outcome.value == blob
    assert_all_gone(factory.pids)


# == executor_worker ==================================================================


def test_executor_worker_thread_pool() -> None:
    with ThreadPoolExecutor(max_workers=4) as executor:
        with WorkPool(lambda: executor_worker(executor, workers.triple_or_fail), max_workers=3) as pool:
            outcomes = by_index(pool.stream(range(10)))
            with pytest.raises(WorkPoolError) as info:
                pool.process([1, 7, 2])
    assert [o.value for o in outcomes if o.index != 7] == [3 * n for n in range(10) if n != 7]
    error = outcomes[7].error
    assert type(error) is KeyError  # the original exception, not a wrapper
    assert "no seven (7)" in str(error)
    assert type(info.value.__cause__) is KeyError
    assert info.value.summary is not None and info.value.summary.completed == 2


def test_executor_worker_process_pool(start_method: str) -> None:
    context = multiprocessing.get_context(start_method)
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as executor:
        with WorkPool(lambda: executor_worker(executor, workers.triple_or_fail), max_workers=2) as pool:
            outcomes = by_index(pool.stream(range(10)))
        with WorkPool(lambda: executor_worker(executor, workers.pid_of), max_workers=2) as pool:
            pids = {o.result() for o in pool.stream(range(6))}
    assert [o.value for o in outcomes if o.index != 7] == [3 * n for n in range(10) if n != 7]
    assert type(outcomes[7].error) is KeyError
    assert pids and os.getpid() not in pids  # really ran in the executor's processes


def test_executor_worker_validates_arguments() -> None:
    with pytest.raises(TypeError):
        executor_worker(object(), workers.double)  # type: ignore[arg-type]
    with ThreadPoolExecutor(1) as executor:
        with pytest.raises(TypeError):
            executor_worker(executor, 42)  # type: ignore[arg-type]


def test_executor_worker_dask() -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        executor = client.get_executor()
        with WorkPool(lambda: executor_worker(executor, workers.triple_or_fail), max_workers=2) as pool:
            outcomes = by_index(pool.stream(range(10)))
    assert [o.value for o in outcomes if o.index != 7] == [3 * n for n in range(10) if n != 7]
    assert isinstance(outcomes[7].error, KeyError)


# == child processes and the pool's worker lifecycle ==================================


def test_function_worker_task_timeout_ends_the_child(start_method: str) -> None:
    factory = Recorder(lambda: function_worker(workers.nap_or_double, start_method=start_method))
    with WorkPool(factory, max_workers=1, task_timeout=2.0) as pool:
        started = time.monotonic()
        outcomes = list(pool.stream([1, -1, 2], ordered=True))
        elapsed = time.monotonic() - started
        stats = pool.stats()
    assert outcomes[0].value[0] == 2 and outcomes[2].value[0] == 4
    assert isinstance(outcomes[1].error, WorkTimeoutError), repr(outcomes[1].error)
    assert elapsed < 20, f"a 2 s task_timeout took {elapsed:.1f}s"
    assert outcomes[2].value[1] != outcomes[0].value[1]  # replaced by a new child
    assert stats.created == 2
    assert_all_gone(factory.pids)


def test_spawned_worker_task_timeout_ends_the_child(start_method: str) -> None:
    def execute(channel: ParentCommChannel, item: int) -> int:
        response = channel.listen_once("response")
        channel.send("request", {"data": item, "hang": item < 0})
        return int(response.result(WAIT)["data"])

    factory = Recorder(lambda: spawned_worker(
        workers.hanging_doubler, start_method=start_method, init=wait_ready, execute=execute,
    ))
    with WorkPool(factory, max_workers=1, task_timeout=2.0) as pool:
        outcomes = list(pool.stream([1, -1, 2], ordered=True))
        stats = pool.stats()
    assert outcomes[0].value == 2 and outcomes[2].value == 4
    assert isinstance(outcomes[1].error, WorkTimeoutError), repr(outcomes[1].error)
    assert outcomes[2].worker_id != outcomes[1].worker_id
    assert stats.created == 2
    assert_all_gone(factory.pids)


@pytest.mark.parametrize("kind", ["function", "spawned"])
def test_child_killed_while_idle_is_replaced_without_failing_an_item(start_method: str, kind: str) -> None:
    if kind == "function":
        factory = Recorder(lambda: function_worker(workers.double, start_method=start_method))
    else:
        factory = Recorder(lambda: spawned_worker(
            doubler.main, start_method=start_method, init=wait_ready, execute=ask_double))
    with WorkPool(factory, max_workers=1) as pool:
        first = list(pool.stream([1, 2], ordered=True))
        (worker,) = factory.made
        os.kill(worker.id, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while worker.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not worker.active
        second = list(pool.stream([3, 4], ordered=True))
        stats = pool.stats()
    assert [o.value for o in first + second] == [2, 4, 6, 8]
    assert all(o.ok for o in second)
    assert second[0].worker_id != first[0].worker_id
    assert stats.created == 2 and stats.failed == 0
    assert_all_gone(factory.pids)


def test_destroy_handler_that_raises_still_ends_the_child(start_method: str) -> None:
    def destroy(channel: ParentCommChannel) -> None:
        raise RuntimeError("destroy handler failed")

    factory = Recorder(lambda: spawned_worker(
        doubler.main, start_method=start_method, init=wait_ready, execute=ask_double, destroy=destroy,
    ))
    with WorkPool(factory, max_workers=1) as pool:
        assert pool.process([1, 2]).completed == 2
    assert pool.stats().destroyed == 1
    assert_all_gone(factory.pids)


def test_function_worker_max_tasks_per_worker_recycles_the_child(start_method: str) -> None:
    factory = Recorder(lambda: function_worker(workers.double_with_pid, start_method=start_method))
    with WorkPool(factory, max_workers=1, max_tasks_per_worker=2) as pool:
        outcomes = list(pool.stream(range(5), ordered=True))
        stats = pool.stats()
    pids = [o.value[1] for o in outcomes]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert stats.created == 3
    assert_all_gone(factory.pids)


def test_function_worker_max_memory_per_worker_recycles_the_child() -> None:
    factory = Recorder(lambda: function_worker(workers.hoard))
    with WorkPool(factory, max_workers=1, max_memory_per_worker=150 * 1024 * 1024) as pool:
        outcomes = list(pool.stream([60, 60, 60, 60], ordered=True))
    values = [o.result() for o in outcomes]
    # 60, 120 MB stay under the limit; at 180 MB the child is recycled after its item.
    assert [mb for _pid, mb in values] == [60, 120, 180, 60]
    assert values[0][0] == values[1][0] == values[2][0] != values[3][0]
    assert_all_gone(factory.pids)


def test_function_worker_item_that_fails_to_unpickle_in_the_child(start_method: str) -> None:
    pool, factory = fn_pool(workers.identity, start_method)
    with pool:
        outcomes = list(pool.stream([1, workers.exploding_item(), 2], ordered=True))
    assert outcomes[0].value == 1 and outcomes[2].value == 2
    error = outcomes[1].error
    assert isinstance(error, RemoteError), repr(error)
    assert error.remote_type == "builtins.RuntimeError"
    assert "cannot rebuild this object" in str(error)
    assert len(factory.made) == 1
    assert_all_gone(factory.pids)


def test_function_worker_result_that_fails_to_unpickle_in_the_parent(start_method: str) -> None:
    pool, factory = fn_pool(workers.make_exploding, start_method)
    with pool:
        outcomes = list(pool.stream(["a", "explode", "b"], ordered=True))
    assert outcomes[0].value == "a" and outcomes[2].value == "b"  # the stream stayed in step
    assert isinstance(outcomes[1].error, RuntimeError), repr(outcomes[1].error)
    assert "cannot rebuild this object" in str(outcomes[1].error)
    assert len(factory.made) == 1
    assert_all_gone(factory.pids)


@pytest.mark.parametrize("bad", [0, -1.0])
def test_init_timeout_must_be_positive_for_both_process_workers(bad: float) -> None:
    # Rejected at the call, before any child is started (spawned_worker and
    # function_worker take the same argument and should treat it alike).
    with pytest.raises(ValueError, match="init_timeout"):
        spawned_worker(doubler.main, execute=ask_double, init_timeout=bad)
    made: List[Worker[Any, Any]] = []
    try:
        with pytest.raises(ValueError, match="init_timeout"):
            made.append(function_worker(workers.double, init_timeout=bad))
    finally:
        for worker in made:  # the library started a child after all: reap it
            worker.destroy()


def test_function_worker_destroyed_before_ready_ends_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    worker = function_worker(workers.double, start_method="spawn")
    pid = worker.id
    worker.destroy()  # before the child said ready (a pool shutting down, Ctrl-C)
    assert wait_gone(pid)
    err = capfd.readouterr().err
    assert "Traceback" not in err, f"the child printed a traceback on its way out:\n{err}"
