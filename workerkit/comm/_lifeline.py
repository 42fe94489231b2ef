"""Orphan protection for a child: it must not outlive its parent.

Two independent mechanisms, because each has holes the other covers:

* ``PR_SET_PDEATHSIG`` (Linux): the kernel SIGKILLs the child when its parent *thread*
  exits, even if the child is stuck in C code. The spawner thread keeps that thread
  alive for the process's lifetime (see ``_spawner``).
* The watchdog thread: blocked reading an "alive" pipe whose only write end the parent
  holds. EOF means the parent closed it or died; the watchdog closes the child's
  channel (waking ``wait_closed``, failing futures), gives the process about a second to
  end by itself, then flushes and ``os._exit(0)``s. It needs no help from the main
  thread, so a child busy in pure Python still exits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Callable, Optional

__all__ = ["arm_parent_death_signal", "start_watchdog", "flush_std_streams"]

logger = logging.getLogger("workerkit")

_PR_SET_PDEATHSIG = 1
# After the parent is gone, how long the process may take to end by itself.
_EXIT_GRACE = 1.0


def flush_std_streams() -> None:
    """Flush stdout/stderr before an ``os._exit`` (which skips it), ignoring errors."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def arm_parent_death_signal(expected_ppid: Optional[int]) -> bool:
    """Ask for SIGKILL when the parent dies; ``False`` if it already has.

    ``expected_ppid`` closes the race where the parent died before the prctl call (we
    would then be re-parented already); ``None`` skips that check (forkserver children,
    whose parent is the forkserver).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                logger.debug("prctl(PR_SET_PDEATHSIG) failed: errno %s", ctypes.get_errno())
        except (OSError, AttributeError):  # no libc / no prctl: the watchdog still works
            logger.debug("prctl unavailable; relying on the watchdog only")
    return expected_ppid is None or os.getppid() == expected_ppid


def start_watchdog(alive: Connection, on_parent_gone: Callable[[], None]) -> threading.Thread:
    """Start the daemon thread that ends this process once ``alive`` reaches EOF."""
    thread = threading.Thread(
        target=_watch, args=(alive, on_parent_gone), name="workerkit-watchdog", daemon=True
    )
    thread.start()
    return thread


def _watch(alive: Connection, on_parent_gone: Callable[[], None]) -> None:
    try:
        while True:
            alive.recv_bytes()  # the parent never writes: this only ends at EOF
    except (EOFError, OSError):
        pass
    try:
        on_parent_gone()
    except Exception:
        logger.exception("closing the channel after the parent went away failed")
    time.sleep(_EXIT_GRACE)  # let the main thread finish on its own first
    flush_std_streams()
    os._exit(0)
