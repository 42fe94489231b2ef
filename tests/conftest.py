"""Shared fixtures: every test must reap every process it starts.

``no_leaked_children`` runs after each test and fails it when a child process of the test
runner (other than multiprocessing's own forkserver and resource tracker) is still there.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
from typing import TYPE_CHECKING, Iterator, List, Set

import pytest

if TYPE_CHECKING:
    from workerkit import ParentCommChannel

START_METHODS = ["fork", "spawn", "forkserver"]


def _service_pids() -> Set[int]:
    """Pids of multiprocessing's long-lived helpers, which are not ours to reap."""
    pids: Set[int] = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        fs = getattr(forkserver, "_forkserver", None)
        pid = getattr(fs, "_forkserver_pid", None)
        if pid:
            pids.add(pid)
        rt = getattr(resource_tracker, "_resource_tracker", None)
        pid = getattr(rt, "_pid", None)
        if pid:
            pids.add(pid)
    except Exception:  # pragma: no cover - defensive
        pass
    return pids


def child_pids(parent: int | None = None) -> List[int]:
    """Live (non-zombie or zombie) children of ``parent`` (default: this process), from /proc."""
    parent = os.getpid() if parent is None else parent
    found: List[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the ")" of the command name: state, ppid, ...
        rest = stat[stat.rfind(b")") + 2 :].split()
        if int(rest[1]) == parent:
            found.append(int(entry))
    return found


def leftover_children(timeout: float = 5.0) -> List[int]:
    """Children still present after ``timeout`` seconds, ignoring multiprocessing services."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in child_pids() if p not in _service_pids()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leaked_children() -> Iterator[None]:
    yield
    left = leftover_children()
    assert not left, f"test left child processes behind: {left}"


@pytest.fixture(autouse=True)
def _dump_on_hang() -> Iterator[None]:
    """Dump every thread's stack if a test hangs, so CI shows where."""
    faulthandler.dump_traceback_later(100, exit=False, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def echo() -> Iterator[ParentCommChannel]:
    """A forkserver child running ``typed_echo`` (answers ``msg`` as the type it names),
    ready: its first ``ready`` event was received."""
    from workerkit import ParentCommChannel

    channel = ParentCommChannel.spawn("tests.children.behaviours:typed_echo", start_method="forkserver")
    try:
        channel.listen_once("ready").result(20.0)
        yield channel
    finally:
        channel.destroy()
