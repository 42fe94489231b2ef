"""workerkit: pools of workers and conversations with child processes, from blocking code.

The package is laid out as the work flows:
``input`` (sources) -> ``pool`` (dispatch) -> ``worker`` -> ``comm`` (channels over pipes,
parent and child ends) -> ``util`` (child processes as pool workers); ``errors`` holds the
exceptions.
"""

from .comm import ChildCommChannel, CommEvent, ParentCommChannel, ProcessCommChannel
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
from .util import WorkUtil, executor_worker, function_worker, spawned_worker
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
    "CommEvent",
    "ProcessCommChannel",
    "ParentCommChannel",
    "ChildCommChannel",
    "spawned_worker",
    "function_worker",
    "executor_worker",
    "WorkUtil",
    "WorkerKitError",
    "ChannelClosedError",
    "RemoteError",
    "WorkPoolError",
    "PoolClosedError",
    "WorkTimeoutError",
]
