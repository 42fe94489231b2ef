"""The child's end of a channel: ChildCommChannel.

The bootstrap publishes the connection it inherited from the parent (``install``);
every ``ChildCommChannel()`` in the process is a view on that one endpoint, so they
share one reader thread, while each ``release()`` drops only its own listeners.
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Optional

from ..errors import WorkerKitError
from ._endpoint import Endpoint
from ._lifeline import flush_std_streams
from .channel import ProcessCommChannel

__all__ = ["ChildCommChannel", "install", "current_endpoint", "forget_inherited", "hold_if_exiting"]

_endpoint: Optional[Endpoint] = None
_alive: Optional[Connection] = None
_installed_pid = 0  # the process the published endpoint belongs to (forks inherit it)
# Set by ChildCommChannel.exit() just before it closes the channel and calls os._exit.
_exiting = threading.Event()


def install(conn: Connection, parent_pid: int, alive: Connection) -> Endpoint:
    """Publish this child's connection to its parent (called by the bootstrap)."""
    global _endpoint, _alive, _installed_pid
    _endpoint = Endpoint(conn, parent_pid, "parent process")
    _alive = alive
    _installed_pid = os.getpid()
    return _endpoint


def current_endpoint() -> Optional[Endpoint]:
    """The published endpoint, if this process is a channel child."""
    if _endpoint is not None and _installed_pid == os.getpid():
        return _endpoint
    return None


def forget_inherited() -> None:
    """In a forked child of a child: close the copies of our parent's link to *its*
    parent, which would otherwise keep that link from ever reaching EOF."""
    global _endpoint, _alive
    if _endpoint is not None and _installed_pid != os.getpid():
        _endpoint.forget()
        if _alive is not None:
            _alive.close()
        _endpoint = _alive = None


def hold_if_exiting() -> None:
    """Block for good while ``exit(code)`` ends the process from another thread.

    Its closing the channel wakes the bootstrap's ``wait_closed``; returning from the
    bootstrap then would race the ``os._exit(code)`` with a normal exit 0.
    """
    if _exiting.is_set():
        while True:
            time.sleep(60)


class ChildCommChannel(ProcessCommChannel):
    """The child's end of the channel to its parent. Build it with no arguments."""

    def __init__(self) -> None:
        endpoint = current_endpoint()
        if endpoint is None:
            raise WorkerKitError(
                "ChildCommChannel() only works inside a child started by "
                "ParentCommChannel.spawn/fork or a workerkit pool worker"
            )
        super().__init__(endpoint)

    @property
    def id(self) -> int:
        """This process's own pid."""
        return os.getpid()

    def destroy(self) -> None:
        """Close the channel to the parent (for every ``ChildCommChannel`` of this process).

        A child cannot destroy its parent: this only closes the channel. The parent sees
        the channel close; the process keeps running until its target returns.
        """
        self._endpoint.close(f"channel closed by child process {os.getpid()}")

    def exit(self, code: int = 0) -> None:
        """Close the channel, flush stdout/stderr and end this process with ``code``.

        Works from any thread (it does not return).
        """
        _exiting.set()  # before closing: the main thread must not exit first with code 0
        self._endpoint.close(f"child process {os.getpid()} exited with code {code}", code)
        flush_std_streams()
        os._exit(code)
