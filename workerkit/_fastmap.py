"""The pipelined driver behind ``WorkPool.map``: one thread, many children, no hand-offs.

``map`` owes its caller only ordered (or as-finished) results, the first error, and a lazy
read of the input. So instead of a dispatcher thread and one pool thread per worker, the
consuming thread itself drives every child::

    consumer thread (the map generator)
      feed: next(input) -> pickle -> send to the least-loaded child (up to DEPTH frames each)
      wait: multiprocessing.connection.wait(children) -> recv -> unpickle -> yield in order

Keeping DEPTH frames queued per child hides the round trip (the child starts the next item
while the parent reads the last result), and no thread ever wakes another. Frames larger
than ``_BIG_FRAME`` are sent only to an idle child, so a child blocked writing a large
result can never deadlock with a parent blocked writing a large item.

A child that dies fails the items queued on it with ``ChannelClosedError`` (its exit code);
``map`` raises the first error in input order, as it always does.
"""

from __future__ import annotations

import collections
import itertools
import pickle
import select
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ._function_child import (
    BATCH,
    BATCH_RESULT,
    BATCH_VALUES,
    CALL,
    ERROR,
    INIT_ERROR,
    READY,
    RESULT,
    tagged,
)
from .errors import ChannelClosedError, RemoteError, WorkerKitError

__all__ = ["pipelined_map"]

DEPTH = 4  # frames queued per child: enough to hide a round trip, small enough to stay lazy
# Bigger frames go only to idle children, and at most DEPTH - 1 small ones (48 KiB) wait
# in a busy child's socket buffer: the parent never blocks writing to a child that is
# itself blocked writing a large result (no write/write deadlock).
_BIG_FRAME = 1 << 14

Frame = Union[bytes, memoryview]

# A result slot: (ok, value or exception) for one item, or a whole chunk's list of those.
Result = Tuple[bool, Any]


class _Child:
    """One child process and the frames queued on it, oldest first."""

    def __init__(self, worker: Any):
        self.worker = worker
        self.conn = worker.channel.connection
        self.fd = self.conn.fileno()
        self.ready = False
        self.queued: Deque[int] = collections.deque()  # sequence numbers of frames in flight

    def fail_all(self) -> ChannelClosedError:
        """End the (dead) child and describe how it ended."""
        from .util import child_ended

        return child_ended(self.worker.channel, "the map worker")


class _Driver:
    """Feeds children from the input and files their results by sequence number."""

    def __init__(
        self, make_worker: Callable[[], Any], frames: Iterator[Any], max_workers: int, chunksize: int
    ):
        self.make_worker = make_worker
        self.frames = frames
        self.max_workers = max_workers
        self.chunksize = chunksize
        self.children: List[_Child] = []
        self.by_fd: Dict[int, _Child] = {}
        self.poller = select.poll()  # one poll object, reused: no per-wait allocations
        self.done: Dict[int, Any] = {}  # finished frames not yet yielded
        self.in_flight = 0
        self.held: Optional[Tuple[int, Frame, Optional[BaseException]]] = None
        self.exhausted = False
        self.source_error: Optional[BaseException] = None
        self.source_seq = -1
        # Bounds how far reading runs ahead of yielding (one slow item under ``ordered``).
        self.window = max(16, 4 * DEPTH * max_workers)

    def feed(self) -> None:
        """Send frames until the input ends, every child is full, or the window is."""
        while not self.exhausted and len(self.done) + self.in_flight < self.window:
            if self.held is None:
                self.held = next(self.frames, None)
                if self.held is None:
                    self.exhausted = True
                    return
            seq, frame, error = self.held
            if isinstance(error, _SourceFailed):
                self.source_error = error.error
                self.source_seq = seq
                self.exhausted = True
                self.held = None
                return
            if error is not None:
                self.done[seq] = _failed_frame(error, self.chunksize)
                self.held = None
                continue
            child = self._pick(len(frame))
            if child is None:
                return
            try:
                child.conn.send_bytes(frame)
            except OSError:
                self._lost(child)
                continue  # the frame is still held: it goes to another child
            child.queued.append(seq)
            self.in_flight += 1
            self.held = None

    def collect(self) -> None:
        """Wait for at least one frame from a busy child; file every frame that arrived."""
        for fd, _ in self.poller.poll():
            child = self.by_fd.get(fd)
            if child is not None:
                self._receive(child)

    def close(self) -> None:
        for child in self.children:
            child.worker.destroy()

    def _pick(self, size: int) -> Optional[_Child]:
        """The child to send a frame of ``size`` bytes to, or None if all are full."""
        best: Optional[_Child] = None
        for child in self.children:
            if best is None or len(child.queued) < len(best.queued):
                best = child
        if best is not None and not best.queued:
            return best
        if len(self.children) < self.max_workers:
            return self._spawn()
        limit = 1 if size > _BIG_FRAME else DEPTH
        if best is not None and len(best.queued) < limit:
            return best
        return None

    def _spawn(self) -> _Child:
        child = _Child(self.make_worker())
        self.children.append(child)
        self.by_fd[child.fd] = child
        self.poller.register(child.fd, select.POLLIN)
        return child

    def _forget(self, child: _Child) -> None:
        self.children.remove(child)
        del self.by_fd[child.fd]
        self.poller.unregister(child.fd)

    def _lost(self, child: _Child) -> None:
        """The child died: fail what was queued on it and stop using it."""
        self._forget(child)
        self._fail_queued(child, child.fail_all())

    def _fail_queued(self, child: _Child, error: BaseException) -> None:
        while child.queued:
            self.done[child.queued.popleft()] = _failed_frame(error, self.chunksize)
            self.in_flight -= 1

    def _receive(self, child: _Child) -> None:
        """Read one frame from ``child`` and file its result under its sequence number."""
        try:
            frame = child.conn.recv_bytes()
        except (EOFError, OSError):
            self._lost(child)
            return
        tag = frame[:1]
        if not child.ready:
            if tag == READY:
                child.ready = True
                return
            if tag == INIT_ERROR:
                message, kind, trace = pickle.loads(memoryview(frame)[1:])
                self._forget(child)
                error = RemoteError("the initializer failed in the child: " + message, kind, trace)
                self._fail_queued(child, error)
                child.worker.destroy()
                return
        seq = child.queued.popleft()
        self.in_flight -= 1
        self.done[seq] = _decode(tag, frame, self.chunksize)


def pipelined_map(
    make_worker: Callable[[], Any],
    iterable: Iterable[Any],
    *,
    max_workers: int,
    ordered: bool,
    chunksize: int,
) -> Iterator[Any]:
    """Yield ``fn(item)`` for each item (``make_worker`` makes function workers)."""
    driver = _Driver(make_worker, _frames(iterable, chunksize), max_workers, chunksize)
    done = driver.done
    wanted = 0  # the next frame sequence number to yield (ordered mode)
    try:
        while True:
            driver.feed()
            if ordered:
                while wanted in done:
                    yield from _values(done.pop(wanted))
                    wanted += 1
            else:
                for seq in sorted(done):
                    yield from _values(done.pop(seq))
            if driver.in_flight:
                driver.collect()
            elif driver.exhausted and not done:
                if driver.source_error is not None:
                    raise driver.source_error
                return
    finally:
        driver.close()


def _decode(tag: bytes, frame: bytes, chunksize: int) -> Any:
    """The result stored for one reply frame."""
    if tag == RESULT:
        try:
            return (True, pickle.loads(memoryview(frame)[1:]))
        except Exception as exc:  # the result could not be unpickled here
            return (False, exc)
    if tag == BATCH_VALUES:
        return _Values(pickle.loads(memoryview(frame)[1:]))
    if tag == BATCH_RESULT:
        results = pickle.loads(memoryview(frame)[1:])
        return [(ok, value if ok else RemoteError(*value)) for ok, value in results]
    if tag == ERROR:
        message, kind, trace = pickle.loads(memoryview(frame)[1:])
        return _failed_frame(RemoteError(message, kind, trace), chunksize)
    return _failed_frame(WorkerKitError(f"unexpected frame from a map worker: {frame[:20]!r}"), chunksize)


class _SourceFailed(Exception):
    """The input itself raised: map re-raises it after the items before it."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _frames(iterable: Iterable[Any], chunksize: int) -> Iterator[Tuple[int, Frame, Optional[BaseException]]]:
    """``(sequence number, request frame, error)`` for each item or chunk, lazily."""
    iterator = iter(iterable)
    for seq in itertools.count():
        try:
            if chunksize == 1:
                try:
                    payload: Any = next(iterator)
                except StopIteration:
                    return
            else:
                payload = list(itertools.islice(iterator, chunksize))
                if not payload:
                    return
        except Exception as exc:  # the source broke: raised in its place, after earlier items
            yield seq, b"", _SourceFailed(exc)
            return
        tag = CALL if chunksize == 1 else BATCH
        try:
            yield seq, tagged(tag, payload), None
        except Exception as exc:  # an unpicklable item fails in its place, in order
            yield seq, b"", exc


def _failed_frame(error: BaseException, chunksize: int) -> Any:
    """A failed result in the shape ``_unpack`` expects (chunks fail as a whole)."""
    return [(False, error)] if chunksize > 1 else (False, error)


class _Values(list):  # type: ignore[type-arg]
    """A chunk whose items all succeeded: plain values, no per-item status."""


def _values(result: Any) -> Iterable[Any]:
    """The value(s) of one frame's result: an all-ok chunk as is (``yield from`` a list runs
    in C, without a generator per item), else a generator raising the first error."""
    return result if type(result) is _Values else _unpack(result)


def _unpack(result: Any) -> Iterator[Any]:
    """Yield the value(s) of one frame's result; raise the first error."""
    items = result if isinstance(result, list) else [result]
    for ok, value in items:
        if not ok:
            raise value
        yield value
