"""Bad input to process-backed workers (issue 4, section 5): a clear error at the call that
caused it, and nothing lost.

Unpicklable items and results, in both directions and for both worker kinds and every
start method, are covered by the crash matrix (``test_crash_matrix.py``: faults
``item_unpicklable``, ``item_unloadable``, ``result_unpicklable``, ``result_unloadable``);
:func:`test_unpicklable_items_and_results_are_in_the_crash_matrix` keeps that true.
"""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from tests.conftest import child_pids
from tests.faults import children
from tests.faults.conftest import Baseline, not_gone, wait_until
from workerkit import (
    DynamicIterator,
    IterableInputSource,
    ParentCommChannel,
    WorkerKitError,
    WorkPool,
    WorkPoolError,
    WorkTimeoutError,
    function_worker,
    spawned_worker,
)

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0
HINT = "use fork or a module-level function"


def test_unpicklable_items_and_results_are_in_the_crash_matrix() -> None:
    from tests.faults.test_crash_matrix import CASES

    covered = {(p.values[0], p.values[1], p.values[2]) for p in CASES}
    for kind in ("function", "spawned"):
        for method in ("fork", "spawn", "forkserver"):
            for fault in ("item_unpicklable", "item_unloadable", "result_unpicklable",
                          "result_unloadable"):
                assert (kind, method, fault) in covered


# ---------------------------------------------------------------------- lambdas


@pytest.mark.parametrize("method", ["spawn", "forkserver", None])
def test_a_lambda_cannot_go_to_a_spawned_child(method: Any, baseline: Baseline) -> None:
    before = set(child_pids())
    with pytest.raises(WorkerKitError) as raised:
        function_worker(lambda x: x, start_method=method)
    assert HINT in str(raised.value).lower()
    with pytest.raises(WorkerKitError) as raised:
        function_worker(children.pid_of, start_method=method, initializer=lambda: None)
    assert HINT in str(raised.value).lower()
    with pytest.raises(WorkerKitError) as raised:
        WorkPool.map(lambda x: x, [1, 2], start_method=method)  # at the call, not when iterated
    assert HINT in str(raised.value).lower()
    with pytest.raises(WorkerKitError) as raised:
        spawned_worker(lambda: None, start_method=method, execute=lambda ch, item: item)
    assert HINT in str(raised.value).lower()
    assert set(child_pids()) == before  # nothing was started
    baseline.assert_clean()


def test_a_lambda_works_under_fork(baseline: Baseline) -> None:
    offset = 10
    assert list(WorkPool.map(lambda x: x + offset, range(4), max_workers=2, start_method="fork")) == [
        10, 11, 12, 13,
    ]
    baseline.assert_clean()


def test_a_lambda_factory_failure_fails_the_items_and_stops_the_pool(baseline: Baseline) -> None:
    """The factory raising at every creation: the waiting items fail with the hint, and the
    pool stops pulling instead of spinning."""
    pool: WorkPool[Any, Any] = WorkPool(
        lambda: function_worker(lambda x: x, start_method="spawn"), max_workers=2
    )
    src = IterableInputSource(range(100))
    try:
        with pytest.raises(WorkPoolError) as raised:
            pool.process(src)
        summary = raised.value.summary
        assert summary is not None
        assert summary.completed == 0 and summary.failed == summary.submitted
        assert summary.submitted < 100
        assert all(HINT in str(f.error).lower() for f in summary.failures)
        left = 0
        while src.has_next():
            src.next()
            left += 1
        assert left == 100 - summary.submitted  # nothing lost
    finally:
        pool.shutdown()
    baseline.assert_clean()


# ---------------------------------------------------------------------- missing targets


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_spawning_a_missing_target_fails_at_spawn_with_its_name(method: str, baseline: Baseline) -> None:
    before = set(child_pids())
    with pytest.raises(WorkerKitError, match="missing"):
        ParentCommChannel.spawn("tests.faults.children:missing", start_method=method)
    with pytest.raises(WorkerKitError, match="tests.faults.no_such_module"):
        ParentCommChannel.spawn("tests.faults.no_such_module:fn", start_method=method)
    with pytest.raises(WorkerKitError, match="missing"):
        spawned_worker("tests.faults.children:missing", start_method=method,
                       execute=lambda ch, item: item)
    assert set(child_pids()) == before
    baseline.assert_clean()


# ---------------------------------------------------------------------- init_timeout


# Regression: util._run_with_timeout also waited init_timeout inside its helper thread; when
# that wait expired first, init raised a bare concurrent.futures.TimeoutError (about 1 run
# in 3 for spawned workers) instead of WorkTimeoutError.
@pytest.mark.parametrize("kind", ["function", "spawned"])
def test_a_child_that_never_says_ready_times_out(
    kind: str, start_method: str, baseline: Baseline
) -> None:
    workers: List[Any] = []

    def factory() -> Any:
        if kind == "function":
            worker = function_worker(children.pid_of, start_method=start_method,
                                     initializer=children.sleep_forever, init_timeout=0.5)
        else:
            worker = spawned_worker(children.never_ready, start_method=start_method,
                                    init=lambda ch: ch.listen_once("ready"),
                                    execute=lambda ch, item: item, init_timeout=0.5)
        workers.append(worker)
        return worker

    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=1)
    try:
        started = time.monotonic()
        summary = pool.process([1, 2], raise_on_error=False)
        assert time.monotonic() - started < 15.0
        assert (summary.submitted, summary.failed) == (2, 2)
        for failure in summary.failures:
            assert isinstance(failure.error, WorkTimeoutError)
            assert "init_timeout" in str(failure.error)
        pids = [int(w.id) for w in workers]
        assert len(pids) == 2
        assert not_gone(pids, 5.0) == [], "a child that timed out in init was not ended"
    finally:
        pool.shutdown()
    baseline.assert_clean([int(w.id) for w in workers])


# ---------------------------------------------------------------------- huge messages

BIG = 100 * 1000 * 1000  # 100 MB


@pytest.mark.timeout(120)
def test_a_100_mb_item_and_result_through_a_function_worker(baseline: Baseline) -> None:
    data = b"\x07" * BIG
    worker = function_worker(children.echo, start_method="forkserver")
    try:
        worker.init()
        started = time.monotonic()
        back = worker.execute(data)
        assert time.monotonic() - started < 60
        assert back == data
        assert worker.execute(b"small") == b"small"  # the stream is intact after it
    finally:
        worker.destroy()
    del back, data
    baseline.assert_clean([int(worker.id)])


@pytest.mark.timeout(120)
def test_a_100_mb_message_round_trip_through_a_channel(baseline: Baseline) -> None:
    data = b"\x07" * BIG
    ch = ParentCommChannel.spawn("tests.children.behaviours:echo", start_method="forkserver")
    try:
        ch.listen_once("ready").result(WAIT)
        reply = ch.listen_once("echo")
        started = time.monotonic()
        ch.send("msg", {"data": data, "n": 1})
        event = reply.result(60)
        assert time.monotonic() - started < 60
        assert event["n"] == 1 and event["data"] == data
        small = ch.listen_once("echo")
        ch.send("msg", {"n": 2})
        assert small.result(WAIT) == {"type": "echo", "n": 2}
    finally:
        ch.destroy()
    del event, data
    baseline.assert_clean([ch.id])


# ---------------------------------------------------------------------- DynamicIterator


def test_closing_a_dynamic_iterator_the_pool_is_blocked_on(baseline: Baseline) -> None:
    it: DynamicIterator[int] = DynamicIterator()
    done: List[int] = []
    workers: List[Any] = []

    def factory() -> Any:
        worker = function_worker(children.echo, start_method="forkserver")
        workers.append(worker)
        return worker

    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=2)
    try:
        future = pool.start(IterableInputSource(it), on_complete=lambda o: done.append(o.value))
        it.add(1)
        it.add(2)
        assert wait_until(lambda: len(done) == 2, WAIT)
        time.sleep(0.2)
        assert not future.done()  # blocked on the empty, open iterator
        closer = threading.Thread(target=it.close, name="test-closer")
        closer.start()
        closer.join(WAIT)
        summary = future.result(10)
        assert (summary.submitted, summary.completed, summary.failed) == (2, 2, 0)
        assert sorted(done) == [1, 2]
        with pytest.raises(ValueError):
            it.add(3)
    finally:
        it.close()
        pool.shutdown()
    baseline.assert_clean([int(w.id) for w in workers])

