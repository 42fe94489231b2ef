"""Child-side functions for the fault-injection suite (module-level: importable by
spawn/forkserver children, picklable by reference).

An item of the crash matrix is a tuple ``(index, fault, payload)``. :func:`apply` runs in
the child for both worker kinds: the function worker calls it directly, the spawned
worker's child (:func:`serve`) calls it for every ``"request"`` event. It returns
``(index, pid)`` for an ordinary item and injects ``fault`` otherwise.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import re
import signal
import sys
import time
import traceback
from concurrent.futures import Future
from typing import Any, List, Optional, Tuple

from tests._procs import write_pid

Item = Tuple[int, str, Any]


class LoadBoom(RuntimeError):
    """Raised while unpickling an :class:`ExplodesOnLoad` (in whichever process loads it)."""


def explode_on_load(where: str) -> None:
    raise LoadBoom(f"this object cannot be unpickled ({where})")


class ExplodesOnLoad:
    """Pickles fine; unpickling calls :func:`explode_on_load`, which raises."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        return (explode_on_load, (self.where,))




def _no_core_dump() -> None:
    """Before a deliberate SIGSEGV: no core file, and no faulthandler dump (inherited from
    pytest under fork) cluttering the test output."""
    faulthandler.disable()
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def apply(item: Item) -> Any:
    """The work of one crash-matrix item, with its fault injected (child side)."""
    index, fault, payload = item
    if fault == "raise":
        raise ValueError(f"injected failure at item {index}")
    if fault == "sys_exit":
        sys.exit(3)
    if fault == "os_exit":
        os._exit(3)
    if fault == "segfault":
        _no_core_dump()
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if fault == "sigkill":
        write_pid(payload)  # the test kills us from outside while we sleep
        time.sleep(60)
        return (index, -1)
    if fault == "bad_result":
        return lambda: index  # a lambda cannot be pickled by reference
    if fault == "bad_result_load":
        return ExplodesOnLoad("result, in the parent")
    return (index, os.getpid())


# ---------------------------------------------------------------------- function worker


def init_maybe_die(die: bool) -> None:
    """Initializer of a function worker: end the process before ``ready`` when ``die``."""
    if die:
        os._exit(3)


def pid_of(_item: Any) -> int:
    return os.getpid()




def pidfile_then_sleep(args: Tuple[str, float]) -> int:
    """Write our pid into directory ``args[0]``, then sleep ``args[1]`` seconds."""
    directory, seconds = args
    write_pid(os.path.join(directory, f"{os.getpid()}.pid"))
    time.sleep(seconds)
    return os.getpid()


def slow_or_fast(item: Tuple[str, Any]) -> Tuple[str, int]:
    """``("slow", s)`` sleeps ``s`` seconds; ``("fast", _)`` returns at once."""
    kind, arg = item
    if kind == "slow":
        time.sleep(arg)
    return (kind, os.getpid())


def ignore_term_and_sleep(seconds: float) -> int:
    """Ignore SIGTERM, then sleep (in C, releasing the GIL)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return os.getpid()


def ignore_term_and_hog_gil(_item: Any) -> int:
    """Ignore SIGTERM and hold the GIL in C for ever (catastrophic regex): the child's
    watchdog thread cannot run, so only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    re.match(r"(a+)+$", "a" * 64 + "b")
    return os.getpid()


_LEAK: List[bytes] = []


def leak_20mb(_item: Any) -> int:
    """Keep 20 MB more (touched, so it is resident) on every call."""
    _LEAK.append(b"\x01" * (20 << 20))
    return os.getpid()




def echo(data: Any) -> Any:
    return data


def sleep_forever(_seconds: float = 1000.0) -> None:
    time.sleep(_seconds)




# ---------------------------------------------------------------------- spawned worker


def describe(exc: BaseException) -> dict:
    kind = type(exc)
    return {
        "message": str(exc),
        "remote_type": f"{kind.__module__}.{kind.__qualname__}",
        "remote_traceback": "".join(traceback.format_exception(kind, exc, exc.__traceback__)),
    }


def serve(die_in_init: bool = False) -> None:
    """A spawned worker's child: answer each ``request`` with ``response {"value"}`` or
    ``error {"message", "remote_type", "remote_traceback"}``.

    Items run on the MAIN thread (so ``sys.exit`` ends the process with its code, as in a
    real program), handed over from the reader thread by ``listen_once("request")``
    futures. A futures chain, not ``listen_for``: a request whose body cannot be unpickled
    fails the pending future with ``MessageDecodeError`` (a ``listen_for`` handler would
    never hear of it) and is answered with an ``error``. The next future is registered
    before the reply is sent, so the parent's next request always finds a listener.
    Ends when the channel closes (the pending future fails with ``ChannelClosedError``).
    """
    if die_in_init:
        os._exit(3)  # before "ready"
    from workerkit.comm import ChildCommChannel
    from workerkit.errors import ChannelClosedError

    ch = ChildCommChannel()
    pending: Future = ch.listen_once("request")
    ch.send("ready", {"pid": os.getpid()})
    while True:
        try:
            event = pending.result()
            error: Optional[BaseException] = None
        except ChannelClosedError:
            return
        except Exception as exc:  # MessageDecodeError: the item failed to unpickle here
            event, error = None, exc
        pending = ch.listen_once("request")
        if error is None:
            try:
                value = apply(event["item"])
                ch.send("response", {"value": value})  # an unpicklable result raises here
                continue
            except ChannelClosedError:
                return
            except Exception as exc:
                error = exc
        try:
            ch.send("error", describe(error))
        except ChannelClosedError:
            return




def never_ready() -> None:
    """A spawned child that never says ``ready`` (init_timeout)."""
    from workerkit.comm import ChildCommChannel

    ChildCommChannel()
    time.sleep(1000)


def term_ignoring_sleeper(pidfile: Optional[str] = None) -> None:
    """Ignore SIGTERM, write the pid, say ready, sleep (the GIL is free: the watchdog runs)."""
    from workerkit.comm import ChildCommChannel

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    write_pid(pidfile)
    ChildCommChannel().send("ready")
    time.sleep(1000)


def term_ignoring_gil_hog(pidfile: Optional[str] = None) -> None:
    """Ignore SIGTERM, say ready, then hold the GIL in C: only SIGKILL ends it."""
    from workerkit.comm import ChildCommChannel

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    write_pid(pidfile)
    ChildCommChannel().send("ready")
    re.match(r"(a+)+$", "a" * 64 + "b")


def sigint_ignored_check(_item: Any) -> Tuple[int, Any]:
    """Report this child's SIGINT disposition, and its pid."""
    return (os.getpid(), signal.getsignal(signal.SIGINT) == signal.SIG_IGN)

