"""Pool helpers shared by the tests: a worker that runs a plain function, a pool of them,
and a bounded wait for a condition."""

from __future__ import annotations

import time
from typing import Any, Callable

from workerkit import Worker, WorkPool

WAIT = 10.0  # generous bound for something that must happen


class FnWorker(Worker[Any, Any]):
    """A worker (execute only) that runs a plain function on the pool thread."""

    def __init__(self, fn: Callable[[Any], Any]):
        super().__init__()
        self.fn = fn

    def execute(self, item: Any) -> Any:
        return self.fn(item)


def pool_of(fn: Callable[[Any], Any], **kwargs: Any) -> WorkPool[Any, Any]:
    """A pool of :class:`FnWorker` running ``fn``."""
    return WorkPool(lambda: FnWorker(fn), **kwargs)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate`` until true; False if it still is not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
