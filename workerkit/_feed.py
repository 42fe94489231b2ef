"""A call's source, shared by its dispatcher and by the slots that pull for themselves.

A slot that has just finished an item is itself the free worker the contract asks for, so
it may take the call's next item on its own thread (``has_next()``, then ``next()``) instead
of going idle and waiting for the dispatcher to hand it one. That saves two thread
hand-offs per item, which are most of a small item's cost. Every pull, by the dispatcher or
a slot, happens under the feed's lock, so the source is still driven by one thread at a
time and indexes follow the source's order.

A slot only pulls when it can do so without waiting: the lock is free, the stream's
consumer has credit left, and the source can answer at once (a built-in collection, or a
:class:`DynamicIterator` with an item queued; see ``IterableInputSource._poll``). Otherwise
it goes idle and the dispatcher pulls, exactly as before. Generators and custom
``InputSource`` objects are always pulled by the dispatcher: they may wait for an event,
and a worker (which an idle timeout or another call may need) must not wait with them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Generic, List, Optional, TypeVar

from ._credits import Credits
from ._slot import Job
from .input import _NOTHING as NOTHING
from .input import DynamicIterator, InputSource, IterableInputSource

X = TypeVar("X")

__all__ = ["Feed"]


class Feed(Generic[X]):
    """The pulling state of one call; fields are guarded by ``lock``."""

    def __init__(
        self, src: InputSource[X], credits: Optional[Credits], slot_first: bool,
        chunksize: int = 1,
    ) -> None:
        self.src = src
        self.chunksize = chunksize
        self.lock = threading.Lock()
        self.credits = credits
        self.slot_first = slot_first
        self.exhausted = False  # has_next() said False: no one asks again
        self.closed = False  # the dispatcher stopped: no one pulls again for this call
        self.error: Optional[BaseException] = None  # raised by the source on a slot's pull
        self._poll: Optional[Callable[[], Optional[bool]]] = (
            src._poll if isinstance(src, IterableInputSource) else None
        )
        self._fed_by_hand = isinstance(src, IterableInputSource) and src._fed_by_hand()
        # A chunk from a built-in collection is taken in one step, not item by item; and one
        # item (no chunks) in one call. Not past a subclass's own has_next()/next(): those
        # are always called.
        plain = (
            isinstance(src, IterableInputSource) and src._never_waits
            and type(src).has_next is IterableInputSource.has_next
            and type(src).next is IterableInputSource.next
        )
        # A plain DynamicIterator: the dispatcher waits for its next item in slices (so a
        # call that stops, or a pool shut down, never stays blocked in has_next()).
        self.wait_for_item: Optional[Callable[[float], bool]] = None
        if isinstance(src, IterableInputSource) and type(src).has_next is IterableInputSource.has_next:
            if type(src._iterator) is DynamicIterator:
                self.wait_for_item = self._wait_for_hand_fed_item
        self._take_ready: Optional[Callable[[int, List[Any]], bool]] = None
        self._next_ready: Optional[Callable[[], Any]] = None
        if plain and isinstance(src, IterableInputSource):
            self._take_ready = src._take_ready
            if chunksize == 1:
                self._next_ready = src._next_ready

    def _wait_for_hand_fed_item(self, timeout: float) -> bool:
        """Whether the source (over a DynamicIterator) has an item to hand out, or ended,
        waiting at most ``timeout`` seconds for one."""
        src = self.src
        assert isinstance(src, IterableInputSource) and isinstance(src._iterator, DynamicIterator)
        return src._buffered is not NOTHING or src._iterator._wait_for_item(timeout)

    def has_next_now(self) -> Optional[bool]:
        """``has_next()`` without waiting (a source over a DynamicIterator): None when
        nothing is queued right now."""
        assert self._poll is not None
        return self._poll()

    def try_pull(self, run: Any, limit: int = 0) -> Optional[Job]:
        """The next item as a job for a slot that just became free; None if that would wait.
        ``limit`` (if > 0) caps the chunk: the items the slot's worker may still serve.

        An error of the source is kept in ``error`` and stops the call; the dispatcher
        re-raises it once the items in flight have finished.
        """
        poll = self._poll
        if poll is None or not self.lock.acquire(blocking=False):
            return None
        try:
            if self.closed or self.exhausted or run.stopping:
                return None
            credits = self.credits
            if credits is not None and not credits.take(1):
                return None
            next_ready = self._next_ready
            if next_ready is not None:
                try:
                    item = next_ready()
                except Exception as exc:  # the source's error; Ctrl-C and co. propagate
                    if self.error is None:
                        self.error = exc
                    run.stopping = True
                    item = NOTHING
                else:
                    if item is NOTHING:
                        self.exhausted = True
                if item is not NOTHING:
                    return Job(run.submit(), item, run)
                if credits is not None:
                    credits.release()
                return None
            try:
                more = poll()
                if more:
                    if not run.stopping:  # else the read-ahead stays buffered for give_back
                        return self.make_job(run, self.src.next(), may_wait=False, limit=limit)
                elif more is not None:
                    self.exhausted = True
            except Exception as exc:  # the source's error; Ctrl-C and co. propagate
                if self.error is None:
                    self.error = exc
                run.stopping = True
            if credits is not None:
                credits.release()
            return None
        finally:
            self.lock.release()

    def make_job(self, run: Any, item: X, *, may_wait: bool, limit: int = 0) -> Job:
        """The job for ``item``, just pulled; under the lock.

        With ``chunksize`` > 1 the items that follow join it, up to a chunk: those the
        source has ready, and (``may_wait``, the dispatcher) those it may wait for. An error
        of the source while filling keeps the items pulled so far and stops the call.
        ``limit`` (if > 0) caps the chunk, as for :meth:`try_pull`.
        """
        size = self.chunksize if limit <= 0 else min(self.chunksize, limit)
        if size == 1:
            return Job(run.submit(), item, run)
        items = [item]
        more: Callable[[], Optional[bool]] = self.src.has_next
        if self._poll is not None and (not may_wait or self._fed_by_hand):
            more = self._poll  # never wait for a producer to fill a chunk
        credits = self.credits  # one per item: a stream's consumer returns one per outcome
        # The chunk's other items: as many as the stream's consumer has credit for.
        room = size - 1 if credits is None else credits.take(size - 1)
        try:
            if self._take_ready is not None and not run.stopping:
                self.exhausted = not self._take_ready(room, items)
            else:
                while len(items) <= room and not run.stopping:
                    ready = more()
                    if not ready:
                        self.exhausted = ready is not None
                        break
                    items.append(self.src.next())
        except Exception as exc:  # the source's error; Ctrl-C and co. propagate (the call ends)
            if self.error is None:
                self.error = exc
            run.stopping = True
        if credits is not None and len(items) <= room:
            credits.release(room + 1 - len(items))  # taken and not used
        return Job(run.submit(len(items)), items, run, items)

    def close(self) -> None:
        """No more pulls for this call; a read-ahead item goes back to its source."""
        with self.lock:
            self.closed = True
            if isinstance(self.src, IterableInputSource):
                self.src.give_back()  # stopped between has_next() and next(): nothing is lost
