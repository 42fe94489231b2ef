"""Bookkeeping of one ``process``/``stream`` call: counts, failures, callbacks, progress.

Errors are per call: each call gets a fresh :class:`Run`, so a failure is never carried
over into a later call.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any, Callable, Generic, List, Optional, TypeVar

from ._credits import Credits
from ._progress import Progress
from ._results import Batch
from ._slot import Job
from .outcome import Outcome, ProcessSummary, new_outcome

X = TypeVar("X")
R = TypeVar("R")

logger = logging.getLogger("workerkit")

__all__ = ["AllOk", "Run", "as_pairs"]


class AllOk(list):  # type: ignore[type-arg]
    """A chunk's result when every item succeeded: the plain values, in item order (the
    general form is ``[(ok, value or error)]``). Saves a tuple per item on the common path."""


def as_pairs(results: List[Any]) -> List[Any]:
    """A chunk's result in the general form ``[(ok, value or error)]``."""
    return [(True, value) for value in results] if type(results) is AllOk else results


class Run(Generic[X, R]):
    """Counts and callbacks of one call; threads report finished items here."""

    def __init__(
        self,
        on_complete: Optional[Callable[[Outcome[X, R]], Any]] = None,
        on_error: Optional[Callable[[Outcome[X, R]], Any]] = None,
        progress: Optional[Progress] = None,
        sink: Optional[Callable[[Any], Any]] = None,
    ):
        # sink: a stream's hand-off; gets each outcome, or a chunk's as one ``Batch``.
        self.on_complete = on_complete
        self.on_error = on_error
        self.progress = progress
        self.sink = sink
        # Successful outcomes are only built when someone will look at them.
        self.wants_successes = on_complete is not None or sink is not None
        self.lock = threading.Lock()
        # Guards against a lost wake-up between "pending > 0" and the caller's wait.
        self._idle = threading.Condition(self.lock)
        self._waiting = 0  # threads in wait(): only they need a notify
        self._progress_lock = threading.Lock()
        self.reported = 0  # items reported to progress, under _progress_lock
        self.stopping = False
        # The dispatcher's wake-up signal while it waits for a free slot (pre-acquired).
        self.wakeup = threading.Lock()
        self.wakeup.acquire()
        self.submitted = 0
        self.feed: Any = None  # the call's Feed, once dispatching started
        self.completed = 0
        self.failed = 0
        self.failures: List[Outcome[X, R]] = []
        self.first_error: Optional[BaseException] = None
        self.first_error_at = 0.0  # when first_error happened (time.monotonic())
        # Set when the call stopped because its workers cannot be created.
        self.breaker_error: Optional[BaseException] = None
        self.started = time.monotonic()
        # A call made from a callback on the multiplexer's thread: its items never park
        # (the multiplexer is busy in that callback), and ``pump`` (when its waits run on
        # that thread) serves the multiplexer instead of blocking it.
        self.no_park = False
        self.interrupted = False  # Ctrl-C: an item not started yet fails instead of starting
        self.pump: Optional[Callable[[float], None]] = None
        # A stream's outcomes that the multiplexer holds for a moment and then hands to
        # ``sink`` at once (one wake-up of the consumer per burst; see WorkPool._hold): at
        # most ``hold_limit`` of them; 0: never held.
        self.outbox: List[Outcome[X, R]] = []
        self.hold_limit = 0
        self._credits: Optional[Credits] = None
        self._growth = 0  # credits added to the stream's window when it first holds

    def allow_holding(self, credits: Credits, limit: int, growth: int) -> None:
        """Let the multiplexer hold up to ``limit`` outcomes; the first time it does, the
        stream's window grows by ``growth`` credits (a burst must not use up the credit
        the workers need to go on)."""
        self._credits, self.hold_limit, self._growth = credits, limit, growth

    def hold(self, index: int, item: X, value: R, worker_id: Any, duration: float) -> bool:
        """On the multiplexer: keep a stream's finished item for :meth:`flush`; True when
        it is the first one held since the last flush."""
        outbox = self.outbox
        outbox.append(new_outcome(index, item, value, None, worker_id, duration))
        if self._growth and self._credits is not None:
            growth, self._growth = self._growth, 0
            self._credits.release(growth)
        return len(outbox) == 1

    def flush(self) -> None:
        """Hand the held outcomes to the sink and count them."""
        held, self.outbox = self.outbox, []
        if not held:
            return
        assert self.sink is not None
        self.sink(held[0] if len(held) == 1 else Batch(held))
        with self.lock:
            self.completed += len(held)
            self._notify_if_idle()

    def submit(self, count: int = 1) -> int:
        """Count ``count`` pulled items as in flight; return the first one's index. Under
        the feed's lock."""
        index = self.submitted
        self.submitted = index + count  # only written under the feed's lock
        return index

    def record(
        self, job: Job, value: Any, error: Optional[BaseException], worker_id: Any, duration: float
    ) -> None:
        """Report a job's outcome(s): ``error`` fails every item of the job; else ``value``
        is the item's value, or a chunk's results (``AllOk`` values, or ``[(ok, value or
        error)]``); each item of a chunk gets an equal share of its duration."""
        index = job.index
        if job.items is None:
            if error is None:
                self.success(index, job.item, value, worker_id, duration)
            else:
                self.failure(index, job.item, error, worker_id, duration)
            return
        share = duration / len(job.items)
        if error is None and type(value) is AllOk:
            self.successes(index, job.items, value, worker_id, share)
            return
        if error is None and all(done for done, _ in value):
            self.successes(index, job.items, [result for _, result in value], worker_id, share)
            return
        for offset, item in enumerate(job.items):
            if error is not None:
                self.failure(index + offset, item, error, worker_id, share)
                continue
            done, result = value[offset]
            if done:
                self.success(index + offset, item, result, worker_id, share)
            else:
                self.failure(index + offset, item, result, worker_id, share)

    def success(self, index: int, item: X, value: R, worker_id: Any, duration: float) -> None:
        """Record a finished item."""
        if self.wants_successes:
            outcome: Outcome[X, R] = new_outcome(index, item, value, None, worker_id, duration)
            on_complete = self.on_complete
            if on_complete is not None:
                try:
                    on_complete(outcome)
                except BaseException:  # as in _call: never strand the item
                    logger.exception("workerkit: callback %r raised for item %d", on_complete, index)
            if self.sink is not None:
                self.sink(outcome)
        if self.progress is not None:
            self._advance()
        with self.lock:
            self.completed += 1
            if self._waiting:
                self._notify_if_idle()

    def failure(
        self, index: int, item: X, error: BaseException, worker_id: Any, duration: float
    ) -> None:
        """Record a failed item; the first failure in time becomes the call's ``__cause__``
        (a child's error says when it was raised: its reply may be recorded much later)."""
        outcome: Outcome[X, R] = new_outcome(index, item, None, error, worker_id, duration)
        raised_at = getattr(error, "raised_at", None)
        when = time.monotonic() if raised_at is None else raised_at
        with self.lock:
            self.failures.append(outcome)
            if self.first_error is None or when < self.first_error_at:
                self.first_error, self.first_error_at = error, when
        self._call(self.on_error, outcome)
        if self.sink is not None:
            self.sink(outcome)
        if self.progress is not None:
            self._advance()
        with self.lock:
            self.failed += 1
            self._notify_if_idle()

    def successes(
        self, index: int, items: List[X], values: List[Any], worker_id: Any, duration: float
    ) -> None:
        """Record a chunk's items that all succeeded (``values``: their values): per item
        for callbacks, at once for counts and progress."""
        sink, on_complete = self.sink, self.on_complete
        if sink is not None and on_complete is None:  # a stream: one hand-off for the chunk
            sink(Batch([
                new_outcome(at, item, value, None, worker_id, duration)
                for at, item, value in zip(itertools.count(index), items, values)
            ]))
        elif self.wants_successes:
            call = self._call
            for item, value in zip(items, values):
                outcome: Outcome[X, R] = new_outcome(index, item, value, None, worker_id, duration)
                index += 1
                if on_complete is not None:
                    call(on_complete, outcome)
                if sink is not None:
                    sink(outcome)
        if self.progress is not None:
            self._advance(len(items))
        with self.lock:
            self.completed += len(items)
            self._notify_if_idle()

    @property
    def pending(self) -> int:
        """Items pulled and not finished yet."""
        return self.submitted - self.completed - self.failed

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until no item is in flight; return False on timeout.

        Called by the dispatcher after it closed the feed, so ``submitted`` no longer moves.
        """
        if self.pump is not None:
            while self.pending:
                self.pump(0.05)
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            self._waiting += 1
            try:
                while self.pending:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._idle.wait(remaining)
            finally:
                self._waiting -= 1
        return True

    def summary(self) -> ProcessSummary:
        with self.lock:
            return ProcessSummary(
                submitted=self.submitted,
                completed=self.completed,
                failed=self.failed,
                failures=list(self.failures),
                duration=time.monotonic() - self.started,
            )

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def _notify_if_idle(self) -> None:
        """Wake the waiting dispatcher once the last item finished. Call with the lock held."""
        if self._waiting and self.completed + self.failed >= self.submitted:
            self._idle.notify_all()

    def _advance(self, count: int = 1) -> None:
        """Report ``count`` more finished items (their own count: items finishing together
        never report the same number, and the last report is the total)."""
        assert self.progress is not None
        # Progress reporters (tqdm) are not thread-safe: one update at a time.
        with self._progress_lock:
            self.reported += count
            try:
                self.progress.update(self.reported)
            except Exception:  # like a callback's: logged, and the item is still counted
                logger.exception("workerkit: the progress reporter raised")

    @staticmethod
    def _call(callback: Optional[Callable[[Outcome[X, R]], Any]], outcome: Outcome[X, R]) -> None:
        if callback is None:
            return
        try:
            callback(outcome)
        except BaseException:  # even SystemExit: a callback must never strand the item
            logger.exception("workerkit: callback %r raised for item %d", callback, outcome.index)
