"""Per-item overhead of WorkPool.process with no-op in-process workers.

Compares items/s of ``WorkPool.process`` with ``concurrent.futures.ThreadPoolExecutor.map``
on the same no-op work, for 1, 2 and 8 workers, rows interleaved (A B A B) so machine
drift hits both alike; prints a table with the median of the repeats and the ratio.

    python benchmarks/pool_overhead.py            # 100,000 items, 5 repeats
    python benchmarks/pool_overhead.py --quick    # CI: small, checks results only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List

from workerkit import Worker, WorkPool


class NoOp(Worker[int, int]):
    def execute(self, item: int) -> int:
        return item


def run_workerkit(n: int, workers: int) -> float:
    total = 0

    def add(outcome: object) -> None:
        nonlocal total
        total += 1

    with WorkPool(NoOp, max_workers=workers) as pool:
        start = time.perf_counter()
        summary = pool.process(range(n))
        elapsed = time.perf_counter() - start
    if summary.completed != n or summary.failed:
        raise SystemExit(f"workerkit gave a wrong result: {summary}")
    return n / elapsed


def run_threadpool(n: int, workers: int) -> float:
    with ThreadPoolExecutor(workers) as ex:
        start = time.perf_counter()
        count = sum(1 for _ in ex.map(lambda x: x, range(n)))
        elapsed = time.perf_counter() - start
    if count != n:
        raise SystemExit("ThreadPoolExecutor gave a wrong result")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for CI (checks results only)")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    n = args.items or (5_000 if args.quick else 100_000)
    repeats = args.repeats or (1 if args.quick else 5)
    runners: Dict[str, Callable[[int, int], float]] = {
        "WorkPool.process": run_workerkit,
        "ThreadPoolExecutor.map": run_threadpool,
    }
    print(f"no-op items, {n:,} per run, median of {repeats}; Python {sys.version.split()[0]}")
    print(f"{'workers':>7} | {'WorkPool items/s':>16} | {'TPE.map items/s':>15} | {'ratio':>5}")
    print("-" * 54)
    for workers in (1, 2, 8):
        results: Dict[str, List[float]] = {name: [] for name in runners}
        for _ in range(repeats):
            for name, runner in runners.items():  # interleaved: A B A B
                results[name].append(runner(n, workers))
        ours = statistics.median(results["WorkPool.process"])
        theirs = statistics.median(results["ThreadPoolExecutor.map"])
        print(f"{workers:>7} | {ours:>16,.0f} | {theirs:>15,.0f} | {ours / theirs:>4.2f}x")


if __name__ == "__main__":
    main()
