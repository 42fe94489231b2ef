"""The function child's short spin for its next request (``_Spinner``): it returns as soon
as a request is there (or read ahead, or the parent hung up), backs off after misses, and
the child serves every item whether it spun or slept."""

from __future__ import annotations

import socket
import time
from typing import Iterator, Tuple

import pytest

from workerkit import WorkPool, function_worker
from workerkit._function_child import _CAN_SPIN, _Spinner

Pair = Tuple[socket.socket, socket.socket]

pytestmark = pytest.mark.skipif(not _CAN_SPIN, reason="no poll()/sched_yield here")


@pytest.fixture
def pair() -> Iterator[Pair]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_miss_backs_off_twice_as_long_each_time_up_to_63_items(pair: Pair) -> None:
    child, _parent = pair
    spinner = _Spinner(child.fileno(), lambda: False)
    skips = []
    for _ in range(8):
        spinner()  # nothing ever arrives: a miss
        skips.append(spinner._skip)
        while spinner._skip:  # the skipped items do not spin
            spinner()
    assert skips == [1, 3, 7, 15, 31, 63, 63, 63]


def test_a_waiting_request_ends_the_spin_and_the_back_off(pair: Pair) -> None:
    child, parent = pair
    spinner = _Spinner(child.fileno(), lambda: False)
    spinner()
    spinner()  # skipped
    spinner()  # a second miss in a row
    assert spinner._skip == 3
    while spinner._skip:
        spinner()
    parent.sendall(b"x")
    spinner()
    assert (spinner._misses, spinner._skip) == (0, 0)
    assert child.recv(1) == b"x"  # the spin only looked; the request is still there to read


def test_a_request_already_read_ahead_needs_no_wait(pair: Pair) -> None:
    child, _parent = pair
    spinner = _Spinner(child.fileno(), lambda: True)
    for _ in range(10):
        spinner()
    assert (spinner._misses, spinner._skip) == (0, 0)  # never polled the (empty) socket


def test_a_parent_that_hung_up_ends_the_spin(pair: Pair) -> None:
    child, parent = pair
    parent.close()
    spinner = _Spinner(child.fileno(), lambda: False)
    spinner()
    assert (spinner._misses, spinner._skip) == (0, 0)  # the read that follows sees EOF


def _slow_source(count: int) -> Iterator[int]:
    for i in range(count):
        if i % 3 == 0:
            time.sleep(0.002)  # late requests: the child misses, backs off, sleeps in read
        yield i


def test_the_child_serves_every_item_whether_requests_come_early_or_late() -> None:
    values: list[int] = []
    with WorkPool(lambda: function_worker(abs), max_workers=2) as pool:
        summary = pool.process(_slow_source(300), on_complete=lambda o: values.append(o.value))
        summary2 = pool.process(range(3000), on_complete=lambda o: values.append(o.value))
    assert (summary.completed, summary.failed, summary2.completed) == (300, 0, 3000)
    assert sorted(values) == sorted(list(range(300)) + list(range(3000)))
