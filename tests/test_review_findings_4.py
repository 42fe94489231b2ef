"""Bugs a review found in the pipelined chunk path of ``map`` and in chunked pools."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Iterator, List, Set

import pytest

from tests.children import workers
from tests.test_map import assert_all_gone
from workerkit import ChannelClosedError, RemoteError, WorkPool, function_worker


@pytest.mark.timeout(120)
def test_stop_iteration_raised_by_fn_in_a_chunk_is_an_error_not_the_end() -> None:
    got: List[int] = []
    with pytest.raises(RemoteError) as info:
        for value in WorkPool.map(workers.stop_on_three, range(10), max_workers=1, chunksize=5):
            got.append(value)
    assert info.value.remote_type == "builtins.StopIteration"
    assert got == [0, 2, 4]
    with WorkPool(lambda: function_worker(workers.stop_on_three), max_workers=1) as pool:
        summary = pool.process(range(10), chunksize=5, raise_on_error=False)
        assert (summary.submitted, summary.completed, summary.failed) == (10, 9, 1)
        assert [o.input for o in summary.failures] == [3]
        stats = pool.stats()
        assert (stats.completed, stats.failed) == (9, 1)


@pytest.mark.timeout(120)
def test_a_chunked_map_is_over_once_it_raised_and_its_children_end() -> None:
    results = WorkPool.map(workers.pid_or_fail_on_five, range(40), max_workers=2, chunksize=4)
    pids: Set[int] = set()
    seen: List[int] = []
    with pytest.raises(RemoteError):
        for value, pid in results:
            seen.append(value)
            pids.add(pid)
    assert seen == [0, 1, 2, 3, 4]
    with pytest.raises(StopIteration):
        next(results)  # like a generator that raised: finished
    assert_all_gone(pids, timeout=10.0)  # ended when it raised, not when collected


@pytest.fixture
def default_socket_timeout() -> Iterator[None]:
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("default_socket_timeout")
def test_map_and_pools_ignore_a_default_socket_timeout() -> None:
    # Large results arrive in several reads; a non-blocking socket would break them.
    got = list(WorkPool.map(workers.big_result, range(6), max_workers=2, chunksize=1))
    assert got == [b"r" * (4 << 20)] * 6
    items = [(i, b"x" * (4 << 20)) for i in range(4)]
    assert list(WorkPool.map(workers.pad_or_exit, items, max_workers=2)) == [p for _, p in items]
    with WorkPool(lambda: function_worker(workers.big_result), max_workers=2) as pool:
        values: List[Any] = []
        summary = pool.process(range(4), on_complete=lambda o: values.append(o.value))
    assert summary.completed == 4 and values == [b"r" * (4 << 20)] * 4


@pytest.mark.timeout(120)
def test_results_a_child_sent_before_it_died_are_kept() -> None:
    # Item 3 ends the child after items 0-2 were answered; the large items behind it wait
    # in the parent's outbox. A slow consumer lets the child die before those results are read.
    items: List[Any] = [0, 1, 2, 3] + [(i, b"x" * (8 << 20)) for i in range(4, 8)]
    got: List[int] = []
    with pytest.raises(ChannelClosedError):
        for value in WorkPool.map(workers.kill_on_three, items, max_workers=1):
            got.append(value)
            time.sleep(1.0)
    assert got == [0, 1, 2]


@pytest.mark.timeout(120)
def test_a_chunked_stream_keeps_every_worker_busy() -> None:
    # One credit per item: a chunk of 16 must not use up every credit of the stream.
    pids = list(WorkPool.map(workers.nap_pid, range(32), max_workers=2, chunksize=16, idle_timeout=5))
    assert len(pids) == 32
    assert len(set(pids)) == 2


def _socket_inodes(pid: int) -> Set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.timeout(120)
def test_forked_map_children_hold_no_socket_of_their_siblings() -> None:
    results = WorkPool.map(workers.pid_of, range(200), max_workers=3, start_method="fork")
    try:
        pids = {next(results) for _ in range(30)}
        mine = _socket_inodes(os.getpid())
        shared = {pid: _socket_inodes(pid) & mine for pid in pids}
    finally:
        results.close()  # type: ignore[attr-defined]
    # Each child holds only its own end of its own pipe, which the parent does not.
    assert shared == {pid: set() for pid in pids}
    assert_all_gone(pids, timeout=10.0)
