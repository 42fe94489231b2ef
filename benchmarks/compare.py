"""workerkit beside multiprocessing.Pool, ProcessPoolExecutor, billiard, pebble, mpire and loky.

Workloads (2 workers everywhere):

1. tiny items  - no-op items, one item per message: tasks/s (also ``stream``'s)
2. 1 MB items  - a 1 MB ``bytes`` sent to the child and returned: MB/s of items
3. latency     - channel round trip parent -> child -> parent: median and p99 (us), beside
                 a raw Pipe ping-pong between the same two processes (the target's
                 baseline), a raw Pipe to a child of its own, and a reader thread + Future
4. start-up    - a 2-worker pool until both workers finished a first item, per start method
5. CPU-bound   - 10 ms busy items: busy fraction = child CPU time / (2 x wall time)
6. chunked map - ``WorkPool.map(chunksize=c)`` and ``WorkPool(function_worker).process(
                 chunksize=c)`` (with a per-item callback keeping each value, and without
                 one) beside ``Pool.map``'s default chunking, all
                 timed from the call (start-up included); only if ``map`` has ``chunksize``

Rows are interleaved (A B C ... A B C ...) so machine drift hits all alike; each figure
is the median of the repeats. Every result is checked (a wrong answer exits non-zero:
it can't look fast); speed never fails the run. Peers that are not installed are
skipped with a note, so ``--quick`` runs with workerkit and the standard library only.

    python benchmarks/compare.py                 # full run (several minutes)
    python benchmarks/compare.py --quick         # CI: small, checks results only (< 1 min)
    python benchmarks/compare.py --json out.json # also write every figure as JSON

Pools are created and warmed up (both workers started) before the timed part, except
``WorkPool.map``, a classmethod that owns its pool: its time includes starting its two
workers (not its shutdown). Task functions live in ``benchmarks/_tasks.py`` so that
spawn/forkserver/loky children import them by reference.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # _tasks, for this process and (through sys.path) its children
try:
    import workerkit  # noqa: F401  (the installed package, or PYTHONPATH)
except ImportError:  # run from a checkout without installing: benchmark the checkout
    sys.path.insert(1, REPO)

import _tasks  # noqa: E402

from workerkit import ParentCommChannel, WorkPool, function_worker  # noqa: E402

WORKERS = 2
TIMEOUT = 60.0  # no single wait in this script may hang CI for longer
PAYLOAD_BYTES = 1_000_000  # "1 MB"
CPU_ITEM_SECONDS = 0.010

# The targets (informational: a miss is printed, never fails the run).
TARGET_TINY_VS_POOL = 1.0  # WorkPool tasks/s >= Pool.imap(chunksize=1), same start method
TARGET_LATENCY = 1.3  # channel median <= 1.3x the raw Pipe ping-pong
TARGET_BUSY = 0.95  # CPU-bound: workers busy >= 95% of wall time
TARGET_STARTUP = 1.2  # 2-worker pool start-up <= 1.2x a bare Process start


class WrongResult(Exception):
    """A runner produced a wrong answer: the run fails (a wrong answer can't look fast)."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


# ----------------------------------------------------------------------------- peers

def optional_module(name: str) -> Optional[Any]:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def version_of(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "?"


# ----------------------------------------------------------------------------- rows

@dataclass
class Row:
    """One line of a table: a system under test and its samples (one per repeat)."""

    key: str
    label: str
    method: str
    ours: bool
    run: Callable[..., Any]
    samples: List[float] = field(default_factory=list)
    extra: Dict[str, List[float]] = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.samples) if self.samples else None

    def extra_median(self, name: str) -> Optional[float]:
        values = self.extra.get(name)
        return statistics.median(values) if values else None

    def add_extra(self, name: str, value: float) -> None:
        self.extra.setdefault(name, []).append(value)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "key": self.key, "label": self.label, "start_method": self.method,
            "workerkit": self.ours, "samples": self.samples, "median": self.median,
        }
        for name, values in self.extra.items():
            out[name] = {"samples": values, "median": statistics.median(values)}
        if self.error:
            out["error"] = self.error
        return out


class Harness:
    """Runs rows, records errors of peers, and turns a workerkit failure into exit 1."""

    def __init__(self) -> None:
        self.notes: List[str] = []

    def note(self, text: str) -> None:
        if text in self.notes:
            return
        self.notes.append(text)
        print(f"> note: {text}", flush=True)

    def attempt(self, row: Row, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` for ``row``: a peer's error leaves the row out (noted); a
        workerkit error or a wrong result from anyone ends the run with exit status 1."""
        if row.error:
            return None
        try:
            return call(*args)
        except WrongResult as exc:
            raise SystemExit(f"WRONG RESULT from {row.label} [{row.method}]: {exc}") from exc
        except Exception as exc:
            if row.ours:
                traceback.print_exc()
                raise SystemExit(f"workerkit failed in {row.label} [{row.method}]: {exc!r}") from exc
            row.error = f"{type(exc).__name__}: {exc}"
            self.note(f"{row.label} [{row.method}] failed and is left out: {row.error}")
            return None


# ----------------------------------------------------------------------------- map runners
#
# A map runner is run(fn, warm, items) -> (seconds, results): it creates its pool, runs
# ``warm`` through it untimed (both workers started), times ``items``, shuts the pool down
# and reaps its children. ``results`` are checked by the caller, outside the timing.

MapRun = Callable[[Callable[[Any], Any], List[Any], List[Any]], Tuple[float, List[Any]]]


def _wk_run(method: str, consume: Callable[[WorkPool[Any, Any], List[Any]], List[Any]]) -> MapRun:
    """A warmed 2-worker ``WorkPool(function_worker)``; ``consume(pool, items)`` is timed
    and returns the values."""
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        pool: WorkPool[Any, Any] = WorkPool(
            lambda: function_worker(fn, start_method=method), max_workers=WORKERS
        )
        try:
            pool.process(warm)
            start = time.perf_counter()
            values = consume(pool, items)
            elapsed = time.perf_counter() - start
            stats = pool.stats()
        finally:
            pool.shutdown()
        check(not stats.failed, f"{stats.failed} items failed")
        check(stats.created == WORKERS, f"{stats.created} workers created, expected {WORKERS}")
        return elapsed, values
    return run


def _values_by_callback(pool: WorkPool[Any, Any], items: List[Any]) -> List[Any]:
    values: List[Any] = []
    add = values.append
    pool.process(items, on_complete=lambda outcome: add(outcome.value))
    return values


def wk_process(method: str) -> MapRun:
    """``WorkPool(function_worker).process``, values kept by ``on_complete``."""
    return _wk_run(method, _values_by_callback)


def wk_stream(method: str) -> MapRun:
    """``WorkPool(function_worker).stream``, its values taken as the consumer loops."""
    return _wk_run(method, lambda pool, items: [outcome.value for outcome in pool.stream(items)])


def _consume(results: Iterator[Any], n: int, start: float) -> Tuple[float, List[Any]]:
    """Take ``WorkPool.map``'s ``n`` results the way ``list(pool.imap(...))`` takes the
    peers' (in C), timed up to the last one: the pool's shutdown, which runs when the
    iterator is closed, is not timed."""
    try:
        values = list(itertools.islice(results, n))
        elapsed = time.perf_counter() - start
    finally:
        results.close()  # type: ignore[attr-defined]
    check(len(values) == n, f"WorkPool.map yielded {len(values)} of {n} results")
    return elapsed, values


def wk_map(method: str) -> MapRun:
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        start = time.perf_counter()
        results = WorkPool.map(fn, items, max_workers=WORKERS, start_method=method)
        return _consume(results, len(items), start)
    return run


def _imap_run(make_pool: Callable[[], Any]) -> MapRun:
    """Warm a fresh Pool-like pool, then time ``imap(chunksize=1)`` over the items."""
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        pool = make_pool()
        try:
            pool.map(fn, warm, chunksize=1)
            start = time.perf_counter()
            values = list(pool.imap(fn, items, chunksize=1))
            elapsed = time.perf_counter() - start
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
        return elapsed, values
    return run


def mp_pool(method: str) -> MapRun:
    return _imap_run(lambda: multiprocessing.get_context(method).Pool(WORKERS))


def billiard_pool(billiard: Any) -> MapRun:
    return _imap_run(lambda: billiard.Pool(WORKERS))


def pebble_pool(pebble: Any, method: str) -> MapRun:
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        pool = pebble.ProcessPool(max_workers=WORKERS, context=multiprocessing.get_context(method))
        try:
            list(pool.map(fn, warm).result())
            start = time.perf_counter()
            values = list(pool.map(fn, items).result())
            elapsed = time.perf_counter() - start
            pool.close()
        except BaseException:
            pool.stop()
            raise
        finally:
            pool.join(TIMEOUT)
        return elapsed, values
    return run


def process_pool_executor(method: str) -> MapRun:
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context(method)) as ex:
            list(ex.map(fn, warm))
            start = time.perf_counter()
            values = list(ex.map(fn, items, chunksize=1))
            elapsed = time.perf_counter() - start
        return elapsed, values
    return run


def mpire_pool(mpire: Any, method: str) -> MapRun:
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        # keep_alive: the workers of the warm-up map serve the timed map (no restart).
        with mpire.WorkerPool(n_jobs=WORKERS, start_method=method, keep_alive=True) as pool:
            pool.map(fn, warm, chunk_size=1)
            start = time.perf_counter()
            values = pool.map(fn, items, chunk_size=1)
            elapsed = time.perf_counter() - start
            pool.stop_and_join()
        return elapsed, list(values)
    return run


def loky_pool(loky: Any) -> MapRun:
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        ex = loky.get_reusable_executor(max_workers=WORKERS)
        try:
            list(ex.map(fn, warm))
            start = time.perf_counter()
            values = list(ex.map(fn, items))  # chunksize=1 is loky's default
            elapsed = time.perf_counter() - start
        finally:
            ex.shutdown(wait=True, kill_workers=True)
        return elapsed, values
    return run


def map_rows(
    h: Harness, methods: Sequence[str], with_map: bool = True, peers: Sequence[str] = (),
    with_stream: bool = False,
) -> List[Row]:
    """workerkit rows and peer rows for a map-like workload (peers by short name)."""
    rows: List[Row] = []
    for m in methods:
        rows.append(Row(f"workerkit.process/{m}", "WorkPool(function_worker).process", m, True,
                        wk_process(m)))
        if with_stream:
            rows.append(Row(f"workerkit.stream/{m}", "WorkPool(function_worker).stream", m, True,
                            wk_stream(m)))
        if with_map:
            rows.append(Row(f"workerkit.map/{m}", "WorkPool.map", m, True, wk_map(m)))
        rows.append(Row(f"mp.Pool.imap/{m}", "multiprocessing.Pool.imap(chunksize=1)", m, False, mp_pool(m)))
    optional = {"billiard": "billiard", "pebble": "pebble", "mpire": "mpire", "loky": "loky"}
    for peer in peers:
        if peer == "ppe":
            rows.append(Row("ProcessPoolExecutor/fork", "ProcessPoolExecutor.map(chunksize=1)", "fork", False,
                            process_pool_executor("fork")))
            continue
        module = optional_module(optional[peer])
        if module is None:
            h.note(f"{peer} is not installed: its rows are skipped (pip install {peer})")
            continue
        if peer == "billiard":
            rows.append(Row("billiard/fork", "billiard Pool.imap(chunksize=1)", "fork", False,
                            billiard_pool(module)))
        elif peer == "pebble":
            rows.append(Row("pebble/fork", "pebble ProcessPool.map", "fork", False,
                            pebble_pool(module, "fork")))
        elif peer == "mpire":
            rows.append(Row("mpire/fork", "mpire WorkerPool.map(chunk_size=1)", "fork", False,
                            mpire_pool(module, "fork")))
        elif peer == "loky":
            rows.append(Row("loky/loky", "loky get_reusable_executor().map", "loky", False,
                            loky_pool(module)))
    return rows


ALL_PEERS = ("billiard", "pebble", "ppe", "mpire", "loky")


def pool_map_chunksize(n: int, workers: int = WORKERS) -> int:
    """The chunksize ``multiprocessing.Pool.map`` picks by default for ``n`` items."""
    chunksize, extra = divmod(n, workers * 4)
    return chunksize + 1 if extra else chunksize


def wk_map_supports_chunksize() -> bool:
    import inspect

    return "chunksize" in inspect.signature(WorkPool.map).parameters


def cold_wk_map(method: str, chunksize: int) -> MapRun:
    """``WorkPool.map(..., chunksize=c)`` from the call to its last result (start-up included)."""
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        start = time.perf_counter()
        results = WorkPool.map(fn, items, max_workers=WORKERS, start_method=method,
                               chunksize=chunksize)
        return _consume(results, len(items), start)
    return run


def cold_wk_process(method: str, chunksize: int) -> MapRun:
    """``WorkPool(function_worker).process(..., chunksize=c)`` from creating the pool to the
    last item finished (start-up included); values collected per item by ``on_complete``."""
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        got: List[Any] = [None] * len(items)

        def keep(outcome: Any) -> None:
            got[outcome.index] = outcome.value

        start = time.perf_counter()
        pool: WorkPool[Any, Any] = WorkPool(
            lambda: function_worker(fn, start_method=method), max_workers=WORKERS
        )
        try:
            summary = pool.process(items, on_complete=keep, chunksize=chunksize)
            elapsed = time.perf_counter() - start
        finally:
            pool.shutdown()
        check(summary.completed == len(items) and not summary.failed, f"summary {summary}")
        return elapsed, got
    return run


def cold_wk_process_counting(method: str, chunksize: int) -> MapRun:
    """As :func:`cold_wk_process`, without a per-item callback: ``process`` for the side
    effects of ``fn``. It returns no values, so its summary is what is checked: every item
    submitted and completed, none failed (the items themselves are handed back)."""
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        start = time.perf_counter()
        pool: WorkPool[Any, Any] = WorkPool(
            lambda: function_worker(fn, start_method=method), max_workers=WORKERS
        )
        try:
            summary = pool.process(items, chunksize=chunksize)
            elapsed = time.perf_counter() - start
        finally:
            pool.shutdown()
        check(summary.submitted == summary.completed == len(items) and not summary.failed,
              f"summary {summary}")
        return elapsed, list(items)
    return run


def wk_process_supports_chunksize() -> bool:
    import inspect

    return "chunksize" in inspect.signature(WorkPool.process).parameters


def cold_pool_map(method: str) -> MapRun:
    """``Pool(2)`` created, then ``map`` with its default chunking (start-up included)."""
    def run(fn: Callable[[Any], Any], warm: List[Any], items: List[Any]) -> Tuple[float, List[Any]]:
        start = time.perf_counter()
        pool = multiprocessing.get_context(method).Pool(WORKERS)
        try:
            values = pool.map(fn, items)
            elapsed = time.perf_counter() - start
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
        return elapsed, values
    return run


def run_map_workload(
    h: Harness, rows: List[Row], fn: Callable[[Any], Any], warm: List[Any], items: List[Any],
    verify: Callable[[List[Any]], None], rate: Callable[[float], float], repeats: int,
    extra: Optional[Callable[[Row, float, List[Any]], None]] = None,
) -> None:
    for r in range(repeats):
        for row in rows:  # interleaved: A B C ... A B C ...
            got = h.attempt(row, row.run, fn, warm, items)
            if got is None:
                continue
            elapsed, values = got
            got = None
            h.attempt(row, verify, values)
            row.samples.append(rate(elapsed))
            if extra is not None:
                extra(row, elapsed, values)
            values = []  # 1 MB payloads: free them before the next row runs
        print(f"  repeat {r + 1}/{repeats} done", flush=True)


# ----------------------------------------------------------------------------- latency

class WkChannel:
    label = "workerkit channel: send + listen_once().result()"
    latest: Dict[str, WkChannel] = {}  # per start method: the child SamePipe shares

    def __init__(self, method: str) -> None:
        WkChannel.latest.pop(method, None)  # a failed start leaves SamePipe nothing stale
        self.pipe, child_end = multiprocessing.get_context(method).Pipe()
        try:
            self.channel = ParentCommChannel.spawn(
                _tasks.channel_echo, args=(child_end,), start_method=method
            )
        except BaseException:
            self.pipe.close()
            raise
        finally:
            child_end.close()
        WkChannel.latest[method] = self

    def block(self, first: int, count: int, out: List[int], seen: List[int]) -> None:
        channel, clock = self.channel, time.perf_counter_ns
        listen_once, send = channel.listen_once, channel.send
        for i in range(first, first + count):
            start = clock()
            reply = listen_once("pong")
            send("ping", {"i": i})
            event = reply.result(TIMEOUT)
            out.append(clock() - start)
            seen.append(event["i"])

    def close(self) -> None:
        self.channel.destroy()
        check(self.channel.exitcode == 0, f"echo child exit code {self.channel.exitcode}")


class RawPipe:
    label = "raw multiprocessing.Pipe: send + recv"

    def __init__(self, method: str) -> None:
        ctx = multiprocessing.get_context(method)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_tasks.pipe_echo, args=(child,), daemon=True)  # type: ignore[attr-defined]
        self.process.start()
        child.close()

    def block(self, first: int, count: int, out: List[int], seen: List[int]) -> None:
        clock, send, recv = time.perf_counter_ns, self.conn.send, self.conn.recv
        for i in range(first, first + count):
            start = clock()
            send({"type": "ping", "i": i})
            event = recv()
            out.append(clock() - start)
            seen.append(event["i"])

    def close(self) -> None:
        try:
            self.conn.send({"type": "stop", "i": -1})
        except OSError:
            pass
        self.process.join(TIMEOUT)
        self.conn.close()
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
        check(self.process.exitcode == 0, f"echo child exit code {self.process.exitcode}")


class SamePipe(RawPipe):
    """The raw Pipe ping-pong between the same two processes as the channel: the channel's
    child answers on a raw Pipe too, from a thread of its own (the issue's baseline)."""

    label = "raw multiprocessing.Pipe, same processes: send + recv"

    def __init__(self, method: str) -> None:  # noqa: D107 - shares the channel's child
        channel = WkChannel.latest[method]
        self.conn = channel.pipe
        self.process = channel.channel.process  # type: ignore[assignment]

    def close(self) -> None:
        try:
            self.conn.send({"type": "stop", "i": -1})  # the child's echo thread returns
        except OSError:
            pass
        self.conn.close()  # the channel's destroy() ends the child


class ThreadedPipe(RawPipe):
    """The naive design: a reader thread reads the pipe and resolves a Future per call."""

    label = "reference: Pipe + reader thread + Future"

    def __init__(self, method: str) -> None:
        super().__init__(method)
        self.pending: deque[Future[Any]] = deque()
        self.reader = threading.Thread(target=self._read, name="bench-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        recv, pop = self.conn.recv, self.pending.popleft
        try:
            while True:
                event = recv()
                pop().set_result(event)
        except (EOFError, OSError):
            pass
        for future in self.pending:
            future.set_exception(EOFError("echo child went away"))

    def block(self, first: int, count: int, out: List[int], seen: List[int]) -> None:
        clock, send, push = time.perf_counter_ns, self.conn.send, self.pending.append
        for i in range(first, first + count):
            start = clock()
            reply: Future[Any] = Future()
            push(reply)
            send({"type": "ping", "i": i})
            event = reply.result(TIMEOUT)
            out.append(clock() - start)
            seen.append(event["i"])

    def close(self) -> None:
        try:
            self.conn.send({"type": "stop", "i": -1})  # the child closes its end: our reader sees EOF
        except OSError:
            pass
        self.reader.join(TIMEOUT)
        super().close()


def percentile(sorted_values: List[int], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return float(sorted_values[index])


def run_latency(
    h: Harness, methods: Sequence[str], trips: int, block: int, warm: int, repeats: int
) -> List[Row]:
    rows: List[Row] = []
    for m in methods:
        for kind, key, ours in ((WkChannel, "workerkit.channel", True), (SamePipe, "raw.pipe.same", False),
                                (RawPipe, "raw.pipe", False), (ThreadedPipe, "pipe+thread+future", False)):
            rows.append(Row(f"{key}/{m}", kind.label, m, ours, kind))
    for r in range(repeats):
        for m in methods:
            started = [(row, h.attempt(row, row.run, m)) for row in rows if row.method == m]
            subjects = [(row, s) for row, s in started if s is not None]
            try:
                for row, subject in subjects:  # warm-up, untimed (numbers beyond the timed ones)
                    h.attempt(row, subject.block, trips + 1000, warm, [], [])
                samples: Dict[str, List[int]] = {row.key: [] for row, _ in subjects}
                seen: Dict[str, List[int]] = {row.key: [] for row, _ in subjects}
                for first in range(0, trips, block):  # interleaved blocks: A B C A B C ...
                    count = min(block, trips - first)
                    for row, subject in subjects:
                        h.attempt(row, subject.block, first, count, samples[row.key], seen[row.key])
            finally:
                for row, subject in subjects:
                    try:  # close even a subject whose row failed: its child must be reaped
                        subject.close()
                    except WrongResult as exc:
                        if not row.error:
                            raise SystemExit(f"WRONG RESULT from {row.label} [{row.method}]: {exc}") from exc
                    except Exception as exc:
                        if row.ours:
                            raise
                        h.note(f"closing {row.label} [{row.method}] failed: {exc!r}")
            for row, _ in subjects:
                if row.error:
                    continue
                h.attempt(row, check, seen[row.key] == list(range(trips)),
                          "echoed sequence numbers do not match what was sent")
                ordered = sorted(samples[row.key])
                row.samples.append(statistics.median(ordered) / 1000.0)
                row.add_extra("p99_us", percentile(ordered, 0.99) / 1000.0)
                row.add_extra("mean_us", statistics.fmean(ordered) / 1000.0)
        print(f"  repeat {r + 1}/{repeats} done", flush=True)
    return rows


# ----------------------------------------------------------------------------- start-up

def startup_bare(method: str) -> Tuple[float, float]:
    ctx = multiprocessing.get_context(method)
    start = time.perf_counter()
    procs = [ctx.Process(target=_tasks.trivial) for _ in range(WORKERS)]  # type: ignore[attr-defined]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    elapsed = time.perf_counter() - start
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join()
    check(all(p.exitcode == 0 for p in procs), f"exit codes {[p.exitcode for p in procs]}")
    return elapsed, elapsed


def startup_workerkit(method: str) -> Tuple[float, float]:
    values: List[Any] = []
    start = time.perf_counter()
    pool: WorkPool[Any, Any] = WorkPool(lambda: function_worker(_tasks.noop, start_method=method),
                                        max_workers=WORKERS)
    try:
        summary = pool.process([1, 2], on_complete=lambda o: values.append(o.value))
        first = time.perf_counter() - start
        created = pool.stats().created
    finally:
        pool.shutdown()
    total = time.perf_counter() - start
    check(summary.completed == 2 and sorted(values) == [1, 2], f"summary {summary}, values {values}")
    check(created == WORKERS, f"{created} workers created, expected {WORKERS}")
    return first, total


def startup_pool(method: str) -> Tuple[float, float]:
    start = time.perf_counter()
    pool = multiprocessing.get_context(method).Pool(WORKERS)
    try:
        values = pool.map(_tasks.noop, [1, 2], chunksize=1)
        first = time.perf_counter() - start
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    total = time.perf_counter() - start
    check(values == [1, 2], f"values {values}")
    return first, total


def run_startup(h: Harness, methods: Sequence[str], repeats: int) -> List[Row]:
    rows: List[Row] = []
    for m in methods:
        rows.append(Row(f"process/{m}", "bare Process x2: start + join", m, False, startup_bare))
        rows.append(Row(f"workerkit.pool/{m}", "WorkPool(function_worker): 2 items", m, True,
                        startup_workerkit))
        rows.append(Row(f"mp.Pool/{m}", "multiprocessing.Pool(2): first map of 2", m, False, startup_pool))
    for m in methods:  # untimed: start the forkserver, load what spawn children load from disk
        startup_bare(m)
        startup_workerkit(m)
    for r in range(repeats):
        for row in rows:
            got = h.attempt(row, row.run, row.method)
            if got is not None:
                row.samples.append(got[0] * 1000.0)
                row.add_extra("with_shutdown_ms", got[1] * 1000.0)
        print(f"  repeat {r + 1}/{repeats} done", flush=True)
    return rows


# ----------------------------------------------------------------------------- output

def fmt(value: Optional[float], digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def spread(row: Row, digits: int = 0) -> str:
    if len(row.samples) < 2:
        return "-"
    return f"{fmt(min(row.samples), digits)} - {fmt(max(row.samples), digits)}"


def table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *lines)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(cells) for cells in lines]
    return "\n".join(out)


def show(title: str, text: str) -> None:
    print(f"\n### {title}\n\n{text}\n", flush=True)


def ours_mark(row: Row) -> str:
    return f"**{row.label}**" if row.ours else row.label


def rate_table(rows: List[Row], unit: str, digits: int = 0) -> str:
    lines = []
    for row in rows:
        if row.error:
            lines.append([ours_mark(row), row.method, "failed", "-"])
        elif row.samples:
            lines.append([ours_mark(row), row.method, fmt(row.median, digits), spread(row, digits)])
    return table(["pool", "start", f"{unit} (median)", "min - max"], lines)


def ratio_matrix(rows: List[Row], higher_is_better: bool = True) -> str:
    """workerkit rows as columns, every peer as a row: workerkit / peer."""
    ours = [r for r in rows if r.ours and r.samples]
    peers = [r for r in rows if not r.ours and r.samples]
    headers = ["peer"] + [f"{r.label} [{r.method}]" for r in ours]
    lines = []
    for p in peers:
        cells = [f"{p.label} [{p.method}]"]
        for o in ours:
            assert o.median is not None and p.median is not None
            cells.append(f"{o.median / p.median:.2f}x")
        lines.append(cells)
    return table(headers, lines)


def machine() -> Dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for text in f:
                if text.lower().startswith("model name"):
                    model = text.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 1
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "workerkit"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if commit != "?" and dirty:
            commit += " + uncommitted changes in workerkit/"
    except Exception:
        commit = "?"
    import workerkit as wk

    peers = {name: version_of(name) for name in ("billiard", "pebble", "mpire", "loky")
             if optional_module(name) is not None}
    try:
        with open("/proc/loadavg") as f:
            loadavg = " ".join(f.read().split()[:3])
    except OSError:
        loadavg = "?"
    return {
        "loadavg_at_start": loadavg,
        "nproc": nproc, "cpu_count": os.cpu_count(), "cpu_model": model,
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "platform": platform.platform(), "workerkit_path": os.path.dirname(wk.__file__),
        "workerkit_commit": commit, "peers": peers,
    }


# ----------------------------------------------------------------------------- processes

def _children() -> List[Tuple[int, str, str]]:
    """(pid, state, cmdline) of this process's children, from /proc."""
    me, found = os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        found.append((int(entry), fields[0], cmd))
    return found


def leftover_children(wait: float = 5.0) -> List[Tuple[int, str, str]]:
    """Children other than the long-lived helpers (forkserver, resource trackers), after
    giving stragglers ``wait`` seconds to exit; zombies count (nobody reaped them)."""
    deadline = time.monotonic() + wait
    while True:
        multiprocessing.active_children()  # reaps finished multiprocessing children
        left = [c for c in _children() if "forkserver" not in c[2] and "resource_tracker" not in c[2]]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small run for CI (checks results only, < 1 min)")
    parser.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per row (default 3; quick 1)")
    parser.add_argument("--only", default="tiny,payload,latency,startup,cpu,chunked",
                        help="comma-separated workloads to run (default: all)")
    args = parser.parse_args()
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    only = set(args.only.split(","))
    tiny_n = 1_000 if quick else 20_000
    payload_n = 20 if quick else 200
    trips = 300 if quick else 20_000
    cpu_n = 20 if quick else 200
    chunked_n = 20_000 if quick else 400_000
    startup_repeats = args.repeats or (1 if quick else 5)
    methods = [m for m in ("fork", "forkserver") if m in multiprocessing.get_all_start_methods()]
    available = multiprocessing.get_all_start_methods()
    startup_methods = [m for m in ("fork", "forkserver", "spawn") if m in available]

    h = Harness()
    began = time.perf_counter()
    info = machine()
    peers_text = ", ".join(f"{k} {v}" for k, v in info["peers"].items()) or "none (stdlib only)"
    print(f"# workerkit vs peers{' (--quick: checks results only)' if quick else ''}\n")
    print(f"Machine: {info['nproc']} CPUs (nproc), {info['cpu_model']}; {info['implementation']} "
          f"{info['python']} on {info['platform']}; workerkit {info['workerkit_commit']} "
          f"({info['workerkit_path']}); peers: {peers_text}; "
          f"load average at start {info['loadavg_at_start']}.")
    print(f"{WORKERS} workers everywhere; median of {repeats} interleaved repeats "
          f"(start-up: {startup_repeats}).", flush=True)

    report: Dict[str, Any] = {"machine": info, "quick": quick, "repeats": repeats, "workloads": {}}
    summary: List[List[str]] = []
    ratios_text: List[Tuple[str, str]] = []

    # 1. tiny items ---------------------------------------------------------------------
    if "tiny" in only:
        print(f"\n## 1. tiny items: {tiny_n:,} no-op items, one per message", flush=True)
        rows = map_rows(h, methods, peers=ALL_PEERS, with_stream=True)
        expected = list(range(tiny_n))

        def verify_tiny(values: List[Any]) -> None:
            check(len(values) == tiny_n, f"{len(values)} results, expected {tiny_n}")
            check(sum(values) == tiny_n * (tiny_n - 1) // 2, "the sum of the results is wrong")
            check(sorted(values) == expected, "the results are not the items")

        run_map_workload(h, rows, _tasks.noop, [0, 1, 2, 3], expected, verify_tiny,
                         lambda s: tiny_n / s, repeats)
        show("tiny items: tasks/s (higher is better)", rate_table(rows, "tasks/s"))
        ratios_text.append(("tiny items, tasks/s: workerkit / peer (> 1: workerkit faster)",
                            ratio_matrix(rows)))
        report["workloads"]["tiny"] = {"items": tiny_n, "unit": "tasks/s",
                                       "rows": [r.to_json() for r in rows]}
        by = {r.key: r for r in rows}
        for m in methods:
            for ours in ("process", "stream", "map"):
                o, p = by.get(f"workerkit.{ours}/{m}"), by.get(f"mp.Pool.imap/{m}")
                if o and p and o.median and p.median:
                    ratio = o.median / p.median
                    summary.append([f"tiny: WorkPool.{ours} vs Pool.imap(chunksize=1) [{m}]",
                                    f">= {TARGET_TINY_VS_POOL:.1f}x", f"{ratio:.2f}x",
                                    "yes" if ratio >= TARGET_TINY_VS_POOL else "no"])

    # 2. 1 MB payloads ------------------------------------------------------------------
    if "payload" in only:
        print(f"\n## 2. 1 MB payloads: {payload_n} items of {PAYLOAD_BYTES:,} bytes, sent and returned",
              flush=True)
        rows = map_rows(h, methods, peers=ALL_PEERS)
        payload = bytes(range(256)) * (PAYLOAD_BYTES // 256) + bytes(PAYLOAD_BYTES % 256)
        blobs = [payload] * payload_n

        def verify_payload(values: List[Any]) -> None:
            check(len(values) == payload_n, f"{len(values)} results, expected {payload_n}")
            check(all(type(v) is bytes and v == payload for v in values), "a returned payload differs")

        run_map_workload(h, rows, _tasks.noop, blobs[:4], blobs, verify_payload,
                         lambda s: payload_n * PAYLOAD_BYTES / 1e6 / s, repeats)
        show("1 MB payloads: MB/s of items, each MB sent to the child and back (higher is better)",
             rate_table(rows, "MB/s"))
        ratios_text.append(("1 MB payloads, MB/s: workerkit / peer (> 1: workerkit faster)",
                            ratio_matrix(rows)))
        report["workloads"]["payload"] = {"items": payload_n, "bytes": PAYLOAD_BYTES, "unit": "MB/s",
                                          "rows": [r.to_json() for r in rows]}
        ok = [r for r in rows if r.samples]
        peer_best = max((r for r in ok if not r.ours), key=lambda r: r.median or 0.0, default=None)
        ours_best = max((r for r in ok if r.ours), key=lambda r: r.median or 0.0, default=None)
        if peer_best and ours_best and peer_best.median and ours_best.median:
            ratio = ours_best.median / peer_best.median
            summary.append([f"1 MB: best workerkit ({ours_best.label} [{ours_best.method}]) vs best peer "
                            f"({peer_best.label} [{peer_best.method}])", ">= 1.0x", f"{ratio:.2f}x",
                            "yes" if ratio >= 1.0 else "no"])
        del blobs, payload

    # 3. round-trip latency -------------------------------------------------------------
    if "latency" in only:
        block = 100 if quick else 500
        print(f"\n## 3. round-trip latency: {trips:,} round trips per repeat, "
              f"interleaved in blocks of {block}", flush=True)
        rows = run_latency(h, methods, trips, block, 20 if quick else 200, repeats)
        lines = [[ours_mark(r), r.method, fmt(r.median, 1), fmt(r.extra_median("p99_us"), 1),
                  fmt(r.extra_median("mean_us"), 1)] for r in rows if r.samples]
        show("round trip parent -> child -> parent, us (lower is better)",
             table(["channel", "start", "median us", "p99 us", "mean us"], lines))
        by = {r.key: r for r in rows}
        lat_lines = []
        for m in methods:
            o = by[f"workerkit.channel/{m}"]
            for key in ("raw.pipe.same", "raw.pipe", "pipe+thread+future"):
                p = by[f"{key}/{m}"]
                if o.samples and p.samples:
                    med = (o.median or 0) / (p.median or 1)
                    p99 = (o.extra_median("p99_us") or 0) / (p.extra_median("p99_us") or 1)
                    lat_lines.append([f"{p.label} [{m}]", f"{med:.2f}x", f"{p99:.2f}x"])
                    if key == "raw.pipe.same":  # the issue: "between the same processes"
                        summary.append([f"latency: channel median vs raw Pipe, same processes [{m}]",
                                        f"<= {TARGET_LATENCY}x", f"{med:.2f}x",
                                        "yes" if med <= TARGET_LATENCY else "no"])
                    elif key == "raw.pipe":
                        summary.append([f"latency: channel median vs raw Pipe in its own child [{m}]",
                                        "(reference)", f"{med:.2f}x", "-"])
        ratios_text.append(("latency: workerkit channel / peer (< 1: workerkit faster)",
                            table(["peer", "median ratio", "p99 ratio"], lat_lines)))
        report["workloads"]["latency"] = {"round_trips": trips, "block": block, "unit": "us",
                                          "rows": [r.to_json() for r in rows]}

    # 4. start-up -------------------------------------------------------------------------
    if "startup" in only:
        print(f"\n## 4. start-up of a {WORKERS}-worker pool, per start method", flush=True)
        rows = run_startup(h, startup_methods, startup_repeats)
        lines = [[ours_mark(r), r.method, fmt(r.median, 1), fmt(r.extra_median("with_shutdown_ms"), 1),
                  spread(r, 1)] for r in rows if r.samples]
        show("start-up until both workers finished a first item, ms (lower is better)",
             table(["what", "start", "ms (median)", "ms incl. shutdown/join", "min - max"], lines))
        by = {r.key: r for r in rows}
        st_lines = []
        for sm in startup_methods:
            o = by[f"workerkit.pool/{sm}"]
            for key in ("process", "mp.Pool"):
                p = by[f"{key}/{sm}"]
                if o.samples and p.samples:
                    ratio = (o.median or 0) / (p.median or 1)
                    st_lines.append([f"{p.label} [{sm}]", f"{ratio:.2f}x"])
                    if key == "process":
                        summary.append([f"start-up: WorkPool vs bare Process x2 [{sm}]",
                                        f"<= {TARGET_STARTUP}x", f"{ratio:.2f}x",
                                        "yes" if ratio <= TARGET_STARTUP else "no"])
        ratios_text.append(("start-up: workerkit / peer, time (< 1: workerkit faster)",
                            table(["peer", "ratio"], st_lines)))
        report["workloads"]["startup"] = {"unit": "ms", "rows": [r.to_json() for r in rows]}

    # 5. CPU-bound ------------------------------------------------------------------------
    if "cpu" in only:
        print(f"\n## 5. CPU-bound: {cpu_n} items of {CPU_ITEM_SECONDS * 1000:.0f} ms CPU each", flush=True)
        # WorkPool.map is left out here: its figure would include starting its workers.
        rows = map_rows(h, methods, with_map=False, peers=("ppe",))
        loops = statistics.median(_tasks.calibrate_burn(CPU_ITEM_SECONDS) for _ in range(3))
        jobs = [(i, loops) for i in range(cpu_n)]
        loop_total = loops * (loops - 1) // 2
        print(f"  {loops:,} additions per item (about {CPU_ITEM_SECONDS * 1000:.0f} ms of CPU here)",
              flush=True)

        def verify_cpu(values: List[Any]) -> None:
            check(len(values) == cpu_n, f"{len(values)} results, expected {cpu_n}")
            check(sorted(v[0] for v in values) == list(range(cpu_n)), "the results are not the items")
            check(all(v[2] == loop_total for v in values), "an item computed a wrong total")

        def busy(row: Row, elapsed: float, values: List[Any]) -> None:
            cpu = sum(v[1] for v in values)
            inside = sum(v[3] for v in values)
            row.add_extra("busy_fraction", cpu / (WORKERS * elapsed))
            row.add_extra("in_item_fraction", inside / (WORKERS * elapsed))
            row.add_extra("item_cpu_over_wall", cpu / inside)

        run_map_workload(h, rows, _tasks.burn, [(i, loops // 10) for i in range(4)], jobs, verify_cpu,
                         lambda s: cpu_n / s, repeats, extra=busy)
        def pct(row: Row, name: str) -> str:
            return f"{100 * (row.extra_median(name) or 0):.1f}%"

        lines = [[ours_mark(r), r.method, pct(r, "busy_fraction"), pct(r, "in_item_fraction"),
                  pct(r, "item_cpu_over_wall"), fmt(r.median, 1)] for r in rows if r.samples]
        show(f"CPU-bound: workers busy, % of {WORKERS} x wall time (higher is better)",
             table(["pool", "start", "busy: child CPU", "in fn: child wall", "CPU/wall inside fn", "items/s"],
                   lines)
             + "\n\nbusy = sum of the items' CPU time (time.process_time in the child) / (2 x wall time);"
             "\nin fn = the same with the items' wall time in the child: the pool's own idle gaps, without"
             "\nthe CPU that other processes on the machine took (CPU/wall inside fn < 100% shows that).")
        cpu_lines = []
        for o in (r for r in rows if r.ours and r.samples):
            b = o.extra_median("busy_fraction") or 0.0
            g = o.extra_median("in_item_fraction") or 0.0
            summary.append([f"CPU-bound: {o.label} busy [{o.method}] (in fn)", f">= {TARGET_BUSY:.0%}",
                            f"{b:.1%} ({g:.1%})", "yes" if b >= TARGET_BUSY else "no"])
            for p in (r for r in rows if not r.ours and r.samples):
                cpu_lines.append([f"{o.label} [{o.method}]", f"{p.label} [{p.method}]",
                                  f"{b / (p.extra_median('busy_fraction') or 1):.3f}x",
                                  f"{g / (p.extra_median('in_item_fraction') or 1):.3f}x"])
        ratios_text.append(("CPU-bound: workerkit busy fraction / peer's (> 1: workerkit better)",
                            table(["workerkit", "peer", "busy ratio", "in-fn ratio"], cpu_lines)))
        report["workloads"]["cpu"] = {"items": cpu_n, "item_cpu_seconds": CPU_ITEM_SECONDS, "loops": loops,
                                      "unit": "items/s", "rows": [r.to_json() for r in rows]}

    # 6. chunked map -------------------------------------------------------------------------
    if "chunked" in only and not wk_map_supports_chunksize():
        h.note("this workerkit's WorkPool.map has no chunksize option: the chunked workload is skipped")
    elif "chunked" in only:
        chunk = pool_map_chunksize(chunked_n)
        print(f"\n## 6. chunked map: {chunked_n:,} no-op items, chunksize {chunk:,} "
              "(Pool.map's default), from the call to the last result, start-up included", flush=True)
        rows = []
        for m in methods:
            rows.append(Row(f"workerkit.map.chunked/{m}", f"WorkPool.map(chunksize={chunk})", m, True,
                            cold_wk_map(m, chunk)))
            if wk_process_supports_chunksize():
                rows.append(Row(f"workerkit.process.chunked/{m}", f"WorkPool(function_worker).process"
                                f"(chunksize={chunk}, on_complete=keep value)", m, True,
                                cold_wk_process(m, chunk)))
                rows.append(Row(f"workerkit.process_counting.chunked/{m}", f"WorkPool(function_worker)"
                                f".process(chunksize={chunk}), no callback (counts checked)", m, True,
                                cold_wk_process_counting(m, chunk)))
            rows.append(Row(f"mp.Pool.map/{m}", "multiprocessing.Pool(2).map (default chunks)", m, False,
                            cold_pool_map(m)))
        numbers = list(range(chunked_n))

        def verify_chunked(values: List[Any]) -> None:
            check(values == numbers, "the results are not the items, in order")

        run_map_workload(h, rows, _tasks.noop, [], numbers, verify_chunked, lambda s: chunked_n / s, repeats)
        show("chunked map: items/s (higher is better)", rate_table(rows, "items/s"))
        by = {r.key: r for r in rows}
        ch_lines = []
        for m in methods:
            p = by[f"mp.Pool.map/{m}"]
            for kind in ("map", "process", "process_counting"):
                o = by.get(f"workerkit.{kind}.chunked/{m}")
                if o is None or not o.median or not p.median:
                    continue
                ratio = p.median / o.median  # time ratio: workerkit's time / Pool.map's time
                ch_lines.append([f"{o.label} vs {p.label} [{m}]", f"{o.median / p.median:.2f}x"])
                what = {"map": "WorkPool.map(chunksize)",
                        "process": "WorkPool.process(chunksize, on_complete per item)",
                        "process_counting": "WorkPool.process(chunksize), no callback"}[kind]
                summary.append([f"chunked: {what} time vs Pool.map [{m}]", "<= 1.2x",
                                f"{ratio:.2f}x", "yes" if ratio <= 1.2 else "no"])
        ratios_text.append(("chunked map, items/s: workerkit / peer (> 1: workerkit faster)",
                            table(["peer", "ratio"], ch_lines)))
        report["workloads"]["chunked"] = {"items": chunked_n, "chunksize": chunk, "unit": "items/s",
                                          "rows": [r.to_json() for r in rows]}

    # ratios and targets -------------------------------------------------------------------
    print("\n## workerkit's ratio to each peer")
    for title, text in ratios_text:
        show(title, text)
    if summary:
        show("the issue's targets (informational; speed never fails this script)",
             table(["target", "wanted", "measured", "met"], summary))
    report["targets"] = [dict(zip(("target", "wanted", "measured", "met"), s)) for s in summary]

    left = leftover_children()
    if left:
        h.note("processes not reaped: " + "; ".join(f"pid {p} [{s}] {c}" for p, s, c in left))
    else:
        print("Every pool was shut down and every worker reaped (only the forkserver / resource "
              "trackers remain until exit).")
    report["leftover_processes"] = [{"pid": p, "state": s, "cmdline": c} for p, s, c in left]
    report["notes"] = h.notes
    elapsed = time.perf_counter() - began
    report["seconds"] = elapsed
    print(f"\nAll results verified. Total time {elapsed:.1f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"Figures written to {args.json}")


if __name__ == "__main__":
    main()
