"""Task functions for ``benchmarks/compare.py``.

They live in their own small module (not in ``compare.py``) so that children started with
spawn or forkserver, and by loky's own launcher, import them by reference without
re-running anything of the benchmark script. Keep this module cheap to import.
"""

from __future__ import annotations

import time
from typing import Any, Tuple


def noop(x: Any) -> Any:
    """The tiny item: return the item (the parent checks the sum of the results)."""
    return x


def nap(x: Any) -> Any:
    """Warm-up item: sleep 20 ms so every worker of a 2-worker pool gets one."""
    time.sleep(0.02)
    return x


def burn(item: Tuple[int, int]) -> Tuple[int, float, int, float]:
    """CPU-bound item ``(index, loops)``: a pure-Python loop of ``loops`` additions.

    Returns ``(index, cpu_seconds, total, wall_seconds)``: the CPU time the loop took,
    measured here in the child with ``time.process_time`` (the parent sums it for the busy
    fraction); the loop's result, ``loops * (loops - 1) // 2``, which the parent checks;
    and the wall time the loop took (CPU < wall means other processes took the CPU).
    """
    index, loops = item
    wall = time.perf_counter()
    start = time.process_time()
    total = 0
    for i in range(loops):
        total += i
    return index, time.process_time() - start, total, time.perf_counter() - wall


def calibrate_burn(seconds: float) -> int:
    """How many ``burn`` loops take about ``seconds`` of CPU in this process."""
    loops = 100_000
    while True:
        start = time.process_time()
        burn((0, loops))
        used = time.process_time() - start
        if used >= 0.05:
            return max(1, int(loops * seconds / used))
        loops *= 2


def trivial() -> None:
    """Target of the bare ``multiprocessing.Process`` start-up baseline."""


def pipe_echo(conn: Any) -> None:
    """Raw-pipe baseline child: answer every ``ping`` with a ``pong`` carrying its ``i``,
    until EOF or a message with a negative ``i`` (then it closes its end and returns)."""
    recv, send = conn.recv, conn.send
    try:
        while True:
            msg = recv()
            if msg["i"] < 0:
                break
            send({"type": "pong", "i": msg["i"]})
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


def channel_echo(pipe: Any = None) -> None:
    """workerkit channel child: answer every ``ping`` with a ``pong`` carrying its ``i``.

    With ``pipe`` (a raw ``Pipe`` end), a thread of this same child also answers on it as
    :func:`pipe_echo` does: the raw baseline then runs between the same two processes as
    the channel. Returning with a listener registered keeps the child alive until the
    parent closes the channel (workerkit's bootstrap waits for it).
    """
    import threading

    from workerkit import ChildCommChannel

    if pipe is not None:
        threading.Thread(target=pipe_echo, args=(pipe,), name="bench-pipe-echo", daemon=True).start()

    channel = ChildCommChannel()
    send = channel.send

    def on_ping(event: Any, remove: Any) -> None:
        send("pong", {"i": event["i"]})

    channel.listen_for("ping", on_ping)
