"""Review findings (round 2) on the reader-parking / driven-future commits."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import pytest

from workerkit import ChannelClosedError, ParentCommChannel


@pytest.mark.timeout(60)
def test_dead_peer_fails_a_future_polled_with_short_timeouts() -> None:
    channel = ParentCommChannel.spawn("tests.children.behaviours:typed_echo", start_method="fork")
    try:
        channel.listen_once("ready").result(20)
        pending = channel.listen_once("never-sent")
        os.kill(channel.process.pid, signal.SIGKILL)
        outcome = "still pending"
        deadline = time.monotonic() + 8.0  # peer_lost itself waits at most ~1 s for the exit code
        while time.monotonic() < deadline:
            try:
                pending.result(timeout=0.01)  # a stop-flag polling loop
            except concurrent.futures.TimeoutError:
                continue
            except ChannelClosedError:
                outcome = "closed"
                break
        assert outcome == "closed", f"{outcome}; channel.active={channel.active}"
    finally:
        channel.destroy()


def test_a_failed_outcome_does_not_keep_its_dead_worker_alive() -> None:
    """A child that died fails its item with ChannelClosedError; keeping that outcome must
    not keep the destroyed worker (its channel, process object, buffers) alive through the
    traceback's frames: a soak with thousands of dead children would pile them up."""
    import gc
    import weakref

    from tests.children.workers import exit_on_negative
    from workerkit import WorkPool, function_worker

    made: list = []

    def factory() -> object:
        worker = function_worker(exit_on_negative)
        made.append(weakref.ref(worker))
        return worker

    with WorkPool(factory, max_workers=1) as pool:
        summary = pool.process([1, -2, 3], raise_on_error=False)
    assert (summary.completed, summary.failed) == (2, 1)
    assert isinstance(summary.failures[0].error, ChannelClosedError)
    gc.collect()
    assert len(made) == 2
    assert made[0]() is None, "the dead worker is still referenced (from the error's traceback)"
