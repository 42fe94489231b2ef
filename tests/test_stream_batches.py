"""A stream hands a chunk's outcomes to its consumer at once (one hand-off per chunk), and
its credits (``Credits``) are taken and returned many at a time; nothing is lost or
doubled, whether the consumer keeps up or pauses, and failures stay per item."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator, List, Tuple

import pytest

from tests._pools import wait_until
from tests.children import workers
from workerkit import DynamicIterator, Outcome, RemoteError, WorkPool, function_worker
from workerkit._credits import Credits

pytestmark = pytest.mark.timeout(120)


def test_take_gets_what_is_there_and_release_gives_it_back() -> None:
    credits = Credits(5)
    assert credits.take(3) == 3
    assert credits.take(3) == 2  # only two left: a partial take
    assert credits.take(1) == 0
    assert not credits.acquire(timeout=0.05)
    credits.release(4)
    assert credits.take(10) == 4


def test_release_wakes_a_thread_waiting_in_acquire() -> None:
    credits = Credits(0)
    got: List[bool] = []
    waiter = threading.Thread(target=lambda: got.append(credits.acquire(timeout=30)))
    waiter.start()
    time.sleep(0.1)
    assert not got  # still waiting: no credit yet
    credits.release(2)
    waiter.join(30)
    assert got == [True]
    assert credits.take(5) == 1  # one taken by the waiter, one left


@pytest.mark.parametrize("ordered", [False, True])
def test_a_chunked_stream_of_function_workers_yields_every_item_once(ordered: bool) -> None:
    with WorkPool(lambda: function_worker(workers.double), max_workers=2) as pool:
        outcomes = list(pool.stream(range(20_000), chunksize=1000, ordered=ordered))
    indexes = [o.index for o in outcomes]
    assert sorted(indexes) == list(range(20_000))
    if ordered:
        assert indexes == list(range(20_000))
    assert all(o.ok and o.value == 2 * o.input for o in outcomes)


def test_a_paused_consumer_gets_every_item_once_when_it_resumes() -> None:
    """Credits run low while the consumer pauses, so chunks are filled from what is left
    (partial takes); the unused credits come back and nothing is lost or doubled."""
    with WorkPool(lambda: function_worker(workers.double), max_workers=2) as pool:
        stream = pool.stream(range(5_000), chunksize=7)
        seen = [next(stream).index for _ in range(3)]
        time.sleep(0.3)
        ahead = pool.stats().completed
        seen += [o.index for o in stream]
    assert ahead <= 3 + 16 * 7 + 2 * 7 + 7, ahead
    assert sorted(seen) == list(range(5_000))


def test_a_chunk_with_failures_still_yields_each_item_with_its_own_result() -> None:
    with WorkPool(lambda: function_worker(workers.count_or_fail), max_workers=2) as pool:
        outcomes = sorted(pool.stream(range(300), chunksize=8), key=lambda o: o.index)
    assert [o.index for o in outcomes] == list(range(300))
    for o in outcomes:
        if o.input % 5 == 0:
            assert isinstance(o.error, RemoteError) and "multiple of five" in str(o.error)
        else:
            assert o.ok and isinstance(o.value, int) and o.value >= 1  # the child's call count


def test_a_chunk_that_succeeded_reaches_the_stream_in_one_hand_off() -> None:
    from workerkit._results import Batch
    from workerkit._run import Run

    handed: List[object] = []
    run: Run[str, int] = Run(sink=handed.append)
    run.submit(3)
    run.successes(0, ["a", "b", "c"], [1, 2, 3], "w1", 0.5)
    assert len(handed) == 1 and type(handed[0]) is Batch
    assert [(o.index, o.input, o.value, o.worker_id) for o in handed[0]] == [
        (0, "a", 1, "w1"), (1, "b", 2, "w1"), (2, "c", 3, "w1")]
    assert (run.completed, run.pending) == (3, 0)


def _next_within(stream: Iterator[Outcome[int, int]], seconds: float) -> Outcome[int, int]:
    """``next(stream)`` on a helper thread; fails the test (instead of hanging) when no
    outcome comes within ``seconds``."""
    got: queue.SimpleQueue[Outcome[int, int]] = queue.SimpleQueue()
    threading.Thread(target=lambda: got.put(next(stream)), daemon=True).start()
    try:
        return got.get(timeout=seconds)
    except queue.Empty:
        pytest.fail(f"no outcome within {seconds} s: held back and never handed over")


def test_an_outcome_is_handed_over_without_waiting_for_more_items() -> None:
    """The multiplexer holds a stream's outcomes only while more replies are ready: one
    item alone (the source has nothing more yet) still reaches the consumer."""
    source: DynamicIterator[int] = DynamicIterator()
    with WorkPool(lambda: function_worker(workers.double), max_workers=2) as pool:
        stream = pool.stream(source)
        try:
            for i in range(5):
                source.add(i)
                outcome = _next_within(stream, 30)
                assert (outcome.index, outcome.value) == (i, 2 * i)
        finally:
            source.close()
            assert [o.index for o in stream] == []
            stream.close()  # type: ignore[attr-defined]


def test_held_outcomes_reach_the_sink_at_once_and_are_counted() -> None:
    from workerkit._results import Batch
    from workerkit._run import Run

    handed: List[object] = []
    run: Run[str, int] = Run(sink=handed.append)
    run.submit(3)
    assert run.hold(0, "a", 1, "w", 0.1) is True  # the first one held: the pool notes the run
    assert run.hold(1, "b", 2, "w", 0.1) is False
    assert (handed, run.pending) == ([], 3)  # held: not handed over, not counted yet
    run.flush()
    assert len(handed) == 1 and type(handed[0]) is Batch
    assert [o.input for o in handed[0]] == ["a", "b"]
    assert run.pending == 1
    run.flush()  # nothing held: nothing handed over
    assert len(handed) == 1
    assert run.hold(2, "c", 3, "w", 0.1) is True
    run.flush()  # a single outcome goes as itself
    assert [getattr(h, "input", None) for h in handed] == [None, "c"]
    assert (run.completed, run.pending) == (3, 0)


def test_outcomes_held_for_a_stream_are_handed_over_before_another_calls_callback() -> None:
    """A process() callback runs on the multiplexer; a stream's outcomes the multiplexer
    holds go to that stream's consumer first, so a callback that waits for the consumer
    (a hand-off between the two calls) is never stuck behind them."""
    with WorkPool(lambda: function_worker(workers.double), max_workers=4) as pool:
        got: List[int] = []
        stop = threading.Event()

        def consume() -> None:
            stream = pool.stream(range(10**9))  # a range: workers pull for themselves
            for outcome in stream:
                got.append(outcome.index)
                if stop.is_set():
                    break
            stream.close()  # type: ignore[attr-defined]

        consumer = threading.Thread(target=consume)
        consumer.start()
        try:
            assert wait_until(lambda: len(got) > 1000, 60)
            calls = [0]
            stuck: List[Tuple[int, int]] = []

            def on_complete(_outcome: Outcome[int, int]) -> None:
                calls[0] += 1
                finished = pool.stats().completed - calls[0]  # the stream's, by now
                if not wait_until(lambda: len(got) >= finished, 5):
                    stuck.append((finished, len(got)))

            pool.process(range(40), on_complete=on_complete)
        finally:
            stop.set()
            consumer.join(60)
        assert calls[0] == 40 and not stuck, stuck


def test_an_ordered_stream_keeps_its_window_behind_a_slow_first_item() -> None:
    """Item 0 takes a second and the consumer is slow: outcomes waiting for their turn
    never exceed the stream's window."""
    from workerkit._options import held_stream_window

    items = [-1.0] + [float(i) for i in range(1, 1500)]
    with WorkPool(lambda: function_worker(workers.nap_if_negative), max_workers=2) as pool:
        stream = pool.stream(items, ordered=True)
        yielded = worst = 0
        for _ in stream:
            yielded += 1
            worst = max(worst, pool.stats().completed - yielded)
            time.sleep(0.001)
            if yielded >= 600:
                break
        stream.close()  # type: ignore[attr-defined]
    assert worst <= held_stream_window(2) + 2, worst



# The end of both Ctrl-C scripts: how long until KeyboardInterrupt reached the caller, and
# which children (by their pid files) are still running afterwards.
REPORT = """    except KeyboardInterrupt:
        print("interrupted after %.1f s" % (time.monotonic() - started), flush=True)
    alive = [p for p in pids(tmp) if os.path.exists("/proc/%d" % p)
             and open("/proc/%d/stat" % p).read().split(")")[-1].split()[0] != "Z"]
    print("children still running:", alive, flush=True)
    pool.shutdown()
"""


def _seconds_to_interrupt(script: str, timeout: float) -> float:
    """Run a Ctrl-C script in a fresh interpreter; the seconds it reports, after checking
    that no child outlived the interrupt and no outcome came before it."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", script.replace("REPORT", REPORT)], cwd=repo,
                          capture_output=True, text=True, timeout=timeout)
    assert "interrupted after" in proc.stdout, (proc.stdout, proc.stderr)
    assert "children still running: []" in proc.stdout, proc.stdout
    assert "unexpected outcome" not in proc.stdout, proc.stdout
    return float(proc.stdout.split("interrupted after ")[1].split()[0])


CTRL_C_STREAM = r"""
import os, signal, sys, tempfile, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from tests.faults.children import pidfile_then_sleep
from workerkit import WorkPool, function_worker

def pids(directory):
    return [int(n.split(".")[0]) for n in os.listdir(directory) if n.endswith(".pid")]

with tempfile.TemporaryDirectory() as tmp:
    pool = WorkPool(lambda: function_worker(pidfile_then_sleep), max_workers=2)
    def ctrl_c():
        while len(pids(tmp)) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=ctrl_c, daemon=True).start()
    started = time.monotonic()
    try:
        for outcome in MODE:
            print("unexpected outcome", outcome, flush=True)
REPORT"""


@pytest.mark.parametrize("mode", [
    "pool.stream([(tmp, 30.0)] * 6)",
    "pool.stream([(tmp, 30.0)] * 6, ordered=True)",
    "WorkPool.map(pidfile_then_sleep, [(tmp, 30.0)] * 6, max_workers=2, task_timeout=100)",
])
def test_ctrl_c_while_consuming_a_stream_ends_the_children_at_once(mode: str) -> None:
    """As with process(): Ctrl-C in a stream's consumer (or in WorkPool.map with pool
    options, which runs on a stream) ends the workers' children instead of waiting for
    the items in flight (30 s each here)."""
    assert _seconds_to_interrupt(CTRL_C_STREAM.replace("MODE", mode), 60) < 20  # not 30 s


CTRL_C_TWICE = r"""
import os, signal, sys, tempfile, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from tests.faults.children import pidfile_then_sleep
from workerkit import WorkPool, function_worker

def pids(directory):
    return [int(n.split(".")[0]) for n in os.listdir(directory) if n.endswith(".pid")]

with tempfile.TemporaryDirectory() as tmp:
    pool = WorkPool(lambda: function_worker(pidfile_then_sleep, start_method="fork"), max_workers=2)
    in_body = threading.Event()
    def ctrl_c_twice():
        in_body.wait()
        while len(pids(tmp)) < 2:  # both children running their 30 s items
            time.sleep(0.01)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # lands in the loop body: like break
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)  # while leaving waits for the items in flight
    threading.Thread(target=ctrl_c_twice, daemon=True).start()
    started = time.monotonic()
    try:
        for outcome in pool.stream([(tmp, 0.0)] + [(tmp, 30.0)] * 4):
            in_body.set()
            time.sleep(60)  # the consumer's own work
REPORT"""


def test_a_second_ctrl_c_while_leaving_a_stream_ends_the_children() -> None:
    """Ctrl-C in the loop's own body leaves the stream as ``break`` does (the generator
    cannot tell them apart), which waits for the items in flight; a second Ctrl-C then
    ends their children at once."""
    assert _seconds_to_interrupt(CTRL_C_TWICE, 90) < 20  # not 30 s
