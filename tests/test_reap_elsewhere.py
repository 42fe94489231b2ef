"""A child whose exit status someone else collected (another ``waitpid`` in the same
process, racing ours) is still released by ``destroy``: its pipe ends are closed, nothing
is logged as an error, no signal goes to its pid (which may be someone else's by now), and
its ``Process`` is closed as after any other ``destroy``."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from workerkit import ParentCommChannel


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.timeout(60)
def test_a_child_reaped_elsewhere_is_released_without_an_error(caplog: pytest.LogCaptureFixture) -> None:
    channel = ParentCommChannel.fork("tests.children.behaviours:typed_echo")
    channel.listen_once("ready").result(20)
    pid = channel.id
    sentinel = channel.process.sentinel
    os.kill(pid, signal.SIGKILL)
    reaped, status = os.waitpid(pid, 0)  # the exit status goes to someone else
    assert reaped == pid and os.WIFSIGNALED(status)
    with caplog.at_level(logging.INFO, logger="workerkit"):
        start = time.monotonic()
        channel.destroy()
        took = time.monotonic() - start
    messages = [r.getMessage() for r in caplog.records if r.name == "workerkit"]
    errors = [r.getMessage() for r in caplog.records if r.name == "workerkit" and r.levelno >= logging.ERROR]
    assert errors == []
    # Its pid may already be someone else's: no signal may go to it.
    assert not [m for m in messages if "SIGTERM" in m or "SIGKILL" in m], messages
    assert any("collected elsewhere" in m for m in messages), messages
    with pytest.raises(ValueError, match="closed"):
        channel.process.is_alive()  # closed like any other destroyed child's process
    assert not _fd_open(sentinel), "the child's sentinel pipe end was left open"
    assert took < 5.0, f"destroy took {took:.1f} s for a child that was already gone"
    assert not channel.active
    assert channel.exitcode is None  # unknowable: someone else took it


@pytest.mark.timeout(60)
def test_multiprocessing_stops_polling_a_child_reaped_elsewhere() -> None:
    import multiprocessing.process

    channel = ParentCommChannel.fork("tests.children.behaviours:typed_echo")
    channel.listen_once("ready").result(20)
    process = channel.process
    os.kill(channel.id, signal.SIGKILL)
    os.waitpid(channel.id, 0)
    channel.destroy()
    # Left in its registry, multiprocessing would waitpid() that pid at every start,
    # stealing the exit status of whichever new child is given the pid next.
    assert process not in multiprocessing.process._children  # type: ignore[attr-defined]
