"""The listener registry of one connection: who wants which events, in what order.

Registrations live in copy-on-write tuples: one per event type (``listen_for`` and
``listen_once``) plus one catch-all tuple (``listen``). Writers replace a tuple under the
lock; the reader thread takes the current tuples WITHOUT the lock, so dispatching a
message costs one dict lookup and no lock. Every registration carries a sequence number;
when an event has both typed and catch-all listeners the two tuples are merged by it, so
listeners run in registration order whatever their kind.

"At most once" registrations (``listen_once``) are claimed with :meth:`discard`, which
returns ``True`` for exactly one caller, so a callback or future fires at most once even
if the channel closes or the listener is removed at the same moment.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from concurrent.futures import Future
from operator import attrgetter
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ._framing import CommEvent

__all__ = [
    "EVERY",
    "ONCE",
    "FUTURE",
    "Remover",
    "Handler",
    "OnceCallback",
    "Registration",
    "ListenerRegistry",
]

EVERY = 0  # listen / listen_for: callback(event, remove), until removed
ONCE = 1  # listen_once(type, callback): callback(event), at most once
FUTURE = 2  # listen_once(type): resolves a Future, at most once

Remover = Callable[[], None]
Handler = Callable[[CommEvent, Remover], None]
OnceCallback = Callable[[CommEvent], None]

_by_seq = attrgetter("seq")
_NO_REGS: Tuple[Registration, ...] = ()


class Registration:
    """One listener: what it listens to, what to call, and which channel view owns it."""

    __slots__ = ("seq", "event_type", "kind", "callback", "future", "owner", "live", "remove")

    def __init__(
        self,
        owner: object,
        event_type: Optional[str],
        kind: int,
        callback: Optional[Callable[..., Any]] = None,
        future: Optional[Future[CommEvent]] = None,
    ) -> None:
        self.seq = 0
        self.event_type = event_type  # None: every event
        self.kind = kind
        self.callback = callback
        self.future = future
        self.owner = owner
        self.live = False
        self.remove: Remover = _noop


def _noop() -> None:
    """The remover of a registration that was never added (closed channel)."""


def _without(regs: Tuple[Registration, ...], reg: Registration) -> Tuple[Registration, ...]:
    """``regs`` minus ``reg``. The oldest goes first in the common case (a reply awaited by
    one ``listen_once``), so that case is a slice, not a scan."""
    if regs and regs[0] is reg:
        return regs[1:]
    return tuple(r for r in regs if r is not reg)


class ListenerRegistry:
    """Registrations keyed by event type, plus the catch-all ones."""

    def __init__(self) -> None:
        # Guards writers only (add/discard/close); readers take the tuples lock-free.
        self._lock = threading.Lock()
        self._by_type: Dict[str, Tuple[Registration, ...]] = {}
        self._every: Tuple[Registration, ...] = ()
        self._seq = itertools.count()
        self._closed = False
        # Live callback registrations (everything but futures). While there are none, a
        # thread waiting on a listen_once future may read the pipe itself (see Endpoint.drive).
        self.callbacks = 0

    def add(self, reg: Registration) -> bool:
        """Register ``reg``; ``False`` (and nothing registered) once the registry is closed."""
        with self._lock:
            if self._closed:
                return False
            reg.seq = next(self._seq)
            reg.live = True
            if reg.kind != FUTURE:
                self.callbacks += 1
            reg.remove = lambda: self._discard_quiet(reg)
            if reg.event_type is None:
                self._every = self._every + (reg,)
            else:
                self._by_type[reg.event_type] = self._by_type.get(reg.event_type, ()) + (reg,)
            return True

    def discard(self, reg: Registration) -> bool:
        """Unregister ``reg``; ``True`` only for the one call that actually removed it."""
        with self._lock:
            if not reg.live:
                return False
            reg.live = False
            if reg.kind != FUTURE:
                self.callbacks -= 1
            if reg.event_type is None:
                self._every = _without(self._every, reg)
                return True
            left = _without(self._by_type.get(reg.event_type, _NO_REGS), reg)
            if left:
                self._by_type[reg.event_type] = left
            else:
                self._by_type.pop(reg.event_type, None)
            return True

    def _discard_quiet(self, reg: Registration) -> None:
        self.discard(reg)

    def targets(self, event_type: str) -> Iterable[Registration]:
        """The listeners of ``event_type``, in registration order (lock-free snapshot)."""
        typed = self._by_type.get(event_type, _NO_REGS)
        every = self._every
        if typed and every:
            return heapq.merge(typed, every, key=_by_seq)
        return typed or every

    def futures_of(self, event_type: str) -> List[Registration]:
        """The pending ``listen_once`` futures of ``event_type``."""
        return [r for r in self._by_type.get(event_type, _NO_REGS) if r.kind == FUTURE]

    def owned_by(self, owner: object, callback: Optional[Callable[..., Any]] = None) -> List[Registration]:
        """Live registrations made by ``owner`` (and, if given, calling ``callback``)."""
        with self._lock:
            regs = list(self._every)
            for typed in self._by_type.values():
                regs.extend(typed)
        return [
            r
            for r in regs
            if r.owner is owner and (callback is None or (r.kind != FUTURE and r.callback == callback))
        ]

    def close(self) -> List[Registration]:
        """Refuse new registrations; unregister and return every live one."""
        with self._lock:
            self._closed = True
            regs = list(self._every)
            for typed in self._by_type.values():
                regs.extend(typed)
            self._every = ()
            self._by_type = {}
            self.callbacks = 0
            for reg in regs:
                reg.live = False
        return regs

    def __len__(self) -> int:
        with self._lock:
            return len(self._every) + sum(len(t) for t in self._by_type.values())
