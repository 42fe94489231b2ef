"""Value types a pool hands back: per-item :class:`Outcome`, per-call :class:`ProcessSummary`,
and the :class:`PoolStats` snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, List, Optional, TypeVar

X = TypeVar("X")
R = TypeVar("R")

__all__ = ["Outcome", "ProcessSummary", "PoolStats", "new_outcome"]


@dataclass(frozen=True)
class Outcome(Generic[X, R]):
    """What happened to one item: its position, input, value or error, worker and time."""

    index: int
    input: X
    value: Optional[R] = None
    error: Optional[BaseException] = None
    worker_id: Any = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the item succeeded."""
        return self.error is None

    def result(self) -> R:
        """Return the value, or raise the item's error."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


_new = object.__new__


def new_outcome(
    index: int, input: X, value: Optional[R], error: Optional[BaseException], worker_id: Any,
    duration: float,
) -> Outcome[X, R]:
    """``Outcome(index, input, value, error, worker_id, duration)``, built in a third of the
    time: a pool makes one per item, and a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``. The object is the same (equal, frozen, same repr)."""
    outcome: Outcome[X, R] = _new(Outcome)
    fields = outcome.__dict__
    fields["index"] = index
    fields["input"] = input
    fields["value"] = value
    fields["error"] = error
    fields["worker_id"] = worker_id
    fields["duration"] = duration
    return outcome


@dataclass(frozen=True)
class ProcessSummary:
    """The totals of one ``process`` call. Invariant: ``submitted == completed + failed``."""

    submitted: int
    completed: int
    failed: int
    failures: List[Outcome[Any, Any]] = field(default_factory=list)
    duration: float = 0.0


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool: workers now (alive/busy/idle), workers and items ever."""

    alive: int
    busy: int
    idle: int
    created: int
    destroyed: int
    completed: int
    failed: int
