"""Keeping workers: creating a slot's worker, releasing and recycling it, destroying it.

A mixin of :class:`WorkPool` (these steps share its lock and counters, declared below for
type checking). A slot's worker is made lazily on the slot's own thread, replaced in place
when it must not be reused, and destroyed exactly once: only one caller ever detaches it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Set

from ._mux import AVAILABLE as _MUX_AVAILABLE
from ._mux import Multiplexable
from ._slot import Slot, rss_bytes
from .worker import Worker, next_worker_id

__all__ = ["WorkerKeeping"]

logger = logging.getLogger("workerkit")
# Worker.release as defined (not as patched later, e.g. by a test's spy): a no-op.
_NOOP_RELEASE = Worker.__dict__["release"]
_INTERRUPT_WAIT = 2.0  # Ctrl-C waits this long at most for the multiplexer to fail parked items


class WorkerKeeping:
    """Mixin of :class:`WorkPool`: the life cycle of each slot's worker."""

    # What these steps use of the pool (WorkPool sets or defines all of them).
    _lock: threading.Lock
    _factory: Callable[[], Any]
    _slots: Set[Slot]
    _max_tasks: Optional[int]
    _max_memory: Optional[int]
    _alive: int  # workers now
    _created: int  # workers ever
    _destroyed: int
    _creation_failures: int  # in a row; reset by a worker created successfully
    _last_creation_error: Optional[BaseException]


    if TYPE_CHECKING:
        def _start_thread(
            self, target: Callable[[Any], None], arg: Any, *, name: str
        ) -> threading.Thread: ...

    def _ensure_worker(self, slot: Slot) -> Optional[BaseException]:
        """Give the slot a usable worker; return the error when one cannot be made."""
        if slot.worker is not None and not getattr(slot.worker, "active", True):
            self._discard_worker(slot)  # died while idle: replace it; no item fails for it
        if slot.worker is not None:
            return None
        try:
            self._create_worker(slot)
        except Exception as exc:
            with self._lock:
                self._creation_failures += 1
                self._last_creation_error = exc
            slot.worker_id = None
            return exc
        return None

    def _create_worker(self, slot: Slot) -> None:
        """Call the factory and the worker's ``init``; install the worker in the slot."""
        worker = self._factory()
        execute = getattr(worker, "execute", None)
        if not callable(execute):
            raise TypeError(
                f"the pool's factory returned {worker!r}, which has no execute(item) method; "
                "return a Worker (or any object with execute)"
            )
        with self._lock:
            self._created += 1
        init = getattr(worker, "init", None)
        if init is not None:
            try:
                init()
            except BaseException:
                self._destroy_worker(worker)
                raise
        worker_id = getattr(worker, "id", None)
        release = getattr(worker, "release", None)
        with self._lock:
            slot.worker = worker
            slot.worker_id = next_worker_id() if worker_id is None else worker_id
            slot.execute = execute
            # The base class's release() does nothing: not calling it saves a call per item.
            slot.release = (
                release if callable(release) and getattr(release, "__func__", None) is not _NOOP_RELEASE
                else None
            )
            slot.tasks = 0
            slot.split = _MUX_AVAILABLE and isinstance(worker, Multiplexable) and worker.multiplexable()
            self._alive += 1
            self._creation_failures = 0

    def _release(self, slot: Slot, release: Callable[[], Any]) -> None:
        try:
            release()
        except Exception:
            logger.exception("workerkit: release() of worker %r raised; destroying it", slot.worker_id)
            self._discard_worker(slot)

    def _must_recycle(self, slot: Slot, alive: bool = False) -> bool:
        worker = slot.worker
        if worker is None:
            return False
        if not alive and not getattr(worker, "active", True):
            return True
        if self._max_tasks is not None and slot.tasks >= self._max_tasks:
            return True
        if self._max_memory is not None:
            pid = getattr(worker, "pid", None)
            rss = rss_bytes(pid) if isinstance(pid, int) else None
            if rss is not None and rss > self._max_memory:
                logger.info("workerkit: worker %r uses %d bytes of memory, over "
                            "max_memory_per_worker; recycling it", slot.worker_id, rss)
                return True
        return False

    def _take_worker(self, slot: Slot, unless_parked: bool = False) -> Any:
        """Detach the slot's worker; only one caller ever gets it, so destroy runs once.
        ``unless_parked``: leave a parked item's worker to the multiplexer."""
        with self._lock:
            if unless_parked and slot.parked:
                return None
            worker, slot.worker = slot.worker, None
            slot.execute = slot.release = None
            slot.split, slot.fd = False, None  # the worker unwatches itself before closing
            if worker is not None:
                self._alive -= 1
        return worker

    def _discard_worker(self, slot: Slot, background: bool = False) -> None:
        worker = self._take_worker(slot)
        if worker is None:
            return
        if background:
            self._start_thread(self._destroy_worker, worker, name="workerkit-destroy")
        else:
            self._destroy_worker(worker)

    def _destroy_worker(self, worker: Any) -> None:
        destroy = getattr(worker, "destroy", None)
        try:
            if destroy is not None:
                destroy()
        except Exception:
            logger.exception("workerkit: destroy() of worker %r raised", getattr(worker, "id", worker))
        finally:
            with self._lock:
                self._destroyed += 1

    def _destroy_all_workers(self) -> None:
        """Destroy every worker at once (Ctrl-C): children end, their items fail.

        A parked item's child is killed; the multiplexer fails the item and retires the
        worker when it reads EOF (waited for, briefly)."""
        with self._lock:
            slots = list(self._slots)
            parked = [s.worker for s in slots if s.parked and s.worker is not None]
        for worker in parked:
            worker.interrupt()
        workers = [w for w in (self._take_worker(s, unless_parked=True) for s in slots) if w is not None]
        threads = [self._start_thread(self._destroy_worker, w, name="workerkit-destroy") for w in workers]
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + _INTERRUPT_WAIT
        while any(s.parked for s in slots) and time.monotonic() < deadline:
            time.sleep(0.005)
