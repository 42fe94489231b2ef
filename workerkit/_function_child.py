"""The child side of :func:`workerkit.function_worker`: a loop that runs ``fn(item)``.

The parent's pool thread owns the worker exclusively, so the function protocol skips the
listener machinery and talks over the channel's connection directly: one frame out, one
frame back, no reader thread and no futures on either side.

Frames (``send_bytes`` payloads)::

    parent -> child   b"C" + pickle(item)               call fn(item)
    child -> parent   b"R" + pickle(value)              fn returned value
                      b"E" + pickle((message, type, tb)) fn raised (or the item/result
                                                        could not be (un)pickled)
                      b"!" + pickle((message, type, tb)) the initializer failed
                      b"K"                              ready: the initializer is done
    parent -> child   b"B" + pickle([item, ...])        call fn on each item of a chunk
    child -> parent   b"V" + pickle([value, ...])           every item of the chunk succeeded
                      b"S" + pickle([(ok, value_or_error_description), ...])  some failed
"""

from __future__ import annotations

import io
import os
import pickle
import select
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ._run import AllOk
from .errors import RemoteError

CALL = b"C"
RESULT = b"R"
ERROR = b"E"
INIT_ERROR = b"!"
READY = b"K"
BATCH = b"B"
BATCH_RESULT = b"S"
BATCH_VALUES = b"V"

PROTOCOL = pickle.HIGHEST_PROTOCOL
# How long a child stays awake for its next request after a reply (see _Spinner).
SPIN_SECONDS = 40e-6
_CAN_SPIN = hasattr(select, "poll") and hasattr(os, "sched_yield")

__all__ = [
    "CALL", "RESULT", "ERROR", "INIT_ERROR", "READY", "BATCH", "BATCH_RESULT", "BATCH_VALUES", "PROTOCOL",
    "batch_results", "describe_error", "function_main", "merge_results", "pickled", "remote_error",
    "split_unpicklable",
]


def describe_error(exc: BaseException) -> Tuple[str, str, str]:
    """``(message, "module.qualname", formatted traceback)`` of an exception, all picklable."""
    kind = type(exc)
    name = f"{kind.__module__}.{kind.__qualname__}"
    formatted = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    return str(exc), name, formatted


_SCALARS = frozenset((int, float, bool, type(None)))
_SHORT = frozenset((str, bytes))


def pickled(obj: Any) -> Union[bytes, memoryview]:
    """``obj`` pickled, without copying a large payload: ``pickle.dumps`` copies a big
    buffer into its output several times (measured: 1.1 ms per MB of bytes, against 31 us
    through a file), so only small scalars and short strings take it."""
    kind = type(obj)
    if kind in _SCALARS or (kind in _SHORT and len(obj) < 4096):
        return pickle.dumps(obj, PROTOCOL)
    buf = io.BytesIO()
    pickle.dump(obj, buf, PROTOCOL)
    return buf.getbuffer()


def split_unpicklable(
    items: Sequence[Any], error: BaseException
) -> Tuple[List[Any], Dict[int, BaseException]]:
    """For a chunk that failed to pickle with ``error``: the items that pickle, and the
    pickling error of each one that does not, by position (so only those fail, each at its
    own place). When no single item is to blame, every item fails with ``error``."""
    good: List[Any] = []
    errors: Dict[int, BaseException] = {}
    for position, item in enumerate(items):
        try:
            pickled(item)
        except Exception as exc:
            errors[position] = exc
        else:
            good.append(item)
    if not errors:
        return [], {position: error for position in range(len(items))}
    return good, errors


def merge_results(
    good_results: Sequence[Any], errors: Dict[int, BaseException], count: int
) -> List[Tuple[bool, Any]]:
    """A chunk's ``[(ok, value or error)]``: ``errors`` at their positions, the results of
    the other items (``(ok, value)`` pairs, in order) in between."""
    rest = iter(good_results)
    return [(False, errors[i]) if i in errors else next(rest) for i in range(count)]


def _error_body(exc: BaseException) -> bytes:
    """The body of an ``E`` or ``!`` frame: the error, described (picklable anywhere), and
    when it was raised (``time.monotonic()``, one clock for every process of the machine),
    so the parent can tell which error of a call came first in time."""
    at = time.monotonic()
    return pickle.dumps((*describe_error(exc), at), PROTOCOL)


def remote_error(frame: Any, prefix: str = "") -> RemoteError:
    """Parent side: the ``RemoteError`` an ``E`` or ``!`` frame describes."""
    return _described_error(pickle.loads(memoryview(frame)[1:]), prefix)


def batch_results(frame: Any) -> Optional[List[Any]]:
    """Parent side: a chunk's results from a ``V`` frame (an ``AllOk`` list of values) or
    an ``S`` frame (``[(ok, value or RemoteError)]``); None for any other frame."""
    tag = frame[:1]
    if tag == BATCH_VALUES:
        return AllOk(pickle.loads(memoryview(frame)[1:]))
    if tag == BATCH_RESULT:
        return [
            (True, value) if ok else (False, _described_error(value))
            for ok, value in pickle.loads(memoryview(frame)[1:])
        ]
    return None


def _described_error(described: Tuple[Any, ...], prefix: str = "") -> RemoteError:
    """The ``RemoteError`` of ``(message, type, traceback)``, plus when it was raised where
    the child said so (an unpicklable result's description does not)."""
    message, remote_type, remote_tb, *raised_at = described
    error = RemoteError(prefix + message, remote_type, remote_tb)
    if raised_at:
        error.raised_at = raised_at[0]
    return error


def function_main(fn: Callable[[Any], Any], initializer: Any, initargs: Sequence[Any]) -> None:
    """Child entry point: run the initializer, say ready, then serve calls until EOF."""
    from .comm import ChildCommChannel

    conn = ChildCommChannel().connection
    try:
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception as exc:
                conn.send_bytes(INIT_ERROR + _error_body(exc))
                return
        conn.send_bytes(READY)
        _serve(conn, fn)
    except (EOFError, OSError):
        return  # the parent closed the channel (or went away): we are done, quietly


def _serve(conn: Any, fn: Callable[[Any], Any]) -> None:
    """Answer call frames until the parent closes the channel."""
    from .comm._wire import FrameReader, write_tagged

    fd = conn.fileno()
    reader = FrameReader(fd)
    recv, loads = reader.read, pickle.loads
    wait = _Spinner(fd, reader.buffered) if _CAN_SPIN else None
    while True:
        if wait is not None:
            wait()
        frame = recv()
        reply: Tuple[bytes, Union[bytes, memoryview]]
        try:
            if frame[:1] == BATCH:
                reply = _chunk_reply(fn, loads(memoryview(frame)[1:]))
            else:
                reply = RESULT, pickled(fn(loads(memoryview(frame)[1:])))
        except Exception as exc:  # fn raised, or the item/result failed to (un)pickle
            reply = ERROR, _error_body(exc)
        write_tagged(fd, *reply)


class _Spinner:
    """Waits a few microseconds, awake, for the parent's next request before the child's
    blocking read would put it to sleep.

    A pool writes a worker's next item as soon as it reads its reply, usually within tens
    of microseconds; a child asleep by then must be woken (on a virtual machine an
    inter-processor interrupt, often costlier than a tiny item). Measured on a 2-vCPU VM,
    tiny items, 2 workers: about 1.3x the items per second. The spin yields the CPU on
    every turn, so a parent sharing it runs first. It backs off when the next request
    keeps coming late (a slow source, a pool with little work): after each miss in a row
    it skips twice as many items (up to 63), so a child waiting for work burns at most a
    few microseconds per item.
    """

    __slots__ = ("_poll", "_buffered", "_misses", "_skip")

    def __init__(self, fd: int, buffered: Callable[[], bool]) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._poll = poller.poll
        self._buffered = buffered  # a request already read ahead needs no wait
        self._misses = 0
        self._skip = 0

    def __call__(self) -> None:
        if self._skip:
            self._skip -= 1
            return
        if self._buffered():
            return
        poll, clock, pause = self._poll, time.perf_counter, os.sched_yield
        end = clock() + SPIN_SECONDS
        while not poll(0):
            if clock() >= end:
                self._misses = misses = min(self._misses + 1, 6)
                self._skip = (1 << misses) - 1
                return
            pause()
        self._misses = 0


def _chunk_reply(fn: Callable[[Any], Any], items: Sequence[Any]) -> Tuple[bytes, Union[bytes, memoryview]]:
    """Run ``fn`` once on each item of a chunk. The common case (no error) runs as one
    tight loop and sends the plain list of values; otherwise every item gets its own
    ``(ok, value or error)``, so one item's error (or unpicklable result) never costs the
    others theirs."""
    values: List[Any] = []
    append = values.append
    try:
        # A plain loop, not map(): map would take a StopIteration raised by fn for the end
        # of the chunk and drop the items after it.
        for item in items:
            append(fn(item))
    except Exception as exc:  # values holds the items before the one that raised
        return _mixed_reply(fn, items, values, exc, time.monotonic())
    try:
        return BATCH_VALUES, pickled(values)
    except Exception:  # a value does not pickle: find which, below
        return BATCH_RESULT, pickled([_picklable(True, value) for value in values])


def _mixed_reply(
    fn: Callable[[Any], Any], items: Sequence[Any], values: List[Any], first: BaseException,
    first_at: float,
) -> Tuple[bytes, Union[bytes, memoryview]]:
    """The reply for a chunk whose item ``len(values)`` raised ``first`` (at ``first_at``):
    the items before it succeeded, the ones after it run one by one. Each error carries
    when it was raised (``time.monotonic()``, one clock for every process of the machine),
    so the parent can tell which error of a call came first in time."""
    results: List[Tuple[bool, Any]] = [(True, value) for value in values]
    results.append((False, (*describe_error(first), first_at)))
    for item in items[len(values) + 1 :]:
        try:
            results.append((True, fn(item)))
        except Exception as exc:
            at = time.monotonic()
            results.append((False, (*describe_error(exc), at)))
    return BATCH_RESULT, pickled([_picklable(ok, value) for ok, value in results])


def _picklable(ok: bool, value: Any) -> Tuple[bool, Any]:
    """``(ok, value)``, or the pickling error when ``value`` cannot travel."""
    if ok:
        try:
            pickle.dumps(value, PROTOCOL)
        except Exception as exc:
            return False, describe_error(exc)
    return ok, value
