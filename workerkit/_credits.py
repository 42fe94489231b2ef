"""Credits: how many more items a ``stream`` may pull before its consumer catches up.

One credit per item pulled and not yet consumed, so a slow consumer (or one slow item under
``ordered=True``) never piles outcomes up in memory. A semaphore, but one that takes and
returns many at once: a chunk takes its credits in one step and its consumer returns them
in one step, where ``threading.Semaphore`` costs a lock round per item.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

__all__ = ["Credits"]


class Credits:
    """A counter of items the dispatcher may still pull, with a blocking wait for one."""

    __slots__ = ("_count", "_lock", "_freed", "_waiting")

    def __init__(self, count: int) -> None:
        self._count = count
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._waiting = 0  # threads in acquire(): only they need a notify

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` credits without waiting; return how many were taken."""
        with self._lock:
            taken = max(0, min(wanted, self._count))
            self._count -= taken
            return taken

    def acquire(self, timeout: Optional[float] = None) -> bool:
        """Take one credit, waiting at most ``timeout`` seconds for it; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._waiting += 1
            try:
                while self._count <= 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._freed.wait(remaining)
                self._count -= 1
                return True
            finally:
                self._waiting -= 1

    def release(self, count: int = 1) -> None:
        """Give back ``count`` credits (items consumed, or taken and not used)."""
        with self._lock:
            self._count += count
            if self._waiting:
                self._freed.notify_all()
