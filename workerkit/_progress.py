"""Progress reporting for ``WorkPool.process``: a tqdm bar or a user callable."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

ProgressArg = Union[bool, Callable[[int, Optional[int]], Any], None]

__all__ = ["ProgressArg", "Progress", "make_progress", "source_length"]


def source_length(source: object) -> Optional[int]:
    """The number of items a source will yield when it can tell cheaply (``len()``), else None.

    Input sources and :class:`DynamicIterator` are excluded: their ``len()`` (if any) counts
    what is queued now, not what will come.
    """
    from .input import DynamicIterator

    if isinstance(source, DynamicIterator) or hasattr(source, "has_next"):
        return None
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        return None


class Progress:
    """Reports ``(done, total)`` to a user callable after each finished item."""

    def __init__(self, callback: Callable[[int, Optional[int]], Any], total: Optional[int]):
        self._callback = callback
        self.total = total

    def update(self, done: int) -> None:
        self._callback(done, self.total)

    def close(self) -> None:
        """Nothing to release for a callable."""


class _TqdmProgress(Progress):
    """Draws a tqdm bar (the optional ``progress`` extra)."""

    def __init__(self, total: Optional[int], desc: Optional[str]):
        try:
            from tqdm import tqdm
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "progress=True needs tqdm: install it with "
                "`python -m pip install 'workerkit[progress]'` (or `pip install tqdm`), "
                "or pass a callable(done, total) as progress"
            ) from exc
        self._bar = tqdm(total=total, desc=desc, unit="item")
        super().__init__(self._advance, total)

    def _advance(self, done: int, total: Optional[int]) -> None:
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def make_progress(progress: ProgressArg, total: Optional[int], desc: Optional[str]) -> Optional[Progress]:
    """Turn the ``progress`` argument of ``process`` into a reporter, or None for no progress."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return _TqdmProgress(total, desc)
    if callable(progress):
        return Progress(progress, total)
    raise TypeError(f"progress must be True, False, None or a callable(done, total), got {progress!r}")
