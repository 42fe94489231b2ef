"""Parent/child channels over ``multiprocessing`` pipes (see :mod:`workerkit.comm.channel`)."""

from __future__ import annotations

from ._framing import CommEvent, MessageDecodeError
from .channel import ProcessCommChannel
from .child import ChildCommChannel
from .parent import ParentCommChannel

__all__ = [
    "CommEvent",
    "ProcessCommChannel",
    "ParentCommChannel",
    "ChildCommChannel",
    "MessageDecodeError",
]
