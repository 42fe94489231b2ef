"""``listen_once`` futures build their ``Condition`` only when someone needs one. Every way
of waiting on a ``concurrent.futures.Future`` still works with them: ``wait``,
``as_completed``, done callbacks added before and after, a second thread blocked in
``result()`` while the first reads the pipe, ``exception()``, ``cancel()`` and ``repr``."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, List

import pytest

from workerkit import ParentCommChannel

WAIT = 20.0


def _ask(channel: ParentCommChannel, n: int) -> None:
    channel.send("msg", {"reply_type": "pong", "n": n})


@pytest.mark.timeout(60)
def test_wait_and_as_completed_wake_for_an_undriven_future(echo: ParentCommChannel) -> None:
    futures = [echo.listen_once("pong") for _ in range(2)]
    _ask(echo, 1)
    done, not_done = concurrent.futures.wait(futures, timeout=WAIT)
    assert len(done) == 2 and not not_done
    assert [f.result()["n"] for f in concurrent.futures.as_completed(futures, timeout=WAIT)] == [1, 1]


@pytest.mark.timeout(60)
def test_done_callbacks_added_before_and_after_run_once_each(echo: ParentCommChannel) -> None:
    calls: List[Any] = []
    future = echo.listen_once("pong")
    future.add_done_callback(lambda f: calls.append(("before", f.result()["n"])))
    _ask(echo, 5)
    assert future.result(WAIT)["n"] == 5
    future.add_done_callback(lambda f: calls.append(("after", f.result()["n"])))
    assert calls == [("before", 5), ("after", 5)]


def _wait_for(future: concurrent.futures.Future[Any], started: threading.Event, got: List[Any]) -> None:
    started.set()
    got.append(future.result(WAIT)["n"])


@pytest.mark.timeout(60)
def test_a_thread_blocked_in_result_wakes_when_another_reads_the_reply(echo: ParentCommChannel) -> None:
    for n in range(50):  # many rounds: the blocked thread and the reading one race
        future = echo.listen_once("pong")
        got: List[Any] = []
        started = threading.Event()
        thread = threading.Thread(target=_wait_for, args=(future, started, got))
        thread.start()
        started.wait()
        _ask(echo, n)
        assert future.result(WAIT)["n"] == n
        thread.join(WAIT)
        assert not thread.is_alive() and got == [n]


@pytest.mark.timeout(60)
def test_concurrent_wait_while_the_owner_reads_never_misses_the_result(echo: ParentCommChannel) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for n in range(100):
            future = echo.listen_once("pong")
            waiter = pool.submit(concurrent.futures.wait, [future], WAIT)
            _ask(echo, n)
            assert future.result(WAIT)["n"] == n
            done, _ = waiter.result(WAIT)
            assert future in done


@pytest.mark.timeout(60)
def test_exception_cancel_and_repr_before_and_after(echo: ParentCommChannel) -> None:
    future = echo.listen_once("pong")
    assert "pending" in repr(future)
    assert not future.done() and not future.cancelled() and not future.running()
    _ask(echo, 3)
    assert future.exception(WAIT) is None
    assert "finished" in repr(future)
    assert not future.cancel() and future.result()["n"] == 3
    with pytest.raises(concurrent.futures.InvalidStateError):
        future.set_result({"type": "pong"})
    cancelled = echo.listen_once("pong")
    assert cancelled.cancel() and cancelled.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        cancelled.result(0)
    _ask(echo, 4)
    nxt = echo.listen_once("pong")
    _ask(echo, 5)
    assert nxt.result(WAIT)["n"] in (4, 5)  # the pong for 4 may still be on its way
    assert cancelled.cancelled()  # a later event never settles a cancelled future


@pytest.mark.timeout(60)
def test_settling_a_settled_future_again_raises_and_the_channel_goes_on(echo: ParentCommChannel) -> None:
    settled = echo.listen_once("pong")
    settled.set_result({"type": "pong", "n": -1})  # settled by hand, before its event
    with pytest.raises(concurrent.futures.InvalidStateError):
        settled.set_result({"type": "pong", "n": -2})  # no repr() first: no Condition yet
    assert settled.result(0)["n"] == -1
    _ask(echo, 1)  # the event it was waiting for arrives: the reader must not wedge
    nxt = echo.listen_once("pong")
    _ask(echo, 2)
    assert nxt.result(WAIT)["n"] in (1, 2)
    other = echo.listen_once("pong")
    waiter = threading.Thread(target=lambda: concurrent.futures.wait([other], WAIT))
    waiter.start()
    _ask(echo, 3)
    waiter.join(WAIT)
    assert not waiter.is_alive() and other.result(0)["n"] in (2, 3)
