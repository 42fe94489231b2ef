"""The exceptions workerkit raises.

Every error derives from :class:`WorkerKitError`, so ``except WorkerKitError`` catches
anything the library itself reports, while errors raised by user code (a worker's
``execute``, a source's ``next``) propagate as themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover - import cycle guard for type checkers only
    from .outcome import ProcessSummary

__all__ = [
    "WorkerKitError",
    "ChannelClosedError",
    "RemoteError",
    "WorkPoolError",
    "PoolClosedError",
    "WorkTimeoutError",
]


class WorkerKitError(Exception):
    """Base of every error workerkit raises on its own account."""


class ChannelClosedError(WorkerKitError):
    """The channel is closed: either end closed it, or the process at the other end died.

    ``exitcode`` is the child's exit code when the parent side saw the child end
    (negative for a signal, as in :attr:`multiprocessing.Process.exitcode`), else ``None``.
    """

    def __init__(self, message: str = "channel is closed", exitcode: Optional[int] = None):
        super().__init__(message)
        self.exitcode = exitcode

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.exitcode))


class RemoteError(WorkerKitError):
    """An exception raised in a child process, carried back to the parent.

    ``remote_type`` is the exception's ``module.qualname`` (``"builtins.ValueError"``),
    ``remote_traceback`` the child's formatted traceback; ``str()`` shows both.
    """

    # When the child raised it (``time.monotonic()``): a reply can reach the parent (and
    # be recorded) well after that, e.g. with a whole chunk, or after a slow callback.
    raised_at: Optional[float] = None

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = ""):
        super().__init__(message)
        self.message = message
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        head = f"{self.remote_type}: {self.message}" if self.remote_type else self.message
        if not self.remote_traceback:
            return head
        return f"{head}\n\nRemote traceback (in the child process):\n{self.remote_traceback}"

    def __reduce__(self) -> Any:
        state = {"raised_at": self.raised_at} if self.raised_at is not None else None
        return (type(self), (self.message, self.remote_type, self.remote_traceback), state)


class WorkPoolError(WorkerKitError):
    """``process`` finished with failed items, or stopped because workers cannot be made.

    ``summary`` holds the :class:`~workerkit.ProcessSummary` of the call; the first error
    to happen is chained as ``__cause__``.
    """

    def __init__(self, message: str, summary: Optional[ProcessSummary] = None):
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.summary))


class PoolClosedError(WorkerKitError):
    """The pool was shut down: it takes no more work. Create a new pool instead."""


class WorkTimeoutError(WorkerKitError, TimeoutError):
    """An execute (or a worker's ``init``) ran longer than its time limit."""
