"""Child-side helpers for the process-worker tests (test_util, test_map).

Everything here is module-level, so spawn and forkserver children can import it by
reference (``tests.children.workers``). Functions meant for ``function_worker`` and
``WorkPool.map`` take one item; the ``*_child`` functions are channel targets for
``spawned_worker``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional, Tuple

from tests._procs import write_pid
from workerkit.comm import ChildCommChannel

# -- function_worker / WorkPool.map targets ------------------------------------------


class MyError(Exception):
    """A user-defined exception raised in the child."""


def double(x: int) -> int:
    return x * 2


def square(x: int) -> int:
    return x * x


def identity(x: Any) -> Any:
    return x


def pid_of(_x: Any) -> int:
    """The pid of the child that ran the item."""
    return os.getpid()


def double_with_pid(x: int) -> Tuple[int, int]:
    return x * 2, os.getpid()


def fail_on_three(x: int) -> int:
    """Doubles, but raises ValueError for 3 (the raise line is looked up by the tests)."""
    if x == 3:
        raise ValueError(f"three is not allowed (got {x})")  # RAISE-VALUE-ERROR
    return x * 2


def raise_my_error(x: Any) -> Any:
    raise MyError(f"custom failure for {x!r}")


def slow_double(x: int) -> int:
    """Doubles after a short, item-dependent nap, so items finish out of order."""
    time.sleep(0.01 * (x % 5))
    return x * 2


def exit_on_negative(x: int) -> int:
    """-1: ``sys.exit(3)``; -2: ``os._exit(3)``; anything else: doubled."""
    if x == -1:
        sys.exit(3)
    if x == -2:
        os._exit(3)
    return x * 2


def return_lambda(x: Any) -> Any:
    """Returns something that cannot be pickled when x is 'lambda'."""
    if x == "lambda":
        return lambda: x
    return x


def byte_length_and_copy(data: bytes) -> bytes:
    """Echo a bytes payload (a real round trip through the child)."""
    assert isinstance(data, bytes)
    return bytes(data)


# Set by the initializers below, in the child.
INIT_TAG: Optional[str] = None
INIT_CALLS = 0


def set_tag(tag: str) -> None:
    """Initializer: remember ``tag`` and count the calls in this process."""
    global INIT_TAG, INIT_CALLS
    INIT_TAG = tag
    INIT_CALLS += 1


def read_tag(_x: Any) -> Tuple[Optional[str], int, int]:
    """What the initializer left behind: (tag, number of initializer calls, pid)."""
    return INIT_TAG, INIT_CALLS, os.getpid()


def failing_initializer(message: str) -> None:
    raise RuntimeError(message)


def sleeping_initializer(seconds: float) -> None:
    time.sleep(seconds)


# -- spawned_worker channel targets ---------------------------------------------------




def delayed_ready_child(delay: float) -> None:
    """Sends 'ready' (with its pid) only after ``delay`` seconds; then doubles requests."""
    ch = ChildCommChannel()
    ch.listen_for("request", lambda e, rm: ch.send("response", {"data": e["data"] * 2}))
    time.sleep(delay)
    ch.send("ready", {"pid": os.getpid()})


def farewell_child(pidfile: Optional[str] = None) -> None:
    """Doubles requests; answers 'bye' with 'bye-ack', then stops listening."""
    write_pid(pidfile)
    ch = ChildCommChannel()
    ch.listen_for("request", lambda e, rm: ch.send("response", {"data": e["data"] * 2}))

    def bye(event: Any, remove: Any) -> None:
        ch.send("bye-ack", {"pid": os.getpid()})

    ch.listen_for("bye", bye)
    ch.send("ready")


def silent_child() -> None:
    """Never says ready: blocks in C (time.sleep) until it is ended."""
    time.sleep(1000)


def hanging_doubler() -> None:
    """Doubles each request, except that a request with ``hang`` is never answered
    (its handler sleeps, blocking the reader: the test kills this child meanwhile)."""
    ch = ChildCommChannel()

    def on_request(event: Any, remove: Any) -> None:
        if event.get("hang"):
            time.sleep(1000)
        time.sleep(0.01)  # a little real work, so both workers get items
        ch.send("response", {"data": event["data"] * 2, "pid": os.getpid()})

    ch.listen_for("request", on_request)
    ch.send("ready")


# -- executor_worker targets (run in executor threads or processes) ---------------------


def triple_or_fail(x: int) -> int:
    if x == 7:
        raise KeyError(f"no seven ({x})")
    return x * 3


# -- more function_worker targets -------------------------------------------------------


def nap_or_double(x: int) -> Tuple[int, int]:
    """Negative items sleep 30 s (in C); others are doubled. Returns (value, pid)."""
    if x < 0:
        time.sleep(30)
    return x * 2, os.getpid()


_HOARD = []


def hoard(megabytes: int) -> Tuple[int, int]:
    """Keep ``megabytes`` MB of touched memory alive in this child; return (pid, total MB)."""
    _HOARD.append(b"\x01" * (megabytes * 1024 * 1024))
    return os.getpid(), sum(len(b) for b in _HOARD) // (1024 * 1024)


class _ExplodesOnLoad:
    """Pickles fine; unpickling it raises (wherever that happens)."""

    def __reduce__(self) -> Any:
        return (_explode, ("cannot rebuild this object",))


def _explode(message: str) -> None:
    raise RuntimeError(message)


def make_exploding(x: Any) -> Any:
    """Returns a value that pickles in the child but fails to unpickle in the parent."""
    if x == "explode":
        return _ExplodesOnLoad()
    return x


def exploding_item() -> Any:
    """An item that pickles in the parent but fails to unpickle in the child."""
    return _ExplodesOnLoad()


# -- chunk and pipeline targets -----------------------------------------------------------

CALLS = 0


def count_or_fail(x: int) -> int:
    """How many items this child has run, this one included; raises for multiples of 5,
    so a chunk's results show that each of its items ran exactly once, in order."""
    global CALLS
    CALLS += 1
    if x % 5 == 0:
        raise ValueError(f"multiple of five: {x}")
    return CALLS


def pad_or_exit(item: Tuple[int, bytes]) -> bytes:
    """Echo the padding (a large result for a large item); a negative number ends the child."""
    number, padding = item
    if number < 0:
        os._exit(3)
    return padding


def stop_on_three(x: int) -> int:
    """Doubles, but raises StopIteration for 3 (an error like any other, not an end)."""
    if x == 3:
        raise StopIteration("three stops here")
    return x * 2


def pid_or_fail_on_five(x: int) -> Tuple[int, int]:
    if x == 5:
        raise ValueError("five")
    return x, os.getpid()


def kill_on_three(item: Any) -> int:
    """Item 3 (or (3, payload)) ends its child after a short nap; others are returned."""
    number = item if isinstance(item, int) else item[0]
    if number == 3:
        time.sleep(0.3)
        os._exit(7)
    return int(number)


def nap_pid(_x: Any) -> int:
    time.sleep(0.05)
    return os.getpid()


def big_result(_x: Any) -> bytes:
    return b"r" * (4 << 20)


def nap_if_negative(x: float) -> float:
    """Items below zero sleep ``-x`` seconds first; every item comes back doubled."""
    if x < 0:
        time.sleep(-x)
    return x * 2


def nap_then_maybe_fail(item: Tuple[float, bool]) -> float:
    """Sleep ``item[0]`` seconds, then raise if ``item[1]`` (saying how long it slept)."""
    delay, fail = item
    time.sleep(delay)
    if fail:
        raise ValueError(f"failed after {delay}")
    return delay
