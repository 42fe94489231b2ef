"""Regression tests for concurrency bugs found in review: each failed before its fix."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from typing import Any, List

import pytest

from tests.children.behaviours import listening, sleeper
from workerkit import Worker, WorkPool, WorkTimeoutError
from workerkit.comm import ParentCommChannel


class _Boom(BaseException):
    """Not an Exception: SystemExit, GeneratorExit and user BaseExceptions look like this."""


class _RaisesBaseException(Worker[Any, Any]):
    def execute(self, item: Any) -> Any:
        raise _Boom(f"boom {item}")


class _Echo(Worker[Any, Any]):
    def execute(self, item: Any) -> Any:
        return item


class _Nap(Worker[Any, Any]):
    def execute(self, item: Any) -> Any:
        time.sleep(0.1)
        return item


@pytest.mark.timeout(60)
def test_base_exception_in_execute_does_not_hang_process() -> None:
    pool: WorkPool[Any, Any] = WorkPool(_RaisesBaseException, max_workers=1)
    future = pool.start([1], raise_on_error=False)
    try:
        summary = future.result(timeout=5)
        assert summary.submitted == summary.failed == 1
    finally:
        if not future.done():  # unblock the hung dispatcher so no thread is left behind
            for run in list(pool._runs):
                with run.lock:
                    run.failed += run.pending
                    run._idle.notify_all()
            try:
                future.result(timeout=5)
            except BaseException:
                pass
        pool.shutdown(wait=True)


class _FastSlowFactory:
    """First worker: quick. Later workers: slow init, execute that overruns task_timeout."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self) -> Worker[Any, Any]:
        self.made += 1
        return _Quick() if self.made == 1 else _SlowInitHang()


class _Quick(Worker[Any, Any]):
    def execute(self, item: Any) -> Any:
        time.sleep(0.3)  # busy long enough that the next item needs a second worker
        return item


class _SlowInitHang(Worker[Any, Any]):
    def init(self) -> None:
        time.sleep(1.0)

    def execute(self, item: Any) -> Any:
        time.sleep(5.0)
        return item


@pytest.mark.timeout(60)
def test_task_timeout_enforced_for_item_whose_worker_was_starting_at_shutdown() -> None:
    pool: WorkPool[Any, Any] = WorkPool(_FastSlowFactory(), max_workers=2, task_timeout=1.0)
    pool.process(["warm"])  # starts the timer thread
    future = pool.start(["a", "b"], raise_on_error=False)
    time.sleep(0.5)  # "a" done on the quick worker; "b"'s worker is in its 1 s init
    started = time.monotonic()
    pool.shutdown(wait=True)
    took = time.monotonic() - started
    summary = future.result(timeout=10)
    assert took < 3.5, f"shutdown(wait=True) took {took:.1f}s: task_timeout=1.0 was not enforced"
    assert [type(o.error) for o in summary.failures] == [WorkTimeoutError]


@pytest.mark.timeout(60)
def test_idle_timeout_zero_does_not_spin() -> None:
    pool: WorkPool[Any, Any] = WorkPool(_Echo, max_workers=2, min_workers=1, idle_timeout=0)
    try:
        pool.process(range(4))
        time.sleep(0.2)
        cpu = time.process_time()
        time.sleep(1.0)
        used = time.process_time() - cpu
        assert used < 0.3, f"an idle pool used {used:.2f}s of CPU in 1s"
    finally:
        pool.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_progress_callable_reaches_total() -> None:
    seen: List[int] = []

    def progress(done: int, total: Any) -> None:
        seen.append(done)
        time.sleep(0.2)

    with WorkPool(_Nap, max_workers=4) as pool:
        pool.process(range(4), progress=progress)
    assert sorted(seen) == [1, 2, 3, 4]


@pytest.mark.timeout(60)
def test_cancelled_listen_once_future_wakes_its_waiter() -> None:
    channel = ParentCommChannel.spawn(sleeper, start_method="fork")
    try:
        future = channel.listen_once("never-sent")
        outcome: List[str] = []

        def wait() -> None:
            try:
                future.result()
                outcome.append("result")
            except CancelledError:
                outcome.append("cancelled")
            except BaseException as exc:
                outcome.append(type(exc).__name__)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        time.sleep(0.3)  # the waiter is inside drive()
        channel.release()  # contract: cancels this view's pending listen_once futures
        assert future.cancelled()
        waiter.join(2.0)
        assert outcome == ["cancelled"]
    finally:
        channel.destroy()
        waiter.join(5.0)


@pytest.mark.timeout(60)
def test_callbacks_run_on_reader_thread_while_a_future_is_waited_on() -> None:
    channel = ParentCommChannel.spawn(listening, start_method="fork")
    try:
        channel.listen_once("ready").result(timeout=10)
        pending = channel.listen_once("never-sent")
        waiter = threading.Thread(target=lambda: pending.exception(timeout=3), name="waiter", daemon=True)
        waiter.start()
        time.sleep(0.3)  # the waiter is inside drive(), holding the read lock
        ran_on: List[str] = []
        got = threading.Event()

        def on_response(event: Any, remove: Any) -> None:
            ran_on.append(threading.current_thread().name)
            got.set()

        channel.listen_for("response", on_response)
        channel.send("request", {"data": 2})
        assert got.wait(5)
        assert ran_on[0].startswith("workerkit-reader"), f"listener ran on {ran_on[0]!r}"
    finally:
        channel.destroy()
        waiter.join(5.0)
