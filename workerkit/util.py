"""Workers backed by child processes or executors: the seed's ``WorkUtil``, and more.

* :func:`spawned_worker` — a child process with a user-defined conversation (handlers
  ``init``/``execute``/``destroy`` that talk over a :class:`ParentCommChannel`).
* :func:`function_worker` — a child process that runs ``fn(item)``; exceptions come back
  as :class:`RemoteError` with the child's traceback.
* :func:`executor_worker` — any :class:`concurrent.futures.Executor` (a Dask
  ``distributed.Client`` executor reaches a cluster).
"""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable, Dict, Generic, List, Optional, Sequence, TypeVar, Union

from ._function_child import (
    BATCH,
    CALL,
    ERROR,
    INIT_ERROR,
    PROTOCOL,
    READY,
    RESULT,
    batch_results,
    function_main,
    merge_results,
    pickled,
    remote_error,
    split_unpicklable,
)
from ._mux import Multiplexable
from ._run import as_pairs
from .comm import ParentCommChannel
from .comm._wire import Frame, FrameReader, write_tagged
from .errors import ChannelClosedError, WorkerKitError, WorkTimeoutError
from .worker import Worker, next_worker_id

X = TypeVar("X")
R = TypeVar("R")

__all__ = [
    "spawned_worker", "function_worker", "executor_worker", "WorkUtil", "check_function_target",
]

Handler = Callable[[ParentCommChannel], Any]


def _settle(value: Any, timeout: Optional[float] = None) -> Any:
    """Wait for a handler that returned a Future (the seed's handlers return promises)."""
    if isinstance(value, Future):
        return value.result(timeout)
    return value


def _run_with_timeout(fn: Callable[[], Any], timeout: Optional[float], what: str) -> Any:
    """Run ``fn`` and wait at most ``timeout`` seconds for it (None: no limit)."""
    if timeout is None:
        return _settle(fn())
    box: Dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            # No timeout here: the caller's wait below is the one limit; when it expires the
            # channel is destroyed, which fails the Future and ends this thread.
            box["value"] = _settle(fn())
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=call, name="workerkit-init", daemon=True).start()
    if not done.wait(timeout):
        raise WorkTimeoutError(f"{what} did not finish within init_timeout={timeout}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _check_init_timeout(init_timeout: Optional[float]) -> None:
    if init_timeout is not None and (isinstance(init_timeout, bool) or not init_timeout > 0):
        raise ValueError(f"init_timeout must be > 0 seconds (or None for no limit), got {init_timeout!r}")


class ChannelWorker(Worker[X, R]):
    """A worker backed by one child process: ``id``/``pid`` and ``active`` come from its
    channel (``active`` turns false when the child dies, so the pool replaces it)."""

    channel: ParentCommChannel

    @property
    def id(self) -> Any:
        return self.channel.id

    @property
    def pid(self) -> int:
        return int(self.channel.id)

    @property
    def active(self) -> bool:  # type: ignore[override]
        return self.channel.active


def child_ended(
    channel: ParentCommChannel, what: str, when: str = "while running this item"
) -> ChannelClosedError:
    """End (reap) a child whose pipe broke and describe how it ended, with its exit code."""
    channel.destroy(timeout=1.0)
    code = channel.exitcode
    message = f"{what}'s child (pid {channel.id}) ended with exit code {code} {when}"
    return ChannelClosedError(message, exitcode=code)


class _SpawnedWorker(ChannelWorker[X, R]):
    """A worker whose handlers converse with a child process over a channel."""

    def __init__(
        self,
        channel: ParentCommChannel,
        init: Optional[Handler],
        execute: Callable[[ParentCommChannel, X], R],
        destroy: Optional[Handler],
        init_timeout: Optional[float],
    ):
        super().__init__()
        self.channel = channel
        self._init = init
        self._execute = execute
        self._destroy = destroy
        self._init_timeout = init_timeout
        self._destroyed = False

    def init(self) -> None:
        if self._init is None:
            return
        handler = self._init
        try:
            _run_with_timeout(lambda: handler(self.channel), self._init_timeout, "the worker's init")
        except BaseException:
            self.channel.destroy()  # a child that failed to start is ended, never leaked
            raise

    def execute(self, item: X) -> R:
        return _settle(self._execute(self.channel, item))  # type: ignore[no-any-return]

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        try:
            if self._destroy is not None and self.channel.active:
                _settle(self._destroy(self.channel), 5.0)
        finally:
            self.channel.destroy()


def spawned_worker(
    target: Union[Callable[..., Any], str],
    *,
    args: Sequence[Any] = (),
    kwargs: Optional[Dict[str, Any]] = None,
    start_method: Optional[str] = None,
    init: Optional[Handler] = None,
    execute: Callable[[ParentCommChannel, X], R],
    destroy: Optional[Handler] = None,
    init_timeout: Optional[float] = None,
) -> Worker[X, R]:
    """Start ``target`` in a child process and wrap the conversation as a pool worker.

    ``init(channel)``, ``execute(channel, item)`` and ``destroy(channel)`` are the handlers;
    a handler may return a :class:`~concurrent.futures.Future` (``channel.listen_once(...)``)
    and the worker waits for it. ``id`` and ``active`` come from the channel.
    """
    if not callable(execute):
        raise TypeError("spawned_worker needs execute=callable(channel, item)")
    _check_init_timeout(init_timeout)
    channel = ParentCommChannel.spawn(target, args, kwargs, start_method=start_method)
    return _SpawnedWorker(channel, init, execute, destroy, init_timeout)


class WorkUtil:
    """The seed's namespace: ``WorkUtil.spawned_worker`` is :func:`spawned_worker`."""

    spawned_worker = staticmethod(spawned_worker)


def check_function_target(fn: Callable[..., Any], start_method: Optional[str]) -> None:
    """Fail at the call when ``fn`` cannot reach a child started with ``start_method``."""
    if not callable(fn):
        raise TypeError(f"expected a callable to run on each item, got {fn!r}")
    if start_method == "fork":
        return
    try:
        pickle.dumps(fn, PROTOCOL)
    except Exception as exc:
        raise WorkerKitError(
            f"cannot send {fn!r} to a child process started with "
            f"{start_method or 'the default start method'}: it cannot be pickled ({exc}); "
            "use fork or a module-level function"
        ) from exc


_PARK_LIMIT = 64 * 1024  # larger requests are sent and answered on the slot's own thread


class _FunctionWorker(ChannelWorker[X, R], Multiplexable):
    """A child process that runs ``fn(item)``; one frame out, one frame back per item."""

    def __init__(self, channel: ParentCommChannel, init_timeout: Optional[float]):
        super().__init__()
        self.channel = channel
        self._conn = channel.connection
        self._fd = self._conn.fileno()
        self._frames = FrameReader(self._fd)  # one read per reply
        self._init_timeout = init_timeout

    def init(self) -> None:
        """Wait for the child's ready frame (or its initializer's error)."""
        try:
            if self._init_timeout is not None and not self._conn.poll(self._init_timeout):
                raise WorkTimeoutError(
                    f"the function worker's child did not start within init_timeout={self._init_timeout}s"
                )
            try:
                frame = self._conn.recv_bytes()
            except (EOFError, OSError):
                raise child_ended(self.channel, "the function worker", "while starting") from None
            if frame[:1] == INIT_ERROR:
                raise remote_error(frame, "the initializer failed in the child: ")
            if frame != READY:
                raise WorkerKitError(f"unexpected first frame from the function worker: {frame[:20]!r}")
        except BaseException:
            self.channel.destroy()
            raise

    def execute(self, item: X) -> R:
        self._send(CALL, pickled(item))  # an unpicklable item fails here, stream intact
        return self.finish(None)  # type: ignore[no-any-return]

    def execute_chunk(self, items: Sequence[X]) -> List[Any]:
        """Run ``fn`` on several items in one round trip: ``[(ok, value or RemoteError)]``,
        or (all succeeded) the values as an ``AllOk`` list. An item that cannot be pickled
        fails alone, with its pickling error; the others still run."""
        try:
            body = pickled(list(items))
        except Exception as exc:
            good, errors = split_unpicklable(items, exc)
            done = as_pairs(self.execute_chunk(good)) if good else []
            return merge_results(done, errors, len(items))
        self._send(BATCH, body)
        return self._chunk_reply(len(items))

    # The split execute the pool's multiplexer drives (see ``workerkit._mux``).

    def multiplexable(self) -> bool:
        cls = type(self)
        return (
            cls.execute is _FunctionWorker.execute and cls.execute_chunk is _FunctionWorker.execute_chunk
            and "execute" not in self.__dict__ and "execute_chunk" not in self.__dict__
        )

    def fileno(self) -> int:
        return self._fd

    def interrupt(self) -> None:
        if not self.channel.active:
            return  # ended already: its pid may not be ours any more
        try:
            self.channel.process.kill()
        except (ValueError, OSError):  # closed (reaped) or gone meanwhile
            pass

    def begin(self, item: Any, items: Optional[Sequence[Any]]) -> bool:
        try:
            body = pickled(item) if items is None else pickled(list(items))
        except Exception:
            return False
        if len(body) > _PARK_LIMIT:
            # A large request is written while its child reads it, for as long as that
            # takes: on the multiplexer that would hold up every other worker (measured,
            # 1 MB items: 0.78 GB/s parked, 1.9 GB/s on the slots' own threads).
            return False
        if self._conn.closed:
            raise self._closed()
        try:
            write_tagged(self._fd, CALL if items is None else BATCH, body)
        except OSError:
            raise self._closed() from None
        return True

    def finish(self, items: Optional[Sequence[Any]]) -> Any:
        if items is not None:
            return self._chunk_reply(len(items))
        try:
            frame = self._frames.read()
        except (EOFError, OSError):
            raise self._closed() from None
        if frame[:1] == RESULT:
            return pickle.loads(memoryview(frame)[1:])
        if frame[:1] == ERROR:
            raise remote_error(frame)
        raise WorkerKitError(f"unexpected frame from the function worker: {frame[:20]!r}")

    def _chunk_reply(self, count: int) -> List[Any]:
        frame = self._recv()
        if frame[:1] == ERROR:
            raise remote_error(frame)
        results = batch_results(frame)
        if results is None:
            raise WorkerKitError(f"unexpected frame from the function worker: {frame[:20]!r}")
        if len(results) != count:
            raise WorkerKitError(
                f"the function worker answered {len(results)} results for {count} items"
            )
        return results

    def destroy(self) -> None:
        self.unwatch()
        self.channel.destroy()

    def _send(self, tag: bytes, body: Union[bytes, memoryview]) -> None:
        if self._conn.closed:
            raise self._closed()
        try:
            write_tagged(self._fd, tag, body)
        except OSError:
            raise self._closed() from None

    def _recv(self) -> Frame:
        try:
            return self._frames.read()
        except (EOFError, OSError):
            raise self._closed() from None

    def _closed(self) -> ChannelClosedError:
        self.unwatch()
        return child_ended(self.channel, "the function worker")


def function_worker(
    fn: Callable[[X], R],
    *,
    start_method: Optional[str] = None,
    initializer: Optional[Callable[..., Any]] = None,
    initargs: Sequence[Any] = (),
    init_timeout: Optional[float] = None,
) -> Worker[X, R]:
    """A worker whose child process runs ``fn(item)`` and sends back the result.

    An exception in the child reaches the parent as :class:`RemoteError` (with the
    exception's ``module.qualname`` and the child's formatted traceback).
    """
    check_function_target(fn, start_method)
    if initializer is not None:
        check_function_target(initializer, start_method)
    _check_init_timeout(init_timeout)
    channel = ParentCommChannel.spawn(
        function_main, (fn, initializer, tuple(initargs)), start_method=start_method
    )
    return _FunctionWorker(channel, init_timeout)


class _ExecutorWorker(Worker[X, R], Generic[X, R]):
    """Runs each item as ``executor.submit(fn, item)``; the executor stays the caller's."""

    def __init__(self, executor: Executor, fn: Callable[[X], R]):
        super().__init__()
        self._executor = executor
        self._fn = fn
        self._worker_id = next_worker_id()

    def execute(self, item: X) -> R:
        return self._executor.submit(self._fn, item).result()


def executor_worker(executor: Executor, fn: Callable[[X], R]) -> Worker[X, R]:
    """A worker that runs ``fn(item)`` on ``executor`` (threads, processes, a Dask cluster)."""
    if not hasattr(executor, "submit"):
        raise TypeError(f"executor_worker needs a concurrent.futures.Executor, got {executor!r}")
    if not callable(fn):
        raise TypeError(f"executor_worker needs a callable fn, got {fn!r}")
    return _ExecutorWorker(executor, fn)
