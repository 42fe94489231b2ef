"""Process helpers shared by the tests and their children: write a pid file, is a pid gone,
wait until it is."""

from __future__ import annotations

import os
import time
from typing import Optional


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


def write_pid(path: Optional[str]) -> None:
    """Write this process's pid to ``path`` atomically (a reader never sees half a pid)."""
    if path:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, path)
