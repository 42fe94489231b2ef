"""A slot: one pool thread and the worker it drives, plus the job handed to it.

Slots are the pool's unit of concurrency. A slot owns at most one worker at a time; the
worker is created lazily by the slot's own thread (so a slow ``init`` never blocks the
dispatcher) and replaced in place when it must not be reused.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, List, Optional

from .errors import ChannelClosedError, PoolClosedError

__all__ = [
    "Job", "Slot", "IDLE", "BUSY", "RETIRED", "STOP", "EXIT", "READ_HERE", "UNTRIED",
    "closed_before_start", "interrupted", "rss_bytes",
]

IDLE, BUSY, RETIRED = 0, 1, 2
STOP: Any = object()  # handed to a slot instead of a job: "destroy your worker and exit"
EXIT: Any = object()  # returned to a slot's thread: "exit now"
READ_HERE: Any = object()  # a request was written but cannot be parked: read its reply here
UNTRIED: Any = object()  # the next job has not been started yet

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Job:
    """One pulled item on its way through a slot."""

    __slots__ = ("index", "item", "run", "settled", "started", "items")

    def __init__(self, index: int, item: Any, run: Any, items: Optional[List[Any]] = None):
        self.index = index  # of the item, or of a chunk's first item
        self.item = item
        self.run = run
        # A chunk (``chunksize`` > 1): these items, at indexes ``index``, ``index + 1``...
        self.items = items
        # Set (under the pool lock) by whoever records the item's outcome first: the slot
        # thread, the timeout timer, or ``shutdown(wait=False)``. Prevents double counting.
        self.settled = False
        self.started = 0.0  # perf_counter() when its execute began


class Slot:
    """A pool thread's state. Fields are guarded by the pool lock unless noted."""

    __slots__ = (
        "number", "thread", "worker", "worker_id", "execute", "release", "wake", "job",
        "running", "state", "tasks", "deadline", "split", "fd", "parked", "idle_since",
    )

    def __init__(self, number: int):
        self.number = number
        self.thread: Optional[threading.Thread] = None
        self.worker: Any = None
        self.worker_id: Any = None
        self.execute: Optional[Callable[[Any], Any]] = None  # bound once per worker
        self.release: Optional[Callable[[], Any]] = None
        # A pre-acquired lock used as a one-shot signal: the dispatcher releases it after
        # putting a job in ``job``; the slot thread acquires it to wait (cheapest wake-up).
        self.wake = threading.Lock()
        self.wake.acquire()
        self.job: Any = None  # written by the dispatcher before ``wake.release()``
        self.running: Optional[Job] = None  # the job now executing (for timeouts)
        self.state = BUSY
        self.tasks = 0  # items served by the current worker
        self.deadline: Optional[float] = None
        self.split = False  # the worker is Multiplexable: its items may be parked
        self.fd: Optional[int] = None  # the worker's descriptor, once the multiplexer watches it
        # The running job's request is written and the multiplexer waits for its reply;
        # only the multiplexer's thread ends it (set under the pool lock).
        self.parked = False
        self.idle_since = time.monotonic()  # when the slot last became idle

    def assign(self, job: Any) -> None:
        """Hand a job (or STOP) to the slot's thread and wake it."""
        self.job = job
        self.wake.release()


def interrupted() -> ChannelClosedError:
    """The error of an item that Ctrl-C kept from starting."""
    return ChannelClosedError("the call was interrupted (KeyboardInterrupt) before this item started")


def closed_before_start() -> PoolClosedError:
    """The error of an item that ``shutdown(wait=False)`` kept from starting."""
    return PoolClosedError("the pool was shut down with wait=False before this item started")


def rss_bytes(pid: int) -> Optional[int]:
    """Resident memory of process ``pid`` in bytes, from /proc (None where unavailable)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None
