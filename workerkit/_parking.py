"""Parked items: the pool's side of the multiplexer (see :mod:`._mux`).

A slot whose worker is :class:`Multiplexable` writes its item's request and *parks* it: the
pool's multiplexer thread waits for the reply, pulls and writes the slot's next item, and
then records the finished one. These steps are a mixin of :class:`WorkPool` (they share its
lock, slots and recording steps, declared below for type checking); the slot threads, the
dispatcher and the rest of the item life cycle stay in ``pool.py``.
"""

from __future__ import annotations

import functools
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Set, Tuple

from ._mux import Mux
from ._run import Run
from ._slot import EXIT, READ_HERE, UNTRIED, Job, Slot, closed_before_start, interrupted
from .errors import ChannelClosedError

__all__ = ["ParkedItems"]


class ParkedItems:
    """Mixin of :class:`WorkPool`: parks function workers' items on the multiplexer and
    serves their replies (writing each slot's next item before recording the last)."""

    # What these steps use of the pool (WorkPool sets or defines all of them).
    name: str
    _lock: threading.Lock
    _closed: bool
    _abandoning: bool  # shutdown(wait=False): items in flight fail now
    _task_timeout: Optional[float]
    _slots: Set[Slot]
    _mux: Optional[Mux]  # started with the first parked item
    _mux_current: List[Slot]  # slots whose finished item the multiplexer is recording
    _mux_outboxes: List[Run[Any, Any]]  # streams whose outcomes the multiplexer holds

    if TYPE_CHECKING:
        def _settle(
            self, slot: Slot, job: Job, value: Any, error: Optional[BaseException], created: bool,
        ) -> Optional[Tuple[Any, Any, bool]]: ...

        def _after(self, slot: Slot, run: Run[Any, Any], state: Any) -> Any: ...

        @staticmethod
        def _record(
            job: Job, value: Any, error: Optional[BaseException], worker_id: Any, duration: float,
            ok: bool,
        ) -> None: ...

        def _finish(
            self, slot: Slot, job: Job, value: Any, error: Optional[BaseException],
            duration: float, *, created: bool,
        ) -> Any: ...

        def _set_deadline_locked(self, slot: Slot, job: Job) -> None: ...

        def _new_thread_locked(
            self, target: Callable[[Any], None], arg: Any, *, name: str
        ) -> threading.Thread: ...

    def _start_parked(self, slot: Slot, job: Job) -> Any:
        """Write ``job``'s request to the slot's (Multiplexable) worker and leave its reply
        to the multiplexer. Returns True (parked); False (nothing written: run it the
        ordinary way, on the slot's thread); ``READ_HERE`` (written, but the multiplexer
        has ended: read the reply on this thread); ``EXIT`` (ended meanwhile by a timeout or
        ``shutdown(wait=False)``: the slot's thread must exit); or the error that kept the
        request from being written (the item fails with it)."""
        worker = slot.worker
        mux = self._mux or self._mux_for_parking()
        if job.settled:
            return EXIT
        if self._abandoning:
            return closed_before_start()
        if job.run.interrupted:
            return interrupted()
        if mux is None or worker is None or job.run.no_park:
            return False
        if self._task_timeout is not None:
            with self._lock:
                if job.settled:
                    return EXIT
                slot.running = job
                self._set_deadline_locked(slot, job)  # covers a send that blocks, too
        else:  # nothing to set under the lock: settled is checked again below, under it
            if job.settled:
                return EXIT
            slot.running = job
        job.started = time.perf_counter()
        try:
            if not worker.begin(job.item, job.items):
                return False
        except BaseException as exc:
            if isinstance(exc, ChannelClosedError):
                traceback.clear_frames(exc.__traceback__)  # as in _run_job
            return exc
        with self._lock:
            if job.settled:
                return EXIT  # ended while being written; its worker is being destroyed
            if slot.worker is not worker:  # taken by Ctrl-C's destroy_all meanwhile
                return ChannelClosedError("the worker was destroyed while its item was being sent")
            if self._mux is not mux:
                return READ_HERE
            fd = slot.fd
            if fd is None:
                slot.fd = fd = worker.fileno()
                mux.watch(fd, slot)
                worker.before_close = functools.partial(mux.forget, fd, slot)
            slot.parked = True
        mux.parked(fd)
        return True

    def _reply_ready(self, slot: Slot) -> None:
        """On the multiplexer: a parked item's reply is readable (or its child ended).

        The slot's next item is pulled and written before this one's outcome is recorded,
        so the child works while the callbacks run (and is not woken for nothing: a child
        waiting to read is woken when its reply is consumed)."""
        job = slot.running
        if job is None:
            return
        mux = self._mux
        if slot in self._mux_current:
            # Its previous item's callback is still running (it called process, stream or
            # shutdown, which serve the multiplexer): answer after it, never inside it.
            if mux is not None and slot.fd is not None:
                mux.hold(slot.fd)
            return
        self._mux_current.append(slot)
        try:
            value, error, duration = self._read(slot, job)
            settled = self._settle(slot, job, value, error, True)
            if settled is None:  # ended by the timer or shutdown(wait=False): its thread exits
                slot.assign(EXIT)
                return
            state, worker_id, ok = settled
            nxt = self._after(slot, job.run, state)
            started: Any = UNTRIED
            if isinstance(nxt, Job) and self._task_timeout is None:
                # Written before the callbacks run (with a task_timeout, after them: its
                # deadline must not include them).
                try:
                    started = self._start_parked(slot, nxt)
                except Exception as exc:  # a bug or a thread that cannot start: nxt fails
                    started = exc
            if ok and job.run.hold_limit and job.items is None:
                self._hold(job, value, worker_id, duration, idle=not isinstance(nxt, Job))
            else:
                if self._mux_outboxes and job.run.sink is None:
                    self._mux_flush()  # a callback may wait for a stream's consumer
                self._record(job, value, error, worker_id, duration, ok)
            self._carry_on(slot, nxt, started)
        finally:
            self._mux_current.pop()
            fd = slot.fd
            if mux is not None and fd is not None:
                mux.resume(fd)

    @staticmethod
    def _read(slot: Slot, job: Job) -> Tuple[Any, Optional[BaseException], float]:
        """Read the reply to ``job``'s request: ``(value, error, duration)``."""
        worker = slot.worker
        try:
            if worker is None:
                raise ChannelClosedError("the worker was destroyed while its item ran")
            value, error = worker.finish(job.items), None
        except BaseException as exc:  # the item's error, or its child died
            value, error = None, exc
            if isinstance(exc, ChannelClosedError):
                traceback.clear_frames(exc.__traceback__)
        del worker
        return value, error, time.perf_counter() - job.started

    def _read_reply(self, slot: Slot, job: Job) -> Any:
        """Read the reply to ``job``'s request, record it; the slot's next job (see _finish)."""
        value, error, duration = self._read(slot, job)
        return self._finish(slot, job, value, error, duration, created=True)

    def _carry_on(self, slot: Slot, nxt: Any, started: Any = UNTRIED) -> None:
        """On the multiplexer, after a slot's item finished: park the next item the slot
        pulled (``started``: what starting it gave, if tried already), or hand it (or an
        exit) to the slot's own thread."""
        while isinstance(nxt, Job):
            if started is UNTRIED:
                started = self._start_parked(slot, nxt)
            if started is True:
                return
            if started is False:  # a new worker is needed, or the chunk needs splitting
                slot.assign(nxt)
                return
            if started is EXIT:
                nxt = EXIT
                break
            if started is READ_HERE:
                nxt = self._read_reply(slot, nxt)
            else:
                nxt = self._finish(slot, nxt, None, started, 0.0, created=True)
            started = UNTRIED
        if nxt is EXIT:
            slot.assign(EXIT)

    def _mux_for_parking(self) -> Optional[Mux]:
        """The pool's multiplexer, started on first use; None once the pool is shut down."""
        mux = self._mux
        if mux is not None:
            return mux
        with self._lock:
            if self._mux is not None or self._closed:
                return self._mux
            mux = self._mux = Mux(self._reply_ready, self._mux_holding, self._mux_flush)
            mux.thread = self._new_thread_locked(self._mux_main, mux, name=f"workerkit-mux-{self.name}")
        mux.thread.start()
        return mux

    def _hold(self, job: Job, value: Any, worker_id: Any, duration: float, idle: bool) -> None:
        """On the multiplexer: keep a stream's finished item to hand over with the next ones.

        Waking the stream's consumer for each item makes it fight the multiplexer for the
        GIL at each of its system calls (measured: about twice the parent's CPU per item).
        So outcomes wait until the multiplexer has no reply ready (it would sleep), or a
        few of them are held, or a slot goes idle (it may need the consumer's credit)."""
        run = job.run
        if run.hold(job.index, job.item, value, worker_id, duration):
            self._mux_outboxes.append(run)
        if idle:
            self._mux_flush()

    def _mux_holding(self) -> bool:
        """Whether outcomes are held (after handing over those of a stream that holds
        enough)."""
        outboxes = self._mux_outboxes
        if not outboxes:
            return False
        for run in outboxes:
            if len(run.outbox) >= run.hold_limit:
                self._mux_flush()
                return False
        return True

    def _mux_flush(self) -> None:
        """On the multiplexer: hand the streams the outcomes it held."""
        outboxes = self._mux_outboxes
        if outboxes:
            self._mux_outboxes = []
            for run in outboxes:
                run.flush()

    def _mux_main(self, mux: Mux) -> None:
        mux.run(lambda: self._mux_done(mux))

    def _mux_done(self, mux: Mux) -> bool:
        """Whether the multiplexer may end: no worker left to watch (the pool is shut down,
        or its workers timed out); a later item starts a new one."""
        if mux.watching:
            return False
        self._mux_flush()  # held outcomes go now, by this thread (a next one may start)
        with self._lock:
            if mux.watching or any(s.parked for s in self._slots):
                return False
            if self._mux is mux:
                self._mux = None
            return True
