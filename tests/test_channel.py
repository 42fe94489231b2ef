"""Channels between real processes: messages, listeners, closing, reaping."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Dict, Iterator, List, Set, Tuple

import pytest

from tests._procs import wait_gone
from tests.children import behaviours, doubler
from workerkit.comm import (
    ChildCommChannel,
    CommEvent,
    MessageDecodeError,
    ParentCommChannel,
    ProcessCommChannel,
)
from workerkit.errors import ChannelClosedError, WorkerKitError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 30.0  # generous: a loaded CI box can take seconds to spawn an interpreter

Spawner = Callable[..., ParentCommChannel]


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    """``spawn(target, ...)`` = ``ParentCommChannel.spawn``; destroys them all afterwards."""
    made: List[ParentCommChannel] = []

    def _spawn(target: Any, *args: Any, **kwargs: Any) -> ParentCommChannel:
        ch = ParentCommChannel.spawn(target, *args, **kwargs)
        made.append(ch)
        return ch

    yield _spawn
    for ch in made:
        ch.destroy(timeout=2.0)






def ready(ch: ParentCommChannel) -> CommEvent:
    return ch.listen_once("ready").result(WAIT)


def ask(ch: ParentCommChannel, n: int) -> CommEvent:
    response = ch.listen_once("response")
    ch.send("request", {"data": n})
    return response.result(WAIT)


# -- the seed's conversation ---------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", [doubler.main, "tests.children.doubler:main"], ids=["callable", "string"])
def test_doubling_conversation(spawn: Spawner, start_method: str, target: Any) -> None:
    ch = spawn(target, start_method=start_method)
    assert ready(ch) == {"type": "ready"}
    assert ch.active and ch.id == ch.process.pid and ch.id != os.getpid()
    for n in (2, 21, -5):
        assert ask(ch, n) == {"type": "response", "data": n * 2}
    ch.destroy()
    assert not ch.active
    assert ch.exitcode == 0
    assert wait_gone(ch.id)


@pytest.mark.timeout(60)
def test_early_ready_waits_in_the_pipe(spawn: Spawner, start_method: str) -> None:
    ch = spawn(doubler.main, start_method=start_method)
    time.sleep(0.5)  # the child has long sent 'ready'; nobody listened yet
    assert ready(ch) == {"type": "ready"}


@pytest.mark.timeout(60)
def test_message_shape(spawn: Spawner) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    event = ask(ch, 2)
    assert event == {"type": "response", "data": 4}
    assert list(event) == ["type", "data"]


@pytest.mark.timeout(60)
def test_send_validates_before_writing(spawn: Spawner) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    with pytest.raises(ValueError, match="type"):
        ch.send("request", {"type": "x", "data": 1})
    with pytest.raises(TypeError):
        ch.send(42, {"data": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="255"):
        ch.send("x" * 256)
    with pytest.raises(TypeError):
        ch.send("request", [1, 2])  # type: ignore[arg-type]
    assert ask(ch, 5) == {"type": "response", "data": 10}  # the stream is intact


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "payload, errors",
    [
        (lambda: 1, (pickle.PicklingError, AttributeError, TypeError)),
        (threading.Lock(), (TypeError,)),
    ],
    ids=["lambda", "lock"],
)
def test_unpicklable_payload_raises_at_the_call(
    spawn: Spawner, payload: Any, errors: Tuple[type, ...]
) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    with pytest.raises(errors):
        ch.send("request", {"data": payload})
    assert ask(ch, 3) == {"type": "response", "data": 6}


# -- many threads, big payloads ------------------------------------------------------


@pytest.mark.timeout(60)
def test_send_is_thread_safe(spawn: Spawner) -> None:
    threads_n, per_thread = 8, 500
    ch = spawn(behaviours.echo)
    ready(ch)
    received: List[Tuple[int, int, bytes]] = []
    lock = threading.Lock()
    all_in = threading.Event()

    def on_echo(event: CommEvent, _remove: Any) -> None:
        with lock:
            received.append((event["t"], event["i"], event["pad"]))
            if len(received) == threads_n * per_thread:
                all_in.set()

    ch.listen_for("echo", on_echo)

    def pad(t: int, i: int) -> bytes:
        return f"{t}:{i}:".encode() * (1 + (i % 50))  # varied sizes, checkable contents

    def sender(t: int) -> None:
        for i in range(per_thread):
            ch.send("msg", {"t": t, "i": i, "pad": pad(t, i)})

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all_in.wait(WAIT), f"only {len(received)} of {threads_n * per_thread} echoes"
    time.sleep(0.1)
    assert len(received) == threads_n * per_thread  # nothing twice
    assert {(t, i) for t, i, _ in received} == {(t, i) for t in range(threads_n) for i in range(per_thread)}
    assert all(p == pad(t, i) for t, i, p in received)  # nothing corrupted
    for t in range(threads_n):  # each thread's messages stay in its order
        assert [i for tt, i, _ in received if tt == t] == list(range(per_thread))


@pytest.mark.timeout(60)
def test_ten_megabyte_round_trip(spawn: Spawner, start_method: str) -> None:
    ch = spawn(behaviours.echo, start_method=start_method)
    ready(ch)
    blob = os.urandom(10 * 1024 * 1024)
    echoed = ch.listen_once("echo")
    ch.send("msg", {"blob": blob})
    assert echoed.result(WAIT)["blob"] == blob


# -- listeners -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_listener_removal(spawn: Spawner) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    seen: Dict[str, List[int]] = {"a": [], "b": [], "c": [], "all": []}
    remove_a = ch.listen_for("response", lambda e, rm: seen["a"].append(e["data"]))

    def b(event: CommEvent, _remove: Any) -> None:
        seen["b"].append(event["data"])

    ch.listen_for("response", b)
    ch.listen_for("response", lambda e, rm: (seen["c"].append(e["data"]), rm()))  # removes itself
    ch.listen(lambda e, rm: seen["all"].append(e.get("data", -1)))
    ask(ch, 1)
    remove_a()
    remove_a()  # idempotent
    ch.remove_listener(b)
    ask(ch, 2)  # listen_once registered after them: they have run when it resolves
    assert seen == {"a": [2], "b": [2], "c": [2], "all": [2, 4]}


@pytest.mark.timeout(60)
def test_listeners_run_in_registration_order(spawn: Spawner) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    order: List[str] = []
    ch.listen_for("response", lambda e, rm: order.append("for-1"))
    ch.listen(lambda e, rm: order.append("any-2"))
    ch.listen_once("response", lambda e: order.append("once-3"))
    ch.listen_for("response", lambda e, rm: order.append("for-4"))
    ch.listen(lambda e, rm: order.append("any-5"))
    ask(ch, 1)
    ask(ch, 1)
    assert order == ["for-1", "any-2", "once-3", "for-4", "any-5", "for-1", "any-2", "for-4", "any-5"]


@pytest.mark.timeout(60)
def test_raising_handler_is_logged_and_removed(spawn: Spawner, caplog: pytest.LogCaptureFixture) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    calls: List[int] = []

    def bad(event: CommEvent, _remove: Any) -> None:
        calls.append(event["data"])
        raise RuntimeError("handler bug")

    with caplog.at_level(logging.ERROR, logger="workerkit"):
        ch.listen_for("response", bad)
        assert ask(ch, 1)["data"] == 2
        assert ask(ch, 2)["data"] == 4  # the reader kept going
    assert calls == [2]  # removed after raising once
    records = [r for r in caplog.records if r.name == "workerkit" and r.exc_info]
    assert records and "handler bug" in str(records[0].exc_info[1])  # type: ignore[index]


@pytest.mark.timeout(60)
def test_listen_once_callback_form_fires_once(spawn: Spawner) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    got: List[CommEvent] = []
    ch.listen_once("response", got.append)
    ask(ch, 1)
    ask(ch, 2)
    assert got == [{"type": "response", "data": 2}]
    remove = ch.listen_once("response", got.append)
    remove()
    remove()
    ask(ch, 3)
    assert len(got) == 1


@pytest.mark.timeout(60)
def test_release_drops_only_this_views_listeners(spawn: Spawner, start_method: str) -> None:
    ch = spawn(behaviours.two_views, start_method=start_method)
    assert ready(ch)["same_id"] is True
    events: List[str] = []
    ch.listen(lambda e, rm: events.append(e["type"]))

    def sync(n: int) -> None:
        done = ch.listen_once("synced")
        ch.send("sync", {"n": n})
        assert done.result(WAIT)["n"] == n

    ch.send("ping")
    sync(1)
    assert sorted(events[:2]) == ["pong-a", "pong-b"]
    events.clear()
    ch.send("release-a")
    ch.send("ping")
    sync(2)  # the child handles messages in order: ping was handled before sync
    assert events == ["pong-b", "synced"]


@pytest.mark.timeout(60)
def test_parent_release_cancels_only_own_futures(spawn: Spawner) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    pending = ch.listen_once("never")
    ch.release()
    assert pending.cancelled()
    assert ask(ch, 4)["data"] == 8  # registering again after release works


@pytest.mark.timeout(60)
def test_cancelled_future_is_unregistered(spawn: Spawner) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    fut = ch.listen_once("response")
    assert fut.cancel()
    assert ask(ch, 1)["data"] == 2


# -- malformed and undecodable messages ----------------------------------------------


@pytest.mark.timeout(60)
def test_malformed_frames_are_dropped(
    spawn: Spawner, start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="workerkit"):
        ch = spawn(behaviours.raw_junk, start_method=start_method)
        oops = ch.listen_once("oops")
        after = ch.listen_once("after")
        ch.send("go")  # only now: both listeners are in place
        assert after.result(WAIT) == {"type": "after", "n": 1}
        with pytest.raises(MessageDecodeError, match="oops"):
            oops.result(WAIT)
    dropped = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(dropped) == 4


@pytest.mark.timeout(60)
def test_undecodable_message_fails_its_future(
    spawn: Spawner, start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="workerkit"):
        ch = spawn(behaviours.undecodable, start_method=start_method)
        bad, worse, good = ch.listen_once("bad"), ch.listen_once("worse"), ch.listen_once("good")
        ch.send("go")  # only now: all three listeners are in place
        with pytest.raises(MessageDecodeError, match="'bad'") as info:
            bad.result(WAIT)
        assert isinstance(info.value.__cause__, ImportError)
        assert info.value.event_type == "bad"
        with pytest.raises(MessageDecodeError, match="boom in the parent") as info2:
            worse.result(WAIT)
        assert isinstance(info2.value.__cause__, RuntimeError)
        assert good.result(WAIT) == {"type": "good", "n": 7}  # the stream stayed intact
    assert any("'bad'" in r.getMessage() for r in caplog.records)


# -- closing -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigkilled_child_fails_pending_future(spawn: Spawner, start_method: str) -> None:
    ch = spawn(doubler.main, start_method=start_method)
    ready(ch)
    never = ch.listen_once("never")
    also: List[CommEvent] = []
    ch.listen_once("never", also.append)
    started = time.monotonic()
    os.kill(ch.id, signal.SIGKILL)
    with pytest.raises(ChannelClosedError) as info:
        never.result(5.0)
    assert time.monotonic() - started < 5.0
    assert info.value.exitcode == -9
    assert ch.exitcode == -9
    assert not ch.active
    assert ch.wait_closed(0) is True
    later = ch.listen_once("ready")  # on a closed channel: already failed
    assert later.done()
    with pytest.raises(ChannelClosedError):
        later.result(0)
    assert ch.listen_once("x", also.append)() is None  # no-op remove
    with pytest.raises(ChannelClosedError) as sent:
        ch.send("request", {"data": 1})
    assert sent.value.exitcode == -9
    assert also == []


@pytest.mark.timeout(60)
def test_send_to_a_dead_child_raises_closed(spawn: Spawner) -> None:
    ch = spawn(behaviours.sleeper)  # never listens: no reader in the parent either
    os.kill(ch.id, signal.SIGKILL)
    assert wait_gone(ch.id) or ch.process.exitcode is not None
    with pytest.raises(ChannelClosedError) as info:
        for _ in range(100):  # the first writes may still land in the socket buffer
            ch.send("request", {"data": b"x" * 100_000})
            time.sleep(0.01)
    assert info.value.exitcode == -9


@pytest.mark.timeout(60)
def test_wait_closed_after_child_exits(spawn: Spawner, start_method: str) -> None:
    ch = spawn(behaviours.printer, ("bye",), start_method=start_method)
    assert ch.wait_closed(WAIT) is True
    assert not ch.active
    ch.destroy()
    assert ch.exitcode == 0


@pytest.mark.timeout(60)
def test_wait_closed_times_out_while_open(spawn: Spawner) -> None:
    ch = spawn(doubler.main)
    ready(ch)
    assert ch.wait_closed(0.2) is False
    assert ch.active


@pytest.mark.timeout(60)
def test_child_exit_code_reaches_parent(spawn: Spawner, start_method: str) -> None:
    ch = spawn(behaviours.exit_on_quit, (3,), start_method=start_method)
    ready(ch)
    never = ch.listen_once("never")
    ch.send("quit")
    with pytest.raises(ChannelClosedError) as info:
        never.result(WAIT)
    assert info.value.exitcode == 3
    assert ch.exitcode == 3


@pytest.mark.timeout(60)
def test_child_exit_from_another_thread(spawn: Spawner) -> None:
    ch = spawn(behaviours.threaded_exit, (5,))
    ready(ch)
    assert ch.wait_closed(WAIT)
    ch.destroy()
    assert ch.exitcode == 5


@pytest.mark.timeout(60)
def test_destroy_reaps_and_is_idempotent(spawn: Spawner, start_method: str) -> None:
    ch = spawn(doubler.main, start_method=start_method)
    ready(ch)
    pending = ch.listen_once("never")
    started = time.monotonic()
    ch.destroy()
    assert time.monotonic() - started < 3.0  # the child exits by itself: no escalation
    assert ch.exitcode == 0
    assert wait_gone(ch.id)
    with pytest.raises(ChannelClosedError):
        pending.result(0)
    ch.destroy()
    assert ch.wait_closed(0)
    with pytest.raises(ChannelClosedError):
        ch.send("request", {"data": 1})


@pytest.mark.timeout(60)
def test_destroy_from_a_handler_on_the_reader_thread(spawn: Spawner) -> None:
    ch = spawn(doubler.main)
    ch.listen_for("ready", lambda e, rm: ch.destroy())
    assert ch.wait_closed(WAIT)
    deadline = time.monotonic() + WAIT
    while ch.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ch.exitcode == 0
    assert wait_gone(ch.id)


@pytest.mark.timeout(60)
def test_destroy_busy_child_via_watchdog(spawn: Spawner, start_method: str) -> None:
    ch = spawn(behaviours.busy, start_method=start_method)
    time.sleep(0.3)
    started = time.monotonic()
    ch.destroy(timeout=10.0)
    assert time.monotonic() - started < 5.0
    assert ch.exitcode == 0  # the watchdog's os._exit(0), not a signal
    assert wait_gone(ch.id)


@pytest.mark.timeout(60)
def test_destroy_escalates_to_sigkill(spawn: Spawner, start_method: str) -> None:
    ch = spawn(behaviours.stubborn, start_method=start_method)
    ready(ch)
    started = time.monotonic()
    ch.destroy(timeout=1.0)
    elapsed = time.monotonic() - started
    assert ch.exitcode == -signal.SIGKILL
    assert elapsed < 1.0 + 4.0
    assert wait_gone(ch.id)


# -- targets and start methods -------------------------------------------------------


def test_missing_string_target_fails_at_spawn() -> None:
    with pytest.raises(WorkerKitError, match="missing"):
        ParentCommChannel.spawn("tests.children.doubler:missing")
    with pytest.raises(WorkerKitError, match="tests.children.no_such_module"):
        ParentCommChannel.spawn("tests.children.no_such_module:main")
    with pytest.raises(ValueError, match="module:function"):
        ParentCommChannel.spawn("tests.children.doubler.main")


def test_bad_start_method() -> None:
    with pytest.raises(ValueError, match="forkserver"):
        ParentCommChannel.spawn(doubler.main, start_method="vfork")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_unpicklable_target_needs_fork(method: str) -> None:
    def local() -> None:
        pass

    for target in (lambda: None, local):
        with pytest.raises(WorkerKitError, match="use fork or a module-level function") as info:
            ParentCommChannel.spawn(target, start_method=method)
        assert info.value.__cause__ is not None


@pytest.mark.timeout(60)
def test_fork_accepts_a_closure(spawn: Spawner) -> None:
    factor = 3

    def tripler() -> None:
        ch = ChildCommChannel()
        ch.listen_for("request", lambda e, rm: ch.send("response", {"data": e["data"] * factor}))
        ch.send("ready")

    ch = ParentCommChannel.fork(tripler)
    try:
        ready(ch)
        assert ask(ch, 5)["data"] == 15
    finally:
        ch.destroy()


def test_child_channel_outside_a_child() -> None:
    with pytest.raises(WorkerKitError, match="only works inside a child"):
        ChildCommChannel()


def test_exports() -> None:
    import workerkit.comm as comm

    assert set(comm.__all__) == {
        "CommEvent",
        "ProcessCommChannel",
        "ParentCommChannel",
        "ChildCommChannel",
        "MessageDecodeError",
    }
    assert issubclass(ParentCommChannel, ProcessCommChannel)
    assert issubclass(ChildCommChannel, ProcessCommChannel)
    assert issubclass(MessageDecodeError, WorkerKitError)
    assert isinstance(Future(), Future)


@pytest.mark.timeout(60)
def test_child_print_reaches_inherited_stdout(start_method: str) -> None:
    line = f"hello from the child via {start_method}"
    script = (
        "from workerkit.comm import ParentCommChannel\n"
        "if __name__ == '__main__':\n"
        f"    ch = ParentCommChannel.spawn('tests.children.behaviours:printer', ({line!r},),"
        f" start_method={start_method!r})\n"
        "    assert ch.wait_closed(30)\n"
        "    ch.destroy()\n"
        "    print('parent done', ch.exitcode)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=WAIT
    )
    assert result.returncode == 0, result.stderr
    assert line in result.stdout.splitlines()
    assert "parent done 0" in result.stdout


@pytest.mark.timeout(60)
def test_spawn_from_short_lived_thread_survives_thread_exit(spawn: Spawner, start_method: str) -> None:
    box: List[ParentCommChannel] = []

    def start_and_wait_ready() -> None:
        ch = spawn(doubler.main, start_method=start_method)
        box.append(ch)
        ready(ch)  # the child has armed PR_SET_PDEATHSIG by now; then this thread ends

    t = threading.Thread(target=start_and_wait_ready)
    t.start()
    t.join()
    ch = box[0]
    time.sleep(0.5)  # PR_SET_PDEATHSIG would have fired by now if tied to that thread
    assert ch.active
    assert ask(ch, 6)["data"] == 12


def test_seen_pids_unique(spawn: Spawner) -> None:
    chans = [spawn(doubler.main, start_method="fork") for _ in range(3)]
    pids: Set[int] = {ch.id for ch in chans}
    assert len(pids) == 3
    for ch in chans:
        assert ready(ch) == {"type": "ready"}


@pytest.mark.timeout(60)
def test_destroy_wakes_a_thread_reading_the_raw_connection(spawn: Spawner) -> None:
    ch = spawn(behaviours.sleeper)  # never sends anything
    outcome: List[BaseException] = []

    def read() -> None:
        try:
            ch.connection.recv_bytes()
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)  # the thread is blocked in recv
    ch.destroy(timeout=5.0)
    reader.join(WAIT)
    assert not reader.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], EOFError)
    assert ch.connection.closed  # released once the child was reaped
