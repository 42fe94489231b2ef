"""The per-connection core shared by every channel view of one pipe.

One :class:`Endpoint` owns: the :class:`~multiprocessing.connection.Connection`, the send
lock, the reader thread, the listener registry, and the closed state (flag, Event and
reason). Channel objects (``ParentCommChannel``, ``ChildCommChannel``) are thin views on
an endpoint that only remember which registrations they made.

Closing rules (see also the header of :mod:`workerkit.comm.channel`):

* The connection is a socketpair end. ``close()`` first ``shutdown()``s the socket, which
  wakes our reader (EOF), any sender blocked on a full buffer (EPIPE) and the peer (EOF).
* Only the reader thread closes the ``Connection`` once it has started, because it may be
  blocked in ``recv`` on that very fd: closing it under the reader's feet would let the fd
  number be reused and the reader read someone else's file. Without a reader, ``close()``
  closes it. Either way the close happens under the send lock and the fd lock.
* Closing fails every pending ``listen_once`` future with ``ChannelClosedError`` and then
  sets the closed Event; after that nothing can be registered.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from multiprocessing.connection import Connection
from typing import Any, Callable, Deque, Iterable, Optional

from ..errors import ChannelClosedError
from ._framing import (
    CommEvent,
    MalformedFrameError,
    MessageDecodeError,
    decode_body,
    split_frame,
)
from ._listeners import EVERY, FUTURE, ListenerRegistry, Registration
from ._wire import Frame, FrameReader, enable_read_slices, write_frame

__all__ = ["Endpoint", "ExitcodeHook", "shutdown_socket"]

logger = logging.getLogger("workerkit")

ExitcodeHook = Callable[[float], Optional[int]]
"""Waits up to the given seconds for the peer process to end; returns its exit code."""

# A waiting thread that reads for itself reads in slices this long (ms), to notice its
# future being cancelled or resolved by someone else; the reader thread too, to notice a
# waiting thread that wants to read for itself. See _wire.
_SLICE_MS = 50

# While waiting threads read for themselves, the reader thread stays parked this long
# between checks (a future nobody waits on in result() is then served within it).
_LINGER = 0.02

# How long the reader waits, after EOF, for the peer's exit code (so errors can carry it).
_EXIT_CODE_WAIT = 1.0


class Endpoint:
    """One end of a channel: connection, send lock, reader thread, registry, closed state."""

    def __init__(
        self,
        conn: Connection,
        peer_pid: int,
        peer_name: str,
        exitcode_hook: Optional[ExitcodeHook] = None,
    ) -> None:
        self._conn = conn
        self.peer_pid = peer_pid
        self._peer_name = peer_name
        self._exitcode_hook = exitcode_hook
        self._owner_pid = os.getpid()
        self.registry = ListenerRegistry()
        # One frame at a time on the wire: interleaved writes from two threads would corrupt it.
        self._send_lock = threading.Lock()
        # shutdown() vs close(): never shut down an fd number that was closed and reused.
        self._fd_lock = threading.Lock()
        # Closed flag vs reader start: decides atomically who closes the connection.
        self._state_lock = threading.Lock()
        # Whoever reads a frame holds this until it is dispatched: the reader thread, or a
        # thread waiting on a listen_once future that reads for itself. Keeps frames in order.
        self._read_lock = threading.Lock()
        # Settling a listen_once future vs making its Condition (see channel._DrivenFuture).
        self.future_lock = threading.Lock()
        # Two pollers: select.poll objects refuse concurrent use from two threads.
        self._data_fd = conn.fileno()
        self._reader_poll = _poller(conn)
        self._waiter_poll = _poller(conn)  # used only with _read_lock held
        # Every read of the connection goes through it, under _read_lock (see _wire).
        self._frames = FrameReader(self._data_fd)
        # Frames a waiting thread read but may not dispatch (a callback listener appeared:
        # callbacks run on the reader thread), and the pipe that wakes the reader for them.
        self._handoff: Deque[Frame] = deque()
        # When a waiting thread last read for itself, and the signal that calls the reader
        # back early (a callback listener registered, a frame handed over, EOF, close).
        self._last_drive = 0.0
        self._unpark = threading.Event()
        self._wake_r = self._wake_w = -1
        self._reader: Optional[threading.Thread] = None
        # Reads block for one slice at most (SO_RCVTIMEO) instead of polling first; set
        # once, by the first reader or waiting thread (see _wire).
        self._sliced = False
        self._is_closed = False
        self._closed_event = threading.Event()
        self._close_message = "channel is closed"
        self._close_exitcode: Optional[int] = None

    # -- state -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._is_closed

    def closed_error(self) -> ChannelClosedError:
        """A fresh error describing why the channel closed (fresh: tracebacks are per raise)."""
        return ChannelClosedError(self._close_message, self._close_exitcode)

    def has_listeners(self) -> bool:
        return len(self.registry) > 0

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        if not self._closed_event.is_set():
            self.ensure_reader()  # without a reader nobody would notice the peer's EOF
        return self._closed_event.wait(timeout)

    # -- sending -----------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        """Write one frame; ``ChannelClosedError`` if closed or the peer is gone."""
        if self._is_closed:
            raise self.closed_error()
        try:
            with self._send_lock:  # closing takes it too: the fd stays open while we write
                if self._conn.closed:
                    raise OSError("handle is closed")
                write_frame(self._data_fd, frame)
        except (OSError, EOFError) as exc:  # BrokenPipe, ConnectionReset, "handle is closed"
            self.peer_lost()
            raise self.closed_error() from exc

    # -- listening ---------------------------------------------------------------------

    def register(self, reg: Registration) -> bool:
        """Add ``reg`` and make sure the reader runs; ``False`` if the channel is closed."""
        if not self.registry.add(reg):
            return False
        if reg.kind != FUTURE:
            self._unpark.set()  # callbacks are the reader's job: call it back now
        if self._reader is None:
            self.ensure_reader()
        return True

    def ensure_reader(self) -> None:
        """Start the reader thread (once). Until then, incoming messages wait in the pipe."""
        if self._reader is not None:
            return
        with self._state_lock:
            if self._is_closed or self._reader is not None:
                return
            self._enable_slices()
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._reader_poll.register(self._wake_r, select.POLLIN)
            self._reader = threading.Thread(
                target=self._reader_main, name=f"workerkit-reader-{self.peer_pid}", daemon=True
            )
            self._reader.start()

    def _reader_main(self) -> None:
        try:
            while self._read_next():
                pass
        except BaseException:  # a bug, or SystemExit in a handler: still close, below
            logger.exception("workerkit reader for process %s stopped on an error", self.peer_pid)
        finally:
            if not self._is_closed:
                self.peer_lost()
            self._close_conn()
            self._close_wake_pipe()

    def _read_next(self) -> bool:
        """Reader thread: read and dispatch one frame; ``False`` once done. Stays off the
        read lock while a waiting thread reads for itself (see :meth:`drive`)."""
        if self._driving() and not self._handoff and not self.registry.callbacks and not self._is_closed:
            # Stay off the lock a waiting thread needs, instead of taking it between two
            # of its round trips and forcing it to wait for us.
            self._unpark.clear()  # before the wait: a call-back during it is never lost
            self._unpark.wait(_LINGER)
            return True
        if not self._sliced:
            return self._poll_next()
        try:
            with self._read_lock:
                if self._handoff:
                    _drain(self._wake_r)
                while self._handoff:  # frames a waiting thread read before us: in order
                    self._handle_frame(self._handoff.popleft())
                frame = self._frames.read_sliced()  # one slice at most: then look again
                return True if frame is None else self._take_frame(frame, driver=False)
        except (EOFError, OSError, ValueError):  # EOF, or the connection was closed under us
            return False

    def _poll_next(self) -> bool:
        """``_read_next`` for a connection that is not a socket: poll without the read
        lock (so a waiting thread may read the data itself), then read under it."""
        try:
            ready = [] if self._frames.buffered() else self._reader_poll.poll()
            if self._driving() and not self._handoff and not self.registry.callbacks and not self._is_closed:
                return True  # parks on the next call
            with self._read_lock:
                if any(fd == self._wake_r for fd, _ in ready):
                    _drain(self._wake_r)
                while self._handoff:  # frames a waiting thread read before us: in order
                    self._handle_frame(self._handoff.popleft())
                if not self._frames.buffered() and not any(
                    fd == self._data_fd for fd, _ in self._reader_poll.poll(0)
                ):
                    return True  # a thread waiting on a future read it first
                return self._read_one()
        except (OSError, ValueError):  # the connection was closed under the poll
            return False

    def drive(self, future: Future[CommEvent], timeout: Optional[float]) -> Optional[float]:
        """Read frames on the calling thread until ``future`` is done; return the time left.

        A round trip then costs no thread hand-off. Only while no callback listener is
        registered (callbacks run on the reader thread, as the contract says) and no one
        else is reading; otherwise it returns at once and the caller waits as usual (and
        the reader steps aside for the next round trip).
        """
        # Frames handed to the reader go first: reading past them would reorder events.
        if self.registry.callbacks or self._is_closed or self._handoff:
            return timeout
        if not self._read_lock.acquire(blocking=False):
            self._last_drive = time.monotonic()  # ask the reader to step aside next time
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._enable_slices()
            while not future.done() and not self._is_closed and not self.registry.callbacks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                if self._sliced and (remaining is None or remaining >= _SLICE_MS / 1000):
                    frame = self._frames.read_sliced()  # one slice at most
                    if frame is None:
                        continue
                    more = self._take_frame(frame, driver=True)
                else:
                    # Less than a slice left (or no slices): poll exactly the time left.
                    wait_ms = max(1, min(_SLICE_MS, int(remaining * 1000))) if remaining else _SLICE_MS
                    if not self._frames.buffered() and not self._waiter_poll.poll(wait_ms):
                        continue
                    more = self._read_one(driver=True)
                if not more:
                    self._unpark.set()
                    break  # EOF, or a frame handed to the reader: let it take over
        except EOFError:
            self.peer_lost()  # fail every future now: the parked reader may not look soon
            self._unpark.set()
        except (OSError, ValueError):
            self._unpark.set()  # closed under us: the reader thread reports it
        finally:
            self._last_drive = time.monotonic()
            self._read_lock.release()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _enable_slices(self) -> None:
        if not self._sliced and not self._is_closed:
            self._sliced = enable_read_slices(self._conn, _SLICE_MS / 1000)

    def _driving(self) -> bool:
        """A waiting thread reads now, or did within the last ``_LINGER`` seconds."""
        return self._read_lock.locked() or time.monotonic() - self._last_drive < _LINGER

    def _read_one(self, driver: bool = False) -> bool:
        """Read (waiting as long as it takes) and dispatch one message; ``False`` at EOF or
        once the channel is closed.

        A waiting thread (``driver``) that finds a callback listener registered hands the
        frame to the reader thread instead, and returns ``False`` to stop driving.
        """
        try:
            frame = self._recv()
        except (EOFError, OSError):
            if driver:
                self.peer_lost()  # fail every future now: the parked reader may not look soon
            return False
        return self._take_frame(frame, driver)

    def _recv(self) -> Frame:
        return self._frames.read()

    def _take_frame(self, frame: Frame, driver: bool) -> bool:
        """Dispatch a frame just read; see :meth:`_read_one`."""
        if self._is_closed:  # closed while we read: deliver nothing more
            return False
        if not self._handle_frame(frame, driver):
            self._handoff.append(bytes(frame))
            try:
                os.write(self._wake_w, b"!")
            except BlockingIOError:  # the pipe is full of wake-ups already
                pass
            return False
        return True

    def _handle_frame(self, frame: Frame, driver: bool = False) -> bool:
        """Decode and dispatch one frame; ``False`` (nothing done) when a waiting thread
        (``driver``) reads a frame that a callback listener wants: callbacks run on the
        reader thread only, so the caller hands the frame over."""
        try:
            event_type, body = split_frame(frame)
        except MalformedFrameError as exc:
            logger.warning("dropped a malformed message from process %s: %s", self.peer_pid, exc)
            return True
        targets = self.registry.targets(event_type)
        if driver and self.registry.callbacks:
            targets = tuple(targets)  # one snapshot decides, so no callback sneaks in later
            # Counted before a callback is published: zero now means none in the snapshot.
            if any(reg.kind != FUTURE for reg in targets):
                return False
        if not targets:  # an empty tuple: nobody listens, so do not even unpickle it
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("no listener for %r message from process %s", event_type, self.peer_pid)
            return True
        try:
            event = decode_body(event_type, body)
        except MessageDecodeError as err:
            logger.error("%s (from process %s)", err, self.peer_pid, exc_info=err)
            self._fail_futures(event_type, err)
            return True
        self._dispatch(event, targets)
        return True

    def _dispatch(self, event: CommEvent, targets: Iterable[Registration]) -> None:
        for reg in targets:
            if not reg.live:  # removed by an earlier listener of this same event
                continue
            if reg.kind == EVERY:
                self._call_listener(reg, event)
            elif self.registry.discard(reg):  # claim: fires at most once
                if reg.kind != FUTURE:
                    self._call_once(reg, event)
                    continue
                try:
                    reg.future.set_result(event)  # type: ignore[union-attr]
                except InvalidStateError:  # cancelled by its owner meanwhile
                    pass

    def _call_listener(self, reg: Registration, event: CommEvent) -> None:
        assert reg.callback is not None
        try:
            reg.callback(event, reg.remove)
        except Exception:
            logger.exception(
                "listener %r raised on a %r message; it was removed", reg.callback, event["type"]
            )
            self.registry.discard(reg)

    def _call_once(self, reg: Registration, event: CommEvent) -> None:
        assert reg.callback is not None
        try:
            reg.callback(event)
        except Exception:
            logger.exception("listen_once callback %r raised on a %r message", reg.callback, event["type"])

    def _fail_futures(self, event_type: str, err: BaseException) -> None:
        for reg in self.registry.futures_of(event_type):
            if self.registry.discard(reg):
                _fail(reg.future, err)

    # -- closing -----------------------------------------------------------------------

    def peer_lost(self) -> None:
        """The peer closed its end or died: close, with its exit code when we can learn it."""
        if self._is_closed:
            return
        exitcode = self._exitcode_hook(_EXIT_CODE_WAIT) if self._exitcode_hook else None
        if exitcode is None:
            message = f"channel closed: {self._peer_name} {self.peer_pid} closed its end or died"
        else:
            message = f"channel closed: {self._peer_name} {self.peer_pid} exited with code {exitcode}"
        self.close(message, exitcode)

    def close(self, message: str, exitcode: Optional[int] = None, *, keep_conn: bool = False) -> None:
        """Close the channel (idempotent): wake everyone, fail pending futures.

        ``keep_conn`` defers closing the ``Connection`` itself to :meth:`release_conn`
        (when no reader thread does it): a thread using the raw connection directly is
        woken by the shutdown and gets EOF, rather than finding its fd closed under it.
        """
        with self._state_lock:
            if self._is_closed:
                return
            self._close_message, self._close_exitcode = message, exitcode
            self._is_closed = True
            reader = self._reader
        self._shutdown()
        for reg in self.registry.close():
            if reg.kind == FUTURE:
                _fail(reg.future, self.closed_error())
        self._closed_event.set()
        self._unpark.set()
        if reader is None and not keep_conn:  # a reader closes it on its way out
            self._close_conn()

    def release_conn(self) -> None:
        """Close the connection after ``close(keep_conn=True)``, unless the reader will."""
        with self._state_lock:
            reader = self._reader
        if reader is None:
            self._close_conn()

    def _shutdown(self) -> None:
        if os.getpid() != self._owner_pid:
            return  # an inherited copy: shutting the socket down would cut the owner's channel
        with self._fd_lock:
            shutdown_socket(self._conn)

    def _close_conn(self) -> None:
        # Send lock: no frame is half-written. Fd lock: no shutdown() on a reused fd number.
        with self._send_lock, self._fd_lock:
            self._conn.close()

    def forget(self) -> None:
        """Close an inherited copy of the connection in a forked child (no locks: the
        parent's threads may have held them at fork time, and they do not exist here)."""
        self._conn.close()
        self._close_wake_pipe()

    def _close_wake_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def join_reader(self, timeout: float) -> None:
        """Wait (bounded) for the reader to finish; never joins the calling thread itself."""
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)

    @property
    def raw_connection(self) -> Connection:
        """The underlying connection (private: tests write malformed frames through it)."""
        return self._conn


def _drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _poller(conn: Connection) -> select.poll:
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return poller


def shutdown_socket(conn: Connection) -> None:
    """``shutdown(SHUT_RDWR)`` the socket under ``conn``: every holder of it, in any
    process, sees EOF. The caller must keep ``conn`` from being closed meanwhile."""
    if conn.closed:
        return
    try:
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already shut down by the peer, or not a socket
        pass


def _fail(future: Optional[Future[CommEvent]], err: BaseException) -> None:
    assert future is not None
    _settle(future.set_exception, err)


def _settle(setter: Callable[[Any], None], value: Any) -> None:
    try:
        setter(value)
    except InvalidStateError:  # cancelled by its owner meanwhile
        pass
