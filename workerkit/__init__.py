"""workerkit: pools of workers and conversations with child processes, from blocking code.

The package is laid out as the work flows:
``input`` (sources) -> ``pool`` (dispatch) -> ``worker`` -> ``comm`` (channels over pipes,
parent and child ends) -> ``util`` (child processes as pool workers); ``errors`` holds the
exceptions.
"""

from .errors import (
    ChannelClosedError,
    PoolClosedError,
    RemoteError,
    WorkerKitError,
    WorkPoolError,
    WorkTimeoutError,
)
from .input import DynamicIterator, InputSource, IterableInputSource
from .outcome import Outcome, PoolStats, ProcessSummary
from .pool import WorkPool
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "InputSource",
    "IterableInputSource",
    "DynamicIterator",
    "Worker",
    "WorkPool",
    "Outcome",
    "ProcessSummary",
    "PoolStats",
    "WorkerKitError",
    "ChannelClosedError",
    "RemoteError",
    "WorkPoolError",
    "PoolClosedError",
    "WorkTimeoutError",
]
