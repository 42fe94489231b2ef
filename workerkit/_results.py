"""Turning a pool's outcomes into what ``stream`` and ``map`` yield: as they finish, in
input order, or as plain values with the first error raised."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, TypeVar

from ._credits import Credits
from .outcome import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from .pool import WorkPool

T = TypeVar("T")

__all__ = ["END", "Batch", "as_finished", "in_order", "map_results"]

END: Any = object()  # put after the last outcome of a stream


class Batch(list):  # type: ignore[type-arg]
    """Outcomes handed to a stream's consumer at once: a chunk's, or a burst the
    multiplexer held (one hand-off, not one per item). Its credits go back when the
    consumer takes it, so at most one batch more than the window waits in memory."""


def as_finished(get: Callable[[], Any], credits: Credits) -> Iterator[Any]:
    """Yield outcomes (taken with ``get()``) in the order they finish."""
    while True:
        got = get()
        if got is END:
            return
        if type(got) is Batch:
            credits.release(len(got))
            yield from got
            continue
        credits.release()
        yield got


def in_order(get: Callable[[], Any], credits: Credits) -> Iterator[Any]:
    """Yield outcomes (taken with ``get()``) in input order, holding back those that
    finished early."""
    early: Dict[int, Any] = {}
    wanted = 0
    while True:
        got = get()
        if got is END:
            break
        for outcome in got if type(got) is Batch else (got,):
            early[outcome.index] = outcome
        while wanted in early:
            ready = early.pop(wanted)
            wanted += 1
            credits.release()  # per item yielded: what waits here stays within the window
            yield ready
    for index in sorted(early):  # only when the dispatch stopped early
        yield early[index]


def map_results(pool: WorkPool[Any, T], outcomes: Iterator[Outcome[Any, T]]) -> Iterator[T]:
    """Yield each outcome's value; raise the first error; always shut the pool down."""
    try:
        for outcome in outcomes:
            yield outcome.result()
    finally:
        outcomes.close()  # type: ignore[attr-defined]
        pool.shutdown()

