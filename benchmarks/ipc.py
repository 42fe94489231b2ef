"""Inter-process costs of workerkit beside plain multiprocessing.

1. Channel round-trip latency: ``ParentCommChannel`` ping/pong against an echo child
   (``f = ch.listen_once('pong'); ch.send('ping', {'n': i}); f.result()``) beside a raw
   ``multiprocessing.Pipe`` ping-pong (``conn.send(obj)``/``conn.recv()``) with a
   ``multiprocessing.Process`` echo loop started the same way. Median and p99 in µs;
   the round trips are split in chunks run A B A B so machine drift hits both alike.
2. Tiny-task throughput: ``WorkPool.map(fn, range(N), max_workers=2)`` beside
   ``multiprocessing.Pool(2).imap(fn, range(N), chunksize=1)`` with the same start method,
   end to end (pool start-up included for both). Rows interleaved A B A B, median of the
   repeats; every run's result is checked (sum of the outputs).

    python benchmarks/ipc.py            # 20,000 round trips, N = 20,000, 3 repeats
    python benchmarks/ipc.py --quick    # CI: < 30 s; fails only on a wrong result

Aims (issue 3): channel round trip <= 1.3x the raw Pipe; WorkPool.map at least as many
tasks/s as Pool.imap(chunksize=1). Speed never fails the run: only wrong results do.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Sequence, Tuple

from workerkit import ChildCommChannel, ParentCommChannel, WorkPool

# Children started with spawn or forkserver import this file as their __main__ (as
# ``__mp_main__``) to find the module-level targets below: everything that runs the
# benchmark is under ``if __name__ == "__main__":``.


class WrongResult(Exception):
    """A benchmark produced a wrong answer: the only way this script fails."""


# -- child-side targets (module-level, so spawn/forkserver children can import them) ----


def channel_echo() -> None:
    """Answer every 'ping' with a 'pong' carrying the same n."""
    ch = ChildCommChannel()
    ch.listen_for("ping", lambda event, _remove: ch.send("pong", {"n": event["n"]}))
    ch.send("ready")


def pipe_echo(conn: Connection) -> None:
    """Send back every object received until None."""
    recv, send = conn.recv, conn.send
    while True:
        obj = recv()
        if obj is None:
            break
        send(obj)
    conn.close()


def tiny_task(x: int) -> int:
    return 2 * x + 1


# -- 1. round-trip latency -----------------------------------------------------------


def channel_round_trips(ch: ParentCommChannel, start: int, count: int) -> List[float]:
    samples: List[float] = []
    clock = time.perf_counter_ns
    for i in range(start, start + count):
        t0 = clock()
        f = ch.listen_once("pong")
        ch.send("ping", {"n": i})
        reply = f.result(30)
        samples.append((clock() - t0) / 1000.0)
        if reply["n"] != i:
            raise WrongResult(f"channel echo returned n={reply['n']!r}, expected {i}")
    return samples


def pipe_round_trips(conn: Connection, start: int, count: int) -> List[float]:
    samples: List[float] = []
    clock = time.perf_counter_ns
    send, recv = conn.send, conn.recv
    for i in range(start, start + count):
        t0 = clock()
        send({"type": "ping", "n": i})
        reply = recv()
        samples.append((clock() - t0) / 1000.0)
        if reply["n"] != i:
            raise WrongResult(f"Pipe echo returned n={reply['n']!r}, expected {i}")
    return samples


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, int(round(q / 100.0 * len(ordered))) - 1))
    return ordered[index]


def measure_latency(method: str, round_trips: int, chunks: int) -> Dict[str, List[float]]:
    """Round-trip samples (µs) of the channel and the raw Pipe, chunks run A B A B."""
    ctx: Any = multiprocessing.get_context(method)
    ch = ParentCommChannel.spawn(channel_echo, start_method=method)
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=pipe_echo, args=(child_conn,), daemon=True)
    proc.start()
    child_conn.close()
    results: Dict[str, List[float]] = {"channel": [], "pipe": []}
    try:
        ch.listen_once("ready").result(60)
        warm = min(200, round_trips)
        channel_round_trips(ch, -warm, warm)
        pipe_round_trips(parent_conn, -warm, warm)
        per_chunk = max(1, round_trips // chunks)
        done = 0
        while done < round_trips:
            count = min(per_chunk, round_trips - done)
            results["channel"] += channel_round_trips(ch, done, count)
            results["pipe"] += pipe_round_trips(parent_conn, done, count)
            done += count
    finally:
        ch.destroy()
        try:
            parent_conn.send(None)
        except OSError:
            pass
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent_conn.close()
    for kind, samples in results.items():
        if len(samples) != round_trips:
            raise WrongResult(f"{kind}: {len(samples)} round trips measured, expected {round_trips}")
    return results


# -- 2. tiny-task throughput ---------------------------------------------------------


def expected_sum(n: int) -> int:
    return sum(tiny_task(x) for x in range(n))


def run_workpool_map(method: str, n: int) -> float:
    start = time.perf_counter()
    total = sum(WorkPool.map(tiny_task, range(n), max_workers=2, start_method=method))
    elapsed = time.perf_counter() - start
    if total != expected_sum(n):
        raise WrongResult(f"WorkPool.map ({method}): sum {total}, expected {expected_sum(n)}")
    return n / elapsed


def run_pool_imap(method: str, n: int) -> float:
    ctx: Any = multiprocessing.get_context(method)
    start = time.perf_counter()
    with ctx.Pool(2) as pool:
        total = sum(pool.imap(tiny_task, range(n), chunksize=1))
    elapsed = time.perf_counter() - start
    if total != expected_sum(n):
        raise WrongResult(f"Pool.imap ({method}): sum {total}, expected {expected_sum(n)}")
    return n / elapsed


def measure_throughput(method: str, n: int, repeats: int) -> Tuple[List[float], List[float]]:
    a: List[float] = []
    b: List[float] = []
    runners: Tuple[Tuple[Callable[[str, int], float], List[float]], ...] = (
        (run_workpool_map, a), (run_pool_imap, b),
    )
    for _ in range(repeats):  # A B A B: drift hits both alike
        for run, rates in runners:
            rates.append(run(method, n))
    return a, b


# -- the table ---------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for CI (< 30 s; checks results only)")
    parser.add_argument("--round-trips", type=int, default=None, help="default 20,000 (quick: 500)")
    parser.add_argument("--items", type=int, default=None, help="default 20,000 (quick: 1,000)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--methods", nargs="+", default=["fork", "forkserver"],
                        choices=["fork", "spawn", "forkserver"])
    args = parser.parse_args(argv)
    round_trips = args.round_trips or (500 if args.quick else 20_000)
    items = args.items or (1_000 if args.quick else 20_000)
    repeats = args.repeats or (1 if args.quick else 3)
    chunks = 2 if args.quick else 4
    methods = [m for m in args.methods if m in multiprocessing.get_all_start_methods()]

    print(f"Python {sys.version.split()[0]} on {sys.platform}; {'quick' if args.quick else 'full'} run")
    print()
    print(f"## Channel round trip (µs), {round_trips:,} round trips per kind, chunks A B A B")
    print()
    print("| start method | channel median | channel p99 | Pipe median | Pipe p99 | ratio (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in methods:
        lat = measure_latency(method, round_trips, chunks)
        cm, cp = statistics.median(lat["channel"]), percentile(lat["channel"], 99)
        pm, pp = statistics.median(lat["pipe"]), percentile(lat["pipe"], 99)
        print(f"| {method} | {cm:.1f} | {cp:.1f} | {pm:.1f} | {pp:.1f} | {cm / pm:.2f}x |", flush=True)
    print()
    print(f"## Tiny-task throughput (tasks/s), N = {items:,}, 2 workers, median of {repeats}")
    print()
    print("| start method | WorkPool.map | Pool.imap(chunksize=1) | ratio |")
    print("|---|---:|---:|---:|")
    for method in methods:
        a, b = measure_throughput(method, items, repeats)
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {method} | {ma:,.0f} | {mb:,.0f} | {ma / mb:.2f}x |", flush=True)
    print()
    print("Aims: channel round trip <= 1.3x raw Pipe; WorkPool.map >= 1.0x Pool.imap. "
          "(Informational: speed never fails this script.)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except WrongResult as exc:
        print(f"WRONG RESULT: {exc}", file=sys.stderr)
        sys.exit(1)
