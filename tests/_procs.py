"""Process checks shared by the tests: is a pid gone, and wait until it is."""

from __future__ import annotations

import time


def gone(pid: int) -> bool:
    """The process no longer exists (or is a zombie nobody of ours will reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Poll until ``pid`` is gone; False if it is still there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
