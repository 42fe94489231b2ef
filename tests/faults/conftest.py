"""Shared machinery of the fault-injection suite.

* A session warm-up starts, once, what lives as long as the test process (the
  ``workerkit-spawner`` thread, multiprocessing's forkserver and resource tracker), so
  that a per-test before/after comparison of threads and file descriptors sees only
  what the test itself left behind.
* :class:`Baseline` snapshots threads and fds before a test; ``assert_clean`` then
  checks that every child the test started is gone, and that no ``workerkit-*`` pool
  thread and no file descriptor is left over (polling a few seconds for reaping, with
  ``gc.collect()``).
* Process-state helpers read ``/proc/<pid>/stat``.

What "gone" means for a child pid (:func:`gone`): ``/proc/<pid>`` no longer exists
(reaped), or the process is a zombie whose parent is NOT this test process. A zombie
of ours would be a reaping bug of the library and counts as a leak (the top-level
``no_leaked_children`` fixture also catches those); a zombie of someone else (the
forkserver, which reaps its own children, or init after the parent died) cannot run
and is its owner's to reap.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

import pytest

from tests.faults import children

# Threads that live as long as the process by design (see workerkit/comm/_spawner.py).
LONG_LIVED_THREADS = {"workerkit-spawner"}
SETTLE = 5.0  # seconds allowed for children to be reaped and threads/fds to go


def proc_stat(pid: int) -> Optional[Tuple[str, int]]:
    """``(state, ppid)`` of ``pid`` from /proc, or ``None`` once it is reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rfind(b")") + 2 :].split()
    return rest[0].decode(), int(rest[1])


def running(pid: int) -> bool:
    """Exists and is not a zombie (it can still execute code)."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def gone(pid: int) -> bool:
    """Reaped, or a zombie that is not ours to reap (see the module docstring)."""
    st = proc_stat(pid)
    return st is None or (st[0] in ("Z", "X") and st[1] != os.getpid())


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def not_gone(pids: Iterable[int], timeout: float = SETTLE) -> List[int]:
    """The pids still not gone after ``timeout`` seconds."""
    pids = [p for p in pids if p]
    wait_until(lambda: all(gone(p) for p in pids), timeout)
    return [p for p in pids if not gone(p)]


def kill_quietly(pids: Iterable[int]) -> None:
    """Defensive cleanup: SIGKILL whatever still runs (never a broad kill)."""
    for pid in pids:
        if pid and running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def open_fds() -> Set[str]:
    return set(os.listdir("/proc/self/fd"))


def fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def pool_threads(threads: Iterable[threading.Thread]) -> Set[threading.Thread]:
    return {
        t for t in threads
        if t.is_alive() and t.name.startswith("workerkit-") and t.name not in LONG_LIVED_THREADS
    }


class Baseline:
    """Threads and fds before a test; ``assert_clean`` compares after the pool's shutdown."""

    def __init__(self) -> None:
        gc.collect()
        self.threads = set(threading.enumerate())
        self.fds = open_fds()

    def new_threads(self) -> Set[threading.Thread]:
        return pool_threads(set(threading.enumerate()) - self.threads)

    def new_fds(self) -> Dict[str, str]:
        """Fds open now that were not before (ignoring the one ``listdir`` itself used,
        which is closed again by the time ``readlink`` looks at it)."""
        gc.collect()
        found = {fd: fd_target(fd) for fd in open_fds() - self.fds}
        return {fd: target for fd, target in found.items() if target != "?"}

    def leaks(self, pids: Iterable[int] = (), timeout: float = SETTLE) -> Dict[str, object]:
        pids = list(pids)
        deadline = time.monotonic() + timeout
        while True:
            left_pids = [p for p in pids if p and not gone(p)]
            threads = self.new_threads()
            fds = self.new_fds()
            if (not left_pids and not threads and not fds) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        found: Dict[str, object] = {}
        if left_pids:
            found["children"] = {p: proc_stat(p) for p in left_pids}
        if threads:
            found["threads"] = sorted(t.name for t in threads)
        if fds:
            found["fds"] = fds
        return found

    def assert_clean(self, pids: Iterable[int] = (), timeout: float = SETTLE) -> None:
        pids = list(pids)
        try:
            found = self.leaks(pids, timeout)
        finally:
            kill_quietly(pids)
        assert not found, f"left behind after shutdown: {found}"


@pytest.fixture
def baseline() -> Baseline:
    return Baseline()


@pytest.fixture(scope="session", autouse=True)
def _warm_up() -> Iterator[None]:
    """Start the process-lifetime helpers once, before any per-test baseline is taken."""
    from workerkit import function_worker

    def start(method: str) -> None:
        worker = function_worker(children.pid_of, start_method=method)
        try:
            worker.init()
            worker.execute(0)
        finally:
            worker.destroy()

    for method in ("fork", "spawn", "forkserver"):
        # From a thread, as a pool does: fork/spawn starts then go through the long-lived
        # "workerkit-spawner" thread, which this creates once.
        thread = threading.Thread(target=start, args=(method,))
        thread.start()
        thread.join()
    # A reader thread is not long-lived, but its first start may import lazily: do it now.
    gc.collect()
    yield

