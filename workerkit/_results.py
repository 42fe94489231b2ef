"""Turning a pool's outcomes into what ``stream`` and ``map`` yield: as they finish, in
input order, or as plain values with the first error raised."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, TypeVar

from .outcome import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from .pool import WorkPool

T = TypeVar("T")

__all__ = ["END", "as_finished", "in_order", "map_results"]

END: Any = object()  # put after the last outcome of a stream

def as_finished(get: Callable[[], Any], credits: threading.Semaphore) -> Iterator[Any]:
    """Yield outcomes (taken with ``get()``) in the order they finish."""
    while True:
        outcome = get()
        if outcome is END:
            return
        credits.release()
        yield outcome


def in_order(get: Callable[[], Any], credits: threading.Semaphore) -> Iterator[Any]:
    """Yield outcomes (taken with ``get()``) in input order, holding back those that
    finished early."""
    early: Dict[int, Any] = {}
    wanted = 0
    while True:
        outcome = get()
        if outcome is END:
            break
        early[outcome.index] = outcome
        while wanted in early:
            ready = early.pop(wanted)
            wanted += 1
            credits.release()
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

