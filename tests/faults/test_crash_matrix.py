"""The crash-stage matrix (issue 4, section 1).

For ``function_worker`` and ``spawned_worker`` pools, under fork, spawn and forkserver,
a fault is injected at one stage of the life of item 3 of 8 (every other item is
ordinary). Each case checks that:

* the right exception reaches exactly item 3 (type; ``exitcode`` for a dead child;
  ``remote_type``/``remote_traceback`` for an error raised in the child), or, for faults
  that must not fail any item, that none fails;
* every other item completes, with its own value;
* ``submitted == completed + failed``, in the summary and in ``stats()``;
* the pool then serves a following ``process`` call;
* after ``shutdown`` no child process, ``workerkit-*`` thread or fd is left.

A hang is turned into a failure by pytest-timeout (120 s) after the faulthandler dump
that ``tests/conftest.py`` arms at 100 s.

The spawned worker's child is :func:`tests.faults.children.serve`: it answers a
``request`` with ``response {"value"}`` or with an ``error`` event carrying the child's
formatted error, which :func:`spawned_execute` raises as ``RemoteError``. A fault that
kills the child fails the pending futures, so the item fails with ``ChannelClosedError``.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

import pytest

from tests.faults import children
from tests.faults.conftest import Baseline, running, wait_until
from workerkit import (
    ChannelClosedError,
    ParentCommChannel,
    RemoteError,
    WorkPool,
    WorkPoolError,
    function_worker,
    spawned_worker,
)
from workerkit.comm import MessageDecodeError

pytestmark = pytest.mark.timeout(120)

N_ITEMS = 8
FAULTY = 3
WAIT = 30.0

KINDS = ["function", "spawned"]
START_METHODS = ["fork", "spawn", "forkserver"]
FAULTS = [
    "source_raises",       # input iteration raises
    "item_unpicklable",    # the item fails to pickle in the parent
    "item_unloadable",     # ... fails to unpickle in the child
    "execute_raises",      # execute raises in the child
    "sys_exit",            # execute calls sys.exit(3)
    "os_exit",             # execute calls os._exit(3)
    "segfault",            # SIGSEGV in the child
    "sigkill",             # SIGKILL from outside while busy
    "result_unpicklable",  # the result fails to pickle in the child
    "result_unloadable",   # ... fails to unpickle in the parent
    "listener_raises",     # a parent-side listener raises (spawned workers only)
    "idle_death",          # a child dies while idle between items
    "init_death",          # a child dies during init, before "ready"
]


class SourceBoom(Exception):
    """Raised by the input iterator itself."""


@dataclass(frozen=True)
class Expect:
    """What item 3 must fail with (``error=None``: no item may fail)."""

    error: Optional[Type[BaseException]] = None
    exitcode: Optional[int] = None
    remote_type: Tuple[str, ...] = ()  # RemoteError.remote_type contains one of these
    traceback: Optional[str] = None  # substring of RemoteError.remote_traceback
    message: Optional[str] = None  # substring of str(error)


_DEAD = {
    "sys_exit": Expect(ChannelClosedError, exitcode=3),
    "os_exit": Expect(ChannelClosedError, exitcode=3),
    "segfault": Expect(ChannelClosedError, exitcode=-signal.SIGSEGV),
    "sigkill": Expect(ChannelClosedError, exitcode=-signal.SIGKILL),
    "init_death": Expect(ChannelClosedError, exitcode=3),
}

# pickle's own error for an unpicklable object varies by object and Python version
PICKLE_ERRORS = ("PicklingError", "builtins.AttributeError", "builtins.TypeError")

EXPECTED: Dict[Tuple[str, str], Expect] = {}
for _kind in KINDS:
    EXPECTED.update({(_kind, f): e for f, e in _DEAD.items()})
    EXPECTED[(_kind, "item_unpicklable")] = Expect(TypeError, message="pickle")
    EXPECTED[(_kind, "execute_raises")] = Expect(
        RemoteError, remote_type=("builtins.ValueError",),
        traceback="injected failure at item 3", message="injected failure at item 3",
    )
    EXPECTED[(_kind, "listener_raises")] = Expect()
    EXPECTED[(_kind, "idle_death")] = Expect()
# The function worker's child reports (un)pickling errors itself, with its traceback;
# the parent unpickles the result in execute, so the loader's own error reaches the item.
EXPECTED[("function", "item_unloadable")] = Expect(
    RemoteError, remote_type=("tests.faults.children.LoadBoom",),
    traceback="explode_on_load", message="cannot be unpickled (item, in the child)",
)
EXPECTED[("function", "result_unpicklable")] = Expect(
    RemoteError, remote_type=PICKLE_ERRORS, traceback="Traceback", message="pickle",
)
EXPECTED[("function", "result_unloadable")] = Expect(
    children.LoadBoom, message="cannot be unpickled (result, in the parent)"
)
# The spawned worker's channel decodes messages on its reader thread: a body that cannot be
# unpickled fails the futures waiting for its type with MessageDecodeError.
EXPECTED[("spawned", "item_unloadable")] = Expect(
    RemoteError, remote_type=("workerkit.comm._framing.MessageDecodeError",), traceback="MessageDecodeError",
    message="cannot be unpickled (item, in the child)",
)
EXPECTED[("spawned", "result_unpicklable")] = Expect(
    RemoteError, remote_type=PICKLE_ERRORS, traceback="Traceback", message="pickle",
)
EXPECTED[("spawned", "result_unloadable")] = Expect(
    MessageDecodeError, message="cannot be unpickled (result, in the parent)"
)

CASES = [
    pytest.param(kind, method, fault, id=f"{kind}-{method}-{fault}")
    for kind, method, fault in itertools.product(KINDS, START_METHODS, FAULTS)
    # a function worker's channel has no listeners: there is no parent-side listener to break
    if not (kind == "function" and fault == "listener_raises")
]


# ---------------------------------------------------------------------- spawned worker


def spawned_execute(ch: ParentCommChannel, item: Any) -> Any:
    """Send the item; wait for ``response`` (its value) or ``error`` (raised as RemoteError).

    Both futures are registered before the request goes out (a reply that arrives before
    anyone listens is dropped) and cancelled when the send fails, so no stale listener
    catches the next item's reply. A dead child fails both with ChannelClosedError.
    """
    response = ch.listen_once("response")
    error = ch.listen_once("error")
    try:
        ch.send("request", {"item": item})
    except BaseException:
        response.cancel()
        error.cancel()
        raise
    wait([response, error], return_when=FIRST_COMPLETED)
    if response.done():
        error.cancel()
        return response.result()["value"]  # ChannelClosedError / MessageDecodeError raise here
    response.cancel()
    event = error.result()
    raise RemoteError(event["message"], event["remote_type"], event["remote_traceback"])


class Factory:
    """The pool's factory: records every worker it made; can make the next one die in init;
    for ``listener_raises`` registers a parent-side listener that raises once."""

    def __init__(self, kind: str, method: str, fault: str) -> None:
        self.kind, self.method, self.fault = kind, method, fault
        self.lock = threading.Lock()
        self.die_next = False
        self.workers: List[Any] = []
        self.listener_raised_on: List[int] = []  # channel pids
        self.listener_calls_after_raise = 0

    @property
    def pids(self) -> List[int]:
        return [int(w.id) for w in self.workers]

    def __call__(self) -> Any:
        with self.lock:
            die, self.die_next = self.die_next, False
        if self.kind == "function":
            worker = function_worker(
                children.apply, start_method=self.method,
                initializer=children.init_maybe_die, initargs=(die,),
            )
        else:
            worker = spawned_worker(
                children.serve, args=(die,), start_method=self.method,
                init=self._init, execute=spawned_execute,
            )
        with self.lock:
            self.workers.append(worker)
        return worker

    def _init(self, ch: ParentCommChannel) -> Any:
        ready = ch.listen_once("ready")  # first: once a listener reads, unheard events drop
        if self.fault == "listener_raises":
            ch.listen(self._bad_listener(ch.id))
        return ready

    def _bad_listener(self, pid: int) -> Callable[[Dict[str, Any], Any], None]:
        def listener(event: Dict[str, Any], _remove: Any) -> None:
            if pid in self.listener_raised_on:
                self.listener_calls_after_raise += 1  # must never happen: it was removed
            elif event["type"] == "response" and event["value"][0] == FAULTY:
                self.listener_raised_on.append(pid)
                raise RuntimeError("injected failure in a parent-side listener")

        return listener

    def live_workers(self) -> List[Any]:
        with self.lock:
            return [w for w in self.workers if running(int(w.id))]


# ---------------------------------------------------------------------- the scenario


class Tracker:
    """Counts outcomes as they finish (callbacks run on pool threads)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.completed: Dict[int, Any] = {}
        self.failed: Dict[int, BaseException] = {}

    def on_complete(self, outcome: Any) -> None:
        with self.cond:
            assert outcome.index not in self.completed, f"item {outcome.index} completed twice"
            self.completed[outcome.index] = outcome.value
            self.cond.notify_all()

    def on_error(self, outcome: Any) -> None:
        with self.cond:
            assert outcome.index not in self.failed, f"item {outcome.index} failed twice"
            self.failed[outcome.index] = outcome.error
            self.cond.notify_all()

    def wait_finished(self, index: int) -> None:
        with self.cond:
            finished = self.cond.wait_for(
                lambda: index in self.completed or index in self.failed, WAIT
            )
            assert finished, f"item {index} never finished"

    def wait_completed(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.completed) >= n, WAIT), "items stalled"


def kill_children_and_wait_inactive(factory: Factory) -> None:
    """SIGKILL every live worker child; wait until the pool can see each one is dead."""
    workers = factory.live_workers()
    assert workers, "no live worker to kill"
    for w in workers:
        os.kill(int(w.id), signal.SIGKILL)
    assert wait_until(lambda: not any(w.active for w in workers), WAIT), "killed children still active"


def source(
    fault: str, tmp_path: Path, pool: WorkPool[Any, Any], factory: Factory, tracker: Tracker
) -> Iterator[Any]:
    """Items 0..7; item 3 carries the fault (or the fault happens just before it)."""
    for i in range(N_ITEMS):
        if i == FAULTY + 1 and fault == "init_death":
            # Only item 3's worker may be created while die_next is set: item 4 would
            # otherwise start a second worker at the same time, and win the race for it.
            tracker.wait_finished(FAULTY)
        if i != FAULTY:
            yield (i, "ok", None)
        elif fault == "source_raises":
            raise SourceBoom("the input iterator failed at item 3")
        elif fault == "item_unpicklable":
            yield (i, "ok", threading.Lock())
        elif fault == "item_unloadable":
            yield (i, "ok", children.ExplodesOnLoad("item, in the child"))
        elif fault == "execute_raises":
            yield (i, "raise", None)
        elif fault in ("sys_exit", "os_exit", "segfault"):
            yield (i, fault, None)
        elif fault == "sigkill":
            yield (i, "sigkill", str(tmp_path / "busy.pid"))
        elif fault == "result_unpicklable":
            yield (i, "bad_result", None)
        elif fault == "result_unloadable":
            yield (i, "bad_result_load", None)
        elif fault == "idle_death":
            # Items 0-2 are done and both workers idle: kill their children, then hand
            # item 3 to the pool, which must replace the dead worker without failing it.
            tracker.wait_completed(FAULTY)
            kill_children_and_wait_inactive(factory)
            yield (i, "ok", None)
        elif fault == "init_death":
            # Items 0-2 are done; wait for the idle workers to time out (min_workers=0), so
            # item 3 waits for a new worker, which dies before saying ready.
            tracker.wait_completed(FAULTY)
            assert wait_until(lambda: pool.stats().alive == 0, WAIT), "idle workers did not retire"
            factory.die_next = True
            yield (i, "ok", None)
        else:
            yield (i, "ok", None)


def killer(pidfile: Path, stop: threading.Event) -> Tuple[threading.Thread, List[int]]:
    """A thread that SIGKILLs the pid written to ``pidfile`` (by the busy child)."""
    killed: List[int] = []

    def run() -> None:
        while not stop.is_set():
            if pidfile.exists():
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            stop.wait(0.01)

    thread = threading.Thread(target=run, name="test-killer", daemon=True)
    thread.start()
    return thread, killed


@pytest.mark.parametrize("kind,start_method,fault", CASES)
def test_fault_reaches_only_its_item(
    kind: str, start_method: str, fault: str, tmp_path: Path, baseline: Baseline,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="workerkit")
    expect = EXPECTED.get((kind, fault), Expect())
    factory = Factory(kind, start_method, fault)
    tracker = Tracker()
    options: Dict[str, Any] = {}
    if fault == "init_death":
        options = dict(min_workers=0, idle_timeout=0.05)
    pool: WorkPool[Any, Any] = WorkPool(factory, max_workers=2, **options)
    stop = threading.Event()
    kill_thread, killed = killer(tmp_path / "busy.pid", stop) if fault == "sigkill" else (None, [])
    try:
        items = source(fault, tmp_path, pool, factory, tracker)
        run = dict(on_complete=tracker.on_complete, on_error=tracker.on_error)

        # ---- the call with the fault
        if fault == "source_raises":
            with pytest.raises(SourceBoom, match="failed at item 3"):
                pool.process(items, **run)
            assert sorted(tracker.completed) == [0, 1, 2]  # the in-flight items finished
            assert tracker.failed == {}
            assert pool.errors == []
        elif expect.error is None:
            summary = pool.process(items, **run)
            assert (summary.submitted, summary.completed, summary.failed) == (N_ITEMS, N_ITEMS, 0)
            assert summary.failures == [] and tracker.failed == {}
        else:
            with pytest.raises(WorkPoolError) as raised:
                pool.process(items, **run)
            summary = raised.value.summary
            assert summary is not None
            assert summary.submitted == summary.completed + summary.failed == N_ITEMS
            assert summary.failed == 1, [repr(f.error) for f in summary.failures]
            (failure,) = summary.failures
            assert failure.index == FAULTY and not failure.ok
            assert raised.value.__cause__ is failure.error
            assert list(tracker.failed) == [FAULTY]
            check_error(failure.error, expect)
            assert [f.index for f in pool.errors] == [FAULTY]

        expected_ok = [i for i in range(N_ITEMS) if not (i == FAULTY and expect.error is not None)]
        if fault == "source_raises":
            expected_ok = [0, 1, 2]
        assert sorted(tracker.completed) == expected_ok
        for index, value in tracker.completed.items():
            assert value[0] == index  # each item got its own result
        stats = pool.stats()
        assert stats.completed == len(expected_ok)
        assert stats.failed == len(tracker.failed)

        if fault == "sigkill":
            assert kill_thread is not None
            kill_thread.join(WAIT)  # it appends after os.kill: the item may fail first
            assert len(killed) == 1
        if fault == "listener_raises":
            assert len(factory.listener_raised_on) == 1, "the listener never saw item 3's reply"
            assert factory.listener_calls_after_raise == 0, "a listener that raised was not removed"
            logged = [
                r for r in caplog.records
                if r.name == "workerkit" and r.levelno >= logging.ERROR and r.exc_info
                and "injected failure in a parent-side listener" in str(r.exc_info[1])
            ]
            assert len(logged) == 1, "the failing listener was not logged (once)"
            assert "removed" in logged[0].getMessage()
        if fault == "idle_death":
            kill_children_and_wait_inactive(factory)  # and again, between two calls

        # ---- the pool keeps serving
        follow = pool.process([(i, "ok", None) for i in range(4)])
        assert (follow.submitted, follow.completed, follow.failed) == (4, 4, 0)
        stats = pool.stats()
        assert stats.completed == len(expected_ok) + 4
        assert stats.failed == len(tracker.failed)
        # a worker retiring on idle_timeout is neither alive nor destroyed yet
        assert stats.created - stats.destroyed >= stats.alive
    finally:
        stop.set()
        pool.shutdown()
        if kill_thread is not None:
            kill_thread.join(WAIT)
    stats = pool.stats()
    assert stats.alive == 0 and stats.destroyed == stats.created  # shutdown destroyed them all
    item_pids = [v[1] for v in tracker.completed.values()]
    baseline.assert_clean(factory.pids + item_pids + killed)


def check_error(error: BaseException, expect: Expect) -> None:
    assert expect.error is not None
    assert isinstance(error, expect.error), f"expected {expect.error.__name__}, got {error!r}"
    if expect.exitcode is not None:
        assert isinstance(error, ChannelClosedError)
        assert error.exitcode == expect.exitcode, str(error)
    if expect.remote_type:
        assert isinstance(error, RemoteError)
        assert any(t in error.remote_type for t in expect.remote_type), error.remote_type
        assert error.remote_traceback.startswith("Traceback"), error.remote_traceback
        assert "Remote traceback" in str(error)
    if expect.traceback is not None:
        assert isinstance(error, RemoteError)
        assert expect.traceback in error.remote_traceback, error.remote_traceback
    if expect.message is not None:
        assert expect.message in str(error), str(error)


def test_matrix_covers_every_fault() -> None:
    """Each fault of the issue is exercised for both kinds (listener faults: spawned only)."""
    ids = {(p.values[0], p.values[2]) for p in CASES}
    for fault in FAULTS:
        assert ("spawned", fault) in ids
        assert ("function", fault) in ids or fault == "listener_raises"

