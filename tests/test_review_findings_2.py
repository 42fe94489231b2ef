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
