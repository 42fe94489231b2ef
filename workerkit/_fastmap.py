"""The pipelined driver behind ``WorkPool.map``: one thread, many children, no hand-offs.

``map`` owes its caller only ordered (or as-finished) results, the first error, and a lazy
read of the input. So instead of a dispatcher thread and one pool thread per worker, the
consuming thread itself drives every child::

    consumer thread (the map generator)
      feed: next(input) -> pickle -> send to the least-loaded child (up to DEPTH frames each)
      wait: poll(children) -> recv -> unpickle -> yield in order

Keeping DEPTH frames queued per child hides the round trip (the child starts the next item
while the parent reads the last result), and no thread ever wakes another. The parent never
blocks writing: frames go out with non-blocking sends, and what a full socket buffer does
not take waits in the child's outbox until ``poll`` says the child can take more. So a
child blocked writing a large result can never deadlock with a parent writing a large
item, and large chunks stay pipelined like small items. (Where the connection is not a
socket, large frames go only to an idle child instead.)

A child that dies fails the items queued on it with ``ChannelClosedError`` (its exit code),
except those whose results it sent before it died; ``map`` raises the first error in input
order, as it always does.
"""

from __future__ import annotations

import collections
import itertools
import pickle
import select
import types
from typing import (
    Any,
    Callable,
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    Optional,
    Tuple,
    cast,
)

from ._function_child import (
    BATCH,
    CALL,
    ERROR,
    INIT_ERROR,
    READY,
    RESULT,
    batch_results,
    merge_results,
    pickled,
    remote_error,
    split_unpicklable,
)
from ._map_child import BIG_FRAME, MapChild, Request
from ._run import AllOk, as_pairs
from .errors import WorkerKitError

__all__ = ["pipelined_map"]

DEPTH = 4  # frames queued per child: enough to hide a round trip, small enough to stay lazy
# Without non-blocking sends (the connection is not a socket), bigger frames go only to
# idle children, and at most DEPTH - 1 small ones (48 KiB) wait in a busy child's socket
# buffer: the parent never blocks writing to a child that is itself blocked writing a
# large result (no write/write deadlock).

# A result slot: (ok, value or exception) for one item, or a whole chunk's list of those.
Result = Tuple[bool, Any]


class _Driver:
    """Feeds children from the input and files their results by sequence number."""

    def __init__(
        self, make_worker: Callable[[], Any], frames: Iterator[Any], max_workers: int, chunksize: int
    ):
        self.make_worker = make_worker
        self.frames = frames
        self.max_workers = max_workers
        self.chunksize = chunksize
        self.children: List[MapChild] = []
        self.by_fd: Dict[int, MapChild] = {}
        self.poller = select.poll()  # one poll object, reused: no per-wait allocations
        self.done: Dict[int, Any] = {}  # finished frames not yet yielded
        self.patches: Dict[int, _Unpicklable] = {}  # chunks sent without their unpicklable items
        self.in_flight = 0
        self.held: Optional[Tuple[int, Request, Optional[BaseException]]] = None
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
            seq, request, error = self.held
            if isinstance(error, _SourceFailed):
                self.source_error = error.error
                self.source_seq = seq
                self.exhausted = True
                self.held = None
                return
            if isinstance(error, _Unpicklable) and error.good:
                self.patches[seq] = error  # send the good items; merge when they return
            elif error is not None:  # nothing to send: the item (or every item) failed
                if isinstance(error, _Unpicklable):
                    self.done[seq] = error.merge([])
                else:
                    self.done[seq] = _failed_frame(error, self.chunksize)
                self.held = None
                continue
            child = self._pick(len(request[1]))
            if child is None:
                return
            try:
                child.send(request)
            except OSError:
                self._lost(child)
                continue  # the frame is still held: it goes to another child
            child.queued.append(seq)
            self.in_flight += 1
            self.held = None
            self._watch(child)

    def collect(self) -> None:
        """Wait for at least one frame from a busy child; file every frame that arrived."""
        for fd, events in self.poller.poll():
            child = self.by_fd.get(fd)
            if child is None:
                continue
            if events & _READABLE:
                self._receive(child)
            if child.outbox and events & select.POLLOUT and fd in self.by_fd:
                try:
                    child.flush()
                except OSError:
                    self._lost(child)
                    continue
            self._watch(child)

    def close(self) -> None:
        for child in self.children:
            child.close()
            child.worker.destroy()

    def _pick(self, size: int) -> Optional[MapChild]:
        """The child to send a frame of ``size`` bytes to, or None if all are full."""
        best: Optional[MapChild] = None
        for child in self.children:
            if best is None or len(child.queued) < len(best.queued):
                best = child
        if best is not None and not best.queued:
            return best
        if len(self.children) < self.max_workers:
            return self._spawn()
        limit = 1 if size > BIG_FRAME and best is not None and best.sock is None else DEPTH
        if best is not None and len(best.queued) < limit:
            return best
        return None

    def _spawn(self) -> MapChild:
        child = MapChild(self.make_worker())
        self.children.append(child)
        self.by_fd[child.fd] = child
        self.poller.register(child.fd, _READABLE)
        return child

    def _watch(self, child: MapChild) -> None:
        """Poll ``child`` for writability too while its outbox holds bytes."""
        want = bool(child.outbox)
        if want != child.polling_out and child.fd in self.by_fd:
            self.poller.modify(child.fd, _READABLE | select.POLLOUT if want else _READABLE)
            child.polling_out = want

    def _forget(self, child: MapChild) -> None:
        if self.by_fd.get(child.fd) is not child:
            return  # already forgotten
        self.children.remove(child)
        del self.by_fd[child.fd]
        self.poller.unregister(child.fd)
        child.close()

    def _lost(self, child: MapChild) -> None:
        """The child died: keep the results it sent before, fail the rest of what was queued
        on it, and stop using it."""
        self._forget(child)
        self._salvage(child)
        self._fail_queued(child, child.fail_all())

    def _salvage(self, child: MapChild) -> None:
        """File the whole frames a dead child wrote before it ended."""
        try:
            while child.queued and child.conn.poll(0):
                self._file(child, child.conn.recv_bytes())
        except (EOFError, OSError):
            pass  # the rest of the stream is gone with the child

    def _fail_queued(self, child: MapChild, error: BaseException) -> None:
        while child.queued:
            seq = child.queued.popleft()
            self.patches.pop(seq, None)
            self.done[seq] = _failed_frame(error, self.chunksize)
            self.in_flight -= 1

    def _receive(self, child: MapChild) -> None:
        """Read one frame from ``child`` and file its result under its sequence number."""
        try:
            frame = child.conn.recv_bytes()
        except (EOFError, OSError):
            self._lost(child)
            return
        self._file(child, frame)

    def _file(self, child: MapChild, frame: bytes) -> None:
        """Handle one frame from ``child``: its ready signal, or the result of its oldest
        queued frame."""
        tag = frame[:1]
        if not child.ready:
            if tag == READY:
                child.ready = True
                return
            if tag == INIT_ERROR:
                self._forget(child)
                error = remote_error(frame, "the initializer failed in the child: ")
                self._fail_queued(child, error)
                child.worker.destroy()
                return
        seq = child.queued.popleft()
        self.in_flight -= 1
        result = _decode(tag, frame, self.chunksize)
        patch = self.patches.pop(seq, None)
        self.done[seq] = result if patch is None else patch.merge(result)


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
    if chunksize == 1:
        return _frame_results(driver, ordered, single=True)
    return _chunk_values(_frame_results(driver, ordered, single=False))


def _frame_results(driver: _Driver, ordered: bool, single: bool) -> Generator[Any, None, None]:
    """Each frame's result (see ``_decode``), in input order when ``ordered``; for one-item
    frames (``single``) the values themselves, raising the first error."""
    done = driver.done
    wanted = 0  # the next frame sequence number to yield (ordered mode)
    try:
        while True:
            driver.feed()
            if ordered:
                ready = []
                while wanted in done:
                    ready.append(done.pop(wanted))
                    wanted += 1
            else:
                ready = [done.pop(seq) for seq in sorted(done)]
            for result in ready:
                if not single:
                    yield result
                elif result[0]:
                    yield result[1]
                else:
                    raise result[1]
            if driver.in_flight:
                driver.collect()
            elif driver.exhausted and not done:
                if driver.source_error is not None:
                    raise driver.source_error
                return
    finally:
        driver.close()


class _ChunkValues(itertools.chain):  # type: ignore[type-arg]
    """The values of chunk frames, item by item. A chain: an all-ok chunk's values come
    straight from its list in C, and the driver runs again only when a chunk is used up."""

    frames: Generator[Any, None, None]
    current: List[Iterator[Any]]  # the chunk being read: one cell, set as each chunk starts

    def close(self) -> None:
        """Stop early, as closing a generator would: end the children now, yield no more."""
        self.frames.close()
        rest = self.current[0]
        if isinstance(rest, types.GeneratorType):
            rest.close()
        else:
            collections.deque(rest, maxlen=0)


def _chunk_values(frames: Generator[Any, None, None]) -> Iterator[Any]:
    current: List[Iterator[Any]] = [iter(())]

    def unpack(result: Any) -> Iterator[Any]:
        """A chunk with a failed item: its values, then the error; after that the map is
        over (a chain would go on to the next chunk), so the children end here."""
        try:
            yield from _unpack(result)
        except BaseException:
            frames.close()
            raise

    def start(result: Any) -> Iterator[Any]:
        current[0] = chunk = iter(result) if type(result) is AllOk else unpack(result)
        return chunk

    values = cast(_ChunkValues, _ChunkValues.from_iterable(map(start, frames)))
    values.frames, values.current = frames, current
    return values


_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL


def _decode(tag: bytes, frame: bytes, chunksize: int) -> Any:
    """The result stored for one reply frame."""
    if tag == RESULT:
        try:
            return (True, pickle.loads(memoryview(frame)[1:]))
        except Exception as exc:  # the result could not be unpickled here
            return (False, exc)
    if tag == ERROR:
        return _failed_frame(remote_error(frame), chunksize)
    results = batch_results(frame)
    if results is not None:
        return results
    return _failed_frame(WorkerKitError(f"unexpected frame from a map worker: {frame[:20]!r}"), chunksize)


class _Unpicklable(Exception):
    """A chunk with items that cannot be pickled: only ``good`` is sent; the others fail
    with their own errors, at their own positions."""

    def __init__(self, good: List[Any], errors: Dict[int, BaseException]):
        super().__init__("unpicklable items in a chunk")
        self.good = good
        self.errors = errors
        self.count = len(good) + len(errors)

    def merge(self, result: Any) -> Any:
        """The whole chunk's result, given the result of its good items."""
        if len(result) != len(self.good):  # the frame failed as a whole: so does the chunk
            return result
        return merge_results(as_pairs(result), self.errors, self.count)


class _SourceFailed(Exception):
    """The input itself raised: map re-raises it after the items before it."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _frames(
    iterable: Iterable[Any], chunksize: int
) -> Iterator[Tuple[int, Request, Optional[BaseException]]]:
    """``(sequence number, request, error)`` for each item or chunk, lazily."""
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
            yield seq, (b"", b""), _SourceFailed(exc)
            return
        tag = CALL if chunksize == 1 else BATCH
        try:
            body = pickled(payload)
        except Exception as exc:  # an unpicklable item fails in its place, in order
            if chunksize == 1:
                yield seq, (tag, b""), exc
                continue
            good, errors = split_unpicklable(payload, exc)
            yield seq, (tag, pickled(good) if good else b""), _Unpicklable(good, errors)
            continue
        yield seq, (tag, body), None


def _failed_frame(error: BaseException, chunksize: int) -> Any:
    """A failed result in the shape ``_unpack`` expects (chunks fail as a whole)."""
    return [(False, error)] if chunksize > 1 else (False, error)



def _unpack(result: Any) -> Iterator[Any]:
    """Yield the value(s) of one frame's result; raise the first error."""
    items = result if isinstance(result, list) else [result]
    for ok, value in items:
        if not ok:
            raise value
        yield value
