"""The multiplexer: one pool thread that waits on every function worker's pipe at once.

A function worker's item is one frame out and one frame back on one file descriptor. With
a thread per worker, each reply wakes that worker's thread, and the threads then trade the
GIL for every item; on a small machine those hand-offs cost more than the item. So a
worker that can split its execute in two (:class:`Multiplexable`: ``begin`` sends,
``finish`` reads the reply) is *parked* on the multiplexer once its request is written:
the multiplexer's thread reads the reply, pulls the next item and sends it, then records
the finished one, for every parked worker, without any other thread waking up. A large
request (over 64 KiB) is still written by its slot's own thread, so two large transfers
can run at once.

Only the multiplexer reads a parked worker's pipe and closes it. Another thread that must
end a parked item early (a timeout, ``shutdown(wait=False)``, Ctrl-C) records its failure
and kills the worker's child (:meth:`Multiplexable.interrupt`): the multiplexer then reads
EOF and retires the worker, so a descriptor is never closed under a read, and no early end
waits for the multiplexer (which may be running a slow callback). Linux only (``epoll``);
elsewhere the pool keeps a thread per worker.
"""

from __future__ import annotations

import abc
import logging
import os
import select
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

__all__ = ["Multiplexable", "Mux", "AVAILABLE"]

logger = logging.getLogger("workerkit")

AVAILABLE = hasattr(select, "epoll")
_IN = getattr(select, "EPOLLIN", 0)


class Multiplexable(abc.ABC):
    """A worker whose execute is one request frame out and one reply frame back on one
    descriptor, so the multiplexer can drive it (the interface; ``_FunctionWorker`` is
    the one implementation)."""

    # Called before the worker closes its descriptor (it died, or is being destroyed), so
    # the multiplexer stops watching it first.
    before_close: Optional[Callable[[], None]] = None

    def unwatch(self) -> None:
        """Tell the multiplexer to stop watching (call before closing the descriptor)."""
        before_close = self.before_close
        if before_close is not None:
            self.before_close = None
            before_close()

    @abc.abstractmethod
    def interrupt(self) -> None:
        """End the child now (SIGKILL), from any thread: a parked reply then reads EOF."""

    @abc.abstractmethod
    def multiplexable(self) -> bool:
        """Whether this worker's execute may be split (not overridden or patched)."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """The descriptor both frames travel on."""

    @abc.abstractmethod
    def begin(self, item: Any, items: Optional[Sequence[Any]]) -> bool:
        """Send the request for one item (``items`` None) or a chunk. False when nothing was
        written: it cannot be pickled, or is too large to send from the multiplexer (run it
        the ordinary way); raises ``ChannelClosedError`` when the child is gone."""

    @abc.abstractmethod
    def finish(self, items: Optional[Sequence[Any]]) -> Any:
        """Read the reply to :meth:`begin`: the value (raises the item's error), or a
        chunk's results as ``execute_chunk`` returns them."""


class Mux:
    """The multiplexer's state: an epoll set of watched descriptors and a wake-up pipe.

    ``on_reply(slot)`` runs on the multiplexer's thread when a parked slot's reply is
    readable. A descriptor is watched from its first park until its worker is detached,
    and stays registered between items (no system call per item). An event on a
    descriptor whose slot is not parked (its child died while idle) takes it out of the
    epoll set, so it is reported once, not in a loop; parking an item puts it back.
    """

    def __init__(
        self, on_reply: Callable[[Any], None], holding: Callable[[], bool], flush: Callable[[], None]
    ) -> None:
        self._on_reply = on_reply
        # Outcomes held for a stream's consumer (see WorkPool._hold): ``holding()`` says
        # whether any are, ``flush()`` hands them over; done before this thread sleeps.
        self._holding = holding
        self._flush = flush
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._epoll.register(self._wake_r, _IN)
        self._watched: Dict[int, Any] = {}  # fd -> the slot whose worker owns it
        self._disarmed: Set[int] = set()
        # Orders "disarm an fd whose slot is not parked" against "re-arm the fd of a slot
        # just parked": one of the two always sees the other's change.
        self._arming = threading.Lock()
        self.thread: Optional[threading.Thread] = None
        self._closed = False
        self._close_lock = threading.Lock()  # no wake-up is written to a closed (reused) fd

    # ---------------------------------------------------------------- any thread

    def watch(self, fd: int, slot: Any) -> None:
        """Start watching ``fd`` for ``slot``."""
        with self._arming:
            self._watched[fd] = slot
            self._disarmed.discard(fd)
            try:
                self._epoll.register(fd, _IN)
            except FileExistsError:  # a registration left behind by a closed descriptor
                self._epoll.modify(fd, _IN)

    def parked(self, fd: int) -> None:
        """A request was just written to ``fd`` (its slot parked): make sure its reply is
        reported. Costs nothing unless a stray event disarmed it."""
        with self._arming:
            if fd in self._disarmed:
                self._disarmed.discard(fd)
                self._epoll.register(fd, _IN)

    def hold(self, fd: int) -> None:
        """Stop reporting ``fd`` until :meth:`resume` (its slot is busy on this thread)."""
        with self._arming:
            if fd in self._watched and fd not in self._disarmed:
                self._disarmed.add(fd)
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    def resume(self, fd: int) -> None:
        """Report ``fd`` again after :meth:`hold`; nothing to do (no lock) otherwise."""
        if fd in self._disarmed:
            self.parked(fd)

    def forget(self, fd: int, slot: Any) -> None:
        """Stop watching ``fd`` for ``slot`` (before it closes). Idempotent."""
        with self._arming:
            if self._watched.get(fd) is not slot:
                return  # already forgotten, or the number now belongs to another worker
            del self._watched[fd]
            if fd in self._disarmed:
                self._disarmed.discard(fd)
            else:
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):  # closed already (epoll dropped it), or mux closed
                    pass
            idle = not self._watched
        if idle:
            self.wake()  # it may end now: nothing left to watch

    @property
    def watching(self) -> bool:
        """Whether any worker's descriptor is watched."""
        return bool(self._watched)

    def wake(self) -> None:
        with self._close_lock:
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._closed:
            return
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # full: a wake-up is pending anyway

    # ---------------------------------------------------------------- its own thread

    def run(self, done: Callable[[], bool]) -> None:
        """The thread's body: serve replies and wake-ups until ``done()`` says so."""
        try:
            while True:
                self.run_once(None)
                if done():
                    return
        finally:
            self.close()

    def run_once(self, timeout: Optional[float]) -> None:
        """Wait (at most ``timeout`` seconds) and serve what is ready."""
        events: List[Tuple[int, int]] = []
        if self._holding():
            events = self._epoll.poll(0)  # replies ready now join the held outcomes
            if not events:
                self._flush()  # none: hand the outcomes over before sleeping
        if not events:
            events = self._epoll.poll(-1 if timeout is None else timeout)
        watched, on_reply = self._watched, self._on_reply
        for fd, _ in events:
            if fd == self._wake_r:
                self._drain_wakeups()
                continue
            slot = watched.get(fd)
            if slot is not None and slot.parked:
                try:
                    on_reply(slot)
                except Exception:  # a bug: never let it end the thread every worker needs
                    logger.exception("workerkit: the multiplexer failed on a reply")
            elif slot is not None:
                self._disarm(fd, slot)

    def _disarm(self, fd: int, slot: Any) -> None:
        """Stop reporting ``fd`` until its slot parks again (a child that died idle)."""
        with self._arming:
            if slot.parked or self._watched.get(fd) is not slot or fd in self._disarmed:
                return  # parked meanwhile: its reply (or EOF) is read next time round
            self._disarmed.add(fd)
            try:
                # Removed, not modified: epoll keeps reporting a hang-up whatever the mask.
                self._epoll.unregister(fd)
            except OSError:
                pass

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
