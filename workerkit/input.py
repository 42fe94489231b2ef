"""Input sources: where a pool pulls its items from.

A pool never receives a list of work up front. It asks a *source*, one item at a time, and
only when a worker is free to take that item::

    pool thread:  has_next()  ->  wait for a free worker  ->  next()  ->  worker.execute(item)

Pulling lazily is what lets a pool process an endless generator, a huge file or an event
feed without piling items up in memory: at most one item is read ahead of a free worker.

This module holds:

* :class:`InputSource` - the two-method protocol a pool drives (``has_next``/``next``).
* :class:`IterableInputSource` - adapts any iterable or iterator to that protocol, buffering
  at most the single item ``has_next()`` had to read to give its answer.
* :class:`DynamicIterator` - a thread-safe, blocking iterator fed by hand (``add``,
  ``extend``, ``close``), for event-driven work where items arrive while the pool runs.
* :func:`as_input_source` - what a pool calls on whatever it was given.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import (
    Any,
    Deque,
    Generic,
    Iterable,
    Iterator,
    List,
    Optional,
    Protocol,
    Tuple,
    TypeVar,
    Union,
    cast,
    runtime_checkable,
)

X = TypeVar("X")
X_co = TypeVar("X_co", covariant=True)

__all__ = ["InputSource", "IterableInputSource", "DynamicIterator", "as_input_source"]


@runtime_checkable
class InputSource(Protocol[X_co]):
    """A pull-based supply of items, driven by a pool from a single thread.

    ``has_next()`` may block until it knows whether another item will come (for example
    while waiting on a :class:`DynamicIterator`); ``next()`` returns that item. A pool always
    calls ``has_next()`` first, so ``next()`` is only asked for an item known to exist.
    """

    def has_next(self) -> bool:
        """Return whether :meth:`next` will produce another item, blocking until known."""
        ...

    def next(self) -> X_co:
        """Return the next item."""
        ...


# Marks "no item buffered". A private object rather than None, so None stays a valid item.
_NOTHING: object = object()
_CLOSED: object = object()  # "closed and empty", from DynamicIterator._take_nowait

# Iterators of the built-in collections: their next() computes nothing and never waits.
_EMPTIES: Tuple[Iterable[object], ...] = (
    [], (), range(0), range(2**64), "", b"", bytearray(), {}, {}.values(), {}.items(), set(),
    frozenset(), deque(), reversed([]), reversed(deque()),
)
_NEVER_WAIT = frozenset(type(iter(empty)) for empty in _EMPTIES)


class IterableInputSource(Generic[X]):
    """An :class:`InputSource` over any iterable or iterator, pulled lazily.

    ``has_next()`` reads at most one item ahead and keeps it until ``next()`` hands it out,
    so a pool never holds more of the underlying iterable than it is about to use. Once the
    iterator is exhausted it is never advanced again. Exceptions raised by the iterator
    propagate unchanged from whichever of ``has_next()``/``next()`` advanced it.

    Not thread-safe: like every source, it is driven from one thread.
    """

    def __init__(self, iterable: Iterable[X]) -> None:
        try:
            self._iterator: Iterator[X] = iter(iterable)
        except TypeError as exc:
            raise TypeError(
                f"IterableInputSource needs an iterable or iterator, got "
                f"{type(iterable).__name__}: pass a list, a generator, a DynamicIterator "
                f"or any object with __iter__()"
            ) from exc
        self._buffered: object = _NOTHING
        self._exhausted = False
        self._never_waits = type(self._iterator) in _NEVER_WAIT

    def has_next(self) -> bool:
        """Return whether another item exists, reading (and buffering) at most one item."""
        if self._buffered is not _NOTHING:
            return True
        if self._exhausted:
            # Never call next() on a finished iterator again: some are not idempotent there.
            return False
        try:
            self._buffered = next(self._iterator)
        except StopIteration:
            self._exhausted = True
            return False
        return True

    def next(self) -> X:
        """Return the next item, blocking for it if needed; raise StopIteration when done."""
        if not self.has_next():
            raise StopIteration
        item = self._buffered
        self._buffered = _NOTHING
        return cast(X, item)

    def _poll(self) -> Optional[bool]:
        """``has_next()`` when it can answer without waiting, else None.

        A pool thread that just finished an item uses this to take the next one itself. Only
        iterators that cannot wait are asked: those of the built-in collections, and a
        :class:`DynamicIterator` with an item queued (or closed). A generator is never asked
        here: it may wait for an event, and a worker must not wait with it.
        """
        if self._buffered is not _NOTHING:
            return True
        if self._exhausted:
            return False
        if self._never_waits:
            return self.has_next()
        iterator = self._iterator
        if not isinstance(iterator, DynamicIterator):
            return None
        if type(iterator).__next__ is not DynamicIterator.__next__:
            return None  # a subclass with its own __next__ is iterated through it, by the dispatcher
        item = iterator._take_nowait()
        if item is _NOTHING:
            return None
        if item is _CLOSED:
            self._exhausted = True
            return False
        self._buffered = item
        return True

    def _next_ready(self) -> Any:
        """The next item, or ``_NOTHING`` once exhausted: ``has_next()`` and ``next()`` in
        one call, for iterators that never wait (a pool thread pulls this way per item)."""
        item = self._buffered
        if item is not _NOTHING:
            self._buffered = _NOTHING
            return item
        if self._exhausted:
            return _NOTHING
        try:
            return next(self._iterator)
        except StopIteration:
            self._exhausted = True
            return _NOTHING

    def _take_ready(self, count: int, into: List[X]) -> bool:
        """Move up to ``count`` items into ``into`` at once (for a chunk; only iterators that
        never wait); False once the source is exhausted. If the iterator raises, the items
        taken before stay in ``into``."""
        if self._buffered is not _NOTHING and count > 0:
            into.append(cast(X, self._buffered))
            self._buffered = _NOTHING
            count -= 1
        if self._exhausted:
            return False
        before = len(into)
        into.extend(itertools.islice(self._iterator, count))
        if len(into) - before < count:
            self._exhausted = True
            return False
        return True

    def _fed_by_hand(self) -> bool:
        """Whether items come from a :class:`DynamicIterator` (a producer, maybe slow)."""
        return isinstance(self._iterator, DynamicIterator)

    def give_back(self) -> None:
        """Return an item read ahead by ``has_next()`` to where it came from, when possible.

        The pool calls this when it stops between ``has_next()`` and ``next()``. A
        :class:`DynamicIterator` takes the item back at its front; for other iterators the
        item stays buffered here, so a later ``process(this_source)`` still gets it.
        """
        if self._buffered is _NOTHING or not isinstance(self._iterator, DynamicIterator):
            return
        item, self._buffered = self._buffered, _NOTHING
        self._iterator.push_front(item)

    def __repr__(self) -> str:
        state = "exhausted" if self._exhausted else "open"
        return f"<IterableInputSource over {self._iterator!r} ({state})>"


class DynamicIterator(Generic[X]):
    """A thread-safe, blocking iterator that producers feed by hand.

    Producers call :meth:`add`/:meth:`extend` and finally :meth:`close`; consumers iterate.
    ``__next__`` blocks until an item is available and raises StopIteration once the
    iterator is closed and every queued item has been taken. Each added item is yielded
    exactly once, whatever the number of producer and consumer threads.

    With ``maxsize > 0`` the queue is bounded: a producer adding to a full queue blocks
    until a consumer takes an item (back-pressure), and fails with ValueError if the
    iterator is closed meanwhile. ``maxsize == 0`` (the default) means unbounded.
    """

    def __init__(self, *, maxsize: int = 0) -> None:
        if maxsize < 0:
            raise ValueError(f"DynamicIterator maxsize must be >= 0 (0 = unbounded), got {maxsize}")
        self._maxsize = maxsize
        self._items: Deque[X] = deque()
        self._closed = False
        # One lock guards _items and _closed; both conditions share it so that a producer
        # and a consumer can never both see a stale view of the queue between check and wait.
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (queued items may still be waiting)."""
        return self._closed

    @property
    def maxsize(self) -> int:
        """The bound on queued items; 0 means unbounded."""
        return self._maxsize

    def __len__(self) -> int:
        """Number of items queued right now, not yet taken by a consumer."""
        with self._lock:
            return len(self._items)

    def add(self, item: X, *, first: bool = False) -> None:
        """Queue ``item`` (at the front when ``first``), blocking while the queue is full.

        Raises ValueError if the iterator is closed, before or while waiting for room.
        """
        with self._not_full:
            self._wait_for_room()
            if first:
                self._items.appendleft(item)
            else:
                self._items.append(item)
            # All: a pool's dispatcher may be waiting too (_wait_for_item), without taking.
            self._not_empty.notify_all()

    def _take_nowait(self) -> object:
        """The next item if one is queued; ``_CLOSED`` once closed and empty; else
        ``_NOTHING``. Never blocks."""
        with self._lock:
            if self._items:
                item = self._items.popleft()
                self._not_full.notify()
                return item
            return _CLOSED if self._closed else _NOTHING

    def _wait_for_item(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds until an item is queued or the iterator is
        closed; return whether either is the case. Takes nothing: a pool's dispatcher
        waits here in slices, so it can give up when its call stops."""
        with self._not_empty:
            if not self._items and not self._closed:
                self._not_empty.wait(timeout)
            return bool(self._items) or self._closed

    def push_front(self, item: X) -> None:
        """Put an item back at the front, even after ``close()`` (it was taken, not added)."""
        with self._lock:
            self._items.appendleft(item)
            self._not_empty.notify_all()

    def extend(self, items: Iterable[X]) -> None:
        """Queue every item of ``items`` in order.

        Unbounded: the items are gathered outside the lock and queued all at once, so
        either all are queued or (when closed) none. Bounded: they are queued one by one,
        blocking for room as needed; if the iterator is closed midway, the items queued
        so far stay queued and ValueError is raised.
        """
        if self._maxsize > 0:
            for item in items:
                self.add(item)
            return
        batch = list(items)  # Run the caller's iterable outside our lock.
        with self._lock:
            self._raise_if_closed()
            self._items.extend(batch)
            self._not_empty.notify_all()

    def close(self) -> None:
        """Declare that no more items will come. Idempotent.

        Queued items are still delivered. Every consumer blocked in ``__next__`` is woken
        (to take a remaining item or stop), and every producer blocked on a full queue
        is woken to fail with ValueError.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # notify_all: a single notify would leave the other blocked threads hanging.
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def __iter__(self) -> DynamicIterator[X]:
        return self

    def __next__(self) -> X:
        """Take the next item, blocking until one is queued or the iterator is closed."""
        with self._not_empty:
            while not self._items:
                if self._closed:
                    raise StopIteration
                self._not_empty.wait()
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        bound = f", maxsize={self._maxsize}" if self._maxsize else ""
        return f"<DynamicIterator {state}, {len(self)} queued{bound}>"

    def _wait_for_room(self) -> None:
        """Block until an item fits; the caller holds the lock."""
        while True:
            self._raise_if_closed()
            if self._maxsize <= 0 or len(self._items) < self._maxsize:
                return
            self._not_full.wait()

    def _raise_if_closed(self) -> None:
        """Refuse new items after close(); the caller holds the lock."""
        if self._closed:
            raise ValueError("DynamicIterator is closed: no items can be added after close()")


def as_input_source(obj: Union[InputSource[X], Iterable[X]]) -> InputSource[X]:
    """Return ``obj`` as an :class:`InputSource`, the way a pool accepts its input.

    An object with callable ``has_next`` and ``next`` is used as is; any other iterable
    (including a ``str``, which is iterable) is wrapped in :class:`IterableInputSource`.
    """
    if callable(getattr(obj, "has_next", None)) and callable(getattr(obj, "next", None)):
        return cast(InputSource[X], obj)
    try:
        iterator = iter(cast(Iterable[X], obj))
    except TypeError as exc:
        raise TypeError(
            f"process() needs an InputSource or an iterable, got {type(obj).__name__}: "
            f"pass a list, a generator, a DynamicIterator or an object with has_next()/next()"
        ) from exc
    return IterableInputSource(iterator)
