"""Child targets for the channel and orphan tests (module-level: picklable by reference)."""

from __future__ import annotations

import importlib
import os
import re
import signal
import threading
import time
from typing import Any, List, Optional, Tuple

from tests._procs import write_pid
from workerkit.comm import ChildCommChannel


def echo() -> None:
    """Echo every 'msg' back as 'echo' with the same payload."""
    ch = ChildCommChannel()

    def reply(event: Any, _remove: Any) -> None:
        payload = dict(event)
        del payload["type"]
        ch.send("echo", payload)

    ch.listen_for("msg", reply)
    ch.send("ready")


def exit_on_quit(code: int) -> None:
    """Say ready; on 'quit', end the process with ``code`` via ChildCommChannel.exit."""
    ch = ChildCommChannel()
    ch.listen_for("quit", lambda e, rm: ch.exit(code))
    ch.send("ready")


def printer(line: str) -> None:
    """Print ``line`` on the inherited stdout, then return (no listeners: the child exits)."""
    print(line)


def raw_junk() -> None:
    """On 'go', write frames that are not messages, then a real one."""
    ch = ChildCommChannel()
    ch.listen_for("go", lambda e, rm: _send_junk(ch))


def _send_junk(ch: ChildCommChannel) -> None:
    conn = ch.connection
    conn.send(42)  # a plain pickle: its first byte is no sane type-name length
    conn.send_bytes(b"")  # empty frame
    conn.send_bytes(b"\x05ab")  # type-name length past the end of the frame
    conn.send_bytes(b"\x02\xff\xfe" + b"junk")  # type name is not utf-8
    conn.send_bytes(b"\x04oops" + b"not a pickle")  # known type, undecodable body
    ch.send("after", {"n": 1})


class _Unloadable:
    """Pickles fine here; unpickling imports a module that does not exist."""

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        return (importlib.import_module, ("workerkit_test_no_such_module",))


class _Exploding:
    """Pickles fine here; unpickling raises."""

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        return (_explode, ("boom in the parent",))


def _explode(message: str) -> None:
    raise RuntimeError(message)


def undecodable() -> None:
    """On 'go', send two messages the parent cannot unpickle, then a good one."""
    ch = ChildCommChannel()

    def send_all(_event: Any, _remove: Any) -> None:
        ch.send("bad", {"obj": _Unloadable()})
        ch.send("worse", {"obj": _Exploding()})
        ch.send("good", {"n": 7})

    ch.listen_for("go", send_all)


def busy(pidfile: Optional[str] = None) -> None:
    """Write the pid, then spin in pure Python forever."""
    write_pid(pidfile)
    while True:
        pass


def sleeper(pidfile: Optional[str] = None) -> None:
    """Write the pid, then block in C (time.sleep)."""
    write_pid(pidfile)
    time.sleep(1000)


def listening(pidfile: Optional[str] = None) -> None:
    """Write the pid, answer 'request' like the doubler; listeners keep the child alive."""
    write_pid(pidfile)
    ch = ChildCommChannel()
    ch.listen_for("request", lambda e, rm: ch.send("response", {"data": e["data"] * 2}))
    ch.send("ready")


def stubborn() -> None:
    """Ignore SIGTERM and hold the GIL in C (catastrophic regex): only SIGKILL ends it.

    The watchdog thread cannot run without the GIL, so the parent's destroy has to
    escalate.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ch = ChildCommChannel()
    ch.send("ready")
    re.match(r"(a+)+$", "a" * 64 + "b")  # ~2**64 steps inside _sre, never releasing the GIL


def two_views() -> None:
    """Two ChildCommChannel views of one connection; 'release-a' releases the first."""
    a = ChildCommChannel()
    b = ChildCommChannel()
    a.listen_for("ping", lambda e, rm: a.send("pong-a"))
    b.listen_for("ping", lambda e, rm: b.send("pong-b"))
    b.listen_for("release-a", lambda e, rm: a.release())
    b.listen_for("sync", lambda e, rm: b.send("synced", {"n": e["n"]}))
    b.send("ready", {"same_id": a.id == b.id == os.getpid()})


def threaded_exit(code: int) -> None:
    """Call ChildCommChannel.exit from a non-main thread while the main thread sleeps."""
    ch = ChildCommChannel()
    ch.send("ready")
    threading.Thread(target=lambda: (time.sleep(0.2), ch.exit(code))).start()
    time.sleep(1000)


def report_fds(fds: List[Tuple[int, int]]) -> None:
    """Report, for each ``(fd, inode)``, whether this process still holds that file."""
    ch = ChildCommChannel()
    held = []
    for fd, inode in fds:
        try:
            held.append(os.fstat(fd).st_ino == inode)
        except OSError:
            held.append(False)
    ch.send("fds", {"held": held})


def nested(pidfile: str) -> None:
    """Start a grandchild that would live forever, then return without destroying it."""
    from workerkit.comm import ParentCommChannel

    grandchild = ParentCommChannel.spawn(listening, (pidfile,), start_method="fork")
    grandchild.listen_once("ready").result(30)


def typed_echo() -> None:
    """Echo every 'msg' back with the same payload, as the type it names in 'reply_type'."""
    ch = ChildCommChannel()

    def reply(event: Any, _remove: Any) -> None:
        payload = dict(event)
        del payload["type"]
        ch.send(payload.pop("reply_type", "echo"), payload)

    ch.listen_for("msg", reply)
    ch.send("ready")
