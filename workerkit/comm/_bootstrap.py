"""The function a channel child actually runs (the ``multiprocessing.Process`` target).

Order matters: ignore SIGINT, drop inherited sibling pipe ends, arm orphan protection,
publish the connection, then run the user's target. When the target returns while
listeners are still registered and the channel is open, the child stays alive until
the channel closes (like a Node child whose IPC listeners keep it alive).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any, Dict, Tuple

from . import _live, child
from ._lifeline import arm_parent_death_signal, flush_std_streams, start_watchdog
from ._target import Target, resolve_target

__all__ = ["child_main"]


def child_main(
    conn: Connection,
    alive: Connection,
    parent_pid: int,
    check_ppid: bool,
    target: Target,
    args: Tuple[Any, ...],
    kwargs: Dict[str, Any],
) -> None:
    """Run ``target(*args, **kwargs)`` as a channel child of ``parent_pid``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the parent decides what Ctrl-C means
    _live.forget_inherited()  # fork: siblings' parent-side ends would block their EOF
    child.forget_inherited()  # fork from a child: its own link to its parent
    if not arm_parent_death_signal(parent_pid if check_ppid else None):
        flush_std_streams()
        os._exit(0)  # the parent died before we could arm the signal
    endpoint = child.install(conn, parent_pid, alive)
    start_watchdog(alive, lambda: endpoint.close("channel closed: the parent process went away"))
    try:
        _run(target, args, kwargs)
        if endpoint.has_listeners() and not endpoint.closed:
            endpoint.wait_closed()  # listeners keep the child alive until the channel closes
    finally:
        child.hold_if_exiting()  # ChildCommChannel.exit(code) owns the exit code
        # Our own children: multiprocessing would join them forever on the way out, and
        # fork/forkserver children leave through os._exit, which skips atexit hooks.
        _live.destroy_all()


def _run(target: Target, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
    try:
        resolve_target(target)(*args, **kwargs)
    except SystemExit:
        raise  # multiprocessing turns its code into the exit code
    except BaseException:
        child.hold_if_exiting()  # the target failed because exit(code) closed the channel
        traceback.print_exc()
        flush_std_streams()
        sys.exit(1)
