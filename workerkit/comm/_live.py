"""Process-wide weak registry of live parent channels.

Two users: the ``atexit`` hook destroys whatever is still live so the interpreter never
hangs at exit on a forgotten child, and a child started with ``fork`` closes every
parent-side pipe end it inherited from its siblings (a sibling holding a copy of a dead
parent's end would keep EOF from ever reaching the child it belongs to).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import List, Protocol

__all__ = ["LiveChannel", "add", "discard", "snapshot", "destroy_all", "forget_inherited"]


class LiveChannel(Protocol):
    def _begin_close(self) -> None: ...

    def destroy(self, timeout: float = ...) -> None: ...

    def _forget_inherited(self) -> None: ...


_channels: weakref.WeakSet[LiveChannel] = weakref.WeakSet()
# WeakSet is not safe against concurrent add/discard/iteration from several threads.
_lock = threading.Lock()


def add(channel: LiveChannel) -> None:
    with _lock:
        _channels.add(channel)


def discard(channel: LiveChannel) -> None:
    with _lock:
        _channels.discard(channel)


def snapshot() -> List[LiveChannel]:
    with _lock:
        return list(_channels)


def destroy_all() -> None:
    """Destroy every live channel (the atexit hook; a child's bootstrap also calls it,
    because a forked child leaves through ``os._exit`` and skips atexit hooks)."""
    channels = snapshot()
    for channel in channels:
        channel._begin_close()  # every child starts exiting at once
    for channel in channels:
        channel.destroy()


def forget_inherited() -> None:
    """In a forked child: close the inherited parent-side ends of every channel, then
    forget them. Takes no lock: another parent thread may have held it at fork time."""
    channels = list(_channels)
    _channels.clear()
    for channel in channels:
        channel._forget_inherited()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's lock may have been held at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)
