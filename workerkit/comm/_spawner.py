"""Where child processes are started: one long-lived thread, one start at a time.

A child arms ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked it exits,
not the process. Starting a child from a short-lived pool thread would therefore kill
the child as soon as that thread ends. So fork and spawn starts run on one daemon thread,
``workerkit-spawner``, that lives as long as the process (or directly on the main thread,
which also does). With forkserver the child's parent is the forkserver process, so the
calling thread does not matter.

The start lock makes starts one at a time: a fork taken while another start has its
pipes half set up would copy those pipe ends into the wrong child, which would then
keep EOF from reaching the right one.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Generic, Optional, TypeVar

__all__ = ["start_lock", "run_on_spawner"]

T = TypeVar("T")

# One child start at a time (see the module docstring). Replaced in forked children.
_start_lock = threading.Lock()
# Guards the lazy creation of the spawner thread and its queue.
_thread_lock = threading.Lock()
_queue: Optional[queue.SimpleQueue[_Request[object]]] = None
_thread: Optional[threading.Thread] = None


class _Request(Generic[T]):
    """One start request; the caller blocks on ``done`` for the outcome."""

    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Optional[T] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed back to the caller, raised there
            self.error = exc
        finally:
            self.done.set()


def start_lock() -> threading.Lock:
    """The lock every child start holds (looked up at call time: forks replace it)."""
    return _start_lock


def run_on_spawner(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread that outlives the child it starts, and return its result."""
    current = threading.current_thread()
    if current is threading.main_thread() or current is _thread:
        return fn()
    request: _Request[T] = _Request(fn)
    _spawner_queue().put(request)  # type: ignore[arg-type]
    request.done.wait()  # the spawner always sets it, even when fn raises
    if request.error is not None:
        raise request.error
    return request.result  # type: ignore[return-value]


def _spawner_queue() -> queue.SimpleQueue[_Request[object]]:
    global _queue, _thread
    with _thread_lock:
        if _queue is None or _thread is None:
            _queue = queue.SimpleQueue()
            _thread = threading.Thread(target=_serve, args=(_queue,), name="workerkit-spawner", daemon=True)
            _thread.start()
        return _queue


def _serve(requests: queue.SimpleQueue[_Request[object]]) -> None:
    while True:
        requests.get().run()


def _after_fork_in_child() -> None:
    global _start_lock, _thread_lock, _queue, _thread
    # The fork itself ran under the start lock, and no spawner thread exists in the child.
    _start_lock = threading.Lock()
    _thread_lock = threading.Lock()
    _queue = None
    _thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)
