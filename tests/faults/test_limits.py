"""Time and resource limits (issue 4, section 2): task timeouts, recycling by task count
and by memory, ``shutdown(wait=False)`` with items in flight, and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout  # builtins' only from 3.11
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from tests.faults import children
from tests.faults.conftest import Baseline, kill_quietly, not_gone, running, wait_until
from workerkit import (
    IterableInputSource,
    PoolClosedError,
    Worker,
    WorkPool,
    WorkPoolError,
    WorkTimeoutError,
    function_worker,
)

pytestmark = pytest.mark.timeout(120)

REPO = str(Path(__file__).resolve().parents[2])
WAIT = 30.0


class Recorder:
    """A function-worker factory that remembers every worker (and so every child pid)."""

    def __init__(self, fn: Callable[[Any], Any], start_method: Optional[str] = "forkserver") -> None:
        self.fn = fn
        self.start_method = start_method
        self.workers: List[Any] = []

    def __call__(self) -> Any:
        worker = function_worker(self.fn, start_method=self.start_method)
        self.workers.append(worker)
        return worker

    @property
    def pids(self) -> List[int]:
        return [int(w.id) for w in self.workers]


def values_by_index(pool: WorkPool[Any, Any], items: List[Any]) -> Dict[int, Any]:
    """Run ``items``; return ``{index: value}`` (raises if any item failed)."""
    got: Dict[int, Any] = {}
    summary = pool.process(items, on_complete=lambda o: got.__setitem__(o.index, o.value))
    assert summary.submitted == summary.completed == len(items)
    return got


# ---------------------------------------------------------------------- task_timeout


def test_task_timeout_kills_the_child_and_a_fresh_worker_takes_the_next_item(
    start_method: str, baseline: Baseline
) -> None:
    factory = Recorder(children.slow_or_fast, start_method)
    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=1, task_timeout=1.0)
    got: Dict[int, Any] = {}
    items = [("fast", 0), ("slow", 60), ("fast", 0), ("fast", 0)]
    try:
        started = time.monotonic()
        with pytest.raises(WorkPoolError) as raised:
            pool.process(items, on_complete=lambda o: got.__setitem__(o.index, o.value))
        elapsed = time.monotonic() - started
        summary = raised.value.summary
        assert summary is not None
        assert (summary.submitted, summary.completed, summary.failed) == (4, 3, 1)
        (failure,) = summary.failures
        assert failure.index == 1
        assert isinstance(failure.error, WorkTimeoutError)
        assert isinstance(failure.error, TimeoutError)
        assert "task_timeout" in str(failure.error)
        assert elapsed < 15.0, f"the overrun item held the pool for {elapsed:.1f}s"
        first = got[0][1]  # item 0 ran on the worker that then took the slow item
        assert factory.pids[0] == first
        assert not_gone([first], 10.0) == [], "the timed-out child is still there"
        assert got[2][1] != first and got[3][1] != first, "the next item ran on the killed worker"
        assert pool.stats().created == 2
        assert values_by_index(pool, [("fast", 0)])[0][0] == "fast"  # still serving
    finally:
        pool.shutdown()
    baseline.assert_clean(factory.pids)


@pytest.mark.parametrize(
    "fn,bound",
    [
        # Sleeps with the GIL free: the child's watchdog ends it about 1 s after destroy.
        pytest.param(children.ignore_term_and_sleep, 10.0, id="sleeping"),
        # Holds the GIL in C: destroy must escalate past the ignored SIGTERM to SIGKILL
        # (5 s exit wait + 1 s SIGTERM grace in ParentCommChannel.destroy).
        pytest.param(children.ignore_term_and_hog_gil, 20.0, id="gil-hog"),
    ],
)
def test_task_timeout_ends_a_child_that_ignores_sigterm(
    fn: Callable[[Any], Any], bound: float, baseline: Baseline
) -> None:
    factory = Recorder(fn, "forkserver")
    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=1, task_timeout=0.5)
    try:
        started = time.monotonic()
        summary = pool.process([60.0], raise_on_error=False)
        assert time.monotonic() - started < 10.0, "process waited for the stuck child"
        assert summary.failed == 1
        assert isinstance(summary.failures[0].error, WorkTimeoutError)
        (pid,) = factory.pids
        assert not_gone([pid], bound) == [], f"a SIGTERM-ignoring child outlived {bound}s"
        assert time.monotonic() - started < bound + 1
    finally:
        pool.shutdown()
    baseline.assert_clean(factory.pids)


# ---------------------------------------------------------------------- max_tasks_per_worker


def test_max_tasks_per_worker_changes_the_child_after_n_items(baseline: Baseline) -> None:
    factory = Recorder(children.pid_of, "fork")
    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=1, max_tasks_per_worker=3)
    try:
        got = values_by_index(pool, list(range(9)))
        pids = [got[i] for i in range(9)]
        assert pids[0] == pids[1] == pids[2]
        assert pids[3] == pids[4] == pids[5] != pids[0]
        assert pids[6] == pids[7] == pids[8] not in (pids[0], pids[3])
        assert not_gone(pids[:6], 5.0) == [], "recycled children were not ended"
    finally:
        pool.shutdown()
    baseline.assert_clean(factory.pids)


def test_max_tasks_per_worker_with_a_backlog_never_hangs(baseline: Baseline) -> None:
    factory = Recorder(children.pid_of, "forkserver")
    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=2, max_tasks_per_worker=3)
    try:
        started = time.monotonic()
        got = values_by_index(pool, list(range(20)))
        assert time.monotonic() - started < 60
        served = Counter(got.values())
        assert max(served.values()) <= 3
        assert len(served) >= 7  # 20 items, at most 3 per child
        stats = pool.stats()
        assert stats.completed == 20 and stats.failed == 0
        assert stats.created >= 7 and stats.alive <= 2
    finally:
        pool.shutdown()
    baseline.assert_clean(factory.pids)


# ---------------------------------------------------------------------- max_memory_per_worker


def test_max_memory_per_worker_recycles_a_leaking_child(baseline: Baseline) -> None:
    # forkserver: a small, clean child (a fork of pytest would start out over the limit).
    factory = Recorder(children.leak_20mb, "forkserver")
    limit = 80 << 20
    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=1, max_memory_per_worker=limit)
    try:
        got = values_by_index(pool, list(range(12)))
        served = Counter(got.values())
        # Each call keeps 20 MiB more: a child over 80 MiB after an item is recycled, so
        # none serves more than 80/20 + 1 items, and 12 items need at least 3 children.
        assert len(served) >= 3, served
        assert max(served.values()) <= 5, served
        assert pool.stats().failed == 0
    finally:
        pool.shutdown()
    baseline.assert_clean(factory.pids)


# ---------------------------------------------------------------------- shutdown(wait=False)


# Regression: shutdown(wait=False) used to abandon in-flight items only when task_timeout was
# set (slot.running was only recorded by the deadline code); fixed in 3e4bba4.
@pytest.mark.parametrize(
    "task_timeout",
    [
        pytest.param(None, id="no-task-timeout"),
        pytest.param(600.0, id="with-task-timeout"),
    ],
)
def test_shutdown_without_wait_fails_in_flight_items_and_ends_children(
    tmp_path: Path, baseline: Baseline, task_timeout: Optional[float]
) -> None:
    factory = Recorder(children.pidfile_then_sleep, "forkserver")
    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=2, task_timeout=task_timeout)
    src = IterableInputSource([(str(tmp_path), 30.0)] * 6)
    try:
        future = pool.start(src)  # process() on its own thread; shutdown from this one
        assert wait_until(lambda: len(list(tmp_path.glob("*.pid"))) == 2, WAIT), "never busy"
        busy = [int(p.stem) for p in tmp_path.glob("*.pid")]
        started = time.monotonic()
        pool.shutdown(wait=False)
        assert time.monotonic() - started < 2.0, "shutdown(wait=False) waited"
        try:
            future.exception(timeout=10.0)
        except FutureTimeout:
            pytest.fail("process did not return within 10 s of shutdown(wait=False)")
        elapsed = time.monotonic() - started
        error = future.exception()
        assert isinstance(error, WorkPoolError), f"process returned {error or future.result()!r}"
        summary = error.summary
        assert summary is not None
        assert (summary.submitted, summary.completed, summary.failed) == (2, 0, 2)
        assert all(isinstance(f.error, PoolClosedError) for f in summary.failures)
        assert elapsed < 10.0
        remaining = 0
        while src.has_next():  # items never pulled stay in their source
            src.next()
            remaining += 1
        assert remaining == 4
        assert sorted(busy) == sorted(factory.pids)
        assert not_gone(busy, 5.0) == [], "shutdown(wait=False) left busy children running"
        with pytest.raises(PoolClosedError):
            pool.process([1])
    finally:
        kill_quietly(factory.pids)  # with the bug, the children would sleep on for 30 s
        pool.shutdown()
    baseline.assert_clean(factory.pids)


# Regression: shutdown(wait=True) used to join only the slots still in the slot table, so a
# worker retiring on idle_timeout, and the destroy threads of timed-out items, outlived it
# (with their children); fixed in 3e4bba4.


class SlowDestroy(Worker[Any, Any]):
    """An in-process worker whose destroy takes a while (like reaping a stubborn child)."""

    def execute(self, item: Any) -> Any:
        if item == "slow":
            time.sleep(3.0)
        return item

    def destroy(self) -> None:
        time.sleep(1.0)


def test_shutdown_waits_for_a_worker_retiring_on_idle_timeout(baseline: Baseline) -> None:
    pool: WorkPool[Any, Any] = WorkPool(SlowDestroy, max_workers=1, min_workers=0, idle_timeout=0.05)
    pool.process([1])
    time.sleep(0.3)  # the idle worker retired and is being destroyed
    pool.shutdown()
    stats = pool.stats()
    left = sorted(t.name for t in baseline.new_threads())
    assert (stats.created, stats.destroyed, left) == (1, 1, []), "shutdown returned before destroy"


def test_shutdown_waits_for_a_timed_out_child_to_be_ended(baseline: Baseline) -> None:
    """A timed-out child that ignores SIGTERM and holds the GIL takes ParentCommChannel.destroy
    about 6.5 s to kill; shutdown() must not return while it still runs."""
    factory = Recorder(children.ignore_term_and_hog_gil, "forkserver")
    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=1, task_timeout=0.5)
    try:
        summary = pool.process([None], raise_on_error=False)
        assert isinstance(summary.failures[0].error, WorkTimeoutError)
        pool.shutdown()
        (pid,) = factory.pids
        # The abandoned slot thread is not joined by design (an in-process execute could be
        # stuck for ever); it ends by itself once its channel is closed: assert_clean polls.
        assert (running(pid), pool.stats().destroyed) == (False, 1), "shutdown returned before destroy"
    finally:
        pool.shutdown()
        kill_quietly(factory.pids)
    baseline.assert_clean(factory.pids, timeout=15.0)


# ---------------------------------------------------------------------- Ctrl-C

CTRL_C_SCRIPT = """
import os, sys, threading, time
from workerkit import WorkPool, function_worker
from tests.faults import children

def announce(piddir):
    deadline = time.monotonic() + 60
    while True:
        pids = sorted(f[:-4] for f in os.listdir(piddir) if f.endswith(".pid"))
        if len(pids) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    print("pids", *pids, flush=True)
    print("started", flush=True)

def main():
    method, piddir = sys.argv[1], sys.argv[2]
    threading.Thread(target=announce, args=(piddir,), daemon=True).start()
    with WorkPool(lambda: function_worker(children.pidfile_then_sleep, start_method=method),
                  max_workers=2) as pool:
        try:
            pool.process([(piddir, 60.0)] * 10)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("target", ["parent", "group"])
def test_ctrl_c_ends_a_busy_pool_with_no_child_left(
    tmp_path: Path, start_method: str, target: str
) -> None:
    """SIGINT to the parent alone, or to its whole process group (a terminal's Ctrl-C)."""
    script = tmp_path / "busy_pool.py"
    script.write_text(CTRL_C_SCRIPT)
    piddir = tmp_path / "pids"
    piddir.mkdir()
    env = dict(os.environ, PYTHONPATH=REPO)
    parent = subprocess.Popen(
        [sys.executable, str(script), start_method, str(piddir)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    pids: List[int] = []
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.startswith("pids "), line
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2
        assert parent.stdout.readline().strip() == "started"
        assert all(running(p) for p in pids)
        started = time.monotonic()
        if target == "group":
            os.killpg(parent.pid, signal.SIGINT)
        else:
            os.kill(parent.pid, signal.SIGINT)
        out, err = parent.communicate(timeout=10)
        elapsed = time.monotonic() - started
        assert "interrupted" in out, err
        assert "KeyboardInterrupt" in err
        assert elapsed < 10.0
        assert not_gone(pids, 5.0) == [], "a pool child outlived the interrupted parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate(timeout=WAIT)
        kill_quietly(pids)


def test_a_pool_child_ignores_sigint(start_method: str, tmp_path: Path, baseline: Baseline) -> None:
    """Only the parent decides what Ctrl-C means: SIGINT sent straight to a busy child
    does not interrupt its item, and the child keeps serving."""
    factory = Recorder(children.pidfile_then_sleep, start_method)
    checker = Recorder(children.sigint_ignored_check, start_method)
    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=1)
    check: WorkPool[Any, Any] = WorkPool(checker, max_workers=1)
    sent: List[int] = []

    def interrupt_child() -> None:
        if wait_until(lambda: any(tmp_path.glob("*.pid")), WAIT):
            pid = int(next(tmp_path.glob("*.pid")).stem)
            os.kill(pid, signal.SIGINT)
            sent.append(pid)

    thread = threading.Thread(target=interrupt_child, name="test-sigint")
    thread.start()
    try:
        got = values_by_index(pool, [(str(tmp_path), 1.5)])
        thread.join(WAIT)
        assert sent == [got[0]], "the item did not complete in the child that got SIGINT"
        again = values_by_index(pool, [(str(tmp_path), 0.0)])
        assert again[0] == got[0] and pool.stats().created == 1  # the same child serves on
        pid, ignored = values_by_index(check, [None])[0]
        assert ignored is True, "a pool child does not ignore SIGINT"
    finally:
        thread.join(WAIT)
        pool.shutdown()
        check.shutdown()
    baseline.assert_clean(factory.pids + checker.pids)
