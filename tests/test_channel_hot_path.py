"""The round trip's shortcuts keep the contract: a slice read that holds one whole frame,
several, a frame and a half, or a zero-length frame hands each over once and in order;
every pending ``listen_once`` future of a type gets its next event, whichever of them
was cancelled, and nothing stays registered; a cached event type still rejects what the contract rejects."""

from __future__ import annotations

import multiprocessing
import os
import struct
from typing import Iterator, Tuple

import pytest

from workerkit import ParentCommChannel
from workerkit.comm._framing import encode_frame
from workerkit.comm._wire import FrameReader, enable_read_slices

WAIT = 20.0


def _wire(payload: bytes) -> bytes:
    return struct.pack("!i", len(payload)) + payload


@pytest.fixture
def pipe() -> Iterator[Tuple[multiprocessing.connection.Connection, multiprocessing.connection.Connection]]:
    reader, writer = multiprocessing.Pipe()
    assert enable_read_slices(reader, 0.02)
    yield reader, writer
    reader.close()
    writer.close()


@pytest.mark.parametrize(
    "payloads",
    [
        [b"one whole frame"],
        [b"first", b"second", b"third"],
        [b"", b"after an empty frame"],
        [b"x" * 100],
    ],
    ids=["one", "three-in-one-read", "empty-then-one", "hundred-bytes"],
)
def test_a_slice_read_hands_over_every_frame_it_holds_once_and_in_order(pipe, payloads) -> None:
    reader, writer = pipe
    os.write(writer.fileno(), b"".join(_wire(p) for p in payloads))
    frames = FrameReader(reader.fileno())
    got = []
    for _ in payloads:
        frame = frames.read_sliced()
        assert frame is not None, "a slice passed although a whole frame was there"
        got.append(bytes(frame))
    assert got == payloads
    assert not frames.buffered()
    assert frames.read_sliced() is None  # nothing more: a slice passes


@pytest.mark.parametrize(
    "payloads",
    [[b"one whole frame"], [b"first", b"second", b"third"], [b"", b"after an empty frame"]],
    ids=["one", "three-in-one-read", "empty-then-one"],
)
def test_a_blocking_read_hands_over_every_frame_it_holds_once_and_in_order(pipe, payloads) -> None:
    reader, writer = pipe
    os.write(writer.fileno(), b"".join(_wire(p) for p in payloads))
    frames = FrameReader(reader.fileno())
    assert [bytes(frames.read()) for _ in payloads] == payloads
    assert not frames.buffered()
    os.write(writer.fileno(), _wire(b"later"))
    assert frames.read() == b"later"
    writer.close()
    with pytest.raises(EOFError):
        frames.read()


def test_a_slice_read_that_ends_inside_a_frame_waits_for_the_rest(pipe) -> None:
    reader, writer = pipe
    data = _wire(b"complete") + _wire(b"cut in two")
    os.write(writer.fileno(), data[:-4])
    frames = FrameReader(reader.fileno())
    assert frames.read_sliced() == b"complete"
    os.write(writer.fileno(), data[-4:])
    assert frames.read_sliced() == b"cut in two"


def test_eof_right_away_is_reported_by_a_slice_read(pipe) -> None:
    reader, writer = pipe
    writer.close()
    with pytest.raises(EOFError):
        FrameReader(reader.fileno()).read_sliced()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cancelled", [0, 1, 2])
def test_every_pending_future_of_a_type_gets_the_next_event_whichever_was_cancelled(
    echo: ParentCommChannel, cancelled: int
) -> None:
    futures = [echo.listen_once("pong") for _ in range(3)]
    assert futures[cancelled].cancel()
    live = [f for i, f in enumerate(futures) if i != cancelled]
    echo.send("msg", {"reply_type": "pong", "n": 0})
    assert [f.result(WAIT)["n"] for f in live] == [0, 0]
    assert futures[cancelled].cancelled()
    # Nothing is left registered: the next pong goes to a new future alone.
    nxt = echo.listen_once("pong")
    assert len(echo._endpoint.registry) == 1
    echo.send("msg", {"reply_type": "pong", "n": 1})
    assert nxt.result(WAIT)["n"] == 1
    assert len(echo._endpoint.registry) == 0


@pytest.mark.timeout(60)
def test_a_type_sent_before_is_still_checked_and_a_bad_type_rejected_every_time(
    echo: ParentCommChannel,
) -> None:
    too_long = "t" * 256
    for _ in range(2):  # not remembered as valid after the first failure
        with pytest.raises(ValueError, match="255"):
            echo.send(too_long, {"n": 1})
        with pytest.raises(TypeError, match="event type must be a str"):
            echo.send(b"bytes", {"n": 1})  # type: ignore[arg-type]
    class Named(str):
        pass
    for _ in range(2):  # a str subclass works like its text, each time
        reply = echo.listen_once("pong")
        echo.send(Named("msg"), {"reply_type": "pong", "n": 7})
        assert reply.result(WAIT)["n"] == 7
    with pytest.raises(ValueError, match='"type"'):
        echo.send("msg", {"type": "x"})  # data is still checked for a cached type
    assert encode_frame("é" * 127, None)[0] == 254  # utf-8 length, not characters
    reply = echo.listen_once("pong")
    echo.send("msg", {"reply_type": "pong", "n": 8})
    assert reply.result(WAIT)["n"] == 8  # the channel stayed usable throughout
