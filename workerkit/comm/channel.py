"""Channels between a parent process and a child: the common base, ProcessCommChannel.

Data flow, for one connection (both ends look the same)::

    caller threads                                         the peer process
    --------------                                         ----------------
    send(type, data)
      | encode: pickle                                     (its own reader
      | (outside any lock)                                  thread reads
      v                                                    what we write)
    +-----------+      +--------------------------+              ^
    | send lock |----->|  socketpair (one frame   |--------------+
    +-----------+      |  per message)            |
                       |                          |<-------------- peer's send()
                       +--------------------------+
                                    |
                                    v
                       +--------------------------+
                       | reader thread            |  recv_bytes -> type -> unpickle
                       | "workerkit-reader-<pid>" |
                       +--------------------------+
                                    |
                                    v
                       +--------------------------+     +-----------------------------+
                       | listener registry        |---->| listen / listen_for         |
                       | {type: (reg, ...)} +     |     |   handler(event, remove)    |
                       | catch-all (reg, ...)     |     | listen_once(type, callback) |
                       +--------------------------+     | listen_once(type) -> Future |
                                                        +-----------------------------+

Wire format: each message is one ``send_bytes`` frame holding a 1-byte length, the
utf-8 event type, then the pickled payload without ``"type"`` (see ``_framing``).

Send lock:
    ``send`` pickles first, with no lock held, so a payload that cannot be pickled
    raises at the call and nothing reaches the wire. Only ``send_bytes`` runs under the
    lock, so frames from many threads never interleave. A write that fails because the
    peer is gone closes the channel and raises ``ChannelClosedError``.

Reader thread:
    One per connection, a daemon, started when the first listener registers. Until then
    whatever the peer sends waits in the pipe: a child's early ``"ready"`` is not lost.
    Once reading, a message nobody listens for is dropped (debug log) without being
    unpickled. Events are dispatched on the reader thread, one at a time, in
    registration order across all kinds of listener. A handler that raises is logged
    and removed; a frame that is not a message is logged and dropped; a body that fails
    to unpickle fails the pending ``listen_once`` futures of its type with
    ``MessageDecodeError``. The reader keeps going in every case.

Listener registry:
    Copy-on-write tuples keyed by event type plus one catch-all tuple. Dispatch is a
    dict lookup, lock-free. Each channel *view* remembers the registrations it made, so
    ``release()`` on one view drops only its own listeners even though views of the same
    connection share one registry and one reader (two ``ChildCommChannel()`` objects in
    one child do).

Closing rules:
    The channel closes when either end closes it (``destroy``), when the peer dies, or
    when a write fails. Closing wakes the reader, fails every pending ``listen_once``
    future with ``ChannelClosedError`` at once, and sets the closed Event that
    ``wait_closed`` waits on. After that, ``send`` raises, ``listen_once`` returns an
    already-failed future, and listeners are never called: nothing waits forever on a
    dead peer. On the parent side the error carries the child's exit code.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from multiprocessing.connection import Connection
from typing import Any, Callable, List, Mapping, Optional, Union, overload

from ._endpoint import Endpoint
from ._framing import CommEvent, encode_frame
from ._listeners import EVERY, FUTURE, ONCE, Handler, OnceCallback, Registration, Remover

__all__ = ["ProcessCommChannel", "CommEvent"]

_DONE_STATES = frozenset((CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED))


def _noop() -> None:
    """The remover returned when the channel is already closed."""


class ProcessCommChannel:
    """Base of both ends of a channel: a view on one connection's :class:`Endpoint`."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    @property
    def id(self) -> int:
        """Pid of the process at the other end."""
        return self._endpoint.peer_pid

    @property
    def active(self) -> bool:
        """``True`` while the channel is open."""
        return not self._endpoint.closed

    @property
    def connection(self) -> Connection:
        """The underlying connection, for protocols that skip the listener machinery.

        Do not mix the two on one channel: once a listener starts the reader thread, it
        consumes every frame. Use ``destroy()`` (not ``connection.close()``) to close.
        """
        return self._endpoint.raw_connection

    def send(self, event_type: str, data: Optional[Mapping[str, Any]] = None) -> None:
        """Send ``{"type": event_type, **data}`` to the other end. Thread-safe.

        Raises ``TypeError`` for a non-str type, ``ValueError`` when ``data`` has a
        ``"type"`` key, pickle's own error for an unpicklable payload (nothing is sent)
        and ``ChannelClosedError`` once the channel is closed.
        """
        self._endpoint.send_frame(encode_frame(event_type, data))

    def listen(self, handler: Handler) -> Remover:
        """Call ``handler(event, remove)`` for every event; returns ``remove``."""
        return self._add(None, EVERY, handler)

    def listen_for(self, event_type: str, callback: Handler) -> Remover:
        """Call ``callback(event, remove)`` for every event of ``event_type``."""
        _check_type(event_type)
        return self._add(event_type, EVERY, callback)

    @overload
    def listen_once(self, event_type: str) -> Future[CommEvent]: ...

    @overload
    def listen_once(self, event_type: str, callback: OnceCallback) -> Remover: ...

    def listen_once(
        self, event_type: str, callback: Optional[OnceCallback] = None
    ) -> Union[Future[CommEvent], Remover]:
        """The next event of ``event_type``: as a Future, or passed to ``callback(event)``.

        The future fails with ``ChannelClosedError`` if the channel closes first (at once
        if it is closed already); the callback is then never called.
        """
        if type(event_type) is not str:
            _check_type(event_type)
        if callback is not None:
            return self._add(event_type, ONCE, callback)
        future = _DrivenFuture(self._endpoint)
        reg = Registration(self, event_type, FUTURE, future=future)
        if not self._endpoint.register(reg):
            future.set_exception(self._endpoint.closed_error())
            return future
        future.registration = reg  # cancelling the future unregisters it
        return future

    def remove_listener(self, handler: Any) -> None:
        """Remove every listener this channel registered with ``handler``."""
        for reg in self._endpoint.registry.owned_by(self, handler):
            self._endpoint.registry.discard(reg)

    def release(self) -> None:
        """Drop every listener registered through THIS channel object; its pending
        ``listen_once`` futures are cancelled. Other views of the connection keep theirs."""
        for reg in self._endpoint.registry.owned_by(self):
            if self._endpoint.registry.discard(reg) and reg.future is not None:
                reg.future.cancel()

    def destroy(self) -> None:
        """Close the channel."""
        self._endpoint.close("channel was closed by this process")

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        """Block until the channel is closed (or ``timeout``); return whether it is.

        This starts the reader if no listener has yet (someone must read to see EOF), so
        messages that arrive meanwhile with no listener are dropped.
        """
        return self._endpoint.wait_closed(timeout)

    def _add(self, event_type: Optional[str], kind: int, callback: Any) -> Remover:
        if not callable(callback):
            raise TypeError(f"listener must be callable, not {type(callback).__name__}")
        reg = Registration(self, event_type, kind, callback)
        if not self._endpoint.register(reg):
            return _noop
        return reg.remove


def _check_type(event_type: object) -> None:
    if not isinstance(event_type, str):
        raise TypeError(f"event type must be a str, not {type(event_type).__name__}")


class _DrivenFuture(Future[CommEvent]):
    """A ``listen_once`` future whose waiter reads the pipe itself when it can.

    ``result()``/``exception()`` first let the calling thread read and dispatch frames
    (:meth:`Endpoint.drive`), saving the reader-thread-to-waiter hand-off on a round trip;
    the reader thread still resolves it otherwise (callbacks, ``concurrent.futures.wait``).

    Its ``Condition`` is made on first use: a future settled by the thread that waits on
    it (a round trip) never needs one, so none is built and none is notified. Settling
    checks, under the endpoint's ``future_lock`` (which also guards making one), whether
    one exists: without it nobody can be waiting, holding callbacks or ``wait()`` waiters.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        # Future.__init__, minus the Condition (see _condition).
        self._lazy_condition: Optional[threading.Condition] = None
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks: List[Callable[[Future[CommEvent]], object]] = []
        self._endpoint = endpoint
        self.registration: Optional[Registration] = None

    @property
    def _condition(self) -> threading.Condition:
        cond = self._lazy_condition
        if cond is None:
            with self._endpoint.future_lock:
                cond = self._lazy_condition
                if cond is None:
                    cond = self._lazy_condition = threading.Condition()
        return cond

    @_condition.setter
    def _condition(self, cond: threading.Condition) -> None:
        self._lazy_condition = cond

    def set_result(self, result: CommEvent) -> None:
        with self._endpoint.future_lock:
            if self._lazy_condition is None and self._state == PENDING:  # nobody waits on it
                self._result = result
                self._state = FINISHED
                return
        # Not under future_lock: raising InvalidStateError formats repr(self), which takes
        # the Condition, which would take future_lock again.
        super().set_result(result)

    def cancel(self) -> bool:
        """Cancel, and stop listening: a cancelled future is never resolved by an event."""
        cancelled = super().cancel()
        if cancelled and self.registration is not None:
            self.registration.remove()
        return cancelled

    def done(self) -> bool:
        # A plain read of the state: it only moves forward, so a stale False is harmless
        # (the caller waits under the lock next) and the driving loop asks it often.
        return self._state in _DONE_STATES

    def result(self, timeout: Optional[float] = None) -> CommEvent:
        if self._state not in _DONE_STATES:
            timeout = self._endpoint.drive(self, timeout)
        if self._state == FINISHED and self._exception is None:
            return self._result  # type: ignore[return-value]  # settled: no lock needed
        return super().result(timeout)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        if not self.done():
            timeout = self._endpoint.drive(self, timeout)
        return super().exception(timeout)
