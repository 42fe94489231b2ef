"""No orphans: children end when their parent goes away, however it goes.

Each scenario runs a parent as a subprocess (a small script in tmp_path) that starts
children through ParentCommChannel; the children write their pids to files. The test
then SIGKILLs that parent (or lets it exit without cleaning up) and checks that every
grandchild is gone within seconds. Whatever happens, the test reaps the parent and
SIGKILLs any grandchild still alive, so nothing leaks even when an assertion fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.children import behaviours
from workerkit.comm import ParentCommChannel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 30.0

PARENT_SCRIPT = """
import os, sys, threading, time
from workerkit.comm import ParentCommChannel

def main():
    method, mode, outdir = sys.argv[1], sys.argv[2], sys.argv[3]
    kinds = {
        "busy": ["busy"],
        "sleep": ["sleeper"],
        "thread": ["listening", "busy"],
        "siblings": ["busy", "sleeper", "listening"],
        "atexit": ["listening", "busy", "sleeper"],
    }[mode]
    channels = []

    def start(i, kind):
        pidfile = os.path.join(outdir, "child%d.pid" % i)
        ch = ParentCommChannel.spawn(
            "tests.children.behaviours:" + kind, (pidfile,), start_method=method
        )
        channels.append(ch)

    if mode == "thread":
        def short_lived():  # starts the children, then ends while the parent lives on
            for i, kind in enumerate(kinds):
                start(i, kind)
            channels[0].listen_once("ready").result(30)
        t = threading.Thread(target=short_lived)
        t.start()
        t.join()
    else:
        for i, kind in enumerate(kinds):
            start(i, kind)
    if mode == "atexit":
        deadline = time.monotonic() + 30
        while len([f for f in os.listdir(outdir) if f.endswith(".pid")]) < len(kinds):
            if time.monotonic() > deadline:
                raise SystemExit("children did not start")
            time.sleep(0.02)
        return  # exit normally, never destroying the channels
    time.sleep(1000)

if __name__ == "__main__":
    main()
"""

EXPECTED = {"busy": 1, "sleep": 1, "thread": 2, "siblings": 3, "atexit": 3}


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def wait_all_gone(pids: List[int], timeout: float) -> List[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


class Scenario:
    """A parent subprocess and the grandchildren it started."""

    def __init__(self, tmp_path: Path, method: str, mode: str) -> None:
        self.outdir = tmp_path / "pids"
        self.outdir.mkdir()
        script = tmp_path / "parent.py"
        script.write_text(PARENT_SCRIPT)
        self.expected = EXPECTED[mode]
        self.grandchildren: List[int] = []
        env = dict(os.environ, PYTHONPATH=REPO)
        self.parent = subprocess.Popen(
            [sys.executable, str(script), method, mode, str(self.outdir)], cwd=REPO, env=env
        )

    def wait_children(self) -> List[int]:
        """The grandchildren's pids, once they have all written them."""
        deadline = time.monotonic() + WAIT
        while True:
            files = sorted(self.outdir.glob("*.pid"))
            if len(files) == self.expected:
                self.grandchildren = [int(f.read_text()) for f in files]
                return self.grandchildren
            assert time.monotonic() < deadline, f"only {len(files)} children started"
            assert self.parent.poll() is None or self.parent.returncode == 0, "parent died early"
            time.sleep(0.02)

    def cleanup(self) -> None:
        if self.parent.poll() is None:
            self.parent.kill()
        self.parent.wait(WAIT)
        for pid in self.grandchildren:  # defensive: never leak a grandchild
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[List[Scenario]]:
    made: List[Scenario] = []
    yield made
    for s in made:
        s.cleanup()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["busy", "sleep", "thread"])
def test_sigkilled_parent_takes_children_along(
    scenario: List[Scenario], tmp_path: Path, start_method: str, mode: str
) -> None:
    s = Scenario(tmp_path, start_method, mode)
    scenario.append(s)
    pids = s.wait_children()
    assert all(alive(p) for p in pids)
    os.kill(s.parent.pid, signal.SIGKILL)
    assert s.parent.wait(WAIT) == -signal.SIGKILL
    assert wait_all_gone(pids, 5.0) == []


@pytest.mark.timeout(60)
def test_sigkilled_parent_with_fork_siblings(scenario: List[Scenario], tmp_path: Path) -> None:
    s = Scenario(tmp_path, "fork", "siblings")
    scenario.append(s)
    pids = s.wait_children()
    os.kill(s.parent.pid, signal.SIGKILL)
    s.parent.wait(WAIT)
    assert wait_all_gone(pids, 5.0) == []


@pytest.mark.timeout(60)
def test_parent_exiting_without_destroy_ends_children(
    scenario: List[Scenario], tmp_path: Path, start_method: str
) -> None:
    s = Scenario(tmp_path, start_method, "atexit")
    scenario.append(s)
    started = time.monotonic()
    pids = s.wait_children()
    assert s.parent.wait(10.0) == 0  # the atexit hook kept multiprocessing from hanging
    assert time.monotonic() - started < 10.0
    assert wait_all_gone(pids, 5.0) == []


@pytest.mark.timeout(60)
def test_fork_siblings_do_not_hold_each_others_pipes() -> None:
    """A busy child's watchdog ends it promptly on destroy, even with later fork siblings
    around: they closed the copies they inherited of its alive pipe."""
    chans = [ParentCommChannel.fork(behaviours.busy) for _ in range(3)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        chans[0].destroy(timeout=10.0)
        assert time.monotonic() - started < 5.0
        assert chans[0].exitcode == 0  # ended by its watchdog, not by SIGTERM/SIGKILL
        assert all(ch.active for ch in chans[1:])
    finally:
        for ch in chans:
            ch.destroy(timeout=10.0)
    assert [ch.exitcode for ch in chans] == [0, 0, 0]


@pytest.mark.timeout(60)
def test_fork_child_closes_inherited_sibling_ends() -> None:
    first = ParentCommChannel.fork(behaviours.listening)
    control_r, control_w = os.pipe()  # not ours: a fork child keeps it
    second = None
    try:
        ends = [first.connection.fileno(), first._alive.fileno(), control_r]
        fds = [(fd, os.fstat(fd).st_ino) for fd in ends]
        second = ParentCommChannel.fork(behaviours.report_fds, (fds,))
        held = second.listen_once("fds").result(WAIT)["held"]
        assert held == [False, False, True]
    finally:
        os.close(control_r)
        os.close(control_w)
        first.destroy()
        if second is not None:
            second.destroy()


@pytest.mark.timeout(60)
def test_child_returning_with_a_live_grandchild_exits(start_method: str, tmp_path: Path) -> None:
    pidfile = str(tmp_path / "grandchild.pid")
    ch = ParentCommChannel.spawn(behaviours.nested, (pidfile,), start_method=start_method)
    grandchild = 0
    try:
        assert ch.wait_closed(WAIT)  # the child returned and destroyed what it started
        grandchild = int(Path(pidfile).read_text())
        ch.destroy(timeout=10.0)
        assert ch.exitcode == 0
        assert wait_all_gone([grandchild], 5.0) == []
    finally:
        ch.destroy(timeout=1.0)
        if grandchild and alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
