"""Soak test: many tiny items through a 2-worker function_worker pool while 1% of the items
kill their own child (issue 4, section 4).

    python benchmarks/soak.py            # 200,000 items
    python benchmarks/soak.py --quick    # 5,000 items (CI, well under a minute)
    python benchmarks/soak.py --items 50000 --start-method fork

Every 100th item (index % 100 == 37) kills its child, alternating ``os._exit(1)`` and
SIGKILL to itself. The script checks that:

* every item ends exactly once, as completed or failed (counted per index in a bytearray);
* the failures are exactly the killer items (each a ChannelClosedError with exit code 1
  or -9), and every other item returned its own index;
* after shutdown (and a short settle) the parent's open fds and thread count are back
  to their baseline.

It prints the parent's RSS growth (VmRSS from /proc/self/status; the aim is < 20 MB), the
fds and threads before/after, and the throughput in items/s. The exit status is non-zero
when an item was lost or duplicated, the failures are not exactly the killers, or fds or
threads did not return to baseline -- never because of speed.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script from anywhere: import the repo's workerkit
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workerkit import ChannelClosedError, WorkPool, function_worker  # noqa: E402

KILL_EVERY = 100
KILL_AT = 37
RSS_AIM = 20 << 20


def soak_item(item: Tuple[int, int]) -> int:
    """The child's work: return the index, or kill the child (1: ``os._exit(1)``, 2: SIGKILL)."""
    index, kill = item
    if kill == 1:
        os._exit(1)
    if kill == 2:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return index


def kind_of(index: int) -> int:
    """0 for an ordinary item; 1 or 2 (alternating) for a killer."""
    if index % KILL_EVERY != KILL_AT:
        return 0
    return 1 + (index // KILL_EVERY) % 2


def items(n: int) -> Iterator[Tuple[int, int]]:
    for i in range(n):
        yield (i, kind_of(i))


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def snapshot() -> Dict[str, int]:
    gc.collect()
    return {"rss": rss_bytes(), "fds": open_fds(), "threads": threading.active_count()}


def warm_up(start_method: Optional[str]) -> None:
    """Start what lives as long as the process (the spawner thread, the forkserver) before
    the baseline, so the before/after comparison sees only what the pool leaves behind."""
    def start_one() -> None:
        worker = function_worker(soak_item, start_method=start_method)
        try:
            worker.init()
            worker.execute((0, 0))
        finally:
            worker.destroy()

    # From a thread, as the pool does: fork/spawn starts from a non-main thread go through
    # the long-lived "workerkit-spawner" thread, which this creates once.
    thread = threading.Thread(target=start_one)
    thread.start()
    thread.join()


def settle(baseline: Dict[str, int], timeout: float) -> Dict[str, int]:
    """Poll until fds and threads are back to baseline (or ``timeout``); the final snapshot."""
    deadline = time.monotonic() + timeout
    while True:
        now = snapshot()
        back = now["fds"] <= baseline["fds"] and now["threads"] <= baseline["threads"]
        if back or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 items (for CI)")
    parser.add_argument("--items", type=int, default=None, help="number of items (default 200,000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default=None,
                        help="default: the library's default (forkserver)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds allowed for fds/threads to return to baseline")
    args = parser.parse_args(argv)
    n = args.items if args.items is not None else (5_000 if args.quick else 200_000)
    killers = {i for i in range(n) if kind_of(i)}

    warm_up(args.start_method)
    before = snapshot()

    seen = bytearray(n)  # how many times each index ended (must be exactly 1)
    wrong_values: List[Tuple[int, Any]] = []
    failed_indices: List[int] = []
    bad_errors: List[Tuple[int, str]] = []
    lock = threading.Lock()

    def on_complete(outcome: Any) -> None:
        with lock:
            seen[outcome.index] = min(255, seen[outcome.index] + 1)
            if outcome.value != outcome.index:
                wrong_values.append((outcome.index, outcome.value))

    def on_error(outcome: Any) -> None:
        error = outcome.error
        with lock:
            seen[outcome.index] = min(255, seen[outcome.index] + 1)
            failed_indices.append(outcome.index)
            expected = 1 if kind_of(outcome.index) == 1 else -signal.SIGKILL
            if not isinstance(error, ChannelClosedError) or error.exitcode != expected:
                bad_errors.append((outcome.index, repr(error)))

    pool: WorkPool[Any, Any] = WorkPool(
        lambda: function_worker(soak_item, start_method=args.start_method),
        max_workers=args.workers, name="soak",
    )
    started = time.perf_counter()
    try:
        summary = pool.process(items(n), on_complete=on_complete, on_error=on_error,
                               raise_on_error=False)
    finally:
        pool.shutdown()
    elapsed = time.perf_counter() - started
    stats = pool.stats()
    submitted, completed, failed = summary.submitted, summary.completed, summary.failed
    held = settle(before, 0.0)  # while the 1% failed outcomes (errors, tracebacks) are held
    del pool, summary  # the pool's errors and the summary hold every failed outcome
    after = settle(before, args.settle)

    lost = [i for i in range(n) if seen[i] == 0]
    duplicated = [i for i in range(n) if seen[i] > 1]
    failed_set = set(failed_indices)
    problems: List[str] = []
    if lost:
        problems.append(f"{len(lost)} items lost (first: {lost[:10]})")
    if duplicated:
        problems.append(f"{len(duplicated)} items ended more than once (first: {duplicated[:10]})")
    if len(failed_indices) != len(killers) or failed_set != killers:
        problems.append(
            f"failures are not exactly the killer items: {len(failed_indices)} failed, "
            f"{len(killers)} killers; unexpected {sorted(failed_set - killers)[:10]}, "
            f"missing {sorted(killers - failed_set)[:10]}"
        )
    if wrong_values:
        problems.append(f"{len(wrong_values)} items returned a wrong value (first: {wrong_values[:5]})")
    if bad_errors:
        problems.append(f"{len(bad_errors)} items failed with an unexpected error "
                        f"(first: {bad_errors[:3]})")
    if submitted != n or submitted != completed + failed:
        problems.append(
            f"inconsistent summary: {submitted} submitted, {completed} completed, {failed} failed"
        )
    if after["fds"] > before["fds"]:
        problems.append(f"open fds did not return to baseline: {before['fds']} -> {after['fds']}")
    if after["threads"] > before["threads"]:
        problems.append(f"threads did not return to baseline: {before['threads']} -> {after['threads']}")

    rss_growth = after["rss"] - before["rss"]
    print(f"soak: {n:,} items, {len(killers):,} killers, {args.workers} workers, "
          f"start method {args.start_method or 'default'}")
    print(f"  completed {completed:,}  failed {failed:,}  "
          f"workers created {stats.created:,}  destroyed {stats.destroyed:,}")
    print(f"  time {elapsed:.1f} s  throughput {n / elapsed:,.0f} items/s")
    print(f"  parent RSS  {before['rss'] / 2**20:.1f} MiB -> {after['rss'] / 2**20:.1f} MiB "
          f"(growth {rss_growth / 2**20:+.1f} MiB; aim < 20 MiB"
          f"{'' if rss_growth < RSS_AIM else ' -- OVER THE AIM'}; "
          f"{held['rss'] / 2**20:.1f} MiB while the summary was still held)")
    print(f"  open fds    {before['fds']} -> {after['fds']}")
    print(f"  threads     {before['threads']} -> {after['threads']}")
    if problems:
        for problem in problems:
            print(f"  FAIL: {problem}")
        return 1
    print("  OK: every item ended exactly once; failures == killers; fds and threads at baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
