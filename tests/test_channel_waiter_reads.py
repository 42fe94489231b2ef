"""The round-trip fast path: a thread waiting on a ``listen_once`` future reads the pipe
itself. These tests prove it never changes what the contract promises: callbacks still run
on the reader thread, in order, futures resolve for every way of waiting, and a dead child
still fails the waiter."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
from typing import List

import pytest

from workerkit import ChannelClosedError, ParentCommChannel

WAIT = 20.0


@pytest.mark.timeout(60)
def test_many_round_trips_each_get_their_own_answer(echo: ParentCommChannel) -> None:
    for n in range(2000):
        reply = echo.listen_once("echo")
        echo.send("msg", {"n": n})
        assert reply.result(WAIT)["n"] == n


@pytest.mark.timeout(60)
def test_callbacks_still_run_on_the_reader_thread_while_a_future_waits(echo: ParentCommChannel) -> None:
    names: List[str] = []
    seen = threading.Event()

    def on_echo(event: dict, remove: object) -> None:
        names.append(threading.current_thread().name)
        seen.set()

    echo.listen_for("echo", on_echo)
    reply = echo.listen_once("echo")
    echo.send("msg", {"n": 1})
    assert reply.result(WAIT)["n"] == 1
    assert seen.wait(WAIT)
    assert names and all(name.startswith("workerkit-reader") for name in names), names


@pytest.mark.timeout(60)
def test_futures_resolve_without_anyone_calling_result(echo: ParentCommChannel) -> None:
    replies = [echo.listen_once("echo")]
    echo.send("msg", {"n": 7})
    done, not_done = concurrent.futures.wait(replies, timeout=WAIT)
    assert not not_done and replies[0].result(0)["n"] == 7
    called = threading.Event()
    later = echo.listen_once("echo")
    later.add_done_callback(lambda f: called.set())
    echo.send("msg", {"n": 8})
    assert called.wait(WAIT) and later.result(0)["n"] == 8


@pytest.mark.timeout(60)
def test_result_timeout_still_raises_timeout_error(echo: ParentCommChannel) -> None:
    never = echo.listen_once("never-sent")
    with pytest.raises(concurrent.futures.TimeoutError):
        never.result(0.3)
    # the channel still works afterwards
    again = echo.listen_once("echo")
    echo.send("msg", {"n": 3})
    assert again.result(WAIT)["n"] == 3


@pytest.mark.timeout(60)
def test_two_threads_waiting_each_get_theirs(echo: ParentCommChannel) -> None:
    errors: List[BaseException] = []

    def client(base: int) -> None:
        try:
            for n in range(base, base + 300):
                reply = echo.listen_once(f"echo-{base}")
                echo.send("msg", {"n": n, "reply_type": f"echo-{base}"})
                assert reply.result(WAIT)["n"] == n
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(b,)) for b in (0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert not errors, errors


@pytest.mark.timeout(60)
def test_a_killed_child_fails_the_waiting_reader_with_its_exit_code(echo: ParentCommChannel) -> None:
    reply = echo.listen_once("never-sent")
    os.kill(echo.id, signal.SIGKILL)
    with pytest.raises(ChannelClosedError) as info:
        reply.result(WAIT)
    assert info.value.exitcode == -signal.SIGKILL


@pytest.mark.timeout(60)
def test_a_future_nobody_drives_resolves_right_after_driven_round_trips(echo: ParentCommChannel) -> None:
    for n in range(50):  # the reader thread parks while result() reads for itself
        reply = echo.listen_once("echo")
        echo.send("msg", {"n": n})
        assert reply.result(WAIT)["n"] == n
    undriven = echo.listen_once("echo")
    echo.send("msg", {"n": 99})
    done, _ = concurrent.futures.wait([undriven], timeout=5)  # no result(): the reader serves it
    assert undriven in done and undriven.result(0)["n"] == 99


@pytest.mark.timeout(60)
def test_a_callback_registered_after_driven_round_trips_runs_on_the_reader(echo: ParentCommChannel) -> None:
    for n in range(50):
        reply = echo.listen_once("echo")
        echo.send("msg", {"n": n})
        assert reply.result(WAIT)["n"] == n
    seen: List[str] = []
    got = threading.Event()

    def on_echo(event: dict, remove: object) -> None:
        seen.append(threading.current_thread().name)
        got.set()

    echo.listen_for("echo", on_echo)
    echo.send("msg", {"n": 1})
    assert got.wait(WAIT)
    assert seen[0].startswith("workerkit-reader")


@pytest.mark.timeout(60)
def test_a_cancelled_future_is_unregistered_at_once(echo: ParentCommChannel) -> None:
    registry = echo._endpoint.registry  # white-box: a leaked registration shows nowhere else
    before = len(registry)
    cancelled = echo.listen_once("echo")
    assert len(registry) == before + 1
    assert cancelled.cancel()
    assert len(registry) == before
    wanted = echo.listen_once("echo")
    echo.send("msg", {"n": 5})
    assert wanted.result(WAIT)["n"] == 5
