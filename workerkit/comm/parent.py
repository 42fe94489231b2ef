"""The owner's end of a channel: ParentCommChannel, which also owns the child process.

``spawn`` creates two socketpairs (one for messages, and an "alive" one the parent
never writes to: the child's watchdog waits for its EOF), starts the child on the spawner thread
under the start lock, and closes the parent's copies of the child's ends at once.

``destroy`` closes the channel and the alive pipe (the child's watchdog then ends the
child even if its main thread is busy), waits, escalates to SIGTERM and SIGKILL, and
reaps the child: no zombie, no orphan.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import select
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Dict, Optional, Sequence, Tuple, Type, TypeVar

from . import _live
from ._bootstrap import child_main
from ._endpoint import Endpoint, shutdown_socket
from ._spawner import run_on_spawner, start_lock
from ._target import Target, check_target
from .channel import ProcessCommChannel

__all__ = ["ParentCommChannel"]

logger = logging.getLogger("workerkit")

_P = TypeVar("_P", bound="ParentCommChannel")

_START_METHODS = ("fork", "spawn", "forkserver")
# After SIGTERM, how long the child gets before SIGKILL.
_TERM_GRACE = 1.0
# After SIGKILL, how long to wait for the kernel to end the child before giving up.
_KILL_WAIT = 10.0

_atexit_registered = False
# This process's pid, kept current across forks without a system call per check (a pool
# asks ``active`` after every item).
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)
_atexit_lock = threading.Lock()  # register the atexit hook exactly once


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _check_start_method(start_method: Optional[str]) -> str:
    if start_method is None:
        return _default_start_method()
    if start_method not in _START_METHODS or start_method not in multiprocessing.get_all_start_methods():
        valid = [m for m in _START_METHODS if m in multiprocessing.get_all_start_methods()]
        raise ValueError(f"start_method must be one of {valid}, not {start_method!r}")
    return start_method


# Imported once by the forkserver, so each child it forks starts with them loaded
# (a child otherwise re-imports workerkit: ~100 ms per worker start instead of ~15 ms).
_FORKSERVER_PRELOAD = ("workerkit", "workerkit.comm._bootstrap", "workerkit._function_child")


def _preload_in_forkserver() -> None:
    """Add workerkit to the forkserver's preload list, if the forkserver is not running yet.

    The user's own preload list (``set_forkserver_preload``) is kept; once the forkserver
    runs, nothing can be added and nothing is changed.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    missing = [name for name in _FORKSERVER_PRELOAD if name not in current]
    if missing:
        server.set_forkserver_preload(current + missing)


def _ensure_atexit_hook() -> None:
    global _atexit_registered
    with _atexit_lock:
        if not _atexit_registered:
            # Registered after multiprocessing's own hook, so it runs BEFORE it: that hook
            # joins every child, which would hang forever on a child we never closed.
            atexit.register(_live.destroy_all)
            _atexit_registered = True


class ParentCommChannel(ProcessCommChannel):
    """The parent's end of a channel to a child process it started (and owns)."""

    def __init__(self, process: BaseProcess, conn: Connection, alive: Connection) -> None:
        """Internal: use :meth:`spawn` or :meth:`fork`."""
        super().__init__(Endpoint(conn, 0, "child process", self._wait_exit))
        self._process = process
        self._alive = alive
        self._owner_pid = os.getpid()
        self._pid: Optional[int] = None
        self._exitcode: Optional[int] = None
        self._process_closed = False
        # One waitpid at a time: a second concurrent waiter would get ECHILD and no code.
        self._join_lock = threading.Lock()
        # destroy() runs once; a concurrent second caller waits for the first to finish.
        self._destroy_lock = threading.RLock()
        # Closing the alive pipe from two threads could close a reused fd number twice.
        self._alive_lock = threading.Lock()
        self._destroyed = False
        # Polls the process sentinel: one system call tells whether the child ended. (For a
        # forkserver child, Process.is_alive() builds a selector on every call.)
        self._ended: Optional[select.poll] = None

    # -- starting ----------------------------------------------------------------------

    @classmethod
    def spawn(
        cls: Type[_P],
        target: Target,
        args: Sequence[Any] = (),
        kwargs: Optional[Dict[str, Any]] = None,
        *,
        start_method: Optional[str] = None,
        name: Optional[str] = None,
    ) -> _P:
        """Start a child running ``target(*args, **kwargs)``; return the channel to it.

        ``target`` is a callable or a ``"package.module:function"`` string. The default
        start method is forkserver where available, else spawn.
        """
        method = _check_start_method(start_method)
        check_target(target, method)
        _ensure_atexit_hook()

        def start() -> _P:
            return cls._start(method, target, tuple(args), dict(kwargs or {}), name)

        if method == "forkserver":  # the child's parent is the forkserver: any thread will do
            _preload_in_forkserver()
            return start()
        return run_on_spawner(start)

    @classmethod
    def fork(
        cls: Type[_P],
        target: Target,
        args: Sequence[Any] = (),
        kwargs: Optional[Dict[str, Any]] = None,
        *,
        name: Optional[str] = None,
    ) -> _P:
        """``spawn(..., start_method="fork")``."""
        return cls.spawn(target, args, kwargs, start_method="fork", name=name)

    @classmethod
    def _start(
        cls: Type[_P],
        method: str,
        target: Target,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        name: Optional[str],
    ) -> _P:
        ctx: Any = multiprocessing.get_context(method)  # typeshed's BaseContext lacks Process
        with start_lock():  # one start at a time: a concurrent fork would copy our child ends
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            alive_r, alive_w = ctx.Pipe(duplex=True)  # a socket: destroy can shut it down
            process = ctx.Process(
                target=child_main,
                args=(child_conn, alive_r, os.getpid(), method != "forkserver", target, args, kwargs),
                name=name,
            )
            channel = cls(process, parent_conn, alive_w)
            _live.add(channel)  # before start: a fork child then closes our ends too
            try:
                process.start()
            except BaseException:
                _live.discard(channel)
                channel._forget_inherited()
                raise
            finally:
                # Close before anything else: our copies of the child's ends would keep
                # EOF from ever reaching the child's reader and watchdog.
                child_conn.close()
                alive_r.close()
            channel._started()
        return channel

    def _started(self) -> None:
        self._pid = self._process.pid
        self._endpoint.peer_pid = self._pid or 0
        ended = select.poll()
        ended.register(self._process.sentinel, select.POLLIN)
        self._ended = ended

    # -- state -------------------------------------------------------------------------

    @property
    def id(self) -> int:
        """The child's pid."""
        return self._pid or 0

    @property
    def process(self) -> BaseProcess:
        """The ``multiprocessing`` process object (closed once ``destroy`` reaped it)."""
        return self._process

    @property
    def exitcode(self) -> Optional[int]:
        """The child's exit code once it ended (negative: killed by that signal)."""
        if self._exitcode is None and self._join_lock.acquire(blocking=False):
            try:
                if not self._process_closed and os.getpid() == self._owner_pid:
                    self._exitcode = self._process.exitcode
            finally:
                self._join_lock.release()
        return self._exitcode

    @property
    def active(self) -> bool:
        """Open, and the child is alive."""
        ended = self._ended
        if self._endpoint.closed or self._process_closed or _pid != self._owner_pid or ended is None:
            return False
        return not ended.poll(0)  # the sentinel turns readable (or invalid) once the child ended

    def _wait_exit(self, timeout: Optional[float]) -> Optional[int]:
        """Wait up to ``timeout`` s for the child to end; its exit code, or ``None``."""
        with self._join_lock:
            if self._exitcode is None and not self._process_closed and os.getpid() == self._owner_pid:
                self._process.join(timeout)
                self._exitcode = self._process.exitcode
            return self._exitcode

    # -- ending ------------------------------------------------------------------------

    def destroy(self, timeout: float = 5.0) -> None:
        """Close the channel and end the child: wait ``timeout`` s for it to exit, then
        SIGTERM, then SIGKILL; reap it. Idempotent; safe from a handler."""
        with self._destroy_lock:
            if self._destroyed:
                return
            self._destroyed = True
            _live.discard(self)
            if os.getpid() != self._owner_pid:  # an inherited copy in a forked child
                self._forget_inherited()
                return
            # Close before join: the child exits by itself on EOF, so joining first would
            # always wait the full timeout and then signal a child that was not stuck.
            self._begin_close()
            try:
                self._reap(timeout)
            finally:
                self._endpoint.release_conn()

    def _begin_close(self) -> None:
        """Close the channel and the alive pipe: the child starts exiting by itself."""
        if self._pid is None or os.getpid() != self._owner_pid:
            return
        self._endpoint.close(f"channel to child process {self._pid} was destroyed", keep_conn=True)
        with self._alive_lock:
            # The child's watchdog sees EOF, even if its main thread is busy; shutdown
            # first, so copies of this end leaked into other forked processes don't matter.
            shutdown_socket(self._alive)
            self._alive.close()

    def _reap(self, timeout: float) -> None:
        if self._pid is None:
            return
        code = self._wait_exit(timeout)
        # Before each signal: a pid whose status someone else collected may already belong
        # to an unrelated process, which must not get our SIGTERM or SIGKILL.
        if code is None and self._released_if_unreaped():
            return
        if code is None:
            logger.info("child process %s still running after %.1f s: SIGTERM", self._pid, timeout)
            self._process.terminate()
            code = self._wait_exit(_TERM_GRACE)
        if code is None and self._released_if_unreaped():
            return
        if code is None:
            logger.info("child process %s ignored SIGTERM: SIGKILL", self._pid)
            self._process.kill()
            code = self._wait_exit(_KILL_WAIT)
        if code is None and self._released_if_unreaped():
            return
        if code is None:
            logger.error("child process %s survived SIGKILL; not reaped", self._pid)
            return
        with self._join_lock:
            try:
                self._ended = None  # before its fd closes: active stops polling it
                self._process.close()  # releases the sentinel fd; pid and exit code stay cached
            except ValueError:  # multiprocessing does not consider it finished: keep it open
                return
            self._process_closed = True

    def _ended_unreaped(self) -> bool:
        """The child ended (its sentinel says so) yet no exit status is to be had: a
        concurrent ``waitpid`` elsewhere in this process took it (ECHILD for us). A
        forkserver child's code comes through its sentinel, so one that ended always has a
        code and never gets here."""
        ended = self._ended
        if ended is None or not ended.poll(0) or self._pid is None:
            return False
        try:
            os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            return True
        return False  # still ours to wait for

    def _released_if_unreaped(self) -> bool:
        """Release the child if it ended with its exit status taken elsewhere; say so."""
        if not self._ended_unreaped():
            return False
        logger.warning(
            "child process %s ended, but its exit status was collected elsewhere in this "
            "process (another waitpid); its exit code is unknown", self._pid,
        )
        self._release_unreaped()
        return True

    def _release_unreaped(self) -> None:
        """Close a child whose exit status went elsewhere as ``destroy`` closes any other:
        ``Process.close()`` releases its sentinel and drops it from multiprocessing's
        registry (which would otherwise go on polling the pid, and once the pid is reused
        by a new child, steal that child's exit status)."""
        with self._join_lock:
            self._ended = None  # before its fd closes: active stops polling it
            popen = getattr(self._process, "_popen", None)
            if popen is not None and getattr(popen, "returncode", 0) is None:
                # multiprocessing's own "exit code unknown" (its forkserver Popen uses it
                # too); without one, Process.close() refuses a process it never saw end.
                popen.returncode = 255
            try:
                self._process.close()
            except ValueError:
                return
            self._process_closed = True

    def _forget_inherited(self) -> None:
        """Close this channel's parent-side ends without touching the child (used in a
        forked child, which inherited them, and when the start failed)."""
        self._endpoint.forget()
        self._alive.close()
