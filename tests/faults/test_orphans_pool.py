"""Orphans and zombies (issue 4, section 3).

* A parent process running a ``function_worker`` pool (idle children, or children busy
  in an item) is SIGKILLed: every pool child must be gone within 5 s.
* ``ParentCommChannel.destroy()`` of a child that ignores SIGTERM still ends and reaps it.

What is checked: a child is "gone" (see ``tests/faults/conftest.py``) when
``/proc/<pid>/stat`` no longer exists, or the process is a zombie (state Z/X) whose parent is
not this test process. After its parent was SIGKILLed a pool child is re-parented to init
(or the nearest subreaper); as a zombie it can no longer run and is init's to reap, so it
counts as gone. A child the test process itself started must be fully reaped: for those
the check is that ``/proc/<pid>`` is absent (a zombie of ours would be a reaping bug).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from tests.faults import children
from tests.faults.conftest import Baseline, kill_quietly, not_gone, proc_stat, running, wait_until
from workerkit import ParentCommChannel

pytestmark = pytest.mark.timeout(120)

REPO = str(Path(__file__).resolve().parents[2])
WAIT = 30.0

PARENT_SCRIPT = """
import os, sys, time
from workerkit import WorkPool, function_worker
from tests.faults import children

def main():
    method, mode, piddir = sys.argv[1], sys.argv[2], sys.argv[3]
    pool = WorkPool(lambda: function_worker(children.pidfile_then_sleep, start_method=method),
                    max_workers=2)
    if mode == "idle":
        # two items at once: both workers start; then both children sit idle
        pool.process([(piddir, 0.3)] * 2)
        open(os.path.join(piddir, "idle"), "w").close()
        time.sleep(1000)
    else:
        pool.process([(piddir, 1000.0)] * 2)  # both children busy, for ever

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("mode", ["idle", "busy"])
def test_sigkilled_parent_leaves_no_pool_child(tmp_path: Path, start_method: str, mode: str) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    piddir = tmp_path / "pids"
    piddir.mkdir()
    env = dict(os.environ, PYTHONPATH=REPO)
    parent = subprocess.Popen(
        [sys.executable, str(script), start_method, mode, str(piddir)], cwd=REPO, env=env
    )
    pids: List[int] = []
    try:
        def ready() -> bool:
            assert parent.poll() is None, f"parent exited early with {parent.returncode}"
            marked = mode == "busy" or (piddir / "idle").exists()
            return marked and len(list(piddir.glob("*.pid"))) == 2

        assert wait_until(ready, WAIT), "the pool's children did not start"
        pids = [int(p.stem) for p in piddir.glob("*.pid")]
        assert all(running(p) for p in pids)
        os.kill(parent.pid, signal.SIGKILL)
        assert parent.wait(WAIT) == -signal.SIGKILL
        killed_at = time.monotonic()
        left = not_gone(pids, 5.0)
        assert left == [], {p: proc_stat(p) for p in left}
        assert time.monotonic() - killed_at < 5.5
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(WAIT)
        kill_quietly(pids)


@pytest.mark.parametrize(
    "target,exitcode",
    [
        # Sleeps with the GIL free: the child's watchdog sees the closed alive pipe and
        # exits by itself (code 0) even though it ignores SIGTERM.
        pytest.param("term_ignoring_sleeper", 0, id="sleeping"),
        # Holds the GIL in C: only destroy's escalation to SIGKILL ends it.
        pytest.param("term_ignoring_gil_hog", -signal.SIGKILL, id="gil-hog"),
    ],
)
def test_destroy_reaps_a_child_that_ignores_sigterm(
    start_method: str, target: str, exitcode: int, tmp_path: Path, baseline: Baseline
) -> None:
    pidfile = tmp_path / "child.pid"
    ch = ParentCommChannel.spawn(getattr(children, target), (str(pidfile),), start_method=start_method)
    pid = ch.id
    try:
        ch.listen_once("ready").result(WAIT)
        assert int(pidfile.read_text()) == pid
        time.sleep(0.1)  # the GIL hog is now in its regex
        started = time.monotonic()
        ch.destroy(timeout=0.5)
        elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"destroy took {elapsed:.1f}s"
        assert ch.exitcode == exitcode
        assert not ch.active
        if start_method == "forkserver":
            # the forkserver is the child's parent and reaps it
            assert not_gone([pid], 5.0) == []
        else:
            assert proc_stat(pid) is None, f"child {pid} not reaped: {proc_stat(pid)}"
    finally:
        ch.destroy(timeout=1.0)
        kill_quietly([pid])
    baseline.assert_clean([pid])
