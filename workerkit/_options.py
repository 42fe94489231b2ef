"""Validation of pool options: bad input fails at the call that passed it, saying what to do."""

from __future__ import annotations

import os
from typing import Any, Optional

__all__ = [
    "check_process_options", "check_positive", "default_max_workers", "resolve_max_workers", "stream_window",
    "held_stream_window",
]

_PROCESS_OPTIONS = ("on_complete", "on_error", "raise_on_error", "progress", "chunksize")


def check_process_options(**options: Any) -> None:
    """Reject bad ``process`` options at the call that passed them (``start`` included)."""
    unknown = sorted(set(options) - set(_PROCESS_OPTIONS))
    if unknown:
        known = ", ".join(_PROCESS_OPTIONS)
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; process takes {known}")
    for name in ("on_complete", "on_error"):
        callback = options.get(name)
        if callback is not None and not callable(callback):
            raise TypeError(f"{name} must be a callable taking an Outcome, got {callback!r}")
    progress = options.get("progress")
    if progress not in (None, True, False) and not callable(progress):
        raise TypeError(f"progress must be True, False, None or a callable(done, total), got {progress!r}")
    check_chunksize(options.get("chunksize", 1))


def check_chunksize(chunksize: Any) -> int:
    """``chunksize`` as given, or a ValueError saying what it must be."""
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(
            f"chunksize must be an int >= 1 (items per message to a worker), got {chunksize!r}"
        )
    return chunksize


def default_max_workers() -> int:
    """The CPUs available to this process (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_positive(name: str, value: Optional[float], *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or None, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} (or None for no limit), got {value!r}")


def resolve_max_workers(max_workers: Optional[int]) -> int:
    """``max_workers`` checked, or the CPU count for None."""
    if max_workers is None:
        return default_max_workers()
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be an int >= 1 (or None for the CPU count), got {max_workers!r}")
    return max_workers


def stream_window(max_workers: int, chunksize: int) -> int:
    """How many items a ``stream`` may run ahead of its consumer (pulled, not yet taken):
    16 chunks or items, 4 per worker beyond 4 workers."""
    return max(16, 4 * max_workers) * chunksize


def held_stream_window(max_workers: int) -> int:
    """The same window once the multiplexer holds a stream's outcomes to hand them over in
    bursts (one item per message): at least 128 items, so a burst never uses up the credit
    the workers need to go on."""
    return max(128, 8 * max_workers)
