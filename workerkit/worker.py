"""The :class:`Worker` base: the object a pool hands items to.

A worker is any object with ``execute(item) -> result``. The rest of the lifecycle
(``id``, ``active``, ``init``, ``release``, ``destroy``) is optional; the pool falls back
to the defaults defined here when a worker lacks them.
"""

from __future__ import annotations

import itertools
from typing import Any, Generic, TypeVar

X = TypeVar("X", contravariant=True)
R = TypeVar("R", covariant=True)

__all__ = ["Worker", "next_worker_id"]

_ids = itertools.count(1)


def next_worker_id() -> int:
    """A process-wide unique id for workers that do not bring their own."""
    return next(_ids)


class Worker(Generic[X, R]):
    """Base class for workers, with the default lifecycle.

    Subclasses implement :meth:`execute`. ``active`` is ``True`` until the worker says it
    must not be reused; the pool then destroys it after the current item.
    """

    active: bool = True

    def __init__(self) -> None:
        self._worker_id = next_worker_id()

    @property
    def id(self) -> Any:
        """Stable, unique id of this worker."""
        wid = self.__dict__.get("_worker_id")
        if wid is None:  # a subclass that skipped ``super().__init__()``
            wid = self.__dict__["_worker_id"] = next_worker_id()
        return wid

    def init(self) -> None:
        """Called once, right after the factory created the worker."""

    def execute(self, item: X) -> R:
        """Process one item and return its result. Subclasses override this."""
        raise TypeError(f"{type(self).__name__} must override execute(item) to process items")

    def release(self) -> None:
        """Called after each execute, before the worker is reused."""

    def destroy(self) -> None:
        """Called exactly once, when the pool discards the worker."""
