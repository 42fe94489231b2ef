"""WorkPool: a thread-driven pool that pulls items from a source and hands them to workers.

Data flow of one ``process`` call::

    caller thread (dispatcher)                    pool threads (one per slot)
    ==========================                    ===========================
    source.has_next()
      -> _acquire_slot()   <---- idle stack <---  slot returns itself after each item
      -> source.next()
      -> slot.assign(job) ------- wake ------->   [worker missing? factory() + init()]
                                                  worker.execute(item)
                                                  worker.release()
                                                  recycle? (inactive, max tasks, memory)
                                                  Run.success / Run.failure
                                                    -> on_complete / on_error, progress
    Run.wait()   <------- pending == 0 -------

    timer thread (only with task_timeout): fails an item that overran its deadline with
    WorkTimeoutError and destroys its worker; the slot's thread is abandoned.

    multiplexer thread (function workers, Linux): a slot whose worker is Multiplexable
    writes the request and *parks*; the multiplexer waits on every parked worker's pipe
    at once, and for each reply pulls the next item, writes it, then records the finished
    one, so a small item wakes no other thread (see :mod:`._mux`, and :mod:`._parking` for
    the pool's side). It hands a job back to the slot's thread when that needs a new
    worker, or a large request (over 64 KiB).

Who does what:

* The dispatcher (the thread that called ``process``; a background thread for ``stream``
  and ``start``) is the only thread that touches the source, and it pulls an item only once
  a slot is free, so an endless source never piles up in memory.
* Each slot thread owns at most one worker. It creates the worker lazily, so a slow
  ``init`` (a child process starting) never blocks the dispatcher, and replaces it in place
  when it must not be reused.
* The pool lock guards the slot table and counters; it is never held while user code
  (factory, execute, callbacks) or a worker's destroy runs.
* Callbacks run on the thread that finished the item: a slot's thread, or the
  multiplexer's for function workers (one at a time there, as with ``Pool.imap``'s
  consumer; a slow callback holds up the other workers' next items).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from ._credits import Credits
from ._feed import Feed
from ._keeping import WorkerKeeping
from ._mux import Mux
from ._options import (
    check_chunksize,
    check_positive,
    check_process_options,
    held_stream_window,
    resolve_max_workers,
    stream_window,
)
from ._parking import ParkedItems
from ._progress import ProgressArg, make_progress, source_length
from ._results import END, as_finished, in_order, map_results
from ._run import AllOk, Run
from ._slot import (
    BUSY,
    EXIT,
    IDLE,
    READ_HERE,
    RETIRED,
    STOP,
    Job,
    Slot,
    closed_before_start,
    interrupted,
)
from .errors import ChannelClosedError, PoolClosedError, WorkerKitError, WorkPoolError, WorkTimeoutError
from .input import InputSource, as_input_source
from .outcome import Outcome, PoolStats, ProcessSummary

X = TypeVar("X")
R = TypeVar("R")
T = TypeVar("T")

logger = logging.getLogger("workerkit")

__all__ = ["WorkPool"]

Source = Union[InputSource[X], Iterable[X]]
OutcomeCallback = Callable[[Outcome[X, R]], Any]

_WAIT_SLICE = 0.5  # bounded waits re-check shutdown flags; they never add latency to a wake-up
_FREE = Slot(0)  # "a slot is free": returned when the caller only waits for one
_PULL: Any = object()  # a finished slot stays busy and pulls its call's next item itself


class WorkPool(WorkerKeeping, ParkedItems, Generic[X, R]):
    """A pool of workers made by ``factory()``, fed from input sources.

    Subclass it for a domain pool (pass the factory to ``super().__init__``), or use it
    directly. Use it as a context manager, or call :meth:`shutdown` when done.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        max_workers: Optional[int] = None,
        min_workers: int = 1,
        idle_timeout: Optional[float] = 30.0,
        max_tasks_per_worker: Optional[int] = None,
        max_memory_per_worker: Optional[int] = None,
        task_timeout: Optional[float] = None,
        name: Optional[str] = None,
    ):
        if not callable(factory):
            raise TypeError(
                f"WorkPool needs a factory: a callable that returns a new worker, got {factory!r}"
            )
        max_workers = resolve_max_workers(max_workers)
        if isinstance(min_workers, bool) or not isinstance(min_workers, int) or min_workers < 0:
            raise ValueError(f"min_workers must be an int >= 0, got {min_workers!r}")
        if min_workers > max_workers:
            raise ValueError(f"min_workers ({min_workers}) must not exceed max_workers ({max_workers})")
        check_positive("idle_timeout", idle_timeout, allow_zero=True)
        check_positive("task_timeout", task_timeout)
        check_positive("max_tasks_per_worker", max_tasks_per_worker)
        check_positive("max_memory_per_worker", max_memory_per_worker)
        self._factory = factory
        self._max_workers = max_workers
        self._min_workers = min_workers
        self._idle_timeout = idle_timeout
        self._max_tasks = max_tasks_per_worker
        self._max_memory = max_memory_per_worker
        self._task_timeout = task_timeout
        # Per-worker limits to check after each item (besides ``active``).
        self._limits = max_tasks_per_worker is not None or max_memory_per_worker is not None
        self.name = name or f"{type(self).__name__}-{id(self):x}"

        self._lock = threading.Lock()
        # Dispatchers waiting for a free slot, each on its own pre-acquired lock (a cheaper
        # wake-up than a Condition, which allocates a lock per wait).
        self._waiters: List[threading.Lock] = []
        # The timeout timer waits here for the next deadline.
        self._deadline_set = threading.Condition(self._lock)
        self._timer_waiting = False
        self._idle: List[Slot] = []  # a stack: reuse the warmest worker, let the rest time out
        self._slots: Set[Slot] = set()
        self._numbers = itertools.count(1)
        self._closed = False
        self._abandoning = False  # shutdown(wait=False): items in flight fail now
        self._runs: Set[Run[Any, Any]] = set()
        self._errors: List[Outcome[X, R]] = []
        self._timer: Optional[threading.Thread] = None
        self._mux: Optional[Mux] = None  # started with the first parked item
        # Slots whose finished item the multiplexer is recording (its own thread only):
        # their threads wait for it, so a callback's shutdown() must not wait for them.
        self._mux_current: List[Slot] = []
        # Streams whose outcomes the multiplexer holds for a moment (its own thread only).
        self._mux_outboxes: List[Run[Any, Any]] = []
        # Every thread the pool started and still running, and whether shutdown(wait=True)
        # must join it (not a slot thread abandoned in an execute that may never return).
        self._threads: Dict[threading.Thread, bool] = {}
        self._alive = self._busy = 0
        self._created = self._destroyed = self._completed = self._failed = 0
        self._creation_failures = 0  # in a row; reset by a worker created successfully
        self._last_creation_error: Optional[BaseException] = None

    # ------------------------------------------------------------------ public API

    @property
    def max_workers(self) -> int:
        return self._max_workers

    @property
    def errors(self) -> List[Outcome[X, R]]:
        """The failed outcomes of the most recent ``process`` call."""
        return list(self._errors)

    def process(
        self,
        source: Source[X],
        *,
        on_complete: Optional[OutcomeCallback[X, R]] = None,
        on_error: Optional[OutcomeCallback[X, R]] = None,
        raise_on_error: bool = True,
        progress: ProgressArg = None,
        chunksize: int = 1,
    ) -> ProcessSummary:
        """Run every item of ``source`` through the workers; block until all have finished.

        Raises :class:`WorkPoolError` (``.summary``, ``__cause__`` = the first error) when an
        item failed and ``raise_on_error`` is true; re-raises an error of the source itself
        after the in-flight items finished.

        ``chunksize`` > 1 hands each worker up to that many items at once (one message to a
        function worker's child), so up to ``max_workers * chunksize`` items are in flight;
        outcomes, callbacks and counts stay per item. It pays off for tiny items.
        """
        self._check_open()
        src = as_input_source(source)
        check_process_options(on_complete=on_complete, on_error=on_error, progress=progress,
                              chunksize=chunksize)
        reporter = make_progress(progress, source_length(source), self.name)
        run: Run[X, R] = Run(on_complete, on_error, reporter)
        try:
            self._drive(src, run, slot_first=src is not source, chunksize=chunksize)
        finally:
            run.close_progress()
        summary = run.summary()
        if summary.failed and raise_on_error:
            first = run.first_error
            raise WorkPoolError(
                f"{summary.failed} of {summary.submitted} items failed; first error: "
                f"{type(first).__name__}: {first} (see .summary.failures, or pass "
                "raise_on_error=False to get the summary back instead)",
                summary,
            ) from first
        return summary

    def stream(
        self, source: Source[X], *, ordered: bool = False, chunksize: int = 1
    ) -> Iterator[Outcome[X, R]]:
        """Yield each item's :class:`Outcome` as it finishes (in input order with ``ordered``).

        Failed items are yielded as failed outcomes. Leaving the loop early stops pulling
        and waits for the items in flight. ``chunksize`` as for :meth:`process`.

        The pool runs a bounded window ahead of the consumer (items pulled whose outcomes
        were not taken yet): 16 items or chunks (4 per worker beyond 4 workers); with
        function workers and one item per message, 128 items (8 per worker beyond 16), so
        outcomes can be handed over in bursts.
        """
        self._check_open()
        src = as_input_source(source)
        check_chunksize(chunksize)
        return self._stream(src, ordered, src is not source, chunksize)

    def start(self, source: Source[X], **process_kwargs: Any) -> Future[ProcessSummary]:
        """Run :meth:`process` on a background thread; the future holds its summary."""
        self._check_open()
        as_input_source(source)  # a bad source fails here, at the call
        check_process_options(**process_kwargs)
        future: Future[ProcessSummary] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self.process(source, **process_kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name=f"workerkit-process-{self.name}", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Stop pulling, let in-flight items finish (when ``wait``), destroy every worker.

        Items not yet pulled stay in their source. With ``wait=False`` the items in flight
        fail with :class:`PoolClosedError` and their workers are destroyed at once.
        Idempotent.
        """
        with self._lock:
            self._closed = True
            self._abandoning = self._abandoning or not wait
            for run in self._runs:
                run.stopping = True
            idle, self._idle = self._idle, []
            for slot in idle:
                slot.state = RETIRED
                self._slots.discard(slot)
            busy = [s for s in self._slots if s.state == BUSY]
            self._wake_dispatchers_locked(everyone=True)
            self._deadline_set.notify_all()
            mux = self._mux
        if mux is not None:
            mux.wake()  # it ends once no item is parked on it
        for slot in idle:
            slot.assign(STOP)
        if not wait:
            for slot in busy:
                self._abandon(slot, slot.running, PoolClosedError(
                    "the pool was shut down with wait=False while this item was running"))
        if wait:
            self._join_threads()

    def _join_threads(self) -> None:
        """Join every pool thread (slots, worker destroyers, the timer) until none is left,
        so no worker and no child outlives ``shutdown(wait=True)``."""
        me = threading.current_thread()
        mux = self._mux
        on_mux = mux is not None and mux.thread is me
        waiting_on_me = {s.thread for s in self._mux_current} if on_mux else set()
        while True:
            with self._lock:
                for thread in [t for t in self._threads if not t.is_alive()]:
                    del self._threads[thread]  # the timer ends without unregistering itself
                pending = [
                    t for t, join in self._threads.items()
                    if join and t is not me and t not in waiting_on_me
                ]
                mux = self._mux
            if not pending:
                return
            if mux is not None and mux.thread is me:
                # Called from a callback on the multiplexer: the items parked on it can
                # only finish if it goes on serving them.
                mux.run_once(_WAIT_SLICE)
                continue
            # In slices: a slot abandoned meanwhile (task_timeout) must stop being waited for.
            pending[0].join(_WAIT_SLICE)

    def stats(self) -> PoolStats:
        """A frozen snapshot of the pool's workers and item counts."""
        with self._lock:
            idle = sum(1 for s in self._idle if s.worker is not None)
            return PoolStats(
                alive=self._alive, busy=self._busy, idle=idle, created=self._created,
                destroyed=self._destroyed, completed=self._completed, failed=self._failed,
            )

    @classmethod
    def map(
        cls,
        fn: Callable[[Any], T],
        iterable: Iterable[Any],
        *,
        max_workers: Optional[int] = None,
        ordered: bool = True,
        start_method: Optional[str] = None,
        chunksize: int = 1,
        **pool_kwargs: Any,
    ) -> Iterator[T]:
        """Run a picklable ``fn`` on each item in child processes; yield the results.

        Raises the first error (a :class:`RemoteError` for an exception in the child).
        ``chunksize`` sends several items per message (results are still per item).
        """
        from ._fastmap import pipelined_map
        from .util import check_function_target, function_worker

        check_function_target(fn, start_method)
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        workers = resolve_max_workers(max_workers)
        try:
            items = iter(iterable)  # a bad argument fails here, at the call
        except TypeError:
            raise TypeError(
                f"WorkPool.map() needs an iterable of items, got {type(iterable).__name__}: "
                "pass a list, a range, a generator or any other iterable"
            ) from None
        if not pool_kwargs:
            # No per-worker limits asked for: the single-threaded pipelined driver, which
            # keeps a few items queued in each child and needs no thread hand-offs.
            return pipelined_map(
                lambda: function_worker(fn, start_method=start_method), items,
                max_workers=workers, ordered=ordered,
                chunksize=chunksize,
            )
        # Per-worker limits (recycling, timeouts, memory) need the pool's threads; they count
        # and time items one by one, chunked or not.
        pool: WorkPool[Any, Any] = WorkPool(
            lambda: function_worker(fn, start_method=start_method),
            max_workers=max_workers, **pool_kwargs,
        )
        return map_results(pool, pool.stream(items, ordered=ordered, chunksize=chunksize))

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        s = self.stats()
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.name!r} {state} alive={s.alive} busy={s.busy}>"

    # ------------------------------------------------------------------ dispatching

    def _stream(
        self, src: InputSource[X], ordered: bool, slot_first: bool, chunksize: int = 1
    ) -> Iterator[Outcome[X, R]]:
        """Dispatch on a background thread; hand outcomes to the consuming thread."""
        outcomes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Credits bound how far the dispatcher runs ahead of the consumer, so a slow
        # consumer (or one slow item under ``ordered``) never piles outcomes up in memory.
        # One credit per item not yet consumed: enough for every worker to hold a few chunks.
        credits = Credits(stream_window(self._max_workers, chunksize))
        run: Run[X, R] = Run(sink=outcomes.put)
        if chunksize == 1:  # the multiplexer may hold outcomes: the window grows when it does
            held = held_stream_window(self._max_workers)
            run.allow_holding(credits, held // 8, held - stream_window(self._max_workers, 1))
        raised: List[BaseException] = []
        get: Callable[[], Any] = outcomes.get
        mux = self._mux
        if mux is not None and mux.thread is threading.current_thread():
            # Consumed in a callback on the multiplexer: its items run on their slots'
            # threads, and waiting for them serves the multiplexer (the busy slots need it).
            run.no_park = True
            pump = mux.run_once

            def get() -> Any:
                while True:
                    try:
                        return outcomes.get_nowait()
                    except queue.Empty:
                        pump(0.01)

        def dispatch() -> None:
            try:
                self._drive(src, run, credits, slot_first=slot_first, chunksize=chunksize)
            except BaseException as exc:
                raised.append(exc)
            finally:
                outcomes.put(END)

        thread = threading.Thread(target=dispatch, name=f"workerkit-dispatch-{self.name}", daemon=True)
        thread.start()
        try:
            yield from (in_order if ordered else as_finished)(get, credits)
            if raised:
                raise raised[0]
        except KeyboardInterrupt:
            # Ctrl-C in the consumer, as in process(): end the workers (their children)
            # instead of waiting for the items in flight.
            run.stopping = True
            run.interrupted = True
            self._destroy_all_workers()
            raise
        finally:
            run.stopping = True
            credits.release()  # wakes a dispatcher waiting for a credit, so it sees stopping
            try:
                thread.join()  # the items in flight finish (leaving the loop, as by break)
            except KeyboardInterrupt:  # Ctrl-C again while they do: end them now
                run.interrupted = True
                self._destroy_all_workers()
                raise

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError(f"pool {self.name!r} is shut down; create a new pool")

    def _drive(
        self, src: InputSource[X], run: Run[X, R], credits: Optional[Credits] = None,
        *, slot_first: bool = False, chunksize: int = 1,
    ) -> None:
        """Dispatch every item of ``src``, then wait for those in flight (the caller's thread)."""
        feed: Feed[X] = Feed(src, credits, slot_first, chunksize)
        run.feed = feed
        mux = self._mux
        if mux is not None and mux.thread is threading.current_thread():
            run.pump = mux.run_once  # process() called from a callback on the multiplexer
            run.no_park = True
        with self._lock:
            self._runs.add(run)
            self._creation_failures = 0  # the breaker is per call, like errors
        try:
            try:
                self._dispatch(feed, run)
            except KeyboardInterrupt:
                raise
            except BaseException:
                run.stopping = True
                run.wait()  # a source error surfaces after the in-flight items finished
                raise
            run.wait()
        except KeyboardInterrupt:
            # Ctrl-C: end the workers (their children) instead of waiting for them.
            run.stopping = True
            run.interrupted = True  # a worker being made meanwhile never starts its item
            self._destroy_all_workers()
            raise
        finally:
            with self._lock:
                self._runs.discard(run)
            self._errors = list(run.failures)
        if feed.error is not None:  # raised by the source while a slot pulled for itself
            raise feed.error
        if run.breaker_error is not None:
            raise WorkPoolError(str(run.breaker_error), run.summary()) from run.breaker_error.__cause__

    def _dispatch(self, feed: Feed[X], run: Run[X, R]) -> None:
        """Pull items one by one: ``has_next()``, then a free slot, then ``next()``.

        With ``slot_first`` (a plain iterable the pool wrapped itself, whose read-ahead the
        caller cannot see or get back) wait for a free slot before ``has_next()``, so an
        early stop never strands an item read ahead from the caller's iterator. Slots that
        finish an item may pull the next one themselves (see :mod:`._feed`); the dispatcher
        then mostly waits.
        """
        try:
            self._pull_loop(feed, run)
        finally:
            feed.close()

    def _pull_loop(self, feed: Feed[X], run: Run[X, R]) -> None:
        has_next, pull, credits = feed.src.has_next, feed.src.next, feed.credits
        while not run.stopping:
            if credits is not None:
                while not credits.acquire(timeout=_WAIT_SLICE):
                    if run.stopping or self._closed:
                        return
                if run.stopping:
                    return
            if feed.slot_first and self._acquire_slot(run, take=False) is None:
                return
            wait_for_item = feed.wait_for_item
            if wait_for_item is not None:  # a DynamicIterator: wait for an item in slices
                while not wait_for_item(_WAIT_SLICE):
                    if run.stopping or self._closed:
                        return
            with feed.lock:
                if feed.error is not None:  # a slot's pull raised: never ask the source again
                    return
                if feed.exhausted:
                    return
                # Over a DynamicIterator, never wait under the lock: the item just seen may
                # have gone to another taker meanwhile (then wait for the next one again).
                more = has_next() if wait_for_item is None else feed.has_next_now()
                if more is None:
                    if credits is not None:
                        credits.release()  # this turn pulled nothing
                    continue
                if not more:
                    feed.exhausted = True
                    return
                seen = run.submitted
            slot = self._acquire_slot(run)
            if slot is None:
                return
            with feed.lock:
                if run.submitted != seen or feed.error is not None or feed.exhausted:
                    # A slot took the item has_next() saw (or the call ended): give the slot
                    # back and ask has_next() again without holding a worker, since it may wait.
                    self._return_unused(slot)
                    if credits is not None:
                        credits.release()  # this turn pulled nothing
                    continue
                try:
                    job = feed.make_job(run, pull(), may_wait=True, limit=self._chunk_room(slot))
                except BaseException as exc:
                    self._return_unused(slot)
                    if isinstance(exc, StopIteration):
                        return
                    raise
            slot.running = job  # before the hand-off: shutdown(wait=False) can fail it at once
            slot.assign(job)

    def _acquire_slot(self, run: Run[X, R], take: bool = True) -> Optional[Slot]:
        """A free slot (idle, or new while below ``max_workers``); None once stopping.

        With ``take=False``, only wait until a slot is free and return a placeholder.
        """
        wakeup = run.wakeup
        with self._lock:
            while True:
                if run.stopping or self._closed or self._breaker_tripped(run):
                    return None
                if not take and (self._idle or len(self._slots) < self._max_workers):
                    return _FREE
                if self._idle:
                    slot = self._idle.pop()
                    slot.state = BUSY
                    self._busy += 1
                    return slot
                if len(self._slots) < self._max_workers:
                    slot = self._new_slot_locked()
                    # Registered under the same lock as the slot, so shutdown joins it.
                    thread = self._new_thread_locked(
                        self._slot_main, slot, name=f"workerkit-worker-{slot.number}"
                    )
                    slot.thread = thread
                    break
                self._waiters.append(wakeup)
                self._lock.release()
                woken = False
                try:
                    if run.pump is not None:  # on the multiplexer: the busy slots need it
                        run.pump(0.01)
                        woken = wakeup.acquire(blocking=False)
                    else:
                        # Bounded, so a stop request is seen even if no slot ever comes back.
                        woken = wakeup.acquire(timeout=_WAIT_SLICE)
                finally:
                    # Re-taken even when Ctrl-C interrupts the wait: the with-block releases it.
                    self._lock.acquire()
                    if wakeup in self._waiters:
                        self._waiters.remove(wakeup)  # timed out or interrupted: not signalled
                    elif not woken:
                        wakeup.acquire()  # signalled just as we stopped waiting: consume it
        thread.start()
        return slot

    def _start_thread(self, target: Callable[[Any], None], arg: Any, *, name: str) -> threading.Thread:
        """Start a pool thread that shutdown(wait=True) will join."""
        with self._lock:
            thread = self._new_thread_locked(target, arg, name=name)
        thread.start()
        return thread

    def _new_thread_locked(self, target: Callable[[Any], None], arg: Any, *, name: str) -> threading.Thread:
        """A pool thread, registered for ``_join_threads`` but not started. Lock held."""

        def run() -> None:
            try:
                target(arg)
            finally:
                with self._lock:
                    self._threads.pop(thread, None)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads[thread] = True
        return thread

    def _wake_dispatchers_locked(self, everyone: bool = False) -> None:
        """Wake one waiting dispatcher (all of them on shutdown). Call with the lock held."""
        while self._waiters:
            self._waiters.pop(0).release()
            if not everyone:
                return

    def _new_slot_locked(self) -> Slot:
        slot = Slot(next(self._numbers))
        self._slots.add(slot)
        self._busy += 1
        return slot

    def _breaker_tripped(self, run: Run[X, R]) -> bool:
        """Stop a call whose workers cannot be created, instead of failing item after item.

        Call with the lock held. The call raises ``WorkPoolError`` once its items in flight
        have finished, so its summary keeps ``submitted == completed + failed``.
        """
        if self._creation_failures < self._max_workers + 2 or self._alive:
            return False
        error = self._last_creation_error
        tripped = WorkerKitError(
            f"pool {self.name!r} stopped pulling items: {self._creation_failures} workers in a "
            f"row failed to start ({type(error).__name__}: {error}); fix the factory or the "
            "worker's init, then call process again"
        )
        tripped.__cause__ = error
        run.breaker_error = tripped
        run.stopping = True
        return True

    def _return_unused(self, slot: Slot) -> None:
        """Put back a slot the dispatcher took but could not use."""
        with self._lock:
            self._busy -= 1
            if self._closed:
                slot.state = RETIRED
                self._slots.discard(slot)
            else:
                slot.state = IDLE
                slot.idle_since = time.monotonic()
                self._idle.append(slot)
                self._wake_dispatchers_locked()
        if slot.state == RETIRED:
            slot.assign(STOP)

    # ------------------------------------------------------------------ slot threads

    def _slot_main(self, slot: Slot) -> None:
        """Body of a pool thread: run jobs until stopped, retired or abandoned."""
        try:
            while True:
                job: Any = self._next_job(slot)
                if job is None:
                    return
                while isinstance(job, Job):  # a job this slot pulled itself comes straight back
                    job = self._run_job(slot, job)
                if job is EXIT:
                    return
        finally:
            self._discard_worker(slot)

    def _next_job(self, slot: Slot) -> Any:
        """Wait for the slot's next job (from the dispatcher, or handed back by the
        multiplexer); retire the slot once it has been idle for ``idle_timeout``."""
        idle_timeout = self._idle_timeout
        timeout = -1.0 if idle_timeout is None else idle_timeout
        while True:
            if slot.wake.acquire(timeout=timeout):
                job, slot.job = slot.job, None
                return None if job is STOP else job
            with self._lock:
                if slot.state == RETIRED and not slot.parked:
                    return None  # ended while its item was parked: nothing will come
                if slot.state != IDLE or idle_timeout is None:
                    # Busy: a job on its way, or an item parked on the multiplexer (the slot
                    # may turn idle without waking this thread, so look again later).
                    timeout = _WAIT_SLICE if slot.state != IDLE else -1.0
                    continue
                remaining = slot.idle_since + idle_timeout - time.monotonic()
                if remaining > 0:
                    timeout = remaining
                    continue
                if slot.worker is not None and self._alive <= self._min_workers:
                    timeout = max(idle_timeout, _WAIT_SLICE)  # never spin, even with idle_timeout=0
                    continue  # keep min_workers warm: no churn
                slot.state = RETIRED
                self._idle.remove(slot)
                self._slots.discard(slot)
                self._wake_dispatchers_locked()
                # Detached under the same lock as the check, so two slots timing out
                # together can never take the pool below min_workers.
                worker, slot.worker = slot.worker, None
                if worker is not None:
                    self._alive -= 1
            if worker is not None:
                self._destroy_worker(worker)
            return None

    def _run_job(self, slot: Slot, job: Job) -> Any:
        """Execute one job in ``slot``; return the slot's next job, None (wait for the
        dispatcher) or ``EXIT`` (the slot's thread must exit)."""
        if job.settled:  # failed by shutdown(wait=False) on its way here: make no worker
            return EXIT
        if self._abandoning:  # pulled by this slot just as shutdown(wait=False) ran
            return self._finish(slot, job, None, closed_before_start(), 0.0, created=False)
        failed_start = self._ensure_worker(slot)
        if job.settled:  # failed by shutdown(wait=False) while its worker was being made
            return EXIT
        if failed_start is not None:  # the item that waited for the worker fails with its error
            return self._finish(slot, job, None, failed_start, 0.0, created=False)
        if job.run.interrupted:  # Ctrl-C came while the worker was being made
            self._discard_worker(slot)
            return self._finish(slot, job, None, interrupted(), 0.0, created=False)
        if slot.split:
            started = self._start_parked(slot, job)
            if started is True:
                return None  # the multiplexer finishes it; wait for what comes next
            if started is EXIT:
                return EXIT
            if started is READ_HERE:
                return self._read_reply(slot, job)
            if started is not False:  # the request could not be written: the child is gone
                return self._finish(slot, job, None, started, 0.0, created=True)
        execute = slot.execute
        if execute is None:  # taken meanwhile by Ctrl-C or shutdown(wait=False)
            return self._finish(slot, job, None, ChannelClosedError(
                "the worker was destroyed before this item started"), 0.0, created=False)
        if self._task_timeout is not None:
            self._set_deadline(slot, job)
        job.started = started = time.perf_counter()
        try:
            value = execute(job.item) if job.items is None else self._execute_chunk(slot, job.items)
            error: Optional[BaseException] = None
        except BaseException as exc:  # SystemExit & co. fail the item, never the pool
            value, error = None, exc
            if isinstance(exc, ChannelClosedError):
                # The child died: the traceback runs through workerkit's own frames only, and
                # their locals would keep the dead worker (channel, process) alive as long as
                # the failed outcome is kept. This frame is in it too: drop its reference.
                traceback.clear_frames(exc.__traceback__)
        del execute
        duration = time.perf_counter() - started
        return self._finish(slot, job, value, error, duration, created=True)

    def _execute_chunk(self, slot: Slot, items: List[Any]) -> List[Tuple[bool, Any]]:
        """``[(ok, value or error)]`` for a chunk: in one call when the worker has
        ``execute_chunk(items)`` (a function worker: one message), else item by item, with
        ``release()`` after each execute (the last one's comes from ``_finish``)."""
        execute_chunk = getattr(slot.worker, "execute_chunk", None)
        if execute_chunk is not None:
            return execute_chunk(items)  # type: ignore[no-any-return]
        results: List[Tuple[bool, Any]] = []
        for position, item in enumerate(items):
            if position:
                release = slot.release
                if release is not None:
                    self._release(slot, release)
                failed_start = self._ensure_worker(slot)  # replaced if release() discarded it
                if failed_start is not None:
                    results.extend((False, failed_start) for _ in items[position:])
                    return results
            execute = slot.execute
            assert execute is not None
            try:
                results.append((True, execute(item)))
            except BaseException as exc:  # as for one item: it fails, the chunk goes on
                results.append((False, exc))
        return results

    def _finish(
        self, slot: Slot, job: Job, value: Any, error: Optional[BaseException],
        duration: float, *, created: bool,
    ) -> Any:
        """Release or recycle the worker, return or keep the slot, record the outcome; then,
        if the slot was kept for its call, pull that call's next item on this thread."""
        settled = self._settle(slot, job, value, error, created)
        if settled is None:
            return EXIT  # ended (and recorded) by the timer or shutdown(wait=False)
        state, worker_id, ok = settled
        self._record(job, value, error, worker_id, duration, ok)
        return self._after(slot, job.run, state)

    def _settle(
        self, slot: Slot, job: Job, value: Any, error: Optional[BaseException], created: bool,
    ) -> Optional[Tuple[Any, Any, bool]]:
        """Release or recycle the worker, count the job, and decide (under the lock) what
        the slot does next: ``(state, worker_id, ok)`` with state ``_PULL`` (pull the call's
        next item), None (idle) or ``EXIT`` (retired); None if the job was ended already."""
        worker_id = slot.worker_id
        if created:
            release = slot.release
            if release is not None:
                self._release(slot, release)
            slot.tasks += 1 if job.items is None else len(job.items)
            # A parked item that got its reply: its child was alive a moment ago, so skip
            # the liveness poll (a system call); a failed one may mean the child died.
            alive = slot.parked and error is None
            if (self._limits or not alive) and self._must_recycle(slot, alive=alive):
                # On the multiplexer, destroying (waiting for a child to exit) would hold up
                # every other worker: a thread of its own does it.
                self._discard_worker(slot, background=slot.parked)
        ok = error is None and created
        if job.items is None:
            good = 1 if ok else 0
        else:
            good = (len(value) if type(value) is AllOk else sum(1 for done, _ in value if done)) if ok else 0
        bad = (1 if job.items is None else len(job.items)) - good
        with self._lock:
            if job.settled:  # the timer or shutdown(wait=False) already failed this item
                slot.parked = False
                return None
            job.settled = True
            slot.parked = False
            slot.deadline = None
            slot.running = None
            self._completed += good
            self._failed += bad
            if self._closed:
                state = EXIT
                self._busy -= 1
                slot.state = RETIRED
                self._slots.discard(slot)
            elif self._may_pull_locked(job.run):
                state = _PULL  # still busy: the slot serves its call's next item itself
            else:
                state = None
                self._busy -= 1
                slot.state = IDLE
                slot.idle_since = time.monotonic()
                self._idle.append(slot)
                if self._waiters:
                    self._waiters.pop(0).release()
        return state, worker_id, ok

    @staticmethod
    def _record(
        job: Job, value: Any, error: Optional[BaseException], worker_id: Any, duration: float,
        ok: bool,
    ) -> None:
        """Report the job's outcome(s) to its call (callbacks, counts, progress)."""
        if ok and job.items is None:
            job.run.success(job.index, job.item, value, worker_id, duration)
        else:
            job.run.record(job, value if ok else None, error, worker_id, duration)

    def _after(self, slot: Slot, run: Run[X, R], state: Any) -> Any:
        """The slot's next step after ``_settle``: its call's next item (a job, pulled on
        this thread), None (idle: the dispatcher or another call may have it) or ``EXIT``."""
        if state is not _PULL:
            return state
        feed = run.feed
        nxt = None if feed is None else feed.try_pull(run, self._chunk_room(slot))
        if nxt is None:
            self._return_unused(slot)  # let the dispatcher (or another call) have it
            return None
        # Published before the job checks _abandoning (_run_job, _start_parked), while
        # shutdown(wait=False) sets that before it looks at running jobs: one sees the other.
        slot.running = nxt
        return nxt

    def _chunk_room(self, slot: Slot) -> int:
        """How many items the slot's next chunk may hold under ``max_tasks_per_worker``
        (0: no limit): a worker is recycled after that many items, never past them."""
        if self._max_tasks is None:
            return 0
        return max(1, self._max_tasks - slot.tasks) if slot.worker is not None else self._max_tasks

    def _may_pull_locked(self, run: Run[X, R]) -> bool:
        """Whether a slot that finished an item of ``run`` may pull its next one itself:
        not when the call stops, and not while another call waits for a slot (fairness)."""
        if run.stopping or (self._creation_failures and self._breaker_tripped(run)):
            return False
        wakeup = run.wakeup
        for waiter in self._waiters:
            if waiter is not wakeup:
                return False
        return True

    # ------------------------------------------------------------------ ending items early

    def _abandon(self, slot: Slot, job: Optional[Job], error: BaseException) -> None:
        """Fail ``job`` (still the slot's running item) with ``error`` and end its worker.

        A slot thread stuck in execute exits on its own when execute returns. A parked
        item's worker stays with the multiplexer, which alone may close its pipe: its
        child is killed, and the multiplexer retires the worker when it reads EOF."""
        with self._lock:
            if job is None or job.settled or slot.running is not job:
                return  # finished meanwhile: never fail the slot's next item instead
            job.settled = True
            slot.deadline = None
            self._busy -= 1
            self._failed += 1 if job.items is None else len(job.items)
            slot.state = RETIRED
            self._slots.discard(slot)
            self._wake_dispatchers_locked()
            worker_id = slot.worker_id
            parked = slot.parked
            worker = slot.worker if parked else None
            if not parked and slot.thread is not None and slot.thread in self._threads:
                self._threads[slot.thread] = False  # stuck in execute: never wait for it
        if parked:
            if worker is not None:
                worker.interrupt()
        else:
            worker = self._take_worker(slot)
            if worker is not None:
                self._start_thread(self._destroy_worker, worker, name="workerkit-destroy")
        ran = time.perf_counter() - job.started if job.started else 0.0
        job.run.record(job, None, error, worker_id, ran)

    # ------------------------------------------------------------------ task timeouts

    def _set_deadline(self, slot: Slot, job: Job) -> None:
        with self._lock:
            slot.running = job
            self._set_deadline_locked(slot, job)

    def _set_deadline_locked(self, slot: Slot, job: Job) -> None:
        assert self._task_timeout is not None
        # A chunk's items run one after the other: each gets the whole timeout.
        budget = self._task_timeout * (1 if job.items is None else len(job.items))
        slot.deadline = time.monotonic() + budget
        if self._timer is None:
            self._timer = threading.Thread(target=self._timer_main, name="workerkit-timeout", daemon=True)
            self._threads[self._timer] = True
            self._timer.start()
        elif self._timer_waiting:
            self._deadline_set.notify()

    def _timer_main(self) -> None:
        """Fail items that overran ``task_timeout`` and destroy their workers."""
        while True:
            with self._lock:
                if self._closed and not any(s.deadline for s in self._slots):
                    self._timer = None  # a deadline set later starts a new timer
                    return
                now = time.monotonic()
                expired = [
                    (s, s.running) for s in self._slots if s.deadline is not None and s.deadline <= now
                ]
                if not expired:
                    pending = [s.deadline for s in self._slots if s.deadline is not None]
                    self._timer_waiting = True
                    self._deadline_set.wait(min(pending) - now if pending else _WAIT_SLICE)
                    self._timer_waiting = False
                    continue
            for slot, job in expired:
                self._abandon(slot, job, WorkTimeoutError(
                    f"item ran longer than task_timeout={self._task_timeout}s; its worker was "
                    "destroyed and replaced (raise task_timeout if the work is legitimately slow)"))

